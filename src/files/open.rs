//! Opening a file beneath a root in the kernel: `openat2` with `RESOLVE_BENEATH` refuses
//! any resolution that leaves the root directory (`..`, absolute symlinks, symlinks that
//! climb out) and `RESOLVE_NO_MAGICLINKS` the `/proc` kind; symlinks that stay beneath the
//! root are followed.
//!
//! Regular files stay open in the site's cache (nginx's `open_file_cache`, here always on and
//! never stale): a request for a cached path costs one `fstatat` instead of `openat2`,
//! `fstat` and `close` (18 % of a 1 KiB file's CPU, measured with perf), and the cached file
//! is served only while the path still names the same file (device, inode, size, change and
//! modification times, the final name not a symlink); otherwise the path is opened again
//! beneath the root. So a file changed in place or replaced by a rename is served fresh, and
//! only a file once opened beneath the root is ever served.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};

use crate::state::site::OpenFile;
use crate::state::StaticSite;

/// An open file (or directory) and what `fstat` said of it.
pub struct Opened {
    pub file: Arc<File>,
    pub meta: Metadata,
}

/// Files a site holds open at most; past it the cache starts again empty.
const MOST_OPEN: usize = 1024;

/// `rel` beneath the site's root: the cached file while the path still names it, else opened
/// (and, a regular file, cached).
pub fn cached(site: &StaticSite, rel: &Path) -> io::Result<Opened> {
    let hit = site
        .open_files
        .lock()
        .ok()
        .and_then(|c| c.get(rel).map(|o| (o.file.clone(), o.meta.clone())));
    if let Some((file, meta)) = hit {
        let now = nix::sys::stat::fstatat(&site.root, rel, AtFlags::AT_SYMLINK_NOFOLLOW);
        if now.is_ok_and(|st| same(&st, &meta)) {
            return Ok(Opened { file, meta });
        }
    }
    let opened = beneath(&site.root, rel)?;
    if opened.meta.is_file() {
        if let Ok(mut c) = site.open_files.lock() {
            if c.len() >= MOST_OPEN {
                c.clear();
            }
            c.insert(
                rel.to_path_buf(),
                OpenFile {
                    file: opened.file.clone(),
                    meta: opened.meta.clone(),
                },
            );
        }
    }
    Ok(opened)
}

/// Whether `st` (the path now) is the file `meta` describes, unchanged.
fn same(st: &nix::sys::stat::FileStat, meta: &Metadata) -> bool {
    st.st_dev == meta.dev()
        && st.st_ino == meta.ino()
        && st.st_size == meta.size() as i64
        && st.st_mtime == meta.mtime()
        && st.st_mtime_nsec == meta.mtime_nsec()
        && st.st_ctime == meta.ctime()
        && st.st_ctime_nsec == meta.ctime_nsec()
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
    Ok(Opened {
        file: Arc::new(file),
        meta,
    })
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
