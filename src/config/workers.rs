//! The `workers:` block of an upstream: the app processes proxyd launches and supervises
//! (gunicorn's job), with gunicorn's defaults where gunicorn has one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::types::{duration, opt_size};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workers {
    /// The program and its arguments; `{port}` and `{socket}` are replaced per worker, and
    /// each worker also gets `PORT` (or `SOCKET`) in its environment.
    pub command: Spanned<Vec<String>>,
    /// Default: 2 x cores + 1 (gunicorn's advice).
    #[serde(default)]
    pub count: Option<usize>,
    /// Requests one worker takes at a time; more wait in the upstream's queue.
    #[serde(default = "one_usize")]
    pub concurrency: usize,
    /// `tcp` (a loopback port per worker) or `unix` (a socket per worker).
    #[serde(default)]
    pub listen: WorkerListen,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (relative to the config file).
    #[serde(default)]
    pub cwd: Option<Spanned<String>>,
    /// Run as this user / group (proxyd must be root).
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    #[serde(default)]
    pub group: Option<Spanned<String>>,
    #[serde(default)]
    pub health: Health,
    /// From spawn to the first good health check; past it the worker is killed.
    #[serde(default = "default_start_timeout", deserialize_with = "duration")]
    pub start_timeout: Duration,
    /// A request running longer gets 504 and its worker is killed and replaced
    /// (gunicorn's --timeout).
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// How long a leaving worker's in-flight requests get before it is stopped
    /// (gunicorn's --graceful-timeout).
    #[serde(default = "default_graceful_timeout", deserialize_with = "duration")]
    pub graceful_timeout: Duration,
    /// After SIGTERM, how long before SIGKILL.
    #[serde(default = "default_kill_timeout", deserialize_with = "duration")]
    pub kill_timeout: Duration,
    /// Recycle a worker after this many requests (0: never), plus a random 0..jitter.
    #[serde(default)]
    pub max_requests: u64,
    #[serde(default)]
    pub max_requests_jitter: u64,
    /// Recycle a worker whose resident memory grows past this.
    #[serde(default, deserialize_with = "opt_size")]
    pub max_memory: Option<u64>,
    /// The worker's own keep-alive time-out; the pool closes idle connections well before it.
    #[serde(default = "default_worker_keepalive", deserialize_with = "duration")]
    pub keepalive: Duration,
    #[serde(default)]
    pub restart: Restart,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerListen {
    #[default]
    Tcp,
    Unix,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// GET this path; 2xx is healthy. Without it, a worker is healthy when its port accepts.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes to be healthy again.
    #[serde(default = "one")]
    pub healthy: u32,
    /// Consecutive failures to stop getting requests.
    #[serde(default = "two")]
    pub unhealthy: u32,
    /// Consecutive failures to be restarted.
    #[serde(default = "five")]
    pub unhealthy_restart: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: None,
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy: 1,
            unhealthy: 2,
            unhealthy_restart: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// The first wait before respawning a crashed worker; doubles up to `max_backoff`.
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// More crashes or failed starts than this within `window` stop the respawning.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_window", deserialize_with = "duration")]
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
    pub fn count(&self) -> usize {
        self.count
            .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get()) + 1)
    }
}

fn one_usize() -> usize {
    1
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
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
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
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
