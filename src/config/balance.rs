//! An upstream's balancing, admission queue, retry, ejection and slow-start settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units;

/// How a backend is chosen among those with a free slot.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    /// Fewest requests in flight (weighted).
    #[default]
    LeastOutstanding,
    /// Power of two random choices on peak-EWMA latency x in-flight.
    P2cEwma,
    /// Consistent (rendezvous) hashing on `hash_key`.
    Hash,
}

/// Requests waiting for a free backend slot, admitted by time: a request waits while it can
/// still be served within `timeout`; one whose expected wait is longer is refused at once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Waiting requests at most, a memory guard (default: `limits.max_connections`; 0: none
    /// wait); past it: 503 queue-full. Time, not this count, sheds a load the backends can
    /// serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Spanned<usize>>,
    /// The longest a request may wait for a slot (gunicorn's `timeout`); past it: 503
    /// queue-timeout. A newcomer whose expected wait is longer: 503 queue-deadline at once.
    #[serde(default = "default_queue_timeout", with = "units::nonzero_duration")]
    pub timeout: Duration,
    /// The standing delay allowed under persistent overload (0s: no such rule): while the
    /// queue's delay stays above it for `interval` and the queue keeps growing, newcomers
    /// are admitted only while they can be served within it.
    #[serde(default = "default_queue_target", with = "units::duration")]
    pub target: Duration,
    /// How long the delay must stay above `target`, the queue growing, before that rule engages.
    #[serde(default = "default_queue_interval", with = "units::duration")]
    pub interval: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            max: None,
            timeout: default_queue_timeout(),
            target: default_queue_target(),
            interval: default_queue_interval(),
        }
    }
}

impl Queue {
    /// The count bound in force: `max`, or one waiting request per client connection.
    pub fn max_or(&self, max_connections: usize) -> usize {
        self.max.as_ref().map_or(max_connections, |m| m.value)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Tries per request, the first included (1 to 10).
    #[serde(
        default = "default_attempts",
        deserialize_with = "units::count::<_, _, 1, 10>"
    )]
    pub attempts: usize,
    /// Retries allowed as a share of recent requests (0.2: one retry per five requests) ...
    #[serde(default = "default_budget")]
    pub budget: f64,
    /// ... but always this many per second.
    #[serde(
        default = "default_min_per_second",
        deserialize_with = "units::count::<_, _, 0, 1_000_000>"
    )]
    pub min_per_second: u32,
    /// Bodies up to this size are kept for replaying an idempotent request.
    #[serde(default = "default_retry_max_body", with = "units::buffer")]
    pub max_body: u64,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: default_attempts(),
            budget: default_budget(),
            min_per_second: default_min_per_second(),
            max_body: default_retry_max_body(),
        }
    }
}

/// Passive ejection: a backend failing requests in a row is left alone for a while.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Eject {
    /// Consecutive connect failures or 5xx answers that eject (0: never).
    #[serde(
        default = "default_eject_failures",
        deserialize_with = "units::count::<_, _, 0, 10_000>"
    )]
    pub failures: u32,
    /// The first ejection's length; each further one doubles it, up to `max`.
    #[serde(default = "default_eject_base", with = "units::duration")]
    pub base: Duration,
    #[serde(default = "default_eject_max", with = "units::duration")]
    pub max: Duration,
}

impl Default for Eject {
    fn default() -> Self {
        Eject {
            failures: default_eject_failures(),
            base: default_eject_base(),
            max: default_eject_max(),
        }
    }
}

/// What `balance: hash` hashes: `client_ip`, `header:NAME` or `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    pub fn parse(s: &Spanned<String>) -> Result<HashKey, String> {
        let v = s.value.trim();
        if v == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        if let Some(name) = v.strip_prefix("header:") {
            return http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{name:?} is not a header name"));
        }
        if let Some(name) = v.strip_prefix("cookie:") {
            if !name.trim().is_empty() {
                return Ok(HashKey::Cookie(name.trim().to_string()));
            }
        }
        Err(format!(
            "hash_key {v:?}: expected client_ip, header:NAME or cookie:NAME"
        ))
    }
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_target() -> Duration {
    Duration::from_secs(1)
}
fn default_queue_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_attempts() -> usize {
    3
}
fn default_budget() -> f64 {
    0.2
}
fn default_min_per_second() -> u32 {
    10
}
fn default_retry_max_body() -> u64 {
    1024 * 1024
}
fn default_eject_failures() -> u32 {
    5
}
fn default_eject_base() -> Duration {
    Duration::from_secs(5)
}
fn default_eject_max() -> Duration {
    Duration::from_secs(60)
}
