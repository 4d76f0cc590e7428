//! One backend: its address, keepalive pool, state, and the live figures the balancer and the
//! worker supervisor read (in-flight and served requests).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc::UnboundedSender;

use super::clock::now_ns;
use super::health::{Record, Verdict};
use super::pool::Pool;
use super::Upstream;
use crate::config::BackendAddr;

/// Where a backend stands; only `Ready` backends get new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendState {
    Ready = 0,
    /// Failing its health checks.
    Unhealthy = 1,
    /// Leaving: in-flight requests finish, no new ones.
    Draining = 2,
}

impl BackendState {
    fn from_u8(v: u8) -> BackendState {
        match v {
            0 => BackendState::Ready,
            1 => BackendState::Unhealthy,
            _ => BackendState::Draining,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Ready => "ready",
            BackendState::Unhealthy => "unhealthy",
            BackendState::Draining => "draining",
        }
    }
}

/// What the request path tells a worker's supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A request ran past `request_timeout`: the worker is hung.
    Hung,
    /// The worker served `max_requests`: recycle it.
    Recycle,
}

/// The tie between a backend and the worker process behind it.
#[derive(Debug)]
pub struct WorkerLink {
    pub id: u64,
    /// The worker's process id (spans of requests name it).
    pub pid: u32,
    pub events: UnboundedSender<(u64, WorkerEvent)>,
    /// Requests after which the worker is recycled (0: never).
    pub max_requests: u64,
    recycle_sent: AtomicBool,
}

impl WorkerLink {
    pub fn new(
        id: u64,
        pid: u32,
        events: UnboundedSender<(u64, WorkerEvent)>,
        max_requests: u64,
    ) -> Self {
        WorkerLink {
            id,
            pid,
            events,
            max_requests,
            recycle_sent: AtomicBool::new(false),
        }
    }
}

/// How a backend was made: its address, pool, limits and what supervises it.
pub struct BackendSpec {
    pub addr: BackendAddr,
    pub pool: Pool,
    pub worker: Option<WorkerLink>,
    /// Requests in flight at most.
    pub limit: usize,
    pub weight: u32,
    /// It just became healthy (a new worker): slow start applies.
    pub fresh: bool,
    /// The name it was found under (`upstream::discovery`), if any.
    pub source: Option<Arc<str>>,
}

pub struct Backend {
    pub addr: BackendAddr,
    /// `addr` as text, for headers and logs (shared with the outcome records).
    pub label: Arc<str>,
    pub pool: Pool,
    state: AtomicU8,
    pub in_flight: AtomicUsize,
    pub served: AtomicU64,
    /// Set for a worker proxyd supervises.
    pub worker: Option<WorkerLink>,
    /// The DNS name it was found under, if any.
    pub source: Option<Arc<str>>,
    pub limit: usize,
    pub weight: u32,
    /// For rendezvous hashing: a stable number for this backend.
    pub hash_id: u64,
    /// When it last became healthy (slow start counts from here).
    healthy_since: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    /// Peak-EWMA of response-head latency, and when it was last updated.
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    /// Smooth weighted round robin's running weight.
    pub(super) rr_current: AtomicI64,
    /// Its active health checks, when the group has `health:`.
    pub health: Option<Arc<Record>>,
    /// The group, told when a slot frees or the backend becomes ready.
    upstream: Weak<Upstream>,
}

/// The peak-EWMA decay time (Finagle's default).
const EWMA_DECAY_NS: f64 = 10e9;

impl Backend {
    pub fn new(spec: BackendSpec, upstream: Weak<Upstream>) -> Backend {
        let label = match (&spec.source, &spec.addr) {
            // One name's addresses share its host: the address tells them apart.
            (Some(_), BackendAddr::Tls { addr, .. }) => format!("https://{addr}"),
            (_, a) => a.to_string(),
        };
        let now = now_ns();
        Backend {
            hash_id: hash_str(&label),
            label: label.into(),
            addr: spec.addr,
            pool: spec.pool,
            state: AtomicU8::new(BackendState::Ready as u8),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            worker: spec.worker,
            source: spec.source,
            limit: spec.limit.max(1),
            weight: spec.weight.max(1),
            // 0: healthy since before anyone counted (no slow start).
            healthy_since: AtomicU64::new(if spec.fresh { now.max(1) } else { 0 }),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(now),
            rr_current: AtomicI64::new(0),
            health: None,
            upstream,
        }
    }

    /// Checked actively: out of the rotation until its first check passes.
    pub(super) fn checked(mut self, record: Record) -> Backend {
        self.state
            .store(BackendState::Unhealthy as u8, Ordering::Release);
        self.health = Some(Arc::new(record));
        self
    }

    /// Awaiting its first health check's verdict (capacity on its way, like a starting
    /// worker).
    pub fn is_checking(&self) -> bool {
        self.health
            .as_ref()
            .is_some_and(|h| h.verdict() == Verdict::Checking)
    }

    /// Consecutive failed health checks (0 without checks).
    pub fn health_failures(&self) -> u32 {
        self.health.as_ref().map_or(0, |h| h.failures())
    }

    /// The health checks' verdict: in (`ramp`: weight ramping up over `slow_start` from now)
    /// or out of the rotation. A draining backend stays draining.
    pub(super) fn set_healthy(&self, healthy: bool, ramp: bool) {
        let (from, to) = match healthy {
            true => (BackendState::Unhealthy, BackendState::Ready),
            false => (BackendState::Ready, BackendState::Unhealthy),
        };
        if healthy {
            // Before it is seen ready: 0 is "healthy since before anyone counted".
            let since = if ramp { now_ns().max(1) } else { 0 };
            self.healthy_since.store(since, Ordering::Release);
        }
        let _ =
            self.state
                .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: BackendState) {
        let before = self.state.swap(s as u8, Ordering::AcqRel);
        if s == BackendState::Ready && before != s as u8 {
            self.healthy_since.store(now_ns().max(1), Ordering::Release);
            if let Some(up) = self.upstream.upgrade() {
                up.kick();
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state() == BackendState::Ready
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Acquire) > now
    }

    pub fn has_capacity(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.limit
    }

    /// Takes a slot if one is free.
    pub(super) fn try_reserve(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// The weight in force: ramping up from a tenth over `slow_start` after becoming healthy.
    pub fn effective_weight(&self, now: u64, slow_start_ns: u64) -> f64 {
        let w = f64::from(self.weight);
        if slow_start_ns == 0 {
            return w;
        }
        let healthy_since = self.healthy_since.load(Ordering::Acquire);
        if healthy_since == 0 {
            return w;
        }
        let since = now.saturating_sub(healthy_since);
        w * (since as f64 / slow_start_ns as f64).clamp(0.1, 1.0)
    }

    /// Peak-EWMA latency in nanoseconds (0 before the first response).
    pub fn latency_ns(&self) -> u64 {
        self.ewma_ns.load(Ordering::Relaxed)
    }

    /// Records a response head's latency: a slower sample takes over at once, faster ones
    /// pull the average down gradually.
    pub fn observe_latency(&self, sample_ns: u64) {
        let now = now_ns();
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let dt = now.saturating_sub(self.ewma_at.swap(now, Ordering::Relaxed)) as f64;
        let next = if sample_ns > prev {
            sample_ns
        } else {
            let w = (-dt / EWMA_DECAY_NS).exp();
            (prev as f64 * w + sample_ns as f64 * (1.0 - w)) as u64
        };
        self.ewma_ns.store(next, Ordering::Relaxed);
    }

    /// Consecutive failures so far (for choosing the least bad when failing open).
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; returns true when it ejects the backend, for a time that doubles
    /// with each ejection in a row.
    pub fn record_failure(&self, eject: &crate::config::Eject) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if eject.failures == 0 || n < eject.failures {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        let now = now_ns();
        let until = self.ejected_until.load(Ordering::Relaxed);
        // Ejections in a row double; a backend that stayed healthy a while starts over.
        let max_ns = u64::try_from(eject.max.as_nanos()).unwrap_or(u64::MAX);
        if until != 0 && now > until.saturating_add(max_ns) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = eject.base.saturating_mul(1 << k).min(eject.max);
        let length_ns = u64::try_from(length.as_nanos()).unwrap_or(u64::MAX);
        self.ejected_until
            .store(now.saturating_add(length_ns), Ordering::Release);
        self.healthy_since
            .store(now.saturating_add(length_ns), Ordering::Release);
        true
    }

    /// Tells the supervisor, if any, about this worker.
    pub fn report(&self, event: WorkerEvent) {
        if let Some(w) = &self.worker {
            let _ = w.events.send((w.id, event));
        }
    }
}

/// One request's slot on a backend; dropping it frees the slot for the next waiter.
pub struct InFlight(Option<Arc<Backend>>);

impl InFlight {
    /// Wraps a slot already taken with `try_reserve`.
    pub(super) fn reserved(b: Arc<Backend>) -> InFlight {
        InFlight(Some(b))
    }

    pub fn backend(&self) -> &Arc<Backend> {
        // Only `unclaimed` empties it, and it consumes the guard.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("an InFlight always holds its backend"))
    }

    /// Gives back a slot no request used, without waking the queue (the caller is the one
    /// dispatching it).
    pub(super) fn unclaimed(mut self) {
        if let Some(b) = self.0.take() {
            b.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(b) = self.0.take() else { return };
        b.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(up) = b.upstream.upgrade() {
            up.released();
        }
        let served = b.served.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(w) = &b.worker {
            if w.max_requests > 0
                && served >= w.max_requests
                && !w.recycle_sent.swap(true, Ordering::AcqRel)
            {
                let _ = w.events.send((w.id, WorkerEvent::Recycle));
            }
        }
    }
}

/// A stable 64-bit hash (for rendezvous hashing of keys and backends).
pub fn hash_str(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend(fresh: bool) -> Backend {
        let spec = BackendSpec {
            addr: BackendAddr::Tcp(([127, 0, 0, 1], 1).into()),
            pool: Pool::new(1, Duration::from_secs(1)),
            worker: None,
            limit: 2,
            weight: 4,
            fresh,
            source: None,
        };
        Backend::new(spec, Weak::new())
    }

    #[test]
    fn slow_start_ramps_the_weight_of_a_fresh_backend() {
        let b = backend(true);
        let start = b.healthy_since.load(Ordering::Relaxed);
        let ramp = 10_000_000_000;
        assert_eq!(b.effective_weight(start, ramp), 0.4, "a tenth at first");
        assert_eq!(b.effective_weight(start + ramp / 2, ramp), 2.0);
        assert_eq!(b.effective_weight(start + ramp, ramp), 4.0);
        assert_eq!(b.effective_weight(start, 0), 4.0, "off without slow_start");
        assert_eq!(backend(false).effective_weight(now_ns(), ramp), 4.0);
    }

    #[test]
    fn capacity_and_ejection() {
        let b = backend(false);
        assert!(b.try_reserve() && b.try_reserve());
        assert!(!b.try_reserve(), "limit 2");
        let eject = crate::config::Eject {
            failures: 2,
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        assert!(!b.record_failure(&eject));
        assert!(b.record_failure(&eject), "second failure in a row ejects");
        let now = now_ns();
        assert!(b.is_ejected(now) && !b.is_ejected(now + 5_000_000_001));
        b.record_failure(&eject);
        assert!(b.record_failure(&eject));
        assert!(
            b.is_ejected(now + 9_000_000_000),
            "the second ejection lasts twice as long"
        );
    }
}
