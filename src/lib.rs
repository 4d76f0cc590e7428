//! proxyd: a reverse proxy and load balancer.
//!
//! The module map, following one request. The modules stand on floors (DESIGN.md's house;
//! `tests/house.rs` fails on an import against them): ground (`error`, `config`, `http1`, `notify`,
//! `logging`), parts (`limits`, `upstream`, `workers`, `obs`, `state`), pipeline (`proxy`, `files`),
//! edge (`server`, `admin`, `upgrade`, `control`), top (`app`, `main`); each imports its own
//! floor and those below.
//!
//! - [`error`]: the ground floor: `Side`, `Cause` and `ProxyError`, usable by every module.
//! - [`http1`]: proxyd's own HTTP/1.1, sans-I/O and strict: parsing and checking heads,
//!   writing them, and framing bodies.
//! - [`config`]: pure data: the YAML file's types and defaults, `${VAR}` expansion, validation
//!   with file:line:column errors; it imports no runtime module. `proxyd check` is that plus
//!   [`server::check`], which builds what serving builds (certificates, CA bundles, the
//!   runtime state) and locates its errors in the file the same way.
//! - [`server`]: listeners, the accept loop with its connection cap, the client connection's
//!   time-outs (408 for a slow head, idle keep-alive, stalled writes), the PROXY protocol
//!   header (`server::proxy_protocol`), one task per client connection serving HTTP/1.1 with
//!   [`http1`] (`server::h1`; h2 and h2c by hyper, `server::h2`), and the graceful drain.
//! - [`state`]: the runtime [`state::Snapshot`] built from a config (routes and their router,
//!   upstreams, rate limiters, settings), behind an `ArcSwap`; a reload swaps in a new one.
//! - [`proxy`]: the request pipeline, its phases plain functions over one
//!   [`proxy::RequestCtx`] (check → route → limit → body → admit → forward with retries →
//!   respond), the header rules, and the ONE error-to-response mapping
//!   ([`proxy::error::error_response`]); a listener's `health_path` is answered before it
//!   ([`proxy::health`]).
//! - [`files`]: static routes' files, beside the proxy (which calls it after the limit
//!   phase): paths resolved beneath the root in the kernel (`openat2`), conditionals,
//!   ranges, precompressed variants.
//! - [`limits`]: what one client may take and who the client is: request rate limits (429),
//!   the per-IP connection cap, and `trusted_proxies` (client IP from `X-Forwarded-For`).
//! - [`upstream`]: upstream groups, backends, balancing, each backend's keepalive pool, and
//!   servers from DNS names looked up again as their TTL says (`upstream::discovery`).
//! - [`workers`]: the supervisor of app workers: spawn, readiness, restart with back-off,
//!   recycling, rolling restarts, and an adaptive count that follows the queue.
//! - [`admin`]: the admin listener (`/healthz`, `/readyz`, `/status`, `/metrics`, reload,
//!   restart, upgrade), given what it answers from as one [`admin::Admin`].
//! - [`app`]: the wiring: [`app::App::start`] binds, opens the logs, builds the state and
//!   starts the workers, then makes the listener set, reload, upgrade and admin from them in
//!   that order; [`app::App::run`] runs [`server::Server::run`] until shutdown.
//! - [`logging`]: tracing to stderr.
//! - [`obs`]: the leaves fed a finished request's [`obs::Outcome`] record (plain data) and the
//!   live figures their owners read out: [`obs::metrics`] (the Prometheus registry and every
//!   metric, served at the admin's `/metrics`) and [`obs::access_log`] (combined, JSON,
//!   Elastic Beanstalk healthd, written off the request path).
//! - [`notify`]: systemd's `sd_notify` readiness protocol (READY, RELOADING, STOPPING).
//! - [`upgrade`]: the zero-downtime binary upgrade (SIGUSR2): the listening sockets passed to
//!   a new proxyd, which says when it is ready; the old one then drains and exits
//!   ([`server::upgrade::Upgrader`] runs one with the running listeners).
//! - [`control`]: `proxyd upgrade` and `proxyd reload`, which reach the running proxyd by its
//!   admin API or by a signal to the pid in its `pid_file`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod error;
pub mod files;
pub mod http1;
pub mod limits;
pub mod logging;
pub mod notify;
pub mod obs;
pub mod proxy;
pub mod server;
pub mod state;
pub mod upgrade;
pub mod upstream;
pub mod workers;

/// What the fuzz targets (`fuzz/`) need that is not otherwise public. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::obs::access_log::format::{combined, healthd, json};
}
