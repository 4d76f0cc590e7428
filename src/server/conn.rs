//! One client connection: the IO wrapper that enforces the header and keep-alive time-outs
//! (hyper's own header time-out closes silently; proxyd answers 408), and the response body
//! that tells the connection when a request is done.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http1::stream::RequestStream;
use crate::proxy::body::{BoxError, ResponseBody};
use crate::proxy::error::{error_response_h1, Cause};
use crate::proxy::outcome::Observers;
use crate::proxy::Pending;

/// Requests a connection is serving right now, shared by its IO and its response bodies.
#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Bumped whenever a request finishes, so the IO can restart its idle clock.
    finished: AtomicUsize,
    /// The connection's read, parked while requests run: woken when the last one ends so the
    /// idle clock starts even if hyper has nothing else to read.
    reader: AtomicWaker,
    /// Set when a 101 goes out: the bytes that follow belong to a tunnel (WebSocket and the
    /// like), which no HTTP head check or HTTP clock may judge.
    upgraded: AtomicBool,
    /// Requests handed to the service so far.
    started: AtomicUsize,
    /// A pipelined head refused below hyper: its request index and why.
    refused: OnceLock<(usize, Cause)>,
}

impl Activity {
    /// Starts a request; with the cause when its head was refused before hyper parsed it.
    pub fn begin(self: &Arc<Self>) -> (ActiveGuard, Option<Cause>) {
        self.active.fetch_add(1, Ordering::AcqRel);
        let index = self.started.fetch_add(1, Ordering::AcqRel);
        let refused = self
            .refused
            .get()
            .filter(|(i, _)| *i == index)
            .map(|(_, cause)| *cause);
        (ActiveGuard(self.clone()), refused)
    }
}

/// Held by a response body; dropping it ends the request.
pub struct ActiveGuard(Arc<Activity>);

impl ActiveGuard {
    /// This request's response switches protocols: from now on the connection is a tunnel.
    pub fn switching_protocols(&self) {
        self.0.upgraded.store(true, Ordering::Release);
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// The body hyper writes to the client: the pipeline's body, the request's guard, and its
/// outcome, handed to the observers when the body is done (sent, or dropped).
pub struct ServerBody {
    pub body: ResponseBody,
    pub _guard: ActiveGuard,
    pub pending: Option<Pending>,
    pub observers: Observers,
    pub sent: u64,
}

impl Drop for ServerBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            if !self.observers.is_empty() {
                self.observers.done(&p.finish(self.sent));
            }
        }
    }
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                self.sent += d.len() as u64;
            }
        }
        polled
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
    /// Where each request head starts, so that pipelined ones are checked too.
    stream: RequestStream,
    send_timeout: Duration,
    /// Runs while a write to the client makes no progress; made on the first stall.
    send_timer: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

/// Limits the head check applies.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// A write to the client that makes no progress for this long fails the connection.
    pub send_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T> ClientIo<T> {
    /// `header_timeout` also bounds the wait for a new connection's first request.
    pub fn new(inner: T, activity: Arc<Activity>, limits: HeadLimits) -> Self {
        let now = Instant::now();
        ClientIo {
            inner,
            activity,
            phase: Phase::Head,
            since: now,
            seen_finished: 0,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + limits.header_timeout)),
            timer_at: now + limits.header_timeout,
            http2: None,
            stream: RequestStream::new(limits.max_head_bytes, limits.max_headers),
            send_timeout: limits.send_timeout,
            send_timer: None,
            stalled: false,
        }
    }

    /// Watches a write: one that stays blocked (the client stopped reading) for
    /// `send_timeout` fails, so the connection closes and lets go of its backend.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = false;
            return polled;
        }
        if !self.stalled {
            self.stalled = true;
            let at = Instant::now() + self.send_timeout;
            match &mut self.send_timer {
                Some(t) => t.as_mut().reset(at),
                None => self.send_timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        if let Some(t) = &mut self.send_timer {
            if t.as_mut().poll(cx).is_ready() {
                tracing::debug!("client stopped reading: closing after timeouts.client_send");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client-send-timeout",
                )));
            }
        }
        Poll::Pending
    }

    /// A request finished since we last looked: back to the idle clock.
    fn sync(&mut self) {
        let finished = self.activity.finished.load(Ordering::Acquire);
        if finished != self.seen_finished {
            self.seen_finished = finished;
            self.phase = Phase::Idle;
            self.since = Instant::now();
        }
    }

    /// Notes bytes read; the cause is set when they start a head proxyd refuses.
    fn on_bytes(&mut self, bytes: &[u8]) -> Option<Cause> {
        if self.http2.is_none() {
            let n = bytes.len().min(H2_PREFACE.len());
            self.http2 = Some(bytes[..n] == H2_PREFACE[..n]);
        }
        self.sync();
        let idle = self.activity.active.load(Ordering::Acquire) == 0;
        if idle && self.phase == Phase::Idle {
            self.phase = Phase::Head;
            self.since = Instant::now();
        }
        if self.http2 != Some(false) {
            return None;
        }
        let refusal = self.stream.feed(bytes)?;
        // With every request before it served, proxyd answers right here. Otherwise hyper
        // still owes earlier responses: it parses this head too, and the service answers it in
        // turn (or hyper refuses it itself, for what it cannot parse).
        if idle && refusal.index == self.activity.started.load(Ordering::Acquire) {
            return Some(refusal.cause);
        }
        let _ = self.activity.refused.set((refusal.index, refusal.cause));
        None
    }

    /// Writes proxyd's answer under hyper and reports the connection as failed.
    fn refuse(&mut self, cx: &mut Context<'_>, cause: Cause) -> io::Error
    where
        T: AsyncWrite + Unpin,
    {
        // Best effort: nothing else is being written on this connection right now.
        let msg = error_response_h1(cause);
        let _ = Pin::new(&mut self.inner).poll_write(cx, &msg);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        io::Error::new(io::ErrorKind::InvalidData, cause.code())
    }

    /// The deadline in force while no request is being served.
    fn deadline(&mut self) -> Instant {
        self.sync();
        match self.phase {
            // HTTP/2 streams carry their own heads; only the idle clock applies there.
            Phase::Head if self.http2 != Some(true) => self.since + self.header_timeout,
            _ => self.since + self.idle_timeout,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.activity.upgraded.load(Ordering::Acquire) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if let Some(cause) = this.on_bytes(&buf.filled()[before..]) {
                        tracing::debug!(code = cause.code(), "refused request head");
                        return Poll::Ready(Err(this.refuse(cx, cause)));
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        this.activity.reader.register(cx.waker());
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
            return Poll::Ready(Err(this.refuse(cx, Cause::ClientHeaderTimeout)));
        }
        // Idle keep-alive connection (or one that never sent a byte): end it quietly.
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, polled)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, polled)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, polled)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
