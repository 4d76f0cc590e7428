//! The `workers:` block of an upstream: the app processes proxyd launches and supervises
//! (gunicorn's job), with gunicorn's defaults where gunicorn has one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::health::{self, Health};
use super::units;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workers {
    /// The program and its arguments; `{port}` and `{socket}` are replaced per worker, and
    /// each worker also gets `PORT` (or `SOCKET`) in its environment.
    pub command: Spanned<Vec<String>>,
    /// A fixed number of workers (`count: 4`; default 2 x cores + 1, gunicorn's advice), or a
    /// range the supervisor scales within by load (`count: { min: 2, max: 8 }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Spanned<WorkerCount>>,
    /// Requests one worker takes at a time; more wait in the upstream's queue.
    #[serde(
        default = "one_usize",
        deserialize_with = "units::count::<_, _, 1, 10_000>"
    )]
    pub concurrency: usize,
    /// `tcp` (a loopback port per worker) or `unix` (a socket per worker).
    #[serde(default)]
    pub listen: WorkerListen,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<Spanned<String>>,
    /// Run as this user / group (proxyd must be root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Spanned<String>>,
    #[serde(default)]
    pub health: WorkerHealth,
    /// From spawn to the first good health check; past it the worker is killed.
    #[serde(default = "default_start_timeout", with = "units::nonzero_duration")]
    pub start_timeout: Duration,
    /// A request running longer gets 504 and its worker is killed and replaced
    /// (gunicorn's --timeout).
    #[serde(default = "default_request_timeout", with = "units::nonzero_duration")]
    pub request_timeout: Duration,
    /// How long a leaving worker's in-flight requests get before it is stopped
    /// (gunicorn's --graceful-timeout).
    #[serde(default = "default_graceful_timeout", with = "units::duration")]
    pub graceful_timeout: Duration,
    /// After SIGTERM, how long before SIGKILL.
    #[serde(default = "default_kill_timeout", with = "units::duration")]
    pub kill_timeout: Duration,
    /// Recycle a worker after this many requests (0: never), plus a random 0..jitter; each
    /// at most 1000000000.
    #[serde(default, deserialize_with = "units::count::<_, _, 0, 1_000_000_000>")]
    pub max_requests: u64,
    #[serde(default, deserialize_with = "units::count::<_, _, 0, 1_000_000_000>")]
    pub max_requests_jitter: u64,
    /// Recycle a worker whose resident memory grows past this.
    #[serde(
        default,
        with = "units::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_memory: Option<u64>,
    /// The worker's own keep-alive time-out; the pool closes idle connections well before it.
    #[serde(default = "default_worker_keepalive", with = "units::nonzero_duration")]
    pub keepalive: Duration,
    #[serde(default)]
    pub restart: Restart,
}

/// `count:` — a number, or a range with its scaling policy. Read by hand rather than by
/// `#[serde(untagged)]`, which would hide why a range was refused (an unknown key, a bad
/// duration) behind "did not match any variant".
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerCount {
    Fixed(usize),
    Range(Scaling),
}

impl Serialize for WorkerCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            WorkerCount::Fixed(n) => s.serialize_u64(*n as u64),
            WorkerCount::Range(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for WorkerCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = WorkerCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of workers (count: 4) or a range (count: { min: 2, max: 8 })")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<WorkerCount, E> {
                usize::try_from(n)
                    .map(WorkerCount::Fixed)
                    .map_err(|_| E::custom(format!("{n} workers is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<WorkerCount, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "{n}: a number of workers cannot be negative"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<WorkerCount, A::Error> {
                Scaling::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(WorkerCount::Range)
            }
        }
        d.deserialize_any(Either)
    }
}

/// Adaptive worker count: between `min` and `max` workers, more while requests queue, fewer
/// while the workers idle.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Workers started with, and never fewer.
    pub min: usize,
    /// Workers at most.
    pub max: usize,
    /// Requests queueing this long (the queue never empty, or its oldest request waiting this
    /// long) add a worker.
    #[serde(default = "default_scale_up_after", with = "units::duration")]
    pub scale_up_after: Duration,
    /// The workers this long under 25 % busy, with nothing queued, retire one.
    #[serde(default = "default_scale_down_after", with = "units::duration")]
    pub scale_down_after: Duration,
    /// After a decision (a new worker ready, or an old one out of the rotation), the wait
    /// before the next one.
    #[serde(default = "default_cooldown", with = "units::nonzero_duration")]
    pub cooldown: Duration,
    /// Add a worker only while the system (and proxyd's cgroup, if limited) has more memory
    /// available than this; default: twice the group's average worker RSS.
    #[serde(
        default,
        with = "units::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_free_memory: Option<u64>,
}

/// The most workers `count` may ask for (a typo guard).
pub const MAX_WORKERS: usize = 1024;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerListen {
    #[default]
    Tcp,
    Unix,
}

/// A worker's health checks: the keys of an upstream's `health:` (its defaults too), plus
/// `unhealthy_restart`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerHealth {
    /// GET this path; 2xx is healthy. Without it, a worker is healthy when its port accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    #[serde(default = "health::default_interval", with = "units::nonzero_duration")]
    pub interval: Duration,
    #[serde(default = "health::default_timeout", with = "units::nonzero_duration")]
    pub timeout: Duration,
    /// Consecutive successes to be healthy again (1 to 1000, as the two below).
    #[serde(
        default = "health::default_healthy",
        deserialize_with = "units::count::<_, _, 1, 1000>"
    )]
    pub healthy: u32,
    /// Consecutive failures to stop getting requests.
    #[serde(
        default = "health::default_unhealthy",
        deserialize_with = "units::count::<_, _, 1, 1000>"
    )]
    pub unhealthy: u32,
    /// Consecutive failures to be restarted.
    #[serde(default = "five", deserialize_with = "units::count::<_, _, 1, 1000>")]
    pub unhealthy_restart: u32,
}

impl Default for WorkerHealth {
    fn default() -> Self {
        let h = Health::default();
        WorkerHealth {
            path: None,
            interval: h.interval,
            timeout: h.timeout,
            healthy: h.healthy,
            unhealthy: h.unhealthy,
            unhealthy_restart: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// The first wait before respawning a crashed worker; doubles up to `max_backoff`.
    #[serde(default = "default_backoff", with = "units::duration")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", with = "units::duration")]
    pub max_backoff: Duration,
    /// More crashes or failed starts than this within `window` stop the respawning.
    #[serde(
        default = "default_max_restarts",
        deserialize_with = "units::count::<_, _, 0, 100_000>"
    )]
    pub max_restarts: u32,
    #[serde(default = "default_window", with = "units::nonzero_duration")]
    pub window: Duration,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            max_restarts: default_max_restarts(),
            window: default_window(),
        }
    }
}

impl Workers {
    /// Workers started with: the fixed count, or the range's `min`.
    pub fn count(&self) -> usize {
        match self.count.as_ref().map(|c| &c.value) {
            Some(WorkerCount::Fixed(n)) => *n,
            Some(WorkerCount::Range(r)) => r.min,
            None => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()) + 1,
        }
    }

    /// The scaling policy, when `count` is a range.
    pub fn scaling(&self) -> Option<&Scaling> {
        match self.count.as_ref().map(|c| &c.value) {
            Some(WorkerCount::Range(r)) => Some(r),
            _ => None,
        }
    }

    /// The fewest and most workers: both the count when it is fixed.
    pub fn bounds(&self) -> (usize, usize) {
        match self.scaling() {
            Some(r) => (r.min, r.max),
            None => (self.count(), self.count()),
        }
    }
}

fn one_usize() -> usize {
    1
}
fn five() -> u32 {
    5
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_graceful_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_kill_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_worker_keepalive() -> Duration {
    Duration::from_secs(2)
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_max_restarts() -> u32 {
    10
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_scale_up_after() -> Duration {
    Duration::from_secs(2)
}
fn default_scale_down_after() -> Duration {
    Duration::from_secs(60)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn load(count: &str) -> Result<Workers, String> {
        let yaml = format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"sh\"]\n      count: {count}\n"
        );
        load_str(&yaml, "p.yaml", ".".into())
            .map(|l| l.config.upstreams["app"].workers.clone().expect("workers"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn count_is_a_number_or_a_range() {
        let fixed = load("4").unwrap();
        assert_eq!((fixed.count(), fixed.bounds()), (4, (4, 4)));
        assert!(fixed.scaling().is_none());
        let range = load("{ min: 2, max: 8, min_free_memory: 1MiB }").unwrap();
        assert_eq!((range.count(), range.bounds()), (2, (2, 8)));
        let s = range.scaling().unwrap();
        assert_eq!(s.scale_up_after, Duration::from_secs(2));
        assert_eq!(s.scale_down_after, Duration::from_secs(60));
        assert_eq!(s.cooldown, Duration::from_secs(1));
        assert_eq!(s.min_free_memory, Some(1024 * 1024));
        for (count, want) in [
            (
                "-1",
                "p.yaml:7:14: -1: a number of workers cannot be negative",
            ),
            (
                "[1, 2]",
                "p.yaml:7:7: invalid type: sequence, expected a number of workers",
            ),
            (
                "{min: 3, max: 2}",
                "p.yaml:7:14: upstreams.app.workers.count: min (3) is above max (2)",
            ),
        ] {
            let err = load(count).unwrap_err();
            assert!(err.starts_with(want), "{count}: {err}");
        }
    }
}
