//! The `/status` report: listeners, upstreams with their counters, backends and workers, as
//! JSON (serde_json). The status page and `proxyd status` both read it.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{BackendAddr, Balance};
use crate::server::listeners::ListenerInfo;
use crate::state::Snapshot;
use crate::upstream::clock::now_ns;
use crate::upstream::health::{Outcome, Record};
use crate::upstream::{Backend, Upstream};
use crate::workers::slot::{Group, WorkerView};
use crate::workers::{process, Supervisors};

#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub pid: u32,
    /// Unix seconds when the admin (and so the server) started.
    pub started: u64,
    pub uptime_seconds: f64,
    /// Shutdown has begun: no new connections.
    pub draining: bool,
    /// The maintenance switch: on, and by what (the admin API, the file).
    pub maintenance: MaintenanceStatus,
    pub listeners: Vec<ListenerInfo>,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Serialize)]
pub struct MaintenanceStatus {
    pub on: bool,
    pub by_api: bool,
    pub by_file: bool,
    /// The routes it covers, by name.
    pub routes: Vec<String>,
}

#[derive(Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub balance: &'static str,
    /// Requests in flight per backend at most; null when unlimited.
    pub concurrency: Option<usize>,
    pub queue_depth: usize,
    /// Admission: completions per second while requests wait (null until measured).
    pub queue_drain_rate: Option<f64>,
    /// How long the requests waiting now need to drain (null until measured).
    pub queue_expected_wait_ms: Option<f64>,
    /// The standing-delay rule is engaged: requests are admitted only if they can be served
    /// within `queue.target`.
    pub queue_overloaded: bool,
    pub in_flight: usize,
    pub requests: u64,
    pub ready_backends: usize,
    /// Every counter of the upstream's stats, by name.
    pub counters: Map<String, Value>,
    /// Why its workers are not restarted any more (crash loop), with their last output.
    pub failure: Option<String>,
    pub backends: Vec<BackendStatus>,
    /// The host names and SRV name its servers come from, with their last lookup.
    pub names: Vec<NameStatus>,
    /// Null for an upstream of fixed servers.
    pub workers: Option<Vec<WorkerStatus>>,
    /// The worker count: its bounds, now and wanted; null for fixed servers.
    pub worker_count: Option<WorkerCountStatus>,
    /// Worker restarts by reason (crash, failed_start, hung, unhealthy, max_requests,
    /// max_memory, rolling).
    pub restarts: Map<String, Value>,
    /// The active health checks of its servers (`health:`); null without.
    pub health: Option<HealthSettings>,
}

/// An upstream's `health:` settings.
#[derive(Serialize)]
pub struct HealthSettings {
    /// Null: a connection is the check.
    pub path: Option<String>,
    pub interval_ms: f64,
    pub timeout_ms: f64,
    pub healthy: u32,
    pub unhealthy: u32,
}

/// A backend's active health checks.
#[derive(Serialize)]
pub struct HealthStatus {
    /// "checking" (no verdict yet: not in the rotation), "healthy" or "unhealthy".
    pub state: &'static str,
    /// Passes and failures in a row now.
    pub passes: u32,
    pub failures: u32,
    /// Checks so far by result: pass, fail, timeout.
    pub checks: Map<String, Value>,
    pub last: Option<LastCheckStatus>,
}

#[derive(Serialize)]
pub struct LastCheckStatus {
    /// "pass", "fail" or "timeout".
    pub result: &'static str,
    /// Why it failed.
    pub detail: Option<String>,
    /// Unix seconds.
    pub at: f64,
    pub duration_ms: f64,
}

/// A workers upstream's count. With a fixed `count`, min = max = desired.
#[derive(Serialize)]
pub struct WorkerCountStatus {
    /// `count` is a range the supervisor scales within.
    pub adaptive: bool,
    pub min: usize,
    pub max: usize,
    /// Workers with a process in the rotation (ready or unhealthy; not draining).
    pub current: usize,
    /// Workers wanted now (slots); more than current while some start.
    pub desired: usize,
    /// Workers added and retired by the scaler.
    pub scaled_up: u64,
    pub scaled_down: u64,
    /// Why requests queue without a worker being added (e.g. "at max (8 workers)").
    pub held_back: Option<String>,
    /// The last scaling decision.
    pub last_decision: Option<DecisionStatus>,
}

#[derive(Serialize)]
pub struct DecisionStatus {
    pub direction: &'static str,
    /// Unix seconds.
    pub at: f64,
    pub workers: usize,
    pub reason: String,
}

#[derive(Serialize)]
pub struct BackendStatus {
    pub address: String,
    pub state: &'static str,
    pub ejected: bool,
    pub in_flight: usize,
    pub limit: Option<usize>,
    pub served: u64,
    /// Peak-EWMA of response-head latency, in milliseconds.
    pub ewma_ms: f64,
    pub weight: u32,
    /// The worker behind it, if proxyd supervises one.
    pub worker_id: Option<u64>,
    /// Its active health checks; null without `health:`.
    pub health: Option<HealthStatus>,
    /// The DNS name it was found under, if any.
    pub source: Option<String>,
}

/// A name an upstream's servers come from (`upstream::discovery`).
#[derive(Serialize)]
pub struct NameStatus {
    /// `dns app.internal` or `srv _http._tcp.app`.
    pub name: String,
    /// pending (not looked up yet), ok, empty (NXDOMAIN or no records: no backends from
    /// it), failing (the resolver failed: its last addresses are kept).
    pub state: &'static str,
    pub error: Option<String>,
    pub backends: usize,
}

#[derive(Serialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub id: u64,
    pub pid: u32,
    pub address: String,
    pub port: Option<u16>,
    pub state: &'static str,
    pub uptime_seconds: f64,
    pub requests: u64,
    pub in_flight: usize,
    pub rss_bytes: Option<u64>,
}

/// Reads every figure now; nothing here blocks or allocates on the request path.
pub fn collect(
    snapshot: &Snapshot,
    supervisors: &Supervisors,
    listeners: &[ListenerInfo],
    started: SystemTime,
    draining: bool,
) -> Status {
    let now = SystemTime::now();
    let groups = supervisors.groups();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started: started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        uptime_seconds: secs(now.duration_since(started).unwrap_or_default()),
        draining,
        maintenance: {
            let s = &snapshot.maintenance.switch;
            MaintenanceStatus {
                on: s.on(),
                by_api: s.by_api(),
                by_file: s.by_file(),
                routes: snapshot
                    .routes
                    .iter()
                    .filter(|r| r.pages.maintenance)
                    .map(|r| r.name.to_string())
                    .collect(),
            }
        },
        listeners: listeners.to_vec(),
        upstreams: snapshot
            .upstreams
            .iter()
            .map(|u| {
                let group = groups
                    .iter()
                    .find(|(n, _)| **n == *u.name)
                    .map(|(_, g)| &**g);
                upstream(u, group, now)
            })
            .collect(),
    }
}

fn upstream(u: &Upstream, group: Option<&Group>, now: SystemTime) -> UpstreamStatus {
    let backends = u.backends();
    let t = now_ns();
    let counters = u
        .stats
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::from(v)))
        .collect::<Map<_, _>>();
    let requests = u.stats.requests.load(Ordering::Relaxed);
    let restarts = group
        .map(|g| {
            let by = g.restarts_by.lock().unwrap_or_else(|p| p.into_inner());
            by.iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect()
        })
        .unwrap_or_default();
    let admission = u.admission();
    UpstreamStatus {
        name: u.name.to_string(),
        balance: balance_name(u.balance()),
        concurrency: limit(u.concurrency()),
        queue_depth: u.queued(),
        queue_drain_rate: admission.drain_rate,
        queue_expected_wait_ms: admission.expected_wait.map(|w| w.as_secs_f64() * 1000.0),
        queue_overloaded: admission.overloaded,
        in_flight: backends
            .iter()
            .map(|b| b.in_flight.load(Ordering::Relaxed))
            .sum(),
        requests,
        ready_backends: u.ready_count(),
        counters,
        failure: group.and_then(Group::failure),
        backends: backends.iter().map(|b| backend(b, t)).collect(),
        names: u
            .names
            .sources
            .iter()
            .map(|s| {
                let st = s.status();
                NameStatus {
                    name: s.target.describe(),
                    state: st.state,
                    error: st.error,
                    backends: st.backends,
                }
            })
            .collect(),
        workers: group.map(|g| {
            let mut ws: Vec<WorkerStatus> = g.workers().iter().map(|w| worker(w, t, now)).collect();
            ws.sort_by_key(|w| w.slot);
            ws
        }),
        worker_count: group.map(worker_count),
        restarts,
        health: u.health().map(|h| HealthSettings {
            path: h.path.as_ref().map(|p| p.value.clone()),
            interval_ms: h.interval.as_secs_f64() * 1000.0,
            timeout_ms: h.timeout.as_secs_f64() * 1000.0,
            healthy: h.healthy,
            unhealthy: h.unhealthy,
        }),
    }
}

fn worker_count(g: &Group) -> WorkerCountStatus {
    let (min, max) = g.cfg.bounds();
    let current = g
        .workers()
        .iter()
        .filter(|w| w.backend.state() != crate::upstream::BackendState::Draining)
        .count();
    WorkerCountStatus {
        adaptive: g.cfg.scaling().is_some(),
        min,
        max,
        current,
        desired: g.desired.load(Ordering::Relaxed),
        scaled_up: g.scaling.ups.load(Ordering::Relaxed),
        scaled_down: g.scaling.downs.load(Ordering::Relaxed),
        held_back: g.scaling.blocked(),
        last_decision: g.scaling.last().map(|d| DecisionStatus {
            direction: d.direction,
            at: d
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |t| (t.as_secs_f64() * 1000.0).round() / 1000.0),
            workers: d.workers,
            reason: d.reason,
        }),
    }
}

fn backend(b: &Backend, now: u64) -> BackendStatus {
    BackendStatus {
        address: b.label.to_string(),
        state: b.state().as_str(),
        ejected: b.is_ejected(now),
        in_flight: b.in_flight.load(Ordering::Relaxed),
        limit: limit(b.limit),
        served: b.served.load(Ordering::Relaxed),
        ewma_ms: b.latency_ns() as f64 / 1e6,
        weight: b.weight,
        worker_id: b.worker.as_ref().map(|w| w.id),
        source: b.source.as_deref().map(str::to_string),
        health: b.health.as_deref().map(health),
    }
}

fn health(r: &Record) -> HealthStatus {
    let counts = r.counts();
    HealthStatus {
        state: r.verdict().as_str(),
        passes: r.passes(),
        failures: r.failures(),
        checks: Outcome::ALL
            .iter()
            .zip(counts)
            .map(|(o, n)| (o.as_str().to_string(), Value::from(n)))
            .collect(),
        last: r.last().map(|l| LastCheckStatus {
            result: l.outcome.as_str(),
            detail: l.detail,
            at: l
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |t| (t.as_secs_f64() * 1000.0).round() / 1000.0),
            duration_ms: (l.took.as_secs_f64() * 1e6).round() / 1000.0,
        }),
    }
}

fn worker(w: &WorkerView, t: u64, now: SystemTime) -> WorkerStatus {
    let b = &w.backend;
    WorkerStatus {
        slot: w.slot,
        id: w.id,
        pid: w.pid,
        address: b.label.to_string(),
        port: match &b.addr {
            BackendAddr::Tcp(a) | BackendAddr::Tls { addr: a, .. } => Some(a.port()),
            BackendAddr::Unix(_) => None,
        },
        state: if b.is_ejected(t) {
            "ejected"
        } else {
            b.state().as_str()
        },
        uptime_seconds: secs(now.duration_since(w.started).unwrap_or_default()),
        requests: b.served.load(Ordering::Relaxed),
        in_flight: b.in_flight.load(Ordering::Relaxed),
        rss_bytes: process::rss(w.pid),
    }
}

/// usize::MAX means "no limit": reported as null.
fn limit(n: usize) -> Option<usize> {
    (n != usize::MAX).then_some(n)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub fn balance_name(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "round_robin",
        Balance::LeastOutstanding => "least_outstanding",
        Balance::P2cEwma => "p2c_ewma",
        Balance::Hash => "hash",
    }
}
