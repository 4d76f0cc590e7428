//! HTTP/2 client connections, served by hyper: the socket wrapper that closes an idle
//! connection after `timeouts.keepalive` and a stuck one after `timeouts.client_send`, and the
//! response body that reports each request's outcome once it has been sent.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::drain::Watcher;
use super::h1::Pipeline;
use crate::obs::Observers;
use crate::proxy::body::{BoxError, ResponseBody};
use crate::proxy::{self, ConnInfo, Pending};

pub type Builder = hyper::server::conn::http2::Builder<TokioExecutor>;

/// Serves h2 on `stream` until it closes or the drain ends it.
pub async fn serve<T>(
    stream: T,
    info: ConnInfo,
    builder: &Builder,
    clocks: Clocks,
    pipeline: Pipeline,
    observers: Observers,
    watcher: Watcher,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = info.peer;
    let activity = Arc::new(Activity::default());
    let io = IdleIo::new(stream, activity.clone(), clocks);
    let info = Arc::new(info);
    let Pipeline { state, leaving } = pipeline;
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = activity.begin();
        let snap = state.load_full();
        let info = info.clone();
        let observers = observers.clone();
        // The health path is answered first, and neither logged nor counted.
        let health = proxy::health::answer(&req, &snap, &info, leaving.load(Ordering::Relaxed));
        async move {
            if let Some(resp) = health {
                return Ok(resp.map(|body| Reported {
                    body,
                    _guard: guard,
                    pending: None,
                    observers,
                    sent: 0,
                }));
            }
            let (resp, pending) = Box::pin(proxy::handle(req, snap, &info)).await;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Reported {
                body,
                _guard: guard,
                pending: Some(pending),
                observers,
                sent: 0,
            }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let conn = std::pin::pin!(conn);
    if let Err(e) = watcher.watch_hyper(conn, |c| c.graceful_shutdown()).await {
        tracing::debug!(?peer, error = %e, "h2 client connection ended with an error");
    }
}

/// The clocks of an h2 connection.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// No stream open for this long (and, before the first, since the connection began).
    pub idle: Duration,
    /// A write to the client that makes no progress for this long fails the connection.
    pub send: Duration,
}

/// Streams a connection is serving right now.
#[derive(Debug, Default)]
struct Activity {
    active: AtomicUsize,
    /// Bumped whenever a stream finishes, so the IO can restart its idle clock.
    finished: AtomicUsize,
    /// The connection's read, parked while streams run: woken when the last one ends so the
    /// idle clock starts even if hyper has nothing else to read.
    reader: AtomicWaker,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }
}

/// Held by a response body; dropping it ends the stream.
struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// The body hyper writes to the client: the pipeline's body, the stream's guard, and its
/// outcome, handed to the observers when the body is done (sent, or dropped).
struct Reported {
    body: ResponseBody,
    _guard: ActiveGuard,
    pending: Option<Pending>,
    observers: Observers,
    sent: u64,
}

impl Drop for Reported {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            if !self.observers.is_empty() {
                self.observers.done(&p.finish(self.sent));
            }
        }
    }
}

impl Body for Reported {
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

/// The client socket as hyper's h2 server sees it.
struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
    since: Instant,
    seen_finished: usize,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    send: Duration,
    /// Runs while a write to the client makes no progress; made on the first stall.
    send_timer: Option<Pin<Box<Sleep>>>,
    stalled: bool,
}

impl<T> IdleIo<T> {
    fn new(inner: T, activity: Arc<Activity>, clocks: Clocks) -> Self {
        let now = Instant::now();
        IdleIo {
            inner,
            activity,
            since: now,
            seen_finished: 0,
            idle: clocks.idle,
            timer: Box::pin(tokio::time::sleep_until(now + clocks.idle)),
            timer_at: now + clocks.idle,
            send: clocks.send,
            send_timer: None,
            stalled: false,
        }
    }

    /// Watches a write: one that stays blocked (the client stopped reading) for
    /// `send` fails, so the connection closes and lets go of its backends.
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
            let at = Instant::now() + self.send;
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
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        this.activity.reader.register(cx.waker());
        if this.activity.active.load(Ordering::Acquire) > 0 {
            return Poll::Pending;
        }
        let finished = this.activity.finished.load(Ordering::Acquire);
        if finished != this.seen_finished {
            this.seen_finished = finished;
            this.since = Instant::now();
        }
        let deadline = this.since + this.idle;
        if deadline != this.timer_at {
            this.timer_at = deadline;
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Idle: end it quietly (hyper sees the end of the stream).
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
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
