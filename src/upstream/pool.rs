//! The keepalive pool of one backend, and the response body that returns its connection to
//! the pool once the response was read to its end. HTTP/1.1 connections wait in an idle list,
//! one request each; an HTTP/2 backend has one shared connection that carries every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1::SendRequest, http2};
use tokio::time::Instant;

use super::body::RequestBody;
use super::connect::Sender;
use super::InFlight;
use crate::error::{Cause, ProxyError};

/// Idle connections, most recently used last (reused first, so the rest can expire).
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// HTTP/2: the shared connection. An async lock, held while connecting, so a burst of
    /// requests opens one connection instead of one each.
    shared: tokio::sync::Mutex<SharedSlot>,
    max_idle: usize,
    idle_timeout: Duration,
    pub reused: AtomicU64,
    pub opened: AtomicU64,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

#[derive(Default)]
struct SharedSlot {
    conn: Option<Shared>,
    /// Numbers the shared connections, so a failed one is dropped and not its successor.
    next_id: u64,
    /// The last failure to connect: requests that waited for that attempt get its error
    /// instead of each waiting out a connect time-out of its own.
    failed: Option<(Instant, Cause, String)>,
}

struct Shared {
    sender: http2::SendRequest<RequestBody>,
    id: u64,
    /// The last time a request took it.
    used: Instant,
}

/// A connection checked out for one request.
pub struct Conn {
    pub sender: Sender,
    /// Served an earlier request: a failure before the request was written is a stale
    /// connection, not a backend failure.
    pub reused: bool,
    /// Which shared HTTP/2 connection this is (None for HTTP/1.1).
    pub shared: Option<u64>,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
            shared: tokio::sync::Mutex::new(SharedSlot::default()),
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
                sender: Sender::Http1(sender),
                reused: true,
                shared: None,
            });
        }
    }

    /// Puts an HTTP/1.1 connection back in the idle list (an HTTP/2 one stays shared).
    pub fn checkin(&self, sender: Sender) {
        let Sender::Http1(sender) = sender else {
            return;
        };
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

    /// The backend's shared HTTP/2 connection: the open one, unless idle past
    /// `idle_timeout`, or else a new one from `open` (which counts as opened).
    pub async fn shared(
        &self,
        open: impl Future<Output = Result<Sender, ProxyError>>,
    ) -> Result<Conn, ProxyError> {
        let asked = Instant::now();
        let mut slot = self.shared.lock().await;
        if let Some(s) = slot.conn.as_mut() {
            if !s.sender.is_closed() && s.used.elapsed() < self.idle_timeout {
                s.used = Instant::now();
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(Conn {
                    sender: Sender::Http2(s.sender.clone()),
                    reused: true,
                    shared: Some(s.id),
                });
            }
        }
        // Streams still running on a replaced connection keep it open until they end.
        slot.conn = None;
        if let Some((at, cause, detail)) = &slot.failed {
            if *at >= asked {
                return Err(ProxyError::new(*cause, detail).nothing_sent());
            }
        }
        let sender = match open.await {
            Ok(s) => s,
            Err(e) => {
                slot.failed = Some((Instant::now(), e.cause, e.detail.clone()));
                return Err(e);
            }
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        slot.failed = None;
        let Sender::Http2(h2) = sender else {
            return Ok(Conn {
                sender,
                reused: false,
                shared: None,
            });
        };
        slot.next_id += 1;
        let id = slot.next_id;
        slot.conn = Some(Shared {
            sender: h2.clone(),
            id,
            used: Instant::now(),
        });
        Ok(Conn {
            sender: Sender::Http2(h2),
            reused: false,
            shared: Some(id),
        })
    }

    /// Stops sharing HTTP/2 connection `id` (it failed); the next request opens another.
    pub async fn drop_shared(&self, id: u64) {
        let mut slot = self.shared.lock().await;
        if slot.conn.as_ref().is_some_and(|s| s.id == id) {
            slot.conn = None;
        }
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
    sender: Option<Sender>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, flight: InFlight, sender: Sender) -> Self {
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
