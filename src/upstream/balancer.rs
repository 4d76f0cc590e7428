//! Choosing a backend for a request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Plain round robin over the backends of one upstream.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The index of the next backend out of `n` (n > 0).
    pub fn pick(&self, n: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_all() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}
