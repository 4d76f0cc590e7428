//! Host names re-resolved: where names are looked up (`resolver:`) and how often
//! (`discovery:`). Only data: the lookups are `upstream::discovery`'s.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units::Secs;

/// `resolver:`: the name servers asked, instead of /etc/resolv.conf's.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resolver {
    /// `ip` (port 53) or `ip:port`; empty: /etc/resolv.conf (and /etc/hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<Spanned<String>>,
    /// How long one query waits for an answer before it is tried again (default: 5s, or
    /// resolv.conf's `options timeout:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Secs>>,
}

/// `discovery:`: how often names are looked up again.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// A name is looked up again when its TTL runs out, but never sooner than this (default
    /// 1s); failed lookups are retried after it, doubling up to `max_refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_refresh: Option<Spanned<Secs>>,
    /// Nor later than this, whatever the TTL (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_refresh: Option<Spanned<Secs>>,
    /// The addresses a name's backends use: `any` (A and AAAA records, nginx's default),
    /// `ipv4` (A only) or `ipv6` (AAAA only).
    #[serde(default)]
    pub family: Family,
}

/// The least `min_refresh` accepted: below it a name with a TTL of 0 would be asked for
/// without pause.
pub const MIN_REFRESH_FLOOR: Duration = Duration::from_millis(100);

impl Resolver {
    /// Nothing written: the system's resolver.
    pub fn is_unset(&self) -> bool {
        self.nameservers.is_empty() && self.timeout.is_none()
    }
}

impl Discovery {
    /// Nothing written: the defaults.
    pub fn is_unset(&self) -> bool {
        self.min_refresh.is_none() && self.max_refresh.is_none() && self.family == Family::Any
    }

    pub fn min_refresh(&self) -> Duration {
        self.min_refresh
            .as_ref()
            .map_or(Duration::from_secs(1), |d| d.value.0)
    }

    pub fn max_refresh(&self) -> Duration {
        self.max_refresh
            .as_ref()
            .map_or(Duration::from_secs(30), |d| d.value.0)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Any,
    Ipv4,
    Ipv6,
}
