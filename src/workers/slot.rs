//! One worker slot of an upstream: start a worker, wait until it is ready, put it in the
//! rotation, watch it (exit, health, memory, hung requests, max_requests), and replace it —
//! with the replacement ready before the old worker leaves the rotation whenever the old one
//! can still serve.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::process::{describe, Ports, Process, Spec};
use crate::config::BackendAddr;
use crate::config::Workers;
use crate::upstream::connect::Connector;
use crate::upstream::health::{self, Failure};
use crate::upstream::{Backend, BackendState, Upstream, WorkerEvent, WorkerLink};

/// What one upstream's slots share.
pub struct Group {
    pub upstream: Arc<Upstream>,
    pub spec: Spec,
    pub cfg: Workers,
    pub ports: Ports,
    next_id: AtomicU64,
    /// Crashes and failed starts, for the crash-loop rule.
    restarts: Mutex<VecDeque<Instant>>,
    /// Set when the workers keep crashing: why, with their last output.
    failed: Mutex<Option<String>>,
    stopping: AtomicBool,
    /// Old workers being drained and stopped; shutdown waits for them.
    leaving: Mutex<Vec<JoinHandle<()>>>,
    /// What each slot runs now, for status pages and metrics.
    views: Mutex<Vec<Option<WorkerView>>>,
    /// Restarts by reason: crash, failed start, hung, unhealthy, max_requests, max_memory,
    /// rolling restart.
    pub restarts_by: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Slots that should run a worker now: the fixed count, or the scaler's choice.
    pub desired: AtomicUsize,
    /// Slot numbers whose task still runs (a retired slot's number is reused only once its
    /// worker is gone).
    live: Mutex<BTreeSet<usize>>,
    /// The scaler's decisions and why it holds back (adaptive `count` only).
    pub scaling: super::scale::Report,
}

/// A worker as the outside sees it.
#[derive(Clone)]
pub struct WorkerView {
    pub slot: usize,
    pub id: u64,
    pub pid: u32,
    pub backend: Arc<Backend>,
    pub started: std::time::SystemTime,
}

impl Group {
    pub fn new(upstream: Arc<Upstream>, spec: Spec, cfg: Workers) -> Group {
        Group {
            upstream,
            spec,
            cfg,
            ports: Ports::default(),
            next_id: AtomicU64::new(1),
            restarts: Mutex::new(VecDeque::new()),
            failed: Mutex::new(None),
            stopping: AtomicBool::new(false),
            leaving: Mutex::new(Vec::new()),
            views: Mutex::new(Vec::new()),
            restarts_by: Mutex::new(std::collections::BTreeMap::new()),
            desired: AtomicUsize::new(0),
            live: Mutex::new(BTreeSet::new()),
            scaling: super::scale::Report::default(),
        }
    }

    /// Starts a slot under the lowest free number: it starts a worker and keeps one running
    /// until told otherwise. `first` hears whether its first worker got ready.
    pub fn spawn_slot(self: &Arc<Group>, first: Option<oneshot::Sender<bool>>) -> SlotHandle {
        let index = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let index = (0..).find(|i| !live.contains(i)).unwrap_or(live.len());
            live.insert(index);
            index
        };
        let (tx, rx) = mpsc::channel(4);
        let group = self.clone();
        tokio::spawn(async move {
            run(&group, index, rx, first).await;
            // Gone: not shown any more, and its number is free again.
            group.publish(index, None);
            group
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&index);
        });
        SlotHandle { index, tx }
    }

    /// True while the group takes no new workers: stopping, or given up after crashes.
    pub fn is_idle(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.is_failed()
    }

    /// The workers running now, one per slot that has one.
    pub fn workers(&self) -> Vec<WorkerView> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.iter().flatten().cloned().collect()
    }

    fn publish(&self, slot: usize, view: Option<WorkerView>) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if views.len() <= slot {
            views.resize(slot + 1, None);
        }
        views[slot] = view;
    }

    fn count_restart(&self, reason: &'static str) {
        *self
            .restarts_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_insert(0) += 1;
    }

    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Runs the stopping of an old worker without holding up its slot.
    pub(super) fn in_background(
        &self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut leaving = self.leaving.lock().unwrap_or_else(|p| p.into_inner());
        leaving.retain(|h| !h.is_finished());
        leaving.push(tokio::spawn(stop));
    }

    /// Waits until every old worker stopped in the background is gone.
    pub async fn wait_leaving(&self) {
        let handles = std::mem::take(&mut *self.leaving.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }

    /// Records a crash or failed start; returns the wait before the next start, or None once
    /// the group counts as crash-looping.
    fn note_restart(&self, last_output: &str) -> Option<Duration> {
        let r = &self.cfg.restart;
        let now = Instant::now();
        let recent = {
            let mut q = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
            q.push_back(now);
            while q.front().is_some_and(|t| now.duration_since(*t) > r.window) {
                q.pop_front();
            }
            q.len()
        };
        if recent > r.max_restarts as usize {
            let msg = format!(
                "workers keep failing: {recent} crashes or failed starts within {:?}; not restarting. Last output:\n{last_output}",
                r.window
            );
            tracing::error!(upstream = %self.spec.upstream, "{msg}");
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
            self.upstream.set_failed(true);
            return None;
        }
        // Exponential in the recent failures, with jitter so slots do not restart in step.
        let exp = r
            .backoff
            .saturating_mul(1u32 << (recent.saturating_sub(1)).min(16) as u32);
        let base = exp.min(r.max_backoff);
        Some(base + base.mul_f64(fastrand::f64() * 0.25))
    }

    fn clear_failure(&self) {
        if self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
        {
            self.restarts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.upstream.set_failed(false);
            tracing::info!(upstream = %self.spec.upstream, "restart requested: starting workers again");
        }
    }

    fn is_failed(&self) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// A running slot, as its group's owner holds it.
pub struct SlotHandle {
    pub index: usize,
    pub tx: mpsc::Sender<Command>,
}

/// Orders for a slot.
pub enum Command {
    /// Start a new worker, then retire the current one (rolling restart).
    Replace { done: oneshot::Sender<()> },
    /// Retire the worker and end the slot.
    Shutdown { done: oneshot::Sender<()> },
}

/// A worker in the rotation.
struct Running {
    started: std::time::SystemTime,
    process: Process,
    backend: Arc<Backend>,
    fails: u32,
    oks: u32,
}

async fn run(
    group: &Arc<Group>,
    slot: usize,
    mut commands: mpsc::Receiver<Command>,
    mut first: Option<oneshot::Sender<bool>>,
) {
    let group = group.clone();
    let (events_tx, mut events) = mpsc::unbounded_channel::<(u64, WorkerEvent)>();
    let mut current: Option<Running> = None;
    let mut tick = tokio::time::interval(group.cfg.health.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        group.publish(
            slot,
            current.as_ref().map(|r| WorkerView {
                slot,
                id: r.process.id,
                pid: r.process.pid,
                backend: r.backend.clone(),
                started: r.started,
            }),
        );
        let Some(w) = current.as_mut() else {
            // No worker: start one, unless the group gave up or is stopping.
            if group.is_failed() || group.stopping.load(Ordering::Acquire) {
                // No worker is started: whoever waits for the first one hears so now.
                if let Some(tell) = first.take() {
                    let _ = tell.send(false);
                }
                match commands.recv().await {
                    Some(Command::Replace { done }) => {
                        // An operator's restart gives a crash-looping group a fresh start
                        // (after a fix was deployed, say).
                        group.clear_failure();
                        let _ = done.send(());
                    }
                    Some(Command::Shutdown { done }) => {
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                }
                continue;
            }
            let started = start(&group, &events_tx).await;
            if let Some(tell) = first.take() {
                let _ = tell.send(started.is_ok());
            }
            match started {
                Ok(r) => current = Some(r),
                Err(output) => {
                    group.count_restart("failed_start");
                    if let Some(wait) = group.note_restart(&output) {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            cmd = commands.recv() => if end_on(cmd) { return },
                        }
                    }
                }
            }
            continue;
        };
        // Biased: a worker the request path found hung is replaced before another health
        // round (a hung worker fails those too, and would be replaced later as unhealthy).
        let next = tokio::select! {
            biased;
            status = w.process.exited() => Next::Exited(status),
            Some((id, event)) = events.recv() => Next::Event(id, event),
            cmd = commands.recv() => Next::Command(cmd),
            _ = tick.tick() => Next::Check,
        };
        match next {
            Next::Exited(status) => {
                let output = w.process.last_output();
                tracing::warn!(upstream = %group.spec.upstream, worker = w.process.id, pid = w.process.pid,
                    "worker exited ({}); replacing it", describe(status));
                group.upstream.remove(&w.backend);
                w.process.reap(&group.ports);
                current = None;
                // Not shown as running through the back-off before the next start.
                group.publish(slot, None);
                group.count_restart("crash");
                if let Some(wait) = group.note_restart(&output) {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        cmd = commands.recv() => if end_on(cmd) { return },
                    }
                }
            }
            Next::Check => {
                if let Some(reason) = check(&group, w).await {
                    current = replace(&group, current.take(), &events_tx, reason).await;
                }
            }
            Next::Event(id, event) => {
                if id == w.process.id {
                    let reason = match event {
                        WorkerEvent::Hung => HUNG,
                        WorkerEvent::Recycle => "max_requests",
                    };
                    current = replace(&group, current.take(), &events_tx, reason).await;
                }
            }
            Next::Command(Some(Command::Replace { done })) => {
                current = replace(&group, current.take(), &events_tx, "rolling restart").await;
                let _ = done.send(());
            }
            Next::Command(Some(Command::Shutdown { done })) => {
                if let Some(old) = current.take() {
                    retire(&group, old).await;
                }
                let _ = done.send(());
                return;
            }
            Next::Command(None) => return,
        }
    }
}

/// What woke a slot that has a worker.
enum Next {
    Exited(std::process::ExitStatus),
    Check,
    Event(u64, WorkerEvent),
    Command(Option<Command>),
}

const HUNG: &str = "hung (request_timeout)";
const UNHEALTHY: &str = "unhealthy";

/// True when the slot must end (shutdown); a Replace during a back-off just ends the wait.
fn end_on(cmd: Option<Command>) -> bool {
    match cmd {
        Some(Command::Replace { done }) => {
            let _ = done.send(());
            false
        }
        Some(Command::Shutdown { done }) => {
            let _ = done.send(());
            true
        }
        None => true,
    }
}

/// Spawns a worker and waits until it is ready; it then joins the rotation. On failure the
/// process is stopped and its last output returned.
async fn start(
    group: &Arc<Group>,
    events: &mpsc::UnboundedSender<(u64, WorkerEvent)>,
) -> Result<Running, String> {
    let id = group.next_id.fetch_add(1, Ordering::Relaxed);
    let process = Process::spawn(&group.spec, id, &group.ports).map_err(|e| {
        tracing::error!(upstream = %group.spec.upstream, worker = id, "worker did not start: {e}");
        e.to_string()
    })?;
    let cfg = &group.cfg;
    let path = cfg.health.path.as_ref().map(|p| p.value.as_str());
    let deadline = Instant::now() + cfg.start_timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if process.has_exited() {
            let status = process.exited().await;
            process.reap(&group.ports);
            let output = process.last_output();
            tracing::error!(upstream = %group.spec.upstream, worker = id,
                "worker exited during start ({}); last output:\n{output}", describe(status));
            return Err(output);
        }
        if probe(&process.addr, path, cfg.health.timeout).await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::error!(upstream = %group.spec.upstream, worker = id,
                "worker not ready within start_timeout ({:?}); killing it", cfg.start_timeout);
            process.stop(cfg.kill_timeout, &group.ports).await;
            return Err(process.last_output());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    let jitter = match cfg.max_requests_jitter {
        0 => 0,
        j => fastrand::u64(0..=j),
    };
    let max_requests = if cfg.max_requests == 0 {
        0
    } else {
        cfg.max_requests + jitter
    };
    let link = WorkerLink::new(id, process.pid, events.clone(), max_requests);
    let backend = group.upstream.new_backend(process.addr.clone(), link);
    group.upstream.add(backend.clone());
    tracing::info!(upstream = %group.spec.upstream, worker = id, pid = process.pid, "worker ready");
    Ok(Running {
        started: std::time::SystemTime::now(),
        process,
        backend,
        fails: 0,
        oks: 0,
    })
}

/// One readiness or health probe of a worker: plain HTTP/1.1 on loopback (or its socket).
async fn probe(addr: &BackendAddr, path: Option<&str>, timeout: Duration) -> Result<(), Failure> {
    health::probe(&Connector::plain(timeout), addr, "localhost", path, timeout).await
}

/// A health round: probe and memory. Returns why the worker must be replaced, if it must.
async fn check(group: &Group, w: &mut Running) -> Option<&'static str> {
    let h = &group.cfg.health;
    let path = h.path.as_ref().map(|p| p.value.as_str());
    match probe(&w.process.addr, path, h.timeout).await {
        Ok(()) => {
            w.fails = 0;
            w.oks += 1;
            if w.backend.state() == BackendState::Unhealthy && w.oks >= h.healthy {
                tracing::info!(upstream = %group.spec.upstream, worker = w.process.id, "worker healthy again");
                w.backend.set_state(BackendState::Ready);
            }
        }
        Err(e) => {
            w.oks = 0;
            w.fails += 1;
            if w.fails >= h.unhealthy && w.backend.state() == BackendState::Ready {
                tracing::warn!(upstream = %group.spec.upstream, worker = w.process.id, "worker unhealthy: {e}");
                w.backend.set_state(BackendState::Unhealthy);
            }
            if w.fails >= h.unhealthy_restart {
                return Some(UNHEALTHY);
            }
        }
    }
    match (group.cfg.max_memory, w.process.rss()) {
        (Some(max), Some(rss)) if rss > max => Some("max_memory"),
        _ => None,
    }
}

/// Starts a replacement, then retires `old`. A worker that cannot serve (hung or unhealthy)
/// leaves the rotation first; one that can (recycling, rolling restart) stays until its
/// replacement is ready, and stays on if the replacement fails to start.
async fn replace(
    group: &Arc<Group>,
    old: Option<Running>,
    events: &mpsc::UnboundedSender<(u64, WorkerEvent)>,
    reason: &'static str,
) -> Option<Running> {
    let broken = reason == HUNG || reason == UNHEALTHY;
    group.count_restart(match reason {
        HUNG => "hung",
        UNHEALTHY => "unhealthy",
        "max_requests" => "max_requests",
        "max_memory" => "max_memory",
        _ => "rolling",
    });
    if let Some(o) = &old {
        tracing::info!(upstream = %group.spec.upstream, worker = o.process.id, "replacing worker: {reason}");
    }
    let old = match old {
        Some(o) if broken => {
            o.backend.set_state(BackendState::Draining);
            group.upstream.remove(&o.backend);
            let g = group.clone();
            group.in_background(async move { o.process.stop(g.cfg.kill_timeout, &g.ports).await });
            None
        }
        other => other,
    };
    match start(group, events).await {
        Ok(new) => {
            if let Some(o) = old {
                let g = group.clone();
                group.in_background(async move { retire(&g, o).await });
            }
            Some(new)
        }
        Err(output) => {
            group.note_restart(&output);
            old
        }
    }
}

/// Takes a worker out of the rotation, lets its in-flight requests finish (up to
/// graceful_timeout), then stops it.
async fn retire(group: &Group, w: Running) {
    w.backend.set_state(BackendState::Draining);
    group.upstream.remove(&w.backend);
    let deadline = Instant::now() + group.cfg.graceful_timeout;
    while w.backend.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = w.process.exited() => break,
        }
    }
    w.process.stop(group.cfg.kill_timeout, &group.ports).await;
    tracing::info!(upstream = %group.spec.upstream, worker = w.process.id, "worker stopped");
}
