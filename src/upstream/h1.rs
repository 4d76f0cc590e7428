//! HTTP/1.1 to a backend, driven by the request's own task: no background task, no channel.
//! `send` writes the request head and body (the socket is read meanwhile, so an answer that
//! comes before the body is all sent is not missed), reads the response head with
//! `http1::parse_response` (skipping 1xx), and hands back the body, read as the client takes
//! it per its framing. A body read to its clean end gives the connection back for another
//! request when both sides allow it; a 101 hands over the raw stream for a tunnel.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{response, Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite};

use super::body::{BoxError, RequestBody};
use super::stream::Stream;
use crate::error::{Cause, ProxyError};
use crate::http1::{self, Chunk, ChunkedDecoder, Framing, Limits};

/// A backend's response head: hyper's client took 100 fields too; 64 KiB is eight times
/// nginx's default `proxy_buffer_size`.
const LIMITS: Limits = Limits {
    max_head_bytes: 64 * 1024,
    max_headers: 100,
};

const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// The read buffer a request starts with: most response heads and small bodies fit at once.
const FIRST_READ: usize = 8 * 1024;

/// The most one read of a body asks for.
const BODY_READ: usize = 64 * 1024;

/// An idle HTTP/1.1 connection: its stream only (buffers are taken per request).
pub struct H1Conn {
    io: Stream,
}

impl H1Conn {
    pub fn new(io: Stream) -> H1Conn {
        H1Conn { io }
    }

    /// Closed by the backend while idle, or holding bytes no request asked for.
    pub fn is_stale(&mut self) -> bool {
        self.io.is_stale()
    }
}

/// Why `send` failed.
pub enum SendError {
    /// Nothing of the request was written: it comes back, to go out on another connection.
    Unsent(ProxyError, Box<Request<RequestBody>>),
    /// Some of it may have reached the backend.
    Failed(ProxyError),
}

/// Sends `req` (a head prepared for a backend, origin-form, HTTP/1.1) on `conn`, and reads
/// the final response head.
pub async fn send(
    mut conn: H1Conn,
    req: Request<RequestBody>,
) -> Result<(response::Parts, H1Body), SendError> {
    let framing = request_framing(&req);
    let (parts, body) = req.into_parts();
    let upgrade = parts.headers.contains_key(header::UPGRADE);
    let mut head = Vec::with_capacity(256 + parts.headers.len() * 48);
    http1::write_request_head(&mut head, &parts, &framing);
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let mut ex = Exchange::new(&mut conn.io, &mut buf, parts.method.clone(), framing);
    ex.out.push_back(Bytes::from(head));
    if framing == Framing::Chunked && parts.headers.contains_key(header::TRAILER) {
        ex.declared = declared_trailers(&parts.headers);
    }
    let mut body = Some(body);
    match &body {
        Some(RequestBody::Empty) | None => {}
        Some(RequestBody::Buffered { data, trailers }) => ex.push_data(data.clone(), trailers),
        Some(RequestBody::Spooled(_) | RequestBody::Streaming(_)) => {
            // The head alone first: the body cannot be handed back once it is being read.
            if let Err(e) = poll_fn(|cx| ex.poll_write_out(cx)).await {
                return Err(match (ex.written, body) {
                    (0, Some(b)) => {
                        SendError::Unsent(e.nothing_sent(), Box::new(Request::from_parts(parts, b)))
                    }
                    _ => SendError::Failed(e),
                });
            }
            ex.body = body.take();
        }
    }
    let head = match poll_fn(|cx| ex.poll_exchange(cx)).await {
        Ok(head) => head,
        Err(e) => {
            return Err(match (ex.written, body) {
                (0, Some(b)) => {
                    SendError::Unsent(e.nothing_sent(), Box::new(Request::from_parts(parts, b)))
                }
                _ => SendError::Failed(e),
            })
        }
    };
    let whole = ex.write_done;
    drop(ex);
    let state = if head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
        if !upgrade {
            return Err(SendError::Failed(ProxyError::new(
                Cause::UpstreamProtocol,
                "101 Switching Protocols to a request without Upgrade",
            )));
        }
        Read::Upgraded
    } else {
        match head.framing {
            Framing::None | Framing::Length(0) => Read::Done,
            Framing::Length(n) => Read::Length(n),
            Framing::Chunked => Read::Chunked(Box::new(ChunkedDecoder::new(MAX_TRAILER_BYTES))),
            Framing::Close => Read::Close,
        }
    };
    let body = H1Body {
        conn: Some(conn),
        buf,
        state,
        // The rest of an unsent body would be read as the next request.
        reusable: head.keep_alive && whole,
    };
    Ok((head.parts, body))
}

/// The framing the request goes out with, from its body (and, for a body that streams, the
/// client's Content-Length).
fn request_framing(req: &Request<RequestBody>) -> Framing {
    let length = || {
        req.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| http1::content_length(v.as_bytes()))
    };
    match req.body() {
        RequestBody::Empty => length().map_or(Framing::None, |_| Framing::Length(0)),
        RequestBody::Buffered {
            trailers: Some(_), ..
        } => Framing::Chunked,
        RequestBody::Buffered { data, .. } => Framing::Length(data.len() as u64),
        RequestBody::Spooled(s) if s.has_trailers() => Framing::Chunked,
        RequestBody::Spooled(s) => Framing::Length(s.len()),
        RequestBody::Streaming(_) => length().map_or(Framing::Chunked, Framing::Length),
    }
}

fn trailer_field_ok(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// The field names a `Trailer` header declares.
fn declared_trailers(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// One request on the wire: what is still to be written, and the response as it comes.
struct Exchange<'a> {
    io: &'a mut Stream,
    buf: &'a mut BytesMut,
    method: Method,
    framing: Framing,
    /// Pieces still to be written, in order.
    out: VecDeque<Bytes>,
    written: u64,
    /// A streamed body, encoded into `out` as it comes.
    body: Option<RequestBody>,
    /// Content-Length framing: bytes of body still due.
    left: u64,
    /// The trailer fields the request declared in `Trailer`: the only ones sent.
    declared: Vec<HeaderName>,
    write_done: bool,
    eof: bool,
}

impl<'a> Exchange<'a> {
    fn new(io: &'a mut Stream, buf: &'a mut BytesMut, method: Method, framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Exchange {
            io,
            buf,
            method,
            framing,
            out: VecDeque::with_capacity(4),
            written: 0,
            body: None,
            left,
            declared: Vec::new(),
            write_done: false,
            eof: false,
        }
    }

    /// Queues one chunk of a chunked body (nothing for empty data: an empty chunk would end it).
    fn push_chunk(&mut self, data: Bytes) {
        if !data.is_empty() {
            let mut size = Vec::with_capacity(12);
            http1::write_chunk_header(&mut size, data.len());
            self.out.push_back(Bytes::from(size));
            self.out.push_back(data);
            self.out.push_back(Bytes::from_static(b"\r\n"));
        }
    }

    /// Queues body data (and at the end, the trailers) in the request's framing.
    fn push_data(&mut self, data: Bytes, trailers: &Option<HeaderMap>) {
        if self.framing != Framing::Chunked {
            self.left = self.left.saturating_sub(data.len() as u64);
            if !data.is_empty() {
                self.out.push_back(data);
            }
            return;
        }
        self.push_chunk(data);
        let trailers = trailers.as_ref().and_then(|t| self.allowed(t));
        let mut last = Vec::new();
        http1::write_last_chunk(&mut last, trailers.as_ref());
        self.out.push_back(Bytes::from(last));
    }

    /// The trailer fields that may go: declared by the request's `Trailer` field, and none
    /// that frames, routes or authorizes a message (hyper's client rule, kept).
    fn allowed(&self, t: &HeaderMap) -> Option<HeaderMap> {
        let mut kept = HeaderMap::new();
        for (name, value) in t {
            if self.declared.contains(name) && trailer_field_ok(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        (!kept.is_empty()).then_some(kept)
    }

    /// Writes what is queued, and flushes it (TLS holds records until flushed).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); 8];
            let n = self.out.len().min(slices.len());
            for (s, piece) in slices.iter_mut().zip(self.out.iter()) {
                *s = IoSlice::new(piece);
            }
            let wrote = ready!(Pin::new(&mut *self.io).poll_write_vectored(cx, &slices[..n]))
                .map_err(write_error)?;
            if wrote == 0 {
                return Poll::Ready(Err(write_error(io::ErrorKind::WriteZero.into())));
            }
            self.written += wrote as u64;
            let mut left = wrote;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Pin::new(&mut *self.io).poll_flush(cx).map_err(write_error)
    }

    /// The request's write side: the queue, then the streamed body frame by frame.
    fn poll_write_side(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        loop {
            ready!(self.poll_write_out(cx))?;
            let Some(body) = &mut self.body else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    self.body = None;
                    match self.framing {
                        Framing::Chunked => self.push_data(Bytes::new(), &None),
                        _ if self.left > 0 => {
                            return Poll::Ready(Err(ProxyError::new(
                                Cause::BadRequest("bad-body"),
                                "the request body ended before its Content-Length",
                            )))
                        }
                        _ => {}
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(body_error(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.framing == Framing::Chunked => self.push_chunk(data),
                    Ok(data) => {
                        if data.len() as u64 > self.left {
                            return Poll::Ready(Err(ProxyError::new(
                                Cause::BadRequest("bad-body"),
                                "the request body is longer than its Content-Length",
                            )));
                        }
                        self.left -= data.len() as u64;
                        if !data.is_empty() {
                            self.out.push_back(data);
                        }
                    }
                    Err(frame) => {
                        // Trailers end a chunked body; with a length they have no place.
                        if let (Ok(t), Framing::Chunked) = (frame.into_trailers(), self.framing) {
                            self.body = None;
                            self.push_data(Bytes::new(), &Some(t));
                        }
                    }
                },
            }
        }
    }

    /// Writes the request while reading the response; done at the final response head (1xx
    /// skipped), which may come before the request was written whole.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<http1::ResponseHead, ProxyError>> {
        loop {
            let mut progress = false;
            if !self.eof {
                match poll_fill(self.io, cx, self.buf, FIRST_READ) {
                    Poll::Ready(Ok(0)) if self.written == 0 => {
                        // Closed while idle: the request can go out on another connection.
                        return Poll::Ready(Err(ProxyError::new(
                            Cause::UpstreamClosed,
                            "the backend closed the connection before the request was written",
                        )));
                    }
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        if let Some(head) = self.parse()? {
                            return Poll::Ready(Ok(head));
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(ProxyError::new(
                            Cause::UpstreamClosed,
                            format_args!("reading the response head: {e}"),
                        )))
                    }
                    Poll::Pending => {}
                }
            }
            if !self.write_done {
                match self.poll_write_side(cx) {
                    Poll::Ready(Ok(())) => {
                        self.write_done = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if self.eof && self.write_done {
                return Poll::Ready(Err(ProxyError::new(
                    Cause::UpstreamClosed,
                    match self.buf.is_empty() {
                        true => "the backend closed the connection without a response",
                        false => "the backend closed the connection within the response head",
                    },
                )));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// The final response head, once it is all in the buffer; informational ones are skipped
    /// (a 101 is final: the connection switches protocols after it).
    fn parse(&mut self) -> Result<Option<http1::ResponseHead>, ProxyError> {
        loop {
            let head = match http1::parse_response(self.buf, &LIMITS, &self.method) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(cause) => {
                    return Err(ProxyError::new(
                        Cause::UpstreamProtocol,
                        format_args!("malformed response head ({})", cause.code()),
                    ))
                }
            };
            let status = head.parts.status;
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(Some(head));
        }
    }
}

fn write_error(e: io::Error) -> ProxyError {
    ProxyError::new(
        Cause::UpstreamClosed,
        format_args!("writing the request: {e}"),
    )
}

/// A streamed request body failed: the client's side (too large, too slow, malformed), which
/// says so in a `ProxyError` of its own, or else the client went away.
fn body_error(e: BoxError) -> ProxyError {
    match e.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(e) => ProxyError::new(
            Cause::BadRequest("bad-body"),
            format_args!("request body: {e}"),
        ),
    }
}

/// Reads into `buf`, at least `want` bytes of room: Ok(0) is the end of the stream.
fn poll_fill(
    io: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < want.min(1024) {
        buf.reserve(want);
    }
    pin!(io.read_buf(buf)).poll(cx)
}

/// How the rest of a response body is read.
enum Read {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    /// Until the backend closes the connection.
    Close,
    Done,
    /// A 101: the stream is the tunnel's.
    Upgraded,
    /// The body broke; the error is reported at the next poll.
    Broken(String),
    Failed,
}

/// A backend's HTTP/1.1 response body, read from the connection as it is polled.
pub struct H1Body {
    conn: Option<H1Conn>,
    /// Bytes read past what was handed out.
    buf: BytesMut,
    state: Read,
    /// Both sides allow another request on the connection once this body ends.
    reusable: bool,
}

/// The stream of a connection that switched protocols, and what the backend sent past the
/// 101 head before the tunnel started.
pub struct Upgraded {
    pub io: Stream,
    pub read_ahead: Bytes,
}

impl H1Body {
    /// The connection, when the body ended cleanly and the connection may serve again.
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        match self.state {
            Read::Done if self.reusable && self.buf.is_empty() => self.conn.take(),
            _ => None,
        }
    }

    /// The switched connection after a 101.
    pub fn take_upgrade(&mut self) -> Option<Upgraded> {
        if !matches!(self.state, Read::Upgraded) {
            return None;
        }
        let conn = self.conn.take()?;
        Some(Upgraded {
            io: conn.io,
            read_ahead: std::mem::take(&mut self.buf).freeze(),
        })
    }

    fn fail(
        &mut self,
        what: impl std::fmt::Display,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = Read::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(format!("upstream response body: {what}").into())))
    }

    /// A broken stream is reported one poll late: the client's side gets to send what it
    /// holds first (hyper's server flushes when a body is pending, and a stream reset would
    /// drop the h2 frames still queued), so a cut response reaches the client visibly cut,
    /// as it did when a connection task stood in between.
    fn broken(
        &mut self,
        cx: &mut Context<'_>,
        what: impl std::fmt::Display,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = Read::Broken(what.to_string());
        self.conn = None;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads more of the body into the buffer; false at the end of the stream.
    fn poll_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<bool>> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(Ok(false));
        };
        let n = ready!(poll_fill(&mut conn.io, cx, &mut self.buf, want))?;
        Poll::Ready(Ok(n > 0))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let want = match &mut this.state {
                Read::Done | Read::Upgraded | Read::Failed => return Poll::Ready(None),
                Read::Broken(what) => {
                    let what = std::mem::take(what);
                    return this.fail(what);
                }
                Read::Length(left) => {
                    if !this.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .map_or(this.buf.len(), |l| l.min(this.buf.len()));
                        *left -= n as u64;
                        if *left == 0 {
                            this.state = Read::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split_to(n).freeze()))));
                    }
                    usize::try_from(*left).map_or(BODY_READ, |l| l.min(BODY_READ))
                }
                Read::Chunked(decoder) => {
                    if !this.buf.is_empty() {
                        match decoder.decode(&this.buf) {
                            Ok((used, Chunk::Data(range))) => {
                                let data = this.buf.split_to(used).freeze().slice(range);
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            Ok((used, Chunk::NeedMore)) => this.buf.advance(used),
                            Ok((used, Chunk::End(trailers))) => {
                                this.buf.advance(used);
                                this.state = Read::Done;
                                return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                            }
                            Err(_) => return this.broken(cx, "malformed chunked encoding"),
                        }
                    }
                    BODY_READ / 4
                }
                Read::Close => {
                    if !this.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                    }
                    BODY_READ / 4
                }
            };
            match ready!(this.poll_more(cx, want)) {
                Ok(true) => {}
                Ok(false) if matches!(this.state, Read::Close) => {
                    this.state = Read::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(false) => {
                    return this.broken(
                        cx,
                        "the backend closed the connection before the body's end",
                    )
                }
                Err(e) => return this.broken(cx, e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, Read::Done | Read::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            Read::Length(n) => SizeHint::with_exact(n),
            Read::Done | Read::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
