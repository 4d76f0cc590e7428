//! `health:` — active health checks of an upstream's `servers:` (workers have the same keys,
//! plus `unhealthy_restart`, in `workers.health`; the defaults are shared).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units;

/// Every `interval` each server gets a GET of `path` within `timeout`; `unhealthy` failures
/// in a row take it out of the rotation, `healthy` passes in a row put it back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// GET this path; 2xx is healthy. Without it, a server is healthy when it accepts a
    /// connection (and, for https:// servers, completes the TLS handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    #[serde(default = "default_interval", with = "units::nonzero_duration")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "units::nonzero_duration")]
    pub timeout: Duration,
    /// Consecutive passes to be healthy again (1 to 1000, as the one below). A new server
    /// needs one: its first pass puts it in the rotation.
    #[serde(
        default = "default_healthy",
        deserialize_with = "units::count::<_, _, 1, 1000>"
    )]
    pub healthy: u32,
    /// Consecutive failures to stop getting requests.
    #[serde(
        default = "default_unhealthy",
        deserialize_with = "units::count::<_, _, 1, 1000>"
    )]
    pub unhealthy: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: None,
            interval: default_interval(),
            timeout: default_timeout(),
            healthy: default_healthy(),
            unhealthy: default_unhealthy(),
        }
    }
}

pub(super) fn default_interval() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_healthy() -> u32 {
    1
}
pub(super) fn default_unhealthy() -> u32 {
    2
}
