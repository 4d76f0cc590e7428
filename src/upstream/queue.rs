//! The admission queue: requests waiting for a backend slot, oldest first, admitted by time.
//!
//! A freed slot goes to the front waiter directly, so a newcomer never overtakes anyone. A
//! newcomer is admitted while it can still be served within its deadline (`queue.timeout`):
//! its expected wait is the requests ahead of it ÷ the drain rate, the completions per second
//! while requests wait. One that would wait longer is refused at once with a Retry-After
//! instead of timing out later; the count bound (`queue.max`) only guards memory.
//!
//! Under persistent overload the deadline shrinks to `queue.target` (CoDel's standing-delay
//! rule, with growth): when a newcomer would wait longer than `target` while the queue has
//! grown through the last `interval` (arrivals outpacing completions, not a passing burst),
//! the queue is trimmed from its tail to what can be served within `target`, and newcomers
//! are admitted only while they can be. It ends after an `interval` in which nobody had to be
//! refused, or when the queue empties. A standing delay alone is not overload: clients that
//! each wait for their answer before sending the next keep a queue that drains as fast as it
//! fills, and every one of them is served in time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Backend, InFlight};
use crate::error::Cause;

pub struct Waiter {
    pub id: u64,
    /// A slot, or why the queue gave up on this request (trimmed under overload).
    pub tx: oneshot::Sender<Result<InFlight, Refusal>>,
    pub key: Option<u64>,
    /// Backends this request already failed on (a retry waits for another one).
    pub tried: Vec<Arc<Backend>>,
    /// When it joined the queue (`clock::now_ns`).
    pub since: u64,
}

/// Why a request got no slot, and when its client may come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub cause: Cause,
    /// Seconds for `Retry-After` (None: the error mapping's default).
    pub retry_after: Option<u32>,
}

impl From<Cause> for Refusal {
    fn from(cause: Cause) -> Refusal {
        Refusal {
            cause,
            retry_after: None,
        }
    }
}

/// The queue behind its lock, and `len` readable without it: a released slot only takes the
/// lock when someone waits.
pub struct Waiters {
    pub line: std::sync::Mutex<Line>,
    pub len: AtomicUsize,
}

impl Waiters {
    pub fn new(target: Duration, interval: Duration) -> Waiters {
        Waiters {
            line: std::sync::Mutex::new(Line {
                list: VecDeque::new(),
                drain: Drain::default(),
                standing: Standing {
                    target: nanos(target),
                    interval: nanos(interval),
                    ..Standing::default()
                },
            }),
            len: AtomicUsize::new(0),
        }
    }

    /// Publishes the list's length; called after every change, under the lock.
    pub fn sync(&self, line: &Line) {
        self.len.store(line.list.len(), Ordering::SeqCst);
    }
}

/// The waiting requests and what admission knows of them.
pub struct Line {
    pub list: VecDeque<Waiter>,
    drain: Drain,
    standing: Standing,
}

/// What admission sees now, for status pages and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmissionView {
    /// Completions per second while requests wait (None until measured).
    pub drain_rate: Option<f64>,
    /// How long the requests waiting now need to drain: about what a newcomer would wait.
    pub expected_wait: Option<Duration>,
    /// The standing-delay rule is engaged.
    pub overloaded: bool,
}

impl Line {
    pub fn push(&mut self, w: Waiter, front: bool, now: u64) {
        self.drain.start(now);
        if front {
            self.list.push_front(w);
        } else {
            self.list.push_back(w);
        }
    }

    pub fn remove(&mut self, i: usize, now: u64) -> Option<Waiter> {
        let w = self.list.remove(i);
        if self.list.is_empty() {
            self.emptied(now);
        }
        w
    }

    /// Drops every waiter (their requests see their sender gone).
    pub fn clear(&mut self, now: u64) {
        self.list.clear();
        self.emptied(now);
    }

    fn emptied(&mut self, now: u64) {
        self.drain.stop(now);
        self.standing.calm();
    }

    /// A slot was freed while requests wait: one more completion for the drain rate.
    pub fn completed(&mut self, now: u64) {
        if !self.list.is_empty() {
            self.drain.completed(now);
        }
    }

    /// Decides whether a newcomer may wait. `timeout` is its deadline; `noise` is how much
    /// the queue's length may move without a change of load (the slots, whose requests come
    /// and go). May trim the tail of the queue when overload sets in.
    pub fn admit(&mut self, now: u64, timeout: Duration, noise: usize) -> Result<(), Refusal> {
        let Some(rate) = self.drain.rate(now) else {
            // Nothing measured yet: no grounds to refuse anyone.
            return Ok(());
        };
        let wait = |ahead: usize| ((ahead + 1) as f64 * 1e9 / rate) as u64;
        if self
            .standing
            .update(now, wait(self.list.len()), self.list.len(), noise)
        {
            self.trim(now, rate);
        }
        let (budget, cause) = if self.standing.overloaded {
            (self.standing.aim(), Cause::QueueOverload)
        } else {
            (nanos(timeout), Cause::QueueDeadline)
        };
        let expected = wait(self.list.len());
        if expected <= budget {
            return Ok(());
        }
        if self.standing.overloaded {
            self.standing.refused_at = now;
        }
        // Come back when the queue ahead has drained to what fits the deadline.
        let secs = (expected - budget).div_ceil(1_000_000_000).clamp(1, 300);
        Err(Refusal {
            cause,
            retry_after: Some(u32::try_from(secs).unwrap_or(300)),
        })
    }

    /// Answers, newest first, the waiters that can no longer be served within `target` of
    /// their arrival: they have waited least, so their clients lose least.
    fn trim(&mut self, now: u64, rate: f64) {
        let target = self.standing.aim();
        while let Some(last) = self.list.back() {
            let position = self.list.len() as f64;
            let expected = now.saturating_sub(last.since) + (position * 1e9 / rate) as u64;
            if expected <= target || !last.tried.is_empty() {
                break;
            }
            if let Some(w) = self.list.pop_back() {
                let _ = w.tx.send(Err(Refusal {
                    cause: Cause::QueueOverload,
                    retry_after: Some(1),
                }));
            }
        }
        if self.list.is_empty() {
            // Still overloaded: only the drain clock stops.
            self.drain.stop(now);
        }
    }

    pub fn view(&self, now: u64) -> AdmissionView {
        let rate = self.drain.rate(now);
        AdmissionView {
            drain_rate: rate,
            expected_wait: rate.map(|r| Duration::from_secs_f64(self.list.len() as f64 / r)),
            overloaded: self.standing.overloaded,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Completions kept for the drain rate.
const RING: usize = 128;
/// The rate is taken over this much busy time ...
const WINDOW_NS: u64 = 1_000_000_000;
/// ... or over at least this many completions, when they are sparser.
const WINDOW_SAMPLES: usize = 16;
/// Fewer completions than this measured: no estimate.
const MIN_SAMPLES: usize = 5;

/// The drain rate: completions per second while requests wait (every slot busy), on a clock
/// that runs only while the queue is not empty, so idle time never reads as a slow drain.
struct Drain {
    /// Busy time of the busy spans that ended.
    busy_before: u64,
    /// The start of the current busy span.
    busy_since: Option<u64>,
    /// Busy-clock times of recent completions, a ring.
    done: [u64; RING],
    next: usize,
    filled: usize,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain {
            busy_before: 0,
            busy_since: None,
            done: [0; RING],
            next: 0,
            filled: 0,
        }
    }
}

impl Drain {
    fn busy_now(&self, now: u64) -> u64 {
        self.busy_before + self.busy_since.map_or(0, |s| now.saturating_sub(s))
    }

    fn start(&mut self, now: u64) {
        self.busy_since.get_or_insert(now);
    }

    fn stop(&mut self, now: u64) {
        if let Some(s) = self.busy_since.take() {
            self.busy_before += now.saturating_sub(s);
        }
    }

    fn completed(&mut self, now: u64) {
        self.done[self.next] = self.busy_now(now);
        self.next = (self.next + 1) % RING;
        self.filled = (self.filled + 1).min(RING);
    }

    /// Completions per busy second over the last `WINDOW_NS` (or `WINDOW_SAMPLES`
    /// completions); the time since the last completion counts, so a stall lowers it.
    fn rate(&self, now: u64) -> Option<f64> {
        if self.filled < MIN_SAMPLES {
            return None;
        }
        let busy = self.busy_now(now);
        let (mut n, mut oldest) = (0usize, busy);
        for k in 1..=self.filled {
            let t = self.done[(self.next + RING - k) % RING];
            if n >= WINDOW_SAMPLES && busy.saturating_sub(t) > WINDOW_NS {
                break;
            }
            n += 1;
            oldest = t;
        }
        let span = busy.saturating_sub(oldest);
        (span > 0).then(|| (n - 1) as f64 * 1e9 / span as f64)
    }
}

/// The queue's length sampled this often per `interval`: growth through every sample of the
/// last interval is arrivals outpacing completions, not a burst.
const SAMPLES: usize = 4;

/// CoDel's standing-delay rule, with growth: see the module's notes.
#[derive(Default)]
struct Standing {
    /// Nanoseconds; 0 turns the rule off.
    target: u64,
    interval: u64,
    overloaded: bool,
    /// While overloaded: when a newcomer was last refused.
    refused_at: u64,
    /// The queue's length at the last `SAMPLES + 1` samples, oldest first, and when the
    /// newest was taken.
    lengths: VecDeque<usize>,
    sampled_at: u64,
}

impl Standing {
    /// Takes one newcomer's expected `wait` with `len` ahead of it; true when overload has
    /// just set in. `noise` is how far the length moves by itself.
    fn update(&mut self, now: u64, wait: u64, len: usize, noise: usize) -> bool {
        if self.target == 0 {
            return false;
        }
        let step = self.interval / SAMPLES as u64;
        if self.lengths.is_empty() || now.saturating_sub(self.sampled_at) > self.interval {
            // No sample yet, or none for a whole interval: start over.
            self.lengths.clear();
            self.lengths.push_back(len);
            self.sampled_at = now;
        } else if now.saturating_sub(self.sampled_at) >= step {
            if self.lengths.len() > SAMPLES {
                self.lengths.pop_front();
            }
            self.lengths.push_back(len);
            self.sampled_at = now;
        }
        if self.overloaded {
            if now.saturating_sub(self.refused_at) >= self.interval {
                // An interval without a refusal: the arrivals fit again.
                self.calm();
            }
            return false;
        }
        if wait <= self.target || !self.growing(noise) {
            return false;
        }
        self.overloaded = true;
        self.refused_at = now;
        true
    }

    /// The wait admitted while overloaded: 5 % under `target`, the drain rate estimate's own
    /// error, so that what is served waits `target` at most.
    fn aim(&self) -> u64 {
        self.target - self.target / 20
    }

    /// The length grew at every sample through the last interval, by more than `noise`.
    fn growing(&self, noise: usize) -> bool {
        if self.lengths.len() <= SAMPLES {
            return false;
        }
        let mut rising = self.lengths.iter().zip(self.lengths.iter().skip(1));
        let first = self.lengths.front().copied().unwrap_or(0);
        let last = self.lengths.back().copied().unwrap_or(0);
        rising.all(|(a, b)| b > a) && last > first.saturating_add(noise)
    }

    fn calm(&mut self) {
        self.overloaded = false;
        self.lengths.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn line(target_ms: u64, interval_ms: u64) -> Line {
        Waiters::new(
            Duration::from_millis(target_ms),
            Duration::from_millis(interval_ms),
        )
        .line
        .into_inner()
        .unwrap()
    }

    fn waiter(id: u64, since: u64) -> (Waiter, oneshot::Receiver<Result<InFlight, Refusal>>) {
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            id,
            tx,
            key: None,
            tried: Vec::new(),
            since,
        };
        (w, rx)
    }

    /// Keeps `n` requests queued and completes one every `every` ns from `from` to `to`,
    /// replacing it at the back (a closed loop): returns the time reached.
    fn closed_loop(l: &mut Line, n: usize, from: u64, to: u64, every: u64) -> u64 {
        let mut receivers = Vec::new();
        while l.list.len() < n {
            let (w, rx) = waiter(l.list.len() as u64, from);
            l.push(w, false, from);
            receivers.push(rx);
        }
        let mut now = from;
        while now < to {
            now += every;
            l.completed(now);
            l.remove(0, now);
            assert!(l.admit(now, Duration::from_secs(30), 4).is_ok());
            let (w, _rx) = waiter(now, now);
            l.push(w, false, now);
        }
        now
    }

    #[test]
    fn the_drain_rate_counts_busy_time_only() {
        let mut l = line(1000, 1000);
        assert!(l.drain.rate(0).is_none(), "nothing measured");
        let (w, _rx) = waiter(0, 0);
        l.push(w, false, 0);
        for k in 1..=10 {
            l.completed(k * 10 * MS);
        }
        let rate = l.drain.rate(100 * MS).unwrap();
        assert!((rate - 100.0).abs() < 1.0, "one per 10 ms: {rate}");
        // Idle for a minute: the queue empty, the rate is what it was.
        l.remove(0, 100 * MS);
        let later = 60_000 * MS;
        assert!((l.drain.rate(later).unwrap() - 100.0).abs() < 1.0);
        // Busy again and nothing completes for a second: the rate falls.
        let (w, _rx) = waiter(1, later);
        l.push(w, false, later);
        let stalled = l.drain.rate(later + 1000 * MS).unwrap();
        assert!(stalled < 10.0, "a stall lowers the rate: {stalled}");
    }

    #[test]
    fn a_newcomer_that_cannot_make_its_deadline_is_refused_with_retry_after() {
        let mut l = line(0, 1000);
        // 100 completions per second, 50 waiting.
        let now = closed_loop(&mut l, 50, 0, 1000 * MS, 10 * MS);
        assert!(
            l.admit(now, Duration::from_secs(1), 4).is_ok(),
            "0.5 s fits 1 s"
        );
        let refused = l.admit(now, Duration::from_millis(200), 4).unwrap_err();
        assert_eq!(refused.cause, Cause::QueueDeadline);
        assert_eq!(refused.retry_after, Some(1), "0.3 s over: back in a second");
        for i in 0..500 {
            let (w, _rx) = waiter(1000 + i, now);
            l.push(w, false, now);
        }
        let refused = l.admit(now, Duration::from_secs(1), 4).unwrap_err();
        assert_eq!(refused.retry_after, Some(5), "5.5 s ahead, 1 s allowed");
    }

    #[test]
    fn a_standing_queue_that_does_not_grow_is_not_overload() {
        let mut l = line(100, 200);
        // 200 clients in a closed loop at 100/s: every newcomer expects 2 s, for 5 s.
        closed_loop(&mut l, 200, 0, 5000 * MS, 10 * MS);
        assert!(!l.standing.overloaded);
        assert_eq!(l.list.len(), 200, "nobody trimmed");
    }

    #[test]
    fn a_growing_queue_above_target_engages_the_rule_and_releases_it() {
        let mut l = line(100, 100);
        let now = closed_loop(&mut l, 5, 0, 200 * MS, 10 * MS);
        // Two arrivals per completion from here: an open loop at twice the drain rate.
        let mut now_ms = now / MS;
        let mut rxs = Vec::new();
        let mut refused = 0;
        let mut served_waits = Vec::new();
        for step in 0..300u64 {
            now_ms += 5;
            let now = now_ms * MS;
            if step % 2 == 0 {
                l.completed(now);
                if let Some(w) = l.remove(0, now) {
                    served_waits.push((now - w.since) / MS);
                }
            }
            match l.admit(now, Duration::from_secs(30), 1) {
                Ok(()) => {
                    let (w, rx) = waiter(10_000 + step, now);
                    l.push(w, false, now);
                    rxs.push(rx);
                }
                Err(r) => {
                    assert_eq!(r.cause, Cause::QueueOverload);
                    assert_eq!(r.retry_after, Some(1));
                    refused += 1;
                }
            }
        }
        assert!(l.standing.overloaded, "engaged");
        assert!(refused > 100, "newcomers refused: {refused}");
        let trimmed = rxs
            .iter_mut()
            .map(|rx| rx.try_recv())
            .filter(|got| matches!(got, Ok(Err(r)) if r.cause == Cause::QueueOverload))
            .count();
        assert!(trimmed > 0, "the tail was trimmed when it engaged");
        // Once engaged, what is served waited about `target` at most.
        let late: Vec<_> = served_waits[served_waits.len() / 2..]
            .iter()
            .filter(|w| **w > 110)
            .collect();
        assert!(late.is_empty(), "served late: {late:?}");

        // The load falls: completions drain the queue, nobody is refused for an interval,
        // and the rule releases.
        // Half the arrivals of the drain rate, from now on.
        let mut held = Vec::new();
        for step in 0..100u64 {
            now_ms += 10;
            l.completed(now_ms * MS);
            l.remove(0, now_ms * MS);
            if step % 2 == 0 {
                assert!(l.admit(now_ms * MS, Duration::from_secs(30), 1).is_ok() || step < 30);
                let (w, rx) = waiter(20_000 + step, now_ms * MS);
                l.push(w, false, now_ms * MS);
                held.push(rx);
            }
        }
        assert!(!l.standing.overloaded, "released");
    }
}
