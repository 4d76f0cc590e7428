//! Adaptive worker count (`count: { min, max }`): one scaler task per group samples its
//! upstream every few milliseconds and makes one decision at a time, each followed by a
//! cool-down:
//!
//! - **up** when requests have been queueing for `scale_up_after` — the queue never empty at
//!   a sample for that long, or its oldest request waiting that long — and there is room: fewer
//!   slots than `max`, every slot's worker running (one still starting is capacity on its way),
//!   and memory to spare (MemAvailable, and the cgroup's headroom when proxyd runs under a
//!   memory limit, above `min_free_memory`, by default twice the group's average worker RSS).
//!   The new worker is started like any other and joins the rotation once ready; while
//!   requests keep queueing, the next one follows after the cool-down.
//! - **down** when, for `scale_down_after`, nothing queued and the workers in the rotation
//!   averaged under 25 % of their capacity (in-flight / (workers x concurrency)); never below
//!   `min`. The retired worker leaves the rotation at once, finishes its in-flight requests
//!   and is stopped: the same drain as a rolling restart, so no request fails.
//!
//! There is no core-based cap: `max` is the cap. Workers that wait on I/O (a database, an
//! API) are helped by more workers than cores; for CPU-bound workers set `max` near the
//! number of cores. A rolling restart holds the scaler off until it is done, and a group that
//! is crash-looping is not scaled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

use super::slot::Group;
use super::GroupHandle;
use crate::config::Scaling;
use crate::upstream::BackendState;

/// Below this mean utilisation (in-flight / capacity) over `scale_down_after`, a worker goes.
pub const IDLE_UTILISATION: f64 = 0.25;

/// What the scaler did and why it holds back, for /status and the metrics.
#[derive(Default)]
pub struct Report {
    pub ups: AtomicU64,
    pub downs: AtomicU64,
    /// While requests queue and no worker is added: why (at max, memory, a worker starting).
    blocked: Mutex<Option<String>>,
    last: Mutex<Option<Decision>>,
}

/// One scaling decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// "up" or "down".
    pub direction: &'static str,
    pub at: SystemTime,
    /// Workers (slots) after it.
    pub workers: usize,
    pub reason: String,
}

impl Report {
    pub fn blocked(&self) -> Option<String> {
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn last(&self) -> Option<Decision> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_blocked(&self, why: Option<String>) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn record(&self, d: Decision) {
        let counter = if d.direction == "up" {
            &self.ups
        } else {
            &self.downs
        };
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
    }
}

/// What the samples say.
#[derive(Default)]
struct Window {
    /// The first of an unbroken run of samples with a request queued.
    queued_since: Option<Instant>,
    /// Since when nothing was queued at any sample (and no decision was made).
    idle_since: Option<Instant>,
    /// Utilisation samples of the last `scale_down_after`, while nothing queued.
    utilisation: VecDeque<(Instant, f64)>,
    sum: f64,
}

impl Window {
    fn sample(&mut self, now: Instant, queued: usize, utilisation: f64, span: Duration) {
        if queued > 0 {
            self.queued_since.get_or_insert(now);
            self.idle_since = None;
            self.utilisation.clear();
            self.sum = 0.0;
            return;
        }
        self.queued_since = None;
        self.idle_since.get_or_insert(now);
        self.utilisation.push_back((now, utilisation));
        self.sum += utilisation;
        while let Some((t, u)) = self.utilisation.front().copied() {
            if now.duration_since(t) <= span {
                break;
            }
            self.utilisation.pop_front();
            self.sum -= u;
        }
    }

    fn queued_for(&self, now: Instant) -> Duration {
        self.queued_since
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }

    fn idle_for(&self, now: Instant) -> Duration {
        self.idle_since
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }

    fn mean(&self) -> f64 {
        if self.utilisation.is_empty() {
            return 1.0;
        }
        (self.sum / self.utilisation.len() as f64).max(0.0)
    }

    /// After a decision the figures describe a different pool: the idle window starts over.
    /// An unbroken queue keeps counting, so that while requests keep queueing one more worker
    /// follows each cool-down.
    fn decided(&mut self) {
        self.idle_since = None;
        self.utilisation.clear();
        self.sum = 0.0;
    }
}

/// The load now, as one sample.
struct Load {
    queued: usize,
    oldest: Duration,
    in_flight: usize,
    /// Workers in the rotation (not draining).
    serving: usize,
    utilisation: f64,
}

fn measure(group: &Group) -> Load {
    let up = &group.upstream;
    let backends = up.backends();
    let serving: Vec<_> = backends
        .iter()
        .filter(|b| b.state() != BackendState::Draining)
        .collect();
    let in_flight = serving
        .iter()
        .map(|b| b.in_flight.load(Ordering::Relaxed))
        .sum::<usize>();
    let capacity = serving.len().max(1) * group.cfg.concurrency.max(1);
    Load {
        queued: up.queued(),
        oldest: up.oldest_wait(),
        in_flight,
        serving: serving.len(),
        utilisation: in_flight as f64 / capacity as f64,
    }
}

/// Runs the scaler of `handle`'s group until the group stops.
pub async fn run(handle: Arc<GroupHandle>) {
    let Some(policy) = handle.group.cfg.scaling().cloned() else {
        return;
    };
    let name = handle.name.clone();
    let period = (policy.scale_up_after.min(policy.scale_down_after) / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut window = Window::default();
    let mut next_decision = Instant::now();
    // The hold-back last logged, so a long episode logs it once.
    let mut logged_block: Option<&'static str> = None;
    // Scale-ups in a row whose worker did not start: each doubles the wait before the next,
    // so an app that cannot start more workers does not add up to a crash loop.
    let mut failed_ups: u32 = 0;
    loop {
        tick.tick().await;
        let group = &handle.group;
        if group.is_idle() {
            if group.is_stopping() {
                return;
            }
            // Crash-looping: adding workers would not help.
            window = Window::default();
            continue;
        }
        let now = Instant::now();
        let load = measure(group);
        window.sample(now, load.queued, load.utilisation, policy.scale_down_after);
        if load.queued == 0 && logged_block.is_some() {
            logged_block = None;
            group.scaling.set_blocked(None);
        }
        if now < next_decision {
            continue;
        }
        let slots = handle.slot_indices();
        let queued_for = window.queued_for(now);

        if load.queued > 0 && queued_for.max(load.oldest) >= policy.scale_up_after {
            let reason = if queued_for >= policy.scale_up_after {
                format!(
                    "requests queued for {} without a break ({} waiting, the oldest for {})",
                    ms(queued_for),
                    load.queued,
                    ms(load.oldest)
                )
            } else {
                format!(
                    "a request has waited {} in the queue ({} waiting)",
                    ms(load.oldest),
                    load.queued
                )
            };
            let running = serving_workers(group);
            let hold: Option<(&'static str, String)> = if slots.len() >= policy.max {
                Some(("max", format!("at max ({} workers)", policy.max)))
            } else if running < slots.len() {
                Some((
                    "starting",
                    format!(
                        "{} of {} workers running; the others are starting",
                        running,
                        slots.len()
                    ),
                ))
            } else {
                memory_short(group, &policy).map(|m| ("memory", m))
            };
            if let Some((kind, why)) = hold {
                if logged_block != Some(kind) && kind != "starting" {
                    tracing::info!(upstream = %name, workers = slots.len(), queued = load.queued,
                        "requests queueing, no worker added: {why}");
                    logged_block = Some(kind);
                }
                group.scaling.set_blocked(Some(why));
                continue;
            }
            group.scaling.set_blocked(None);
            logged_block = None;
            let Ok(_changing) = handle.changing.try_lock() else {
                // A rolling restart runs; decide after it.
                continue;
            };
            // As many workers as the queue needs at once (one request per concurrency
            // slot), within max: adding one per cool-down lets a step in load queue for
            // seconds.
            let per_worker = group.cfg.concurrency.max(1);
            let step = load
                .queued
                .div_ceil(per_worker)
                .clamp(1, policy.max - slots.len());
            let to = slots.len() + step;
            tracing::info!(upstream = %name, from = slots.len(), to, queued = load.queued,
                in_flight = load.in_flight, oldest_wait_ms = load.oldest.as_millis() as u64,
                memory_available = %memory_text(available_memory()),
                "scaling up: {reason}");
            let mut starting = Vec::with_capacity(step);
            for _ in 0..step {
                let (tell, ready) = oneshot::channel();
                let Some(index) = handle.add_slot(Some(tell)) else {
                    return;
                };
                starting.push((index, ready));
            }
            // Each slot bounds its start by start_timeout (then kill_timeout); this bound is
            // only a safety net.
            let bound = group.cfg.start_timeout + group.cfg.kill_timeout + Duration::from_secs(5);
            let mut up = 0;
            let mut wait = policy.cooldown;
            for (index, ready) in starting {
                if matches!(tokio::time::timeout(bound, ready).await, Ok(Ok(true))) {
                    up += 1;
                    tracing::info!(upstream = %name, slot = index, "scaled up: the new worker is ready");
                } else {
                    handle.retire_slot(index);
                    tracing::warn!(upstream = %name, slot = index,
                        "scaling up: the new worker of slot {index} did not get ready");
                }
            }
            if up > 0 {
                failed_ups = 0;
                group.scaling.record(Decision {
                    direction: "up",
                    at: SystemTime::now(),
                    workers: slots.len() + up,
                    reason,
                });
            }
            if up < step {
                failed_ups = failed_ups.saturating_add(1);
                wait = policy
                    .cooldown
                    .max(policy.scale_up_after)
                    .saturating_mul(1 << failed_ups.min(8))
                    .min(Duration::from_secs(300));
                tracing::warn!(upstream = %name, workers = slots.len() + up,
                    "scaling up: {} of {step} new workers did not get ready; next try in {} at the earliest",
                    step - up, ms(wait));
            }
            window.decided();
            next_decision = Instant::now() + wait;
            continue;
        }

        let idle_for = window.idle_for(now);
        let mean = window.mean();
        if load.queued == 0
            && slots.len() > policy.min
            && idle_for >= policy.scale_down_after
            && mean < IDLE_UTILISATION
        {
            let Ok(_changing) = handle.changing.try_lock() else {
                continue;
            };
            let Some(index) = pick_to_retire(group, &slots) else {
                continue;
            };
            let to = slots.len() - 1;
            let reason = format!(
                "the workers were {:.1} % busy on average over the last {} (under {:.0} %), nothing queued",
                mean * 100.0,
                ms(policy.scale_down_after),
                IDLE_UTILISATION * 100.0
            );
            tracing::info!(upstream = %name, from = slots.len(), to, slot = index,
                in_flight = load.in_flight, serving = load.serving,
                "scaling down: {reason}; draining the worker of slot {index}");
            if handle.retire_slot(index) {
                group.scaling.record(Decision {
                    direction: "down",
                    at: SystemTime::now(),
                    workers: to,
                    reason,
                });
            }
            window.decided();
            next_decision = Instant::now() + policy.cooldown;
        }
    }
}

/// Workers with a process in the rotation (ready or unhealthy, not draining).
fn serving_workers(group: &Group) -> usize {
    group
        .workers()
        .iter()
        .filter(|w| w.backend.state() != BackendState::Draining)
        .count()
}

/// The slot to retire: one without a running worker if there is one (it serves nothing),
/// else the highest-numbered, so the slot numbers in use stay 0..n.
fn pick_to_retire(group: &Group, slots: &[usize]) -> Option<usize> {
    let views = group.workers();
    let running = |i: usize| {
        views
            .iter()
            .any(|w| w.slot == i && w.backend.state() != BackendState::Draining)
    };
    slots
        .iter()
        .copied()
        .find(|i| !running(*i))
        .or_else(|| slots.iter().copied().max())
}

/// Why there is not enough memory for one more worker, if there is not.
fn memory_short(group: &Group, policy: &Scaling) -> Option<String> {
    let available = available_memory()?;
    let (needed, rule) = match policy.min_free_memory {
        Some(m) => (m, "min_free_memory".to_string()),
        None => {
            let rss: Vec<u64> = group
                .workers()
                .iter()
                .filter_map(|w| super::process::rss(w.pid))
                .collect();
            if rss.is_empty() {
                return None;
            }
            let avg = rss.iter().sum::<u64>() / rss.len() as u64;
            (
                avg.saturating_mul(2),
                format!("twice the average worker RSS of {}", memory_text(Some(avg))),
            )
        }
    };
    (available <= needed).then(|| {
        format!(
            "memory: {} available, more than {} needed ({rule})",
            memory_text(Some(available)),
            memory_text(Some(needed))
        )
    })
}

/// Memory available to start processes: MemAvailable from /proc/meminfo, and under a cgroup
/// v2 memory limit (a container) the room left below it, whichever is less. None when neither
/// can be read.
pub fn available_memory() -> Option<u64> {
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| meminfo_available(&m));
    let cgroup = cgroup_headroom();
    match (system, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// MemAvailable in bytes from /proc/meminfo's text.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// The least room below a memory.max of proxyd's cgroup and its ancestors (cgroup v2).
fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let mut least: Option<u64> = None;
    loop {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
            if let (Ok(max), Ok(current)) =
                (max.trim().parse::<u64>(), current.trim().parse::<u64>())
            {
                let room = max.saturating_sub(current);
                least = Some(least.map_or(room, |l| l.min(room)));
            }
        }
        if dir == std::path::Path::new("/sys/fs/cgroup") || !dir.pop() {
            return least;
        }
    }
}

fn memory_text(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{} MiB", b / (1024 * 1024)),
        None => "unknown".into(),
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parses_mem_available() {
        let text = "MemTotal:       24684544 kB\nMemFree:         2351936 kB\nMemAvailable:   22273852 kB\n";
        assert_eq!(meminfo_available(text), Some(22273852 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn queue_must_stay_non_empty_to_count() {
        let mut w = Window::default();
        let span = Duration::from_secs(1);
        let t0 = Instant::now();
        w.sample(t0, 2, 1.0, span);
        w.sample(t0 + Duration::from_millis(400), 1, 1.0, span);
        assert_eq!(
            w.queued_for(t0 + Duration::from_millis(400)),
            Duration::from_millis(400)
        );
        // One sample with an empty queue starts the count over.
        w.sample(t0 + Duration::from_millis(500), 0, 1.0, span);
        w.sample(t0 + Duration::from_millis(600), 3, 1.0, span);
        assert_eq!(
            w.queued_for(t0 + Duration::from_millis(700)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn idle_needs_the_whole_window_below_the_threshold_on_average() {
        let mut w = Window::default();
        let span = Duration::from_secs(1);
        let t0 = Instant::now();
        for i in 0..=10 {
            w.sample(t0 + Duration::from_millis(100 * i), 0, 0.1, span);
        }
        assert_eq!(
            w.idle_for(t0 + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert!((w.mean() - 0.1).abs() < 1e-9);
        // Old samples leave the window: only the last second counts.
        for i in 11..=30 {
            w.sample(t0 + Duration::from_millis(100 * i), 0, 0.9, span);
        }
        assert!(w.mean() > 0.8, "{}", w.mean());
        // A queued request ends the idle stretch; a decision does too.
        w.sample(t0 + Duration::from_millis(3100), 1, 0.0, span);
        assert_eq!(w.idle_for(t0 + Duration::from_millis(3100)), Duration::ZERO);
        w.sample(t0 + Duration::from_millis(3200), 0, 0.0, span);
        w.decided();
        assert_eq!(w.idle_for(t0 + Duration::from_millis(3300)), Duration::ZERO);
        assert_eq!(w.mean(), 1.0);
    }
}
