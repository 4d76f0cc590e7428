//! The keepalive pool of one backend, and the response body that returns its connection to
//! the pool once the response was read to its end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use super::InFlight;
use crate::proxy::body::RequestBody;

/// Idle connections, most recently used last (reused first, so the rest can expire).
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    pub reused: AtomicU64,
    pub opened: AtomicU64,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// A connection checked out for one request.
pub struct Conn {
    pub sender: SendRequest<RequestBody>,
    /// Served an earlier request: a failure before the request was written is a stale
    /// connection, not a backend failure.
    pub reused: bool,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
            max_idle,
            idle_timeout,
            reused: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// An idle connection that is still open and younger than `idle_timeout`, if any.
    pub async fn checkout(&self) -> Option<Conn> {
        loop {
            let idle = self.lock().pop()?;
            if idle.since.elapsed() >= self.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            // The previous response ended; the connection turns ready as soon as its task
            // has seen that, or reports that it closed.
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Some(Conn {
                sender,
                reused: true,
            });
        }
    }

    pub fn checkin(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= self.max_idle {
            // Drop the oldest: it is the likeliest to be closed by the backend anyway.
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A backend's response body. Read to its end, it puts its connection back in the pool;
/// dropped early, the connection closes (its remaining bytes are unknown).
/// It also holds the request's in-flight slot on the backend until the body ends.
pub struct UpstreamBody {
    inner: Incoming,
    flight: InFlight,
    sender: Option<SendRequest<RequestBody>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, flight: InFlight, sender: SendRequest<RequestBody>) -> Self {
        UpstreamBody {
            inner,
            flight,
            sender: Some(sender),
        }
    }

    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.flight.backend().pool.checkin(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
