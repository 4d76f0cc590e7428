//! proxyd: a reverse proxy and load balancer.
//!
//! The module map, following one request:
//!
//! - [`error`]: the ground floor: `Side`, `Cause` and `ProxyError`, usable by every module.
//! - [`http1`]: proxyd's own HTTP/1.1, sans-I/O and strict: parsing and checking heads,
//!   writing them, and framing bodies.
//! - [`config`]: the YAML file's types and defaults, `${VAR}` expansion, validation with
//!   file:line:column errors (`proxyd check`).
//! - [`server`]: listeners, the accept loop with its connection cap, the client connection's
//!   time-outs (408 for a slow head, idle keep-alive, stalled writes), the PROXY protocol
//!   header (`server::proxy_protocol`), HTTP/1.1 and h2c via hyper-util's auto
//!   server, and the graceful drain on shutdown.
//! - [`proxy`]: the request pipeline (check → route → read body → pick → forward → respond),
//!   the header rules, the runtime [`proxy::Snapshot`], and the ONE error-to-response mapping
//!   ([`proxy::error::error_response`]).
//! - [`limits`]: what one client may take and who the client is: request rate limits (429),
//!   the per-IP connection cap, and `trusted_proxies` (client IP from `X-Forwarded-For`).
//! - [`upstream`]: upstream groups, backends, balancing, and each backend's keepalive pool.
//! - [`workers`]: the supervisor of app workers: spawn, readiness, restart with back-off,
//!   recycling, rolling restarts, and an adaptive count that follows the queue.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`).
//! - [`logging`]: tracing to stderr.
//! - [`access_log`]: access logs (combined, JSON, Elastic Beanstalk healthd), written off
//!   the request path.
//! - [`metrics`]: the Prometheus registry and every metric, served at the admin's `/metrics`.
//! - [`notify`]: systemd's `sd_notify` readiness protocol (READY, RELOADING, STOPPING).
//! - [`upgrade`]: the zero-downtime binary upgrade (SIGUSR2): the listening sockets passed to
//!   a new proxyd, which says when it is ready; the old one then drains and exits.
//! - [`control`]: `proxyd upgrade` and `proxyd reload`, which reach the running proxyd by its
//!   admin API or by a signal to the pid in its `pid_file`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod access_log;
pub mod admin;
pub mod config;
pub mod control;
pub mod error;
pub mod http1;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod server;
pub mod upgrade;
pub mod upstream;
pub mod workers;

/// What the fuzz targets (`fuzz/`) need that is not otherwise public. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::access_log::format::{combined, healthd, json};
}
