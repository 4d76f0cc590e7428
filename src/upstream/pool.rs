//! The keepalive pool of one backend, and the response body that returns its connection to
//! the pool once the response was read to its end. HTTP/1.1 connections wait in an idle list,
//! one request each; an HTTP/2 backend has one shared connection that carries every request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use tokio::time::Instant;

use super::body::{BoxError, RequestBody};
use super::connect::Sender;
use super::h1::{H1Body, H1Conn, Upgraded};
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
    /// Its backend left the group: connections coming back are closed, not kept.
    closed: AtomicBool,
    pub reused: AtomicU64,
    pub opened: AtomicU64,
}

struct Idle {
    conn: H1Conn,
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
            closed: AtomicBool::new(false),
            reused: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// An idle connection that is still open and younger than `idle_timeout`, if any.
    pub fn checkout(&self) -> Option<Conn> {
        loop {
            let mut idle = self.lock().pop()?;
            // Expired below the backend's own keep-alive time-out, so it is not closed under
            // a request; a readable idle connection was closed by the backend (or is broken).
            if idle.since.elapsed() >= self.idle_timeout || idle.conn.is_stale() {
                continue;
            }
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Some(Conn {
                sender: Sender::Http1(idle.conn),
                reused: true,
                shared: None,
            });
        }
    }

    /// Puts an HTTP/1.1 connection back in the idle list.
    pub fn checkin(&self, conn: H1Conn) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        // Checked under the lock `close` empties the list with: none slips in after it.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if idle.len() >= self.max_idle {
            // Drop the oldest: it is the likeliest to be closed by the backend anyway.
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
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
        // Opened for a request that was on its way as the backend left: not kept for others.
        if !self.closed.load(Ordering::Acquire) {
            slot.conn = Some(Shared {
                sender: h2.clone(),
                id,
                used: Instant::now(),
            });
        }
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

    /// Closes the idle connections and keeps none from now on (the backend left its group;
    /// requests still in flight on it finish on their own connections). A shared HTTP/2
    /// connection is let go: its open streams finish, then it closes.
    pub fn close(&self) {
        let idle = {
            let mut list = self.lock();
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *list)
        };
        drop(idle);
        if let Ok(mut slot) = self.shared.try_lock() {
            slot.conn = None;
        }
    }

    /// Idle connections kept now.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A response body as it comes from the connection: proxyd's HTTP/1.1 or hyper's HTTP/2.
pub enum Received {
    H1(H1Body),
    H2(Incoming),
}

/// A backend's response body. Read to its clean end, an HTTP/1.1 body puts its connection
/// back in the pool; dropped early, the connection closes (its remaining bytes are unknown).
/// It also holds the request's in-flight slot on the backend until the body ends.
pub struct UpstreamBody {
    inner: Received,
    flight: InFlight,
}

impl UpstreamBody {
    pub fn new(inner: Received, flight: InFlight) -> Self {
        UpstreamBody { inner, flight }
    }

    /// After a 101: the backend's side of the tunnel.
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        match &mut self.inner {
            Received::H1(b) => b.take_upgrade(),
            Received::H2(_) => None,
        }
    }

    fn release(&mut self) {
        if let Received::H1(b) = &mut self.inner {
            if let Some(conn) = b.take_reusable() {
                self.flight.backend().pool.checkin(conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Received::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Received::H1(b) => {
                let polled = Pin::new(&mut *b).poll_frame(cx);
                if polled.is_ready() && b.is_end_stream() {
                    this.release();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Received::H1(b) => b.is_end_stream(),
            Received::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Received::H1(b) => b.size_hint(),
            Received::H2(b) => b.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.release();
    }
}
