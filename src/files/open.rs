//! Opening a file beneath a root in the kernel: `openat2` with `RESOLVE_BENEATH` refuses
//! any resolution that leaves the root directory (`..`, absolute symlinks, symlinks that
//! climb out) and `RESOLVE_NO_MAGICLINKS` the `/proc` kind; symlinks that stay beneath the
//! root are followed.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

/// An open file (or directory) and what `fstat` said of it.
pub struct Opened {
    pub file: File,
    pub meta: Metadata,
}

/// Opens `rel` beneath `root`. Non-blocking, so a FIFO put in the root cannot hold the
/// thread (it is then refused for not being a regular file).
pub fn beneath(root: &File, rel: &Path) -> io::Result<Opened> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = File::from(openat2(root, rel, how).map_err(io::Error::from)?);
    let meta = file.metadata()?;
    Ok(Opened { file, meta })
}

/// An open error that means "no such file here" to a client (missing, not a directory on
/// the way, outside the root, a symlink loop, unreadable); others are proxyd's failures.
pub fn is_miss(e: &io::Error) -> bool {
    use nix::errno::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [
        Errno::ENOENT,
        Errno::ENOTDIR,
        Errno::EXDEV,
        Errno::ELOOP,
        Errno::ENAMETOOLONG,
        Errno::EACCES,
        Errno::EPERM,
        Errno::ENXIO,
    ]
    .iter()
    .any(|e| *e as i32 == code)
}
