//! Counters of what happened to an upstream's requests, one per cause, for the metrics and
//! status pages.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Cause;

/// Picks one counter of a `Stats`.
pub type Counter = fn(&Stats) -> &AtomicU64;

/// The one cause-to-counter table: which counter an error answered to a client counts in
/// (`Stats::error`), and what `proxyd_upstream_errors_total` and the queue's rejections are
/// read from (`Stats::errors`).
pub const BY_CAUSE: [(Cause, Counter); 12] = [
    (Cause::UpstreamConnectRefused, |s| &s.connect_refused),
    (Cause::UpstreamConnectTimeout, |s| &s.connect_timeout),
    (Cause::UpstreamConnectFailed, |s| &s.connect_failed),
    (Cause::UpstreamTls, |s| &s.tls_failed),
    (Cause::UpstreamClosed, |s| &s.closed_early),
    (Cause::UpstreamProtocol, |s| &s.bad_response),
    (Cause::UpstreamResponseTimeout, |s| &s.response_timeout),
    (Cause::NoBackend, |s| &s.no_backend),
    (Cause::QueueFull, |s| &s.queue_full),
    (Cause::QueueTimeout, |s| &s.queue_timeout),
    (Cause::QueueDeadline, |s| &s.queue_deadline),
    (Cause::QueueOverload, |s| &s.queue_overload),
];

#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Requests that had to wait for a free backend slot.
    pub queued: AtomicU64,
    pub queue_full: AtomicU64,
    pub queue_timeout: AtomicU64,
    /// Refused at once: the expected wait was longer than `queue.timeout`.
    pub queue_deadline: AtomicU64,
    /// Refused or trimmed under persistent overload (the wait would pass `queue.target`).
    pub queue_overload: AtomicU64,
    /// Retried after nothing of the request reached the backend.
    pub retried_unsent: AtomicU64,
    /// Idempotent requests replayed after the backend failed before answering.
    pub retried_replayed: AtomicU64,
    /// Retries refused because the budget was spent.
    pub retry_budget_exhausted: AtomicU64,
    pub ejected: AtomicU64,
    /// Requests sent to an unhealthy or ejected backend because no healthy one was left.
    pub failed_open: AtomicU64,
    pub connect_refused: AtomicU64,
    pub connect_timeout: AtomicU64,
    pub connect_failed: AtomicU64,
    pub tls_failed: AtomicU64,
    pub closed_early: AtomicU64,
    pub bad_response: AtomicU64,
    pub response_timeout: AtomicU64,
    pub no_backend: AtomicU64,
    /// Lookups of the group's names (`discovery`) by result: addresses, none (NXDOMAIN or
    /// no records), resolver failure.
    pub dns_ok: AtomicU64,
    pub dns_empty: AtomicU64,
    pub dns_failed: AtomicU64,
    /// Backends that joined or left as the names' answers changed.
    pub backends_joined: AtomicU64,
    pub backends_left: AtomicU64,
    /// Keepalive pool counts of backends no longer in the group (replaced workers).
    pub pool_reused_retired: AtomicU64,
    pub pool_opened_retired: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the reused/opened counts of a backend's pool as it leaves the group.
    pub fn retire_pool(&self, pool: &crate::upstream::pool::Pool) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.pool_reused_retired
            .fetch_add(get(&pool.reused), Ordering::Relaxed);
        self.pool_opened_retired
            .fetch_add(get(&pool.opened), Ordering::Relaxed);
    }

    /// Counts an error answered to a client, by its cause (causes not in [`BY_CAUSE`] are
    /// not the upstream's).
    pub fn error(&self, cause: Cause) {
        if let Some((_, counter)) = BY_CAUSE.iter().find(|(c, _)| *c == cause) {
            Stats::add(counter(self));
        }
    }

    /// Errors answered to clients, by cause: every cause of [`BY_CAUSE`], zeros too.
    pub fn errors(&self) -> Vec<(Cause, u64)> {
        BY_CAUSE
            .iter()
            .map(|(cause, counter)| (*cause, counter(self).load(Ordering::Relaxed)))
            .collect()
    }

    /// Every counter by name, for reports.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", get(&self.requests)),
            ("queued", get(&self.queued)),
            ("queue_full", get(&self.queue_full)),
            ("queue_timeout", get(&self.queue_timeout)),
            ("queue_deadline", get(&self.queue_deadline)),
            ("queue_overload", get(&self.queue_overload)),
            ("retried_unsent", get(&self.retried_unsent)),
            ("retried_replayed", get(&self.retried_replayed)),
            ("retry_budget_exhausted", get(&self.retry_budget_exhausted)),
            ("ejected", get(&self.ejected)),
            ("failed_open", get(&self.failed_open)),
            ("connect_refused", get(&self.connect_refused)),
            ("connect_timeout", get(&self.connect_timeout)),
            ("connect_failed", get(&self.connect_failed)),
            ("tls_failed", get(&self.tls_failed)),
            ("closed_early", get(&self.closed_early)),
            ("bad_response", get(&self.bad_response)),
            ("response_timeout", get(&self.response_timeout)),
            ("no_backend", get(&self.no_backend)),
            ("dns_ok", get(&self.dns_ok)),
            ("dns_empty", get(&self.dns_empty)),
            ("dns_failed", get(&self.dns_failed)),
            ("backends_joined", get(&self.backends_joined)),
            ("backends_left", get(&self.backends_left)),
        ]
    }
}
