//! The `upgrade:` block: how a running proxyd hands its sockets to a new binary (SIGUSR2,
//! `proxyd upgrade`, `POST /upgrade`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// The program to run as the new proxyd (relative to the config file). Default: the file
    /// proxyd was started from, as it is on disk at the time of the upgrade (so installing
    /// the new build over it, then upgrading, runs the new build).
    #[serde(default)]
    pub binary: Option<Spanned<String>>,
    /// The new proxyd must be ready (listeners taken over, workers ready) within this;
    /// otherwise it is killed and the old one keeps serving.
    #[serde(
        default = "default_timeout",
        deserialize_with = "super::types::duration"
    )]
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
        self.binary.as_ref().map(|b| dir.join(&b.value))
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
