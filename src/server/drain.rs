//! The graceful drain: a shutdown signal every open client connection watches, and a count of
//! the connections still open. On the signal an HTTP/1.1 connection finishes the request in
//! flight and closes (an idle one closes at once); an h2 connection sends GOAWAY and finishes
//! its streams. (hyper-util's `GracefulShutdown` only drains hyper's own connection types.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// The signal: a flag, and a wake-up for the connections waiting on it. (A `Notify` wait is
/// smaller than a `watch` one, and every idle connection carries one.)
#[derive(Debug, Default)]
struct Signal {
    draining: AtomicBool,
    notify: Notify,
}

/// Held by the server: starts the drain and waits for it.
#[derive(Debug)]
pub struct Drain {
    signal: Arc<Signal>,
    /// Only counts the watchers (one per open connection) and tells when all are gone.
    count: watch::Sender<()>,
}

/// Held by one connection for its whole life: `shutdown` waits until every watcher is gone.
#[derive(Debug)]
pub struct Watcher {
    signal: Arc<Signal>,
    _count: watch::Receiver<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
            signal: Arc::default(),
            count: watch::channel(()).0,
        }
    }

    /// A watcher for a connection accepted now (before the drain starts, it is drained).
    pub fn watcher(&self) -> Watcher {
        Watcher {
            signal: self.signal.clone(),
            _count: self.count.subscribe(),
        }
    }

    /// Connections still open.
    pub fn count(&self) -> usize {
        self.count.receiver_count()
    }

    /// Tells every connection to finish, then waits until all have closed.
    pub async fn shutdown(self) {
        self.signal.draining.store(true, Ordering::SeqCst);
        self.signal.notify.notify_waiters();
        self.count.closed().await;
    }
}

impl Watcher {
    /// True once the drain has started.
    pub fn draining(&self) -> bool {
        self.signal.draining.load(Ordering::SeqCst)
    }

    /// Completes when the drain starts (at once if it has).
    pub async fn signaled(&mut self) {
        // Made before the flag is read: a drain that starts in between still wakes it.
        let woken = self.signal.notify.notified();
        if self.draining() {
            return;
        }
        woken.await;
    }

    /// Runs a hyper connection (h2) to its end, asking it to shut down gracefully when the
    /// drain starts.
    pub async fn watch_hyper<C, E>(
        mut self,
        mut conn: Pin<&mut C>,
        shutdown: fn(Pin<&mut C>),
    ) -> Result<(), E>
    where
        C: Future<Output = Result<(), E>>,
    {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = self.signaled() => shutdown(conn.as_mut()),
        }
        conn.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_wakes_its_watchers_and_waits_for_them() {
        let drain = Drain::new();
        let mut early = drain.watcher();
        let waiting = tokio::spawn(async move {
            early.signaled().await;
            assert!(early.draining());
        });
        let late = drain.watcher();
        assert_eq!(drain.count(), 2);
        let finished = tokio::spawn(drain.shutdown());
        waiting.await.unwrap();
        assert!(late.draining());
        assert!(!finished.is_finished());
        drop(late);
        finished.await.unwrap();
    }
}
