//! The retry budget: retries may be at most a share of recent requests (plus a small floor per
//! second), so that retries cannot multiply the load on an upstream that is already failing.
//! Finagle's RetryBudget, with atomics instead of a lock.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::clock::now_ns;

/// One retry costs this many tokens; a request deposits `ratio` of it.
const RETRY_COST: i64 = 1000;

#[derive(Debug)]
pub struct RetryBudget {
    deposit: i64,
    cap: i64,
    balance: AtomicI64,
    min_per_second: u64,
    /// The current second, and retries taken from the floor in it.
    second: AtomicU64,
    floor_used: AtomicU64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        let deposit = (ratio * RETRY_COST as f64).round() as i64;
        RetryBudget {
            deposit,
            // Idle time does not bank an unbounded burst of retries.
            cap: (deposit * 100).max(RETRY_COST * 10),
            balance: AtomicI64::new(0),
            min_per_second: u64::from(min_per_second),
            second: AtomicU64::new(0),
            floor_used: AtomicU64::new(0),
        }
    }

    /// Counts a request.
    pub fn deposit(&self) {
        if self.deposit > 0 {
            let b = self.balance.fetch_add(self.deposit, Ordering::Relaxed);
            if b + self.deposit > self.cap {
                self.balance.fetch_sub(self.deposit, Ordering::Relaxed);
            }
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        if self.balance.fetch_sub(RETRY_COST, Ordering::Relaxed) >= RETRY_COST {
            return true;
        }
        self.balance.fetch_add(RETRY_COST, Ordering::Relaxed);
        let second = now_ns() / 1_000_000_000;
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.floor_used.store(0, Ordering::Relaxed);
        }
        self.floor_used.fetch_add(1, Ordering::Relaxed) < self.min_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::new(0.2, 0);
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw(), "10 requests at 0.2 buy 2 retries");
        let floor = RetryBudget::new(0.0, 3);
        let allowed = (0..10).filter(|_| floor.try_withdraw()).count();
        assert!(
            (3..=6).contains(&allowed),
            "about 3 per second, got {allowed}"
        );
    }
}
