//! One backend: its address, keepalive pool, state, and the live figures the balancer and the
//! worker supervisor read (in-flight and served requests).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::pool::Pool;
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
    pub events: UnboundedSender<(u64, WorkerEvent)>,
    /// Requests after which the worker is recycled (0: never).
    pub max_requests: u64,
    recycle_sent: AtomicBool,
}

impl WorkerLink {
    pub fn new(id: u64, events: UnboundedSender<(u64, WorkerEvent)>, max_requests: u64) -> Self {
        WorkerLink {
            id,
            events,
            max_requests,
            recycle_sent: AtomicBool::new(false),
        }
    }
}

pub struct Backend {
    pub addr: BackendAddr,
    /// `addr` as text, for headers and logs.
    pub label: String,
    pub pool: Pool,
    state: AtomicU8,
    pub in_flight: AtomicUsize,
    pub served: AtomicU64,
    /// Set for a worker proxyd supervises.
    pub worker: Option<WorkerLink>,
}

impl Backend {
    pub fn new(addr: BackendAddr, pool: Pool, worker: Option<WorkerLink>) -> Backend {
        Backend {
            label: addr.to_string(),
            addr,
            pool,
            state: AtomicU8::new(BackendState::Ready as u8),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            worker,
        }
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, s: BackendState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.state() == BackendState::Ready
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Tells the supervisor, if any, about this worker.
    pub fn report(&self, event: WorkerEvent) {
        if let Some(w) = &self.worker {
            let _ = w.events.send((w.id, event));
        }
    }
}

/// One request on a backend; dropping it ends the request.
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let b = &self.0;
        b.in_flight.fetch_sub(1, Ordering::AcqRel);
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
