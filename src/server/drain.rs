//! The graceful drain: a shutdown signal every open client connection watches, and a count of
//! the connections still open. On the signal an HTTP/1.1 connection finishes the request in
//! flight and closes (an idle one closes at once); an h2 connection sends GOAWAY and finishes
//! its streams. (hyper-util's `GracefulShutdown` only drains hyper's own connection types.)

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// Held by the server: starts the drain and waits for it.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// Held by one connection for its whole life: `shutdown` waits until every watcher is gone.
#[derive(Debug)]
pub struct Watcher {
    rx: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
            tx: watch::channel(false).0,
        }
    }

    /// A watcher for a connection accepted now (before the drain starts, it is drained).
    pub fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Connections still open.
    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tells every connection to finish, then waits until all have closed.
    pub async fn shutdown(self) {
        let _ = self.tx.send(true);
        self.tx.closed().await;
    }
}

impl Watcher {
    /// True once the drain has started.
    pub fn draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when the drain starts (at once if it has).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    /// Runs a hyper connection (h2) to its end, asking it to shut down gracefully when the
    /// drain starts.
    pub async fn watch_hyper<C, E>(mut self, mut conn: Pin<&mut C>, shutdown: fn(Pin<&mut C>))
    -> Result<(), E>
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
