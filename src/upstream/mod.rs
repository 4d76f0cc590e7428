//! Upstream groups and their backends: the backend (`backend`), balancing policies
//! (`balancer`), the admission queue (`queue`), the retry budget (`budget`), counters
//! (`stats`), new connections (`connect`, with TLS from `tls`), the keepalive pool (`pool`),
//! and the transport (`transport`) that sends a request (`body`, spooled by `spool`) and reads
//! its response; active health checks and the probe they share with workers (`health`);
//! servers from host names and SRV records looked up again and again (`discovery`).
//!
//! A request takes a slot on a backend (`acquire`): a backend never has more requests in
//! flight than its `concurrency`; when every healthy backend is full, requests wait in a FIFO
//! queue admitted by time (`queue`: a newcomer waits while it can be served within its
//! deadline). A group's backend list can change while requests run: worker restarts swap it.

pub mod backend;
pub mod balancer;
pub mod body;
pub mod budget;
pub mod clock;
pub mod connect;
pub mod discovery;
pub mod h1;
pub mod health;
pub mod pool;
pub mod queue;
pub mod spool;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod transport;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::config::{self, BackendAddr};
use crate::error::Cause;
pub use backend::{Backend, BackendSpec, BackendState, InFlight, WorkerEvent, WorkerLink};
use balancer::{Choice, Policy};
use budget::RetryBudget;
use clock::now_ns;
use connect::Connector;
use pool::Pool;
pub use queue::{AdmissionView, Refusal};
use queue::{Line, Waiter, Waiters};
use stats::Stats;

/// A named group of backends that routes point at.
pub struct Upstream {
    /// Its name, shared with the requests' outcome records.
    pub name: Arc<str>,
    backends: ArcSwap<Vec<Arc<Backend>>>,
    pub connect_timeout: Duration,
    /// How its backends are reached: protocol, TLS.
    pub connector: Connector,
    pub response_timeout: Duration,
    /// One-request-at-a-time workers: read request bodies whole and responses ahead of slow
    /// clients, so a slow client never holds a worker (nginx's buffering). Static servers
    /// stream.
    pub buffer_bodies: bool,
    pool: config::Pool,
    concurrency: usize,
    policy: Policy,
    pub hash_key: Option<config::HashKey>,
    queue_max: usize,
    pub queue_timeout: Duration,
    waiters: Waiters,
    next_waiter: AtomicU64,
    pub retries: config::Retries,
    pub budget: RetryBudget,
    pub eject: config::Eject,
    slow_start_ns: u64,
    /// Its backends are workers, which come and go: a retry may wait for a replacement.
    pub dynamic: bool,
    /// Its workers keep crashing: answer at once instead of queueing.
    failed: AtomicBool,
    pub stats: Stats,
    /// Active health checks of the servers (`health:`).
    checks: Option<Arc<health::Checks>>,
    /// Names its servers come from besides fixed addresses (`discovery`).
    pub names: discovery::Names,
    me: Weak<Upstream>,
}

impl Upstream {
    /// A group over fixed `servers` (address, weight, and the entry as written: the Host of
    /// its checks) and the servers `names` resolve to (once `discovery::start` runs), reached
    /// through `connector`; empty for one whose workers are still starting. `queue_max` is
    /// `queue.max` in force. With `health:` every server starts out of the rotation until its
    /// first check passes; the checks run once [`Upstream::start_health_checks`] is called.
    pub fn new(
        name: &str,
        servers: Vec<(BackendAddr, u32, String)>,
        names: Vec<discovery::Target>,
        cfg: &config::Upstream,
        connector: Connector,
        queue_max: usize,
    ) -> Arc<Upstream> {
        let checks = cfg
            .health
            .clone()
            .filter(|_| cfg.workers.is_none())
            .map(|h| {
                Arc::new(health::Checks {
                    cfg: h,
                    connector: connector.clone(),
                    runtime: std::sync::OnceLock::new(),
                })
            });
        let up = Arc::new_cyclic(|me: &Weak<Upstream>| Upstream {
            name: name.into(),
            backends: ArcSwap::from_pointee(Vec::new()),
            connect_timeout: cfg.connect_timeout,
            connector,
            response_timeout: cfg.effective_response_timeout(),
            buffer_bodies: cfg.workers.is_some(),
            pool: cfg.effective_pool(),
            concurrency: cfg.concurrency(),
            policy: Policy::new(cfg.balance),
            hash_key: cfg
                .hash_key
                .as_ref()
                .and_then(|k| config::HashKey::parse(k).ok()),
            queue_max,
            queue_timeout: cfg.queue.timeout,
            waiters: Waiters::new(cfg.queue.target, cfg.queue.interval),
            next_waiter: AtomicU64::new(0),
            budget: RetryBudget::new(cfg.retries.budget, cfg.retries.min_per_second),
            retries: cfg.retries.clone(),
            eject: cfg.eject.clone(),
            slow_start_ns: u64::try_from(cfg.slow_start.as_nanos()).unwrap_or(u64::MAX),
            dynamic: cfg.workers.is_some(),
            failed: AtomicBool::new(false),
            stats: Stats::default(),
            checks,
            names: discovery::Names::new(names),
            me: me.clone(),
        });
        let initial = servers
            .into_iter()
            .map(|(addr, weight, host)| up.server_backend(addr, weight, false, None, Some(&host)))
            .collect();
        up.backends.store(Arc::new(initial));
        up
    }

    /// A backend for one of this group's servers, with the group's pool and limits: a fixed
    /// address the group starts with (`fresh` false), or one a name resolved to at run time
    /// (`source`; `fresh`: it ramps up over `slow_start` once it serves). Every server backend
    /// is made here. `host` is the server as written (`app.internal:8000`), the Host of its
    /// health checks (default: the address). With `health:` it starts out of the rotation and
    /// joins when its first check passes (its checks start when it is [`Upstream::add`]ed);
    /// without, it serves as soon as it is added.
    pub fn server_backend(
        &self,
        addr: BackendAddr,
        weight: u32,
        fresh: bool,
        source: Option<Arc<str>>,
        host: Option<&str>,
    ) -> Arc<Backend> {
        let host = match (host, &addr) {
            (Some(h), _) => h.to_string(),
            (None, BackendAddr::Unix(_)) => "localhost".to_string(),
            (None, a) => a.host_header(),
        };
        let spec = BackendSpec {
            addr,
            pool: Pool::new(self.pool.max_idle, self.pool.idle_timeout),
            worker: None,
            limit: self.concurrency,
            weight,
            fresh,
            source,
        };
        let b = Backend::new(spec, self.me.clone());
        Arc::new(match self.checks.is_some() {
            true => b.checked(health::Record::new(&host, fresh)),
            false => b,
        })
    }

    /// A backend for a new worker of this group, with the group's pool and limits.
    pub fn new_backend(&self, addr: BackendAddr, worker: WorkerLink) -> Arc<Backend> {
        let spec = BackendSpec {
            addr,
            pool: Pool::new(self.pool.max_idle, self.pool.idle_timeout),
            worker: Some(worker),
            limit: self.concurrency,
            weight: 1,
            fresh: true,
            source: None,
        };
        Arc::new(Backend::new(spec, self.me.clone()))
    }

    /// Starts the health checks of every backend, on the runtime this runs on (a group
    /// built only to be checked, by `proxyd check`, never starts them; they stop when the
    /// group is dropped); backends added later get theirs as they are added. A no-op without
    /// `health:`, or when already started.
    pub fn start_health_checks(&self) {
        let Some(checks) = &self.checks else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(upstream = %self.name, "health checks not started: no runtime");
            return;
        };
        if checks.runtime.set(runtime).is_err() {
            return;
        }
        for b in self.backends.load().iter() {
            health::spawn(checks, self.me.clone(), b);
        }
    }

    /// The `health:` settings in force (None without active checks).
    pub fn health(&self) -> Option<&config::Health> {
        self.checks.as_ref().map(|c| &c.cfg)
    }

    /// Backends still waiting for their first health check's verdict.
    pub fn checking(&self) -> usize {
        self.backends
            .load()
            .iter()
            .filter(|b| b.is_checking())
            .count()
    }

    /// The current backends, whatever their state.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// Puts a backend in the group; waiting requests may take its slots at once. One made
    /// by [`Upstream::server_backend`] in a group with `health:` has its checks started here
    /// (once the group's checks run) and joins the rotation when the first passes.
    pub fn add(&self, b: Arc<Backend>) {
        self.backends.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(b.clone());
            list
        });
        if let Some(checks) = &self.checks {
            health::spawn(checks, self.me.clone(), &b);
        }
        self.kick();
    }

    /// Takes a backend out of the group: no new requests (those in flight finish), and its
    /// health checks stop.
    pub fn remove(&self, b: &Arc<Backend>) {
        let before = self.backends.rcu(|list| {
            list.iter()
                .filter(|x| !Arc::ptr_eq(x, b))
                .cloned()
                .collect::<Vec<_>>()
        });
        if let Some(h) = &b.health {
            h.stop();
        }
        if before.iter().any(|x| Arc::ptr_eq(x, b)) {
            // Its pool's counts stay in the group's totals (metrics counters never go back).
            self.stats.retire_pool(&b.pool);
        }
    }

    pub fn ready_count(&self) -> usize {
        self.backends.load().iter().filter(|b| b.is_ready()).count()
    }

    /// Crash-looping workers: requests get 503 at once, whatever backends are ready.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the group as crash-looping (or recovered): while set, requests get 503 at once
    /// and queued ones are answered.
    pub fn set_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::Release);
        if failed {
            // Dropping the senders wakes every waiter with "no backend".
            let mut q = self.lock_waiters();
            q.clear(now_ns());
            self.waiters.sync(&q);
        }
    }

    fn choice(&self, key: Option<u64>) -> Choice {
        Choice {
            now: now_ns(),
            slow_start_ns: self.slow_start_ns,
            key,
        }
    }

    /// Takes a free slot now, if there is one: on a healthy backend, or — when none is
    /// healthy — on the least bad one (fail open, never "no live upstreams"). While a backend
    /// awaits its first health check, there is no failing open: it may be healthy within
    /// `health.timeout`, and requests wait for it.
    fn try_take(&self, key: Option<u64>, tried: &[Arc<Backend>]) -> Option<InFlight> {
        let untried = |b: &Backend| !tried.iter().any(|t| std::ptr::eq(&**t, b));
        for _ in 0..4 {
            let list = self.backends.load();
            let c = self.choice(key);
            let healthy = |b: &Backend| b.is_ready() && !b.is_ejected(c.now);
            let pick = self
                .policy
                .choose(&list, |b| healthy(b) && b.has_capacity() && untried(b), c)
                .or_else(|| {
                    if list
                        .iter()
                        .any(|b| (healthy(b) || b.is_checking()) && untried(b))
                    {
                        return None;
                    }
                    let i = least_bad(&list, |b| {
                        b.state() != BackendState::Draining && b.has_capacity() && untried(b)
                    })?;
                    Stats::add(&self.stats.failed_open);
                    Some(i)
                })?;
            let b = &list[pick];
            if b.try_reserve() {
                return Some(InFlight::reserved(b.clone()));
            }
            // Another request took the slot between the choice and the reservation.
        }
        None
    }

    /// A free slot when one can be had without queueing (nobody waits ahead).
    pub fn acquire_now(&self, key: Option<u64>, tried: &[Arc<Backend>]) -> Option<InFlight> {
        if self.failed.load(Ordering::Acquire) || self.waiters.len.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.try_take(key, tried)
    }

    /// A slot on a backend for one request: at once when one is free, else after waiting in
    /// the queue (a retry waits at its front, and is never refused for its expected wait).
    /// `key` feeds `balance: hash`; `tried` are backends this request already failed on.
    pub async fn acquire(
        &self,
        key: Option<u64>,
        tried: Vec<Arc<Backend>>,
    ) -> Result<InFlight, Refusal> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Cause::NoBackend.into());
        }
        if let Some(f) = self.acquire_now(key, &tried) {
            return Ok(f);
        }
        let retry = !tried.is_empty();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        {
            let mut q = self.lock_waiters();
            if q.list.len() >= self.queue_max {
                return Err(Cause::QueueFull.into());
            }
            let now = now_ns();
            if !retry {
                let admitted = q.admit(now, self.queue_timeout, self.slots());
                self.waiters.sync(&q);
                admitted?;
            }
            let waiter = Waiter {
                id,
                tx,
                key,
                tried,
                since: now,
            };
            q.push(waiter, retry, now);
            // Published before the last look, so a slot freed right now sees a waiter.
            self.waiters.sync(&q);
            self.dispatch(&mut q);
        }
        Stats::add(&self.stats.queued);
        let mut leave = LeaveQueue {
            upstream: self,
            id: Some(id),
        };
        let got = tokio::time::timeout(self.queue_timeout, &mut rx).await;
        if got.is_ok() {
            // Answered: whoever answered took it out of the queue already.
            leave.id = None;
        }
        drop(leave);
        match got {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Cause::NoBackend.into()),
            // A slot sent just as the wait ended is still taken.
            Err(_) => match rx.try_recv() {
                Ok(answer) => answer,
                Err(_) => Err(Cause::QueueTimeout.into()),
            },
        }
    }

    /// Slots on the backends in the rotation: how far the queue's length moves by itself.
    fn slots(&self) -> usize {
        self.backends
            .load()
            .iter()
            .filter(|b| b.is_ready())
            .map(|b| b.limit)
            .fold(0usize, usize::saturating_add)
    }

    fn lock_waiters(&self) -> MutexGuard<'_, Line> {
        self.waiters.line.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands free slots to waiters, oldest first.
    fn dispatch(&self, q: &mut Line) {
        let mut i = 0;
        let now = now_ns();
        while i < q.list.len() {
            if q.list[i].tx.is_closed() {
                q.remove(i, now);
                self.waiters.sync(q);
                continue;
            }
            let Some(flight) = self.try_take(q.list[i].key, &q.list[i].tried) else {
                if q.list[i].tried.is_empty() {
                    // No slot for a plain request: none for anyone behind it either.
                    break;
                }
                i += 1;
                continue;
            };
            let Some(w) = q.remove(i, now) else { break };
            self.waiters.sync(q);
            if let Err(Ok(unused)) = w.tx.send(Ok(flight)) {
                unused.unclaimed();
            }
        }
    }

    /// A slot was freed: if anyone waits, count the completion and hand the slot over.
    pub(crate) fn released(&self) {
        if self.waiters.len.load(Ordering::SeqCst) > 0 {
            let mut q = self.lock_waiters();
            q.completed(now_ns());
            self.dispatch(&mut q);
        }
    }

    /// Capacity may have appeared (a backend joined or became ready): serve waiters.
    pub fn kick(&self) {
        let mut q = self.lock_waiters();
        self.dispatch(&mut q);
    }

    /// The drain rate, a newcomer's expected wait and whether the overload rule is engaged.
    /// Its live figures for a metrics scrape, as plain data.
    pub fn figures(&self) -> crate::obs::figures::UpstreamFigures {
        use crate::obs::figures::{BackendFigures, UpstreamFigures};
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        let now = now_ns();
        let list = self.backends();
        let (mut reused, mut opened) = (get(&s.pool_reused_retired), get(&s.pool_opened_retired));
        let backends = list
            .iter()
            .map(|b| {
                reused += get(&b.pool.reused);
                opened += get(&b.pool.opened);
                BackendFigures {
                    label: b.label.clone(),
                    state: b.state().as_str(),
                    ejected: b.is_ejected(now),
                    in_flight: b.in_flight.load(Ordering::Relaxed),
                    latency: Duration::from_nanos(b.latency_ns()),
                    health_checks: b.health.as_ref().map(|h| {
                        let counts = h.counts();
                        std::array::from_fn(|i| (health::Outcome::ALL[i].as_str(), counts[i]))
                    }),
                }
            })
            .collect();
        let admission = self.admission();
        UpstreamFigures {
            name: self.name.clone(),
            waiting: self.queued(),
            drain_rate: admission.drain_rate,
            expected_wait: admission.expected_wait,
            overloaded: admission.overloaded,
            queued: get(&s.queued),
            errors: s.errors(),
            retried_unsent: get(&s.retried_unsent),
            retried_replayed: get(&s.retried_replayed),
            retry_budget_exhausted: get(&s.retry_budget_exhausted),
            ejected: get(&s.ejected),
            failed_open: get(&s.failed_open),
            pool_reused: reused,
            pool_opened: opened,
            backends,
            dns: (!self.names.is_empty()).then(|| crate::obs::figures::DnsFigures {
                ok: get(&s.dns_ok),
                empty: get(&s.dns_empty),
                failed: get(&s.dns_failed),
                joined: get(&s.backends_joined),
                left: get(&s.backends_left),
            }),
        }
    }

    pub fn admission(&self) -> AdmissionView {
        self.lock_waiters().view(now_ns())
    }

    /// Counts a finished attempt on `b` for passive ejection.
    pub fn record(&self, b: &Backend, failed: bool) {
        if !failed {
            b.record_success();
        } else if b.record_failure(&self.eject) {
            Stats::add(&self.stats.ejected);
            tracing::warn!(upstream = %self.name, backend = %b.label, "backend ejected after consecutive failures");
        }
    }

    /// The requests waiting now.
    pub fn queued(&self) -> usize {
        self.waiters.len.load(Ordering::SeqCst)
    }

    /// How long the longest-waiting queued request has waited (zero when none waits).
    pub fn oldest_wait(&self) -> Duration {
        if self.queued() == 0 {
            return Duration::ZERO;
        }
        let now = now_ns();
        let q = self.lock_waiters();
        let oldest = q.list.iter().map(|w| w.since).min().unwrap_or(now);
        Duration::from_nanos(now.saturating_sub(oldest))
    }

    /// Requests in flight on the backends in the rotation now.
    pub fn in_flight(&self) -> usize {
        self.backends
            .load()
            .iter()
            .map(|b| b.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests in flight per backend at most (for status pages).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The balancing policy (for status pages).
    pub fn balance(&self) -> config::Balance {
        self.policy.kind()
    }
}

/// Takes a waiter out of the queue when its request stops waiting unanswered (timed out, or
/// the client went away).
struct LeaveQueue<'a> {
    upstream: &'a Upstream,
    /// None once the waiter was answered (and so already out of the queue).
    id: Option<u64>,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut q = self.upstream.lock_waiters();
        if let Some(i) = q.list.iter().position(|w| w.id == id) {
            q.remove(i, now_ns());
            self.upstream.waiters.sync(&q);
        }
    }
}

/// The eligible backend with the fewest failed health checks in a row, then the fewest
/// consecutive failed requests, then the fewest in flight.
fn least_bad(list: &[Arc<Backend>], ok: impl Fn(&Backend) -> bool) -> Option<usize> {
    list.iter()
        .enumerate()
        .filter(|(_, b)| ok(b))
        .min_by_key(|(_, b)| {
            (
                b.health_failures(),
                b.failures(),
                b.in_flight.load(Ordering::Relaxed),
            )
        })
        .map(|(i, _)| i)
}

impl Drop for Upstream {
    /// The group is gone (a reload changed or removed it): its checks stop now, not at
    /// their next round.
    fn drop(&mut self) {
        for b in self.backends.load().iter() {
            if let Some(h) = &b.health {
                h.stop();
            }
        }
    }
}
