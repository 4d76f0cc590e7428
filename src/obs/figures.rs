//! What a scrape reads from the live state, as plain data: the owners fill it in
//! (`Upstream::figures`, `Supervisors::figures`), so the metrics know no upstream or worker
//! internals.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::Cause;

/// One upstream now.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFigures {
    pub name: Arc<str>,
    /// Requests waiting in the admission queue now.
    pub waiting: usize,
    /// Completions per second while requests wait (None until measured).
    pub drain_rate: Option<f64>,
    /// How long the requests waiting now need to drain (None until measured).
    pub expected_wait: Option<Duration>,
    /// The standing-delay rule is engaged.
    pub overloaded: bool,
    /// Requests that had to wait for a free backend slot.
    pub queued: u64,
    /// Errors answered to clients, by cause (every cause the upstream counts, zeros too).
    pub errors: Vec<(Cause, u64)>,
    pub retried_unsent: u64,
    pub retried_replayed: u64,
    pub retry_budget_exhausted: u64,
    pub ejected: u64,
    pub failed_open: u64,
    /// Keep-alive pool connections reused and opened, backends gone included.
    pub pool_reused: u64,
    pub pool_opened: u64,
    pub backends: Vec<BackendFigures>,
    /// Its names' lookups and the backends they brought and took; None without names.
    pub dns: Option<DnsFigures>,
}

/// The lookups of an upstream's host names and SRV name (`upstream::discovery`).
#[derive(Debug, Clone, Default)]
pub struct DnsFigures {
    /// Lookups that found addresses.
    pub ok: u64,
    /// Lookups that found none (NXDOMAIN, no records).
    pub empty: u64,
    /// Lookups the resolver failed (the last addresses were kept).
    pub failed: u64,
    pub joined: u64,
    pub left: u64,
}

/// One backend now.
#[derive(Debug, Clone)]
pub struct BackendFigures {
    pub label: Arc<str>,
    /// "ready", "unhealthy" or "draining".
    pub state: &'static str,
    pub ejected: bool,
    pub in_flight: usize,
    /// The peak-EWMA response-head latency.
    pub latency: Duration,
    /// Active health checks by result (pass, fail, timeout); None without `health:`.
    pub health_checks: Option<[(&'static str, u64); 3]>,
}

/// One upstream's workers now.
#[derive(Debug, Clone, Default)]
pub struct WorkerGroupFigures {
    pub upstream: String,
    /// Slots that should run a worker now.
    pub desired: usize,
    pub scaled_up: u64,
    pub scaled_down: u64,
    /// Restarts by reason.
    pub restarts: Vec<(&'static str, u64)>,
    pub workers: Vec<WorkerFigures>,
}

/// The worker in one slot now.
#[derive(Debug, Clone)]
pub struct WorkerFigures {
    pub slot: usize,
    /// Its backend's state: "ready", "unhealthy" or "draining".
    pub state: &'static str,
    /// Resident memory, when it could be read.
    pub rss: Option<u64>,
    /// Requests it served.
    pub served: u64,
    pub started: SystemTime,
}

/// Backend states as the metrics label them, in the order they are shown.
pub const BACKEND_STATES: [&str; 3] = ["ready", "unhealthy", "draining"];
