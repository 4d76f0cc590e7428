//! One client connection: the IO wrapper that enforces the header and keep-alive time-outs
//! (hyper's own header time-out closes silently; proxyd answers 408), and the response body
//! that tells the connection when a request is done.

use std::io;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::proxy::body::{BoxError, ResponseBody};
use crate::proxy::error::{error_response_h1, Cause};

/// Requests a connection is serving right now, shared by its IO and its response bodies.
#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Bumped whenever a request finishes, so the IO can restart its idle clock.
    finished: AtomicUsize,
}

impl Activity {
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }
}

/// Held by a response body; dropping it ends the request.
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body hyper writes to the client: the pipeline's body plus the request's guard.
pub struct ServerBody {
    pub body: ResponseBody,
    pub _guard: ActiveGuard,
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests (or before the first byte): the keep-alive clock runs.
    Idle,
    /// Part of a request head arrived: the header clock runs.
    Head,
}

/// The client socket as hyper sees it.
pub struct ClientIo<T> {
    inner: T,
    activity: Arc<Activity>,
    phase: Phase,
    since: Instant,
    seen_finished: usize,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    http2: Option<bool>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T> ClientIo<T> {
    /// `header_timeout` also bounds the wait for a new connection's first request.
    pub fn new(inner: T, activity: Arc<Activity>, header_timeout: Duration, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        ClientIo {
            inner,
            activity,
            phase: Phase::Head,
            since: now,
            seen_finished: 0,
            header_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + header_timeout)),
            timer_at: now + header_timeout,
            http2: None,
        }
    }

    fn on_bytes(&mut self, bytes: &[u8]) {
        if self.http2.is_none() {
            let n = bytes.len().min(H2_PREFACE.len());
            self.http2 = Some(bytes[..n] == H2_PREFACE[..n]);
        }
        if self.activity.active.load(Ordering::Acquire) == 0 && self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.since = Instant::now();
        }
    }

    /// The deadline in force while no request is being served.
    fn deadline(&mut self) -> Instant {
        let finished = self.activity.finished.load(Ordering::Acquire);
        if finished != self.seen_finished {
            self.seen_finished = finished;
            self.phase = Phase::Idle;
            self.since = Instant::now();
        }
        match self.phase {
            // HTTP/2 streams carry their own heads; only the idle clock applies there.
            Phase::Head if self.http2 != Some(true) => self.since + self.header_timeout,
            _ => self.since + self.idle_timeout,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes(&buf.filled()[before..]);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if this.activity.active.load(Ordering::Acquire) > 0 {
            return Poll::Pending;
        }
        let deadline = this.deadline();
        if deadline != this.timer_at {
            this.timer_at = deadline;
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.phase == Phase::Head && this.http2 == Some(false) {
            // Best effort: the socket is idle on our side, so a small write goes through.
            let msg = error_response_h1(Cause::ClientHeaderTimeout);
            let _ = Pin::new(&mut this.inner).poll_write(cx, &msg);
            let _ = Pin::new(&mut this.inner).poll_flush(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client request head timed out")));
        }
        // Idle keep-alive connection (or one that never sent a byte): end it quietly.
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
