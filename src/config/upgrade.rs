//! The `upgrade:` block: how a running proxyd hands its sockets to a new binary (SIGUSR2,
//! `proxyd upgrade`, `POST /upgrade`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// The program to run as the new proxyd (relative to the config file). Default: the file
    /// proxyd was started from, as it is on disk at the time of the upgrade (so installing
    /// the new build over it, then upgrading, runs the new build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<Spanned<String>>,
    /// The new proxyd must be ready (listeners taken over, workers ready) within this;
    /// otherwise it is killed and the old one keeps serving.
    #[serde(default = "default_timeout", with = "super::units::nonzero_duration")]
    pub timeout: Duration,
}

impl Default for Upgrade {
    fn default() -> Upgrade {
        Upgrade {
            binary: None,
            timeout: default_timeout(),
        }
    }
}

impl Upgrade {
    /// `binary` resolved against the config file's directory, when set.
    pub fn binary_path(&self, dir: &Path) -> Option<PathBuf> {
        let path = dir.join(&self.binary.as_ref()?.value);
        // A bare name would be looked up in PATH: it names a file next to the config.
        Some(if path.components().count() == 1 {
            Path::new(".").join(path)
        } else {
            path
        })
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_relative_to_the_config_file() {
        let upgrade = |b: &str| {
            let yaml = format!(
                "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\nupgrade:\n  binary: {b}\n  timeout: 5s\n"
            );
            crate::config::load_str(&yaml, "t.yaml", ".".into())
                .unwrap()
                .config
                .upgrade
        };
        let u = upgrade("proxyd-new");
        assert_eq!(u.timeout, Duration::from_secs(5));
        assert_eq!(
            u.binary_path(Path::new("")),
            Some(PathBuf::from("./proxyd-new"))
        );
        assert_eq!(
            u.binary_path(Path::new("/etc/proxyd")),
            Some(PathBuf::from("/etc/proxyd/proxyd-new"))
        );
        assert_eq!(
            upgrade("/usr/local/bin/proxyd").binary_path(Path::new("/etc/proxyd")),
            Some(PathBuf::from("/usr/local/bin/proxyd"))
        );
        assert_eq!(Upgrade::default().binary_path(Path::new("/etc")), None);
    }

    #[test]
    fn paths_must_name_files() {
        for (yaml, at) in [
            (
                "pid_file: \"\"\n",
                "t.yaml:6:11: pid_file: expected a file name",
            ),
            (
                "upgrade: { binary: /usr/bin/ }\n",
                "t.yaml:6:20: upgrade.binary: expected a file name",
            ),
        ] {
            let text = format!(
                "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\n{yaml}"
            );
            let e = crate::config::load_str(&text, "t.yaml", ".".into()).unwrap_err();
            assert_eq!(e.to_string(), at);
        }
    }
}
