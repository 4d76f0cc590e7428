//! Limits on what one client may take, and who the client is:
//!
//! - [`rate`]: request rate limits (`limits.rate` per client IP, `routes[].rate` per route),
//!   token buckets kept as one timestamp each (GCRA), per-IP buckets in a bounded, sharded map
//!   whose idle entries are swept; excess requests are answered 429 with `Retry-After`.
//! - [`conns`]: `limits.max_connections_per_ip`, the open connections of each client IP.
//! - [`trusted`]: `trusted_proxies`, CIDR ranges whose `X-Forwarded-For` (and PROXY protocol
//!   header) proxyd believes, and the client IP taken from them (nginx's `real_ip_recursive`).
//!
//! - [`access`]: a route's `allow` / `deny` address lists, and [`auth`]: its `basic_auth`
//!   (htpasswd file, verified credentials cached, failed attempts limited per client);
//!   [`htpasswd`]: the file's format and its password hashes.
//!
//! Everything here costs nothing on the request path when it is not configured: the pipeline
//! sees `None` and moves on.

pub mod access;
pub mod auth;
pub mod conns;
pub mod htpasswd;
pub mod rate;
pub mod trusted;

use std::sync::Arc;

pub use conns::{ConnSlot, OpenConnections};
pub use rate::{Rate, RateLimiter};
pub use trusted::{Cidr, TrustedProxies};

/// How client connections are admitted: the trusted proxies and the per-IP connection cap.
/// Part of the connection setup a reload replaces; `open` is carried over from the previous
/// setup so that connections already open still count.
#[derive(Debug, Default)]
pub struct ClientPolicy {
    /// `trusted_proxies`; None when the list is empty.
    pub trusted: Option<Arc<TrustedProxies>>,
    /// `limits.max_connections_per_ip`.
    pub max_per_ip: Option<u32>,
    /// Open connections by client IP.
    pub open: Arc<OpenConnections>,
}

impl ClientPolicy {
    pub fn from_config(cfg: &crate::config::Config) -> ClientPolicy {
        ClientPolicy {
            trusted: (!cfg.trusted_proxies.is_empty())
                .then(|| Arc::new(TrustedProxies::new(cfg.trusted_proxies.clone()))),
            max_per_ip: cfg.limits.max_connections_per_ip,
            open: Arc::new(OpenConnections::default()),
        }
    }

    /// True when `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.as_ref().is_some_and(|t| t.contains(ip))
    }

    /// Counts a new connection from `ip` against the per-IP cap. None: over the cap (the
    /// connection is to be closed). Connections from trusted proxies are not counted (their
    /// clients are behind them), unless `carried` (the address came from a PROXY header).
    pub fn admit_connection(&self, ip: std::net::IpAddr, carried: bool) -> Option<ConnSlot> {
        let Some(max) = self.max_per_ip else {
            return Some(ConnSlot::none());
        };
        if !carried && self.is_trusted(ip) {
            return Some(ConnSlot::none());
        }
        self.open.acquire(ip, max)
    }
}
