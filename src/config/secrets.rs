//! Files that hold secrets should not be readable by every user of the machine: TLS private
//! keys (`listen[].tls.certs[].key`), and the config file itself when the admin token is
//! written in it (rather than taken from `${VAR}`). `proxyd check` and startup warn about
//! each such file that others may read (mode & 0o004), naming it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Loaded;

/// One warning per secret file that others can read.
pub fn warnings(loaded: &Loaded) -> Vec<String> {
    let mut files: Vec<(PathBuf, &str)> = Vec::new();
    let token = loaded
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
        .map(|t| t.value.as_str());
    if let Some(token) = token {
        let config = Path::new(&loaded.file);
        // Only when the token is written in the file itself.
        if std::fs::read_to_string(config).is_ok_and(|text| text.contains(token)) {
            files.push((
                config.to_path_buf(),
                "the config file (it holds admin.token)",
            ));
        }
    }
    for l in &loaded.config.listen {
        for pair in l.tls.iter().flat_map(|t| &t.certs) {
            files.push((loaded.dir.join(&pair.key.value), "TLS private key"));
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (path, what) in files {
        if !world_readable(&path) {
            continue;
        }
        let line = format!(
            "warning: {} is readable by every user (mode {:o}): {what}; chmod o-r it",
            path.display(),
            mode(&path).unwrap_or(0) & 0o7777
        );
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

fn mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

fn world_readable(path: &Path) -> bool {
    mode(path).is_some_and(|m| m & 0o004 != 0)
}
