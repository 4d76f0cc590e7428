//! Where each access log writes, resolved from the config (and checked by `proxyd check`):
//! a file, an hourly healthd file, or stderr. The logs themselves are in `crate::obs::access_log`.

use std::path::{Path, PathBuf};

use super::{AccessLog, AccessLogFormat};

/// Elastic Beanstalk's healthd agent reads `<this>.YYYY-MM-DD-HH`.
pub const HEALTHD_PATH: &str = "/var/log/nginx/healthd/application.log";

/// Where a log's lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(PathBuf),
    /// healthd: the base path; the UTC hour is appended.
    Hourly(PathBuf),
}

/// A log's destination, its path resolved against the config's directory; `None` when a
/// format other than healthd has no path.
pub fn destination(log: &AccessLog, dir: &Path) -> Option<Destination> {
    let healthd = log.format.value == AccessLogFormat::Healthd;
    let path = match &log.path {
        Some(p) => p.value.as_str(),
        None if healthd => HEALTHD_PATH,
        None => return None,
    };
    Some(match path.trim() {
        "-" | "stderr" => Destination::Stderr,
        p if healthd => Destination::Hourly(dir.join(p)),
        p => Destination::File(dir.join(p)),
    })
}

/// `Ok` when `file`'s directory exists and is writable, or could be created: its nearest
/// existing ancestor is a writable directory. Leaves nothing behind (`proxyd check` uses it).
pub fn creatable_dir(file: &Path) -> Result<(), String> {
    let mut dir = file.parent();
    while let Some(d) = dir {
        let probe = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if probe.exists() {
            if !probe.is_dir() {
                return Err(format!("{} is not a directory", probe.display()));
            }
            // An unnamed temporary file: the one check that also holds for root and ACLs.
            return tempfile::tempfile_in(probe).map(drop).map_err(|e| {
                format!(
                    "cannot create {} in {}: {e}",
                    file.display(),
                    probe.display()
                )
            });
        }
        dir = d.parent();
    }
    Err(format!("no directory to create {} in", file.display()))
}
