//! Choosing a backend among those that may take a request now, by the upstream's policy.
//! Each policy scans the live list with an eligibility test: no per-request allocation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Backend;
use crate::config::Balance;

/// A policy and the little state it keeps.
pub struct Policy {
    kind: Balance,
    /// Where the next scan starts, so ties rotate.
    next: AtomicUsize,
    /// Smooth weighted round robin updates every candidate's running weight together.
    wrr: Mutex<()>,
}

/// What a choice depends on besides the backends.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    pub now: u64,
    pub slow_start_ns: u64,
    /// The request's hash, for `hash`; None falls back to least outstanding.
    pub key: Option<u64>,
}

impl Policy {
    pub fn new(kind: Balance) -> Policy {
        Policy {
            kind,
            next: AtomicUsize::new(0),
            wrr: Mutex::new(()),
        }
    }

    pub fn kind(&self) -> Balance {
        self.kind
    }

    /// The index in `list` of the backend to use, among those `ok` accepts.
    pub fn choose(
        &self,
        list: &[Arc<Backend>],
        ok: impl Fn(&Backend) -> bool,
        c: Choice,
    ) -> Option<usize> {
        let n = list.len();
        if n == 0 {
            return None;
        }
        match (self.kind, c.key) {
            (Balance::RoundRobin, _) => self.round_robin(list, ok, c),
            (Balance::P2cEwma, _) => self.p2c(list, ok, c),
            (Balance::Hash, Some(key)) => rendezvous(list, ok, key),
            (Balance::LeastOutstanding | Balance::Hash, _) => self.least_outstanding(list, ok, c),
        }
    }

    fn start(&self, n: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % n
    }

    /// Fewest in flight per unit of weight; ties go round robin.
    fn least_outstanding(
        &self,
        list: &[Arc<Backend>],
        ok: impl Fn(&Backend) -> bool,
        c: Choice,
    ) -> Option<usize> {
        let n = list.len();
        let start = self.start(n);
        let mut best: Option<(usize, f64)> = None;
        for i in (0..n).map(|k| (start + k) % n) {
            let b = &list[i];
            if !ok(b) {
                continue;
            }
            let load = (b.in_flight.load(Ordering::Relaxed) + 1) as f64
                / b.effective_weight(c.now, c.slow_start_ns);
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    /// nginx's smooth weighted round robin over the eligible backends.
    fn round_robin(
        &self,
        list: &[Arc<Backend>],
        ok: impl Fn(&Backend) -> bool,
        c: Choice,
    ) -> Option<usize> {
        let _turn = self.wrr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, b) in list.iter().enumerate() {
            if !ok(b) {
                continue;
            }
            // Weights in thousandths, so slow start's fractions count.
            let w = (b.effective_weight(c.now, c.slow_start_ns) * 1000.0) as i64;
            let cur = b.rr_current.fetch_add(w, Ordering::Relaxed) + w;
            total += w;
            if best.is_none_or(|(_, bc)| cur > bc) {
                best = Some((i, cur));
            }
        }
        let (i, _) = best?;
        list[i].rr_current.fetch_sub(total, Ordering::Relaxed);
        Some(i)
    }

    /// Two random eligible backends; the one with the lower latency x load wins.
    fn p2c(
        &self,
        list: &[Arc<Backend>],
        ok: impl Fn(&Backend) -> bool,
        c: Choice,
    ) -> Option<usize> {
        let eligible = list.iter().filter(|b| ok(b)).count();
        let nth = |k: usize| {
            list.iter()
                .enumerate()
                .filter(|(_, b)| ok(b))
                .nth(k)
                .map(|(i, _)| i)
        };
        match eligible {
            0 => None,
            1 => nth(0),
            m => {
                let a = fastrand::usize(0..m);
                let b = (a + 1 + fastrand::usize(0..m - 1)) % m;
                let (a, b) = (nth(a)?, nth(b)?);
                let cost = |i: usize| {
                    let be = &list[i];
                    // An unmeasured backend costs like a fast one, so it gets tried.
                    let lat = be.latency_ns().max(1_000) as f64;
                    lat * (be.in_flight.load(Ordering::Relaxed) + 1) as f64
                        / be.effective_weight(c.now, c.slow_start_ns)
                };
                Some(if cost(a) <= cost(b) { a } else { b })
            }
        }
    }
}

/// Weighted rendezvous (highest random weight) hashing: each key prefers one backend, and a
/// backend leaving moves only its own keys.
fn rendezvous(list: &[Arc<Backend>], ok: impl Fn(&Backend) -> bool, key: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, b) in list.iter().enumerate() {
        if !ok(b) {
            continue;
        }
        let h = mix(key ^ b.hash_id);
        // A uniform (0, 1) from the hash; score = weight / -ln(u).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(b.weight) / -u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// splitmix64's finalizer: spreads a combined key over all bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendAddr;
    use crate::upstream::backend::BackendSpec;
    use crate::upstream::pool::Pool;
    use std::time::Duration;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let spec = BackendSpec {
                    addr: BackendAddr::Tcp(([127, 0, 0, 1], 1000 + i as u16).into()),
                    pool: Pool::new(1, Duration::from_secs(1)),
                    worker: None,
                    limit: usize::MAX,
                    weight: *w,
                    fresh: false,
                    source: None,
                };
                Arc::new(Backend::new(spec, std::sync::Weak::new()))
            })
            .collect()
    }

    const C: Choice = Choice {
        now: 0,
        slow_start_ns: 0,
        key: None,
    };

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let list = backends(&[5, 1, 1]);
        let p = Policy::new(Balance::RoundRobin);
        let picks: Vec<usize> = (0..7)
            .map(|_| p.choose(&list, |_| true, C).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
    }

    #[test]
    fn least_outstanding_prefers_the_idle_and_skips_the_ineligible() {
        let list = backends(&[1, 1, 1]);
        list[0].in_flight.store(3, Ordering::Relaxed);
        list[2].in_flight.store(1, Ordering::Relaxed);
        let p = Policy::new(Balance::LeastOutstanding);
        assert_eq!(p.choose(&list, |_| true, C), Some(1));
        assert_eq!(p.choose(&list, |b| !std::ptr::eq(b, &*list[1]), C), Some(2));
        assert_eq!(p.choose(&list, |_| false, C), None);
    }

    #[test]
    fn p2c_avoids_the_slow_backend() {
        let list = backends(&[1, 1]);
        list[0].observe_latency(50_000_000);
        list[1].observe_latency(1_000_000);
        let p = Policy::new(Balance::P2cEwma);
        assert!((0..20).all(|_| p.choose(&list, |_| true, C) == Some(1)));
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_leavers_keys() {
        let list = backends(&[1, 1, 1, 1]);
        let p = Policy::new(Balance::Hash);
        let pick = |key: u64, ok: &dyn Fn(&Backend) -> bool| {
            p.choose(
                &list,
                ok,
                Choice {
                    key: Some(key),
                    ..C
                },
            )
            .unwrap()
        };
        let before: Vec<usize> = (0..200).map(|k| pick(k, &|_| true)).collect();
        assert_eq!(
            before,
            (0..200).map(|k| pick(k, &|_| true)).collect::<Vec<_>>()
        );
        assert!(
            (0..4).all(|i| before.contains(&i)),
            "keys spread over all backends"
        );
        let gone = &*list[2];
        for (k, was) in before.iter().enumerate() {
            let now = pick(k as u64, &|b| !std::ptr::eq(b, gone));
            if *was != 2 {
                assert_eq!(now, *was, "key {k} moved though its backend stayed");
            }
        }
    }
}
