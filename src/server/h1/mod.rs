//! One HTTP/1.1 client connection, served by one task with `crate::http1`: read a head (the
//! one strict parse), run the pipeline, write the response, and again while the connection
//! is kept alive. Pipelined requests are answered in order: the next head is parsed only
//! once the response before it is written (its bytes wait in the buffer). An idle connection
//! holds its socket and no buffer. What answers the requests is the connection's
//! [`Handler`]: the proxy's pipeline ([`Pipeline`]) on the proxy listeners, the admin API on
//! the admin listener.

mod body;
mod date;
pub mod read;
mod refused;
mod sendfile;
mod split;
mod write;

use std::future::Future;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use http::header;
use http::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::drain::Watcher;
use crate::error::Cause;
use crate::http1::{self, Framing, RequestHead};
use crate::obs::Observers;
use crate::proxy::body::{FromClient, ResponseBody};
use crate::proxy::error::error_response_h1;
use crate::proxy::{self, ConnInfo, Pending};
use crate::state::Snapshot;
use crate::upstream::h1::Upgraded;
pub use body::RequestBody;
use body::{Back, Shared};
use http_body::Body as _;
use read::Reader;
use split::{ReadSide, WriteSide};
use write::{Asked, Writer};

/// The limits and clocks of a client connection's heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// A head must arrive whole within this of its first byte (the first request's, of
    /// the connection's start).
    pub header_timeout: Duration,
    /// A keep-alive connection may wait this long for its next request's first byte.
    pub idle_timeout: Duration,
    /// A write to the client that makes no progress for this long fails the connection.
    pub send_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// What answers the requests of a connection. Generic, not `dyn`: the proxy's pipeline is
/// called straight from the connection's task, as before there was a second handler.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`. The outcome, when there is one, goes to the connection's observers once
    /// the response has been sent.
    fn handle<B: FromClient>(
        &self,
        req: Request<B>,
        info: &ConnInfo,
    ) -> impl Future<Output = (Response<ResponseBody>, Option<Pending>)> + Send;

    /// The bytes that answer a head refused before any handler runs (`cause`).
    fn refused(&self, cause: Cause) -> Vec<u8> {
        error_response_h1(cause, None)
    }
}

/// The proxy's request pipeline (`proxy::handle`), over the live runtime state (for h2
/// connections too: `h2::serve`).
pub struct Pipeline {
    pub state: Arc<ArcSwap<Snapshot>>,
    /// Set once shutdown has begun: the listener's health path says 503.
    pub leaving: Arc<AtomicBool>,
}

impl Handler for Pipeline {
    fn handle<B: FromClient>(
        &self,
        req: Request<B>,
        info: &ConnInfo,
    ) -> impl Future<Output = (Response<ResponseBody>, Option<Pending>)> + Send {
        // Loaded per request: a reload applies to the next request of an open connection.
        let snap = self.state.load_full();
        // The health path is answered first, and neither logged nor counted.
        let health = proxy::health::answer(&req, &snap, info, self.leaving.load(Ordering::Relaxed));
        async move {
            if let Some(resp) = health {
                return (resp, None);
            }
            let (resp, pending) = proxy::handle(req, snap, info).await;
            (resp, Some(pending))
        }
    }

    /// With the top level's error pages: no route is known for a refused head.
    fn refused(&self, cause: Cause) -> Vec<u8> {
        error_response_h1(cause, Some(&self.state.load().error_pages))
    }
}

/// What serving one HTTP/1.1 connection needs.
pub struct Ctx<H> {
    pub handler: H,
    pub info: ConnInfo,
    pub observers: Observers,
    /// Set once a new proxyd has taken over (an upgrade): responses say `Connection: close`.
    pub closing: Arc<AtomicBool>,
    pub limits: HeadLimits,
    pub watcher: Watcher,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Serves HTTP/1.1 on `stream` until it closes; `buf` holds bytes already read from it, and
/// `started` is when the connection began (the first head's clock).
///
/// The future is the connection's task for as long as it lives, idle or not, so it is kept
/// small: an `async fn` keeps its arguments beside the locals made from them, so this is an
/// `async` block over what the loop uses and nothing else; a request's future is boxed.
pub fn serve<T, H>(
    stream: T,
    buf: BytesMut,
    started: Instant,
    ctx: Ctx<H>,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let (read, write) = split::split(stream);
    let mut reader = Reader::new(read, buf);
    let mut writer = Writer {
        io: write,
        send_timeout: ctx.limits.send_timeout,
    };
    let limits = http1::Limits {
        max_head_bytes: ctx.limits.max_head_bytes,
        max_headers: ctx.limits.max_headers,
    };
    let mut ctx = ctx;
    let mut first = Some(started);
    async move {
        loop {
            let next = next_head(
                &mut reader,
                &limits,
                &ctx.limits,
                first.take(),
                &mut ctx.watcher,
            )
            .await;
            let head = match next {
                Next::Head(h) => h,
                Next::Close => break,
                Next::Refuse(cause, began) => {
                    let refusing = Box::pin(refuse(&mut writer, cause, began, &reader.buf, &ctx));
                    refusing.await;
                    break;
                }
            };
            // Boxed in a statement of its own: a temporary lives to the end of its
            // statement, so a future made in the statement that awaits its box would be
            // kept in the task as well.
            let exchanging = Box::pin(exchange(head, reader, &mut writer, &ctx));
            match exchanging.await {
                Some(back) => reader = back,
                None => break,
            }
        }
        let _ = writer.io.shutdown().await;
    }
}

/// Answers a head proxyd refuses (the connection closes after), and tells the observers as
/// for any request: `seen` is what is left of the head in the buffer (its request line is
/// logged when it is still there), `began` when its clock started.
async fn refuse<W: AsyncWrite + Unpin, H: Handler>(
    writer: &mut Writer<W>,
    cause: Cause,
    began: Instant,
    seen: &[u8],
    ctx: &Ctx<H>,
) {
    tracing::debug!(code = cause.code(), "refused request head");
    let msg = ctx.handler.refused(cause);
    let written = writer.write_all(&mut [IoSlice::new(&msg)]).await;
    let _ = writer.flush().await;
    if !ctx.observers.is_empty() {
        let body_bytes = match written {
            Ok(()) => refused::body_len(&msg),
            Err(_) => 0,
        };
        let client = ctx.info.peer.map(|p| p.ip());
        let outcome = refused::outcome(cause, seen, began, client, body_bytes);
        ctx.observers.done(&outcome);
    }
}

enum Next {
    /// Boxed: the head is large and the connection's idle state holds room for this.
    Head(Box<RequestHead>),
    /// End quietly: the client closed, went idle too long, or the drain began while idle.
    Close,
    /// With when the head's clock started.
    Refuse(Cause, Instant),
}

/// Reads and parses the next request head. `first` is the connection's start for its first
/// request: that head's clock runs from it.
async fn next_head<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    limits: &http1::Limits,
    clocks: &HeadLimits,
    first: Option<Instant>,
    watcher: &mut Watcher,
) -> Next {
    let mut deadline = first.map(|t| t + clocks.header_timeout);
    loop {
        if !reader.buf.is_empty() {
            match http1::parse_request(&mut reader.buf, limits) {
                Ok(Some(head)) => {
                    reader.release();
                    return Next::Head(Box::new(head));
                }
                Ok(None) => {}
                Err(cause) => return Next::Refuse(cause, began(deadline, clocks)),
            }
            if deadline.is_none() {
                deadline = Some(Instant::now() + clocks.header_timeout);
            }
        }
        let idle = reader.buf.is_empty();
        let at = match deadline {
            Some(at) => at,
            None => Instant::now() + clocks.idle_timeout,
        };
        let filled = tokio::select! {
            r = tokio::time::timeout_at(at, reader.fill()) => r,
            _ = watcher.signaled(), if idle => return Next::Close,
        };
        match filled {
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Close,
            Ok(Ok(_)) => {}
            // Some of a head came, and not all of it in time.
            Err(_) if !reader.buf.is_empty() => {
                return Next::Refuse(Cause::ClientHeaderTimeout, began(deadline, clocks))
            }
            // Nothing at all: an idle keep-alive connection (or one that never sent a byte).
            Err(_) => return Next::Close,
        }
    }
}

/// When a head's clock started: its deadline less the time a head gets (now for bytes that
/// were parsed before a deadline was set: pipelined ones).
fn began(deadline: Option<Instant>, clocks: &HeadLimits) -> Instant {
    deadline
        .and_then(|d| d.checked_sub(clocks.header_timeout))
        .unwrap_or_else(Instant::now)
}

/// Runs one request and writes its response; the read side back when the connection may
/// carry another request.
async fn exchange<T, H>(
    head: Box<RequestHead>,
    reader: Reader<ReadSide<T>>,
    writer: &mut Writer<WriteSide<T>>,
    ctx: &Ctx<H>,
) -> Option<Reader<ReadSide<T>>>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    let RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade: asked_upgrade,
    } = *head;
    let asked = Asked {
        head: write::is_head(&parts.method),
        version: parts.version,
        keep_alive,
        trailers: parts
            .headers
            .get_all(header::TE)
            .iter()
            .any(|v| http1::has_token(v.as_bytes(), "trailers")),
    };
    // The read side goes with a body and comes back when it is read.
    let (body, mut kept, shared) = match framing {
        Framing::None | Framing::Length(0) => (RequestBody::empty(), Some(reader), None),
        _ => {
            let shared = Shared::new();
            let body = RequestBody::new(reader, framing, shared.clone(), expect_continue);
            (body, None, Some(shared))
        }
    };
    let req = Request::from_parts(parts, body);
    // Boxed: the pipeline's future is several KiB, and an idle connection should not carry it.
    let mut handling = Box::pin(ctx.handler.handle(req, &ctx.info));
    let (resp, pending) = match &shared {
        Some(shared) if expect_continue => {
            let mut owed = true;
            loop {
                tokio::select! {
                    biased;
                    r = &mut handling => break r,
                    _ = shared.continue_wanted.notified(), if owed => {
                        owed = false;
                        let _ = writer.write_all(&mut [IoSlice::new(CONTINUE)]).await;
                        let _ = writer.flush().await;
                    }
                }
            }
        }
        // As hyper does: a client that closes its connection while its request runs (and
        // sent nothing more) is gone; the request is dropped, and with it its place in a
        // queue or its backend. Pipelined bytes end the watch (they wait in the buffer).
        _ => match kept.as_mut().filter(|r| r.buf.is_empty()) {
            Some(watch) => {
                tokio::select! {
                    biased;
                    r = &mut handling => r,
                    read = watch.fill() => match read {
                        Ok(n) if n > 0 => (&mut handling).await,
                        _ => {
                            tracing::debug!("client closed the connection with its request in flight");
                            return None;
                        }
                    },
                }
            }
            None => (&mut handling).await,
        },
    };
    drop(handling);
    // The read side, if the body gave it back (and any of it left unread was buffered).
    let back = match shared {
        None => kept,
        Some(shared) => shared
            .take_back()
            .and_then(|mut back: Back<_>| body::skip_buffered(&mut back).then_some(back.reader)),
    };
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status;
    let framing = write::framing(&mut parts, &body, &asked);
    let upgrade = match &mut body {
        ResponseBody::Upstream(b) if asked_upgrade && status == StatusCode::SWITCHING_PROTOCOLS => {
            b.take_upgrade()
        }
        _ => None,
    };
    let keep = asked.keep_alive
        && back.is_some()
        && framing != Framing::Close
        && status != StatusCode::SWITCHING_PROTOCOLS
        && !http1::connection_has(&parts.headers, "close")
        && !ctx.closing.load(Ordering::Relaxed)
        && !ctx.watcher.draining();
    write::connection(&mut parts, &asked, keep);
    if !parts.headers.contains_key(header::DATE) {
        parts.headers.insert(header::DATE, date::now());
    }
    parts.version = if asked.version == Version::HTTP_10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut out = Vec::with_capacity(128 + parts.headers.len() * 48);
    http1::write_response_head(&mut out, &parts, &framing);
    let mut sent = 0;
    // A large static file to a plain TCP client goes by sendfile(2).
    let unread = match (&mut body, framing, split::tcp(&writer.io)) {
        (ResponseBody::File(f), Framing::Length(n), Some(_))
            if f.size_hint().exact() == Some(n) =>
        {
            f.take_for_sendfile()
        }
        _ => None,
    };
    let written = match (unread, split::tcp(&writer.io)) {
        (Some(file), Some(tcp)) => {
            sendfile::send(tcp, &out, file, writer.send_timeout, &mut sent).await
        }
        _ => {
            writer
                .send(out, body, framing, asked.trailers, &mut sent)
                .await
        }
    };
    if let Some(pending) = pending.filter(|_| !ctx.observers.is_empty()) {
        ctx.observers.done(&pending.finish(sent));
    }
    if let Err(e) = written {
        tracing::debug!(error = %e, "response to the client cut short");
        return None;
    }
    if let Some(backend) = upgrade {
        let reader = back?;
        tunnel(reader, writer, backend).await;
        return None;
    }
    if !keep {
        return None;
    }
    let mut reader = back?;
    reader.release();
    Some(reader)
}

/// After a 101: the client's connection (with what it sent past the head) and the backend's
/// switched one (with what it sent past its 101) are joined until either side closes.
async fn tunnel<T>(
    reader: Reader<ReadSide<T>>,
    writer: &mut Writer<WriteSide<T>>,
    backend: Upgraded,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Upgraded {
        io: mut backend,
        read_ahead,
    } = backend;
    let early = reader.buf;
    if !early.is_empty() && backend.write_all(&early).await.is_err() {
        return;
    }
    drop(early);
    if !read_ahead.is_empty()
        && writer
            .write_all(&mut [IoSlice::new(&read_ahead)])
            .await
            .is_err()
    {
        return;
    }
    drop(read_ahead);
    // The write half stays with the connection, which shuts it down after.
    let mut client = Joined {
        read: reader.io,
        write: &mut writer.io,
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "tunnel ended with an error");
    }
}

/// The two halves of the client connection as one stream, for the tunnel.
struct Joined<'a, R, W> {
    read: R,
    write: &'a mut W,
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Joined<'_, R, W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Joined<'_, R, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.write).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.write).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's task holds the future of `serve`, as large as its largest state
    /// (a request's is boxed): it must stay small.
    #[test]
    fn an_idle_connection_is_small() {
        let size = future_size(serve::<tokio::net::TcpStream, Pipeline>);
        println!("serve future: {size} bytes");
        assert!(size <= 768, "{size}");
    }
}
