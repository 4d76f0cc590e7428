//! Request bodies (buffered before a backend is picked; past `buffer_body` streamed, or for
//! workers spooled to a temp file) and response bodies (a backend's stream, a worker's body
//! read ahead into a buffer, either compressed, or a body proxyd wrote itself).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use super::compress::Compressed;
use super::ctx::RequestCtx;
use super::error::{Cause, ProxyError};
use super::spool::SpooledResponse;
pub use crate::state::BodyLimits;
use crate::upstream::body::{RequestBody, Streaming};
use crate::upstream::pool::UpstreamBody;
use crate::upstream::spool::RequestSpooler;
use crate::upstream::Upstream;

pub use crate::upstream::body::{BoxError, ClientBody};

/// What a request body from a client must be: its frames are read by `read_request_body`.
pub trait FromClient: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> FromClient for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// The `Content-Length` a request declares, if any (a malformed one was refused in the
/// head's checks).
fn declared(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// True when a request has no body to read: none came and none is declared.
#[inline]
pub fn none<B: FromClient>(incoming: &B, headers: &http::HeaderMap) -> bool {
    incoming.is_end_stream() && declared(headers).is_none()
}

/// The body phase: the request body as it will go to `upstream`, read (and checked) before a
/// backend is picked; see `read_request_body`.
pub async fn read<B: FromClient>(
    ctx: &RequestCtx<'_>,
    upstream: &Upstream,
    headers: &http::HeaderMap,
    incoming: B,
) -> Result<RequestBody, ProxyError> {
    if none(&incoming, headers) {
        return Ok(RequestBody::Empty);
    }
    // Boxed: reading (and spooling) a body is a large future that a GET never needs. A
    // declared length goes the long way, where its limit is checked.
    Box::pin(read_request_body(
        incoming,
        declared(headers),
        ctx.route
            .and_then(|r| r.body_limits.as_ref())
            .unwrap_or(&ctx.snap.body_limits),
        upstream.buffer_bodies,
    ))
    .await
}

/// Reads `body` up to `limits.buffer_body`; past that the rest streams, or with `spool` (for
/// one-request-at-a-time workers) is read whole into a temp file, so a slow upload holds no
/// worker. Bodies declared or found larger than `max_body` are refused, malformed ones too,
/// before anything goes upstream.
pub async fn read_request_body<B: FromClient>(
    mut body: B,
    declared: Option<u64>,
    limits: &BodyLimits,
    spool: bool,
) -> Result<RequestBody, ProxyError> {
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(ProxyError::new(
            Cause::BodyTooLarge,
            "declared Content-Length over max_body",
        ));
    }
    if body.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut total: u64 = 0;
    let mut trailers = None;
    let mut spooler: Option<RequestSpooler> = None;
    loop {
        let frame = match tokio::time::timeout(
            limits.read_timeout,
            http_body_util::BodyExt::frame(&mut body),
        )
        .await
        {
            Err(_) => {
                return Err(ProxyError::new(
                    Cause::ClientBodyTimeout,
                    "client sent no body data in time",
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let e: BoxError = e.into();
                return Err(ProxyError::new(
                    Cause::BadRequest("bad-body"),
                    format!("request body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        total += frame.len() as u64;
        if total > limits.max_body {
            return Err(ProxyError::new(
                Cause::BodyTooLarge,
                "request body over max_body",
            ));
        }
        if let Some(s) = &mut spooler {
            s.push(&frame).await.map_err(temp_file_error)?;
            continue;
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(frame),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity(f.len() + frame.len());
                buf.extend_from_slice(f);
                buf.extend_from_slice(&frame);
                more = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&frame),
        }
        if total > limits.buffer_body {
            let prefix = match more.take() {
                Some(buf) => buf.freeze(),
                None => first.take().unwrap_or_default(),
            };
            if spool {
                spooler = Some(RequestSpooler::new(prefix).await.map_err(temp_file_error)?);
                continue;
            }
            return Ok(RequestBody::Streaming(Box::new(Streaming::new(
                prefix,
                UnsyncBoxBody::new(http_body_util::BodyExt::map_err(body, Into::into)),
                limits.max_body - total,
                limits.read_timeout,
            ))));
        }
    }
    if let Some(s) = spooler {
        let spooled = s.finish(trailers).await.map_err(temp_file_error)?;
        return Ok(RequestBody::Spooled(Box::new(spooled)));
    }
    let data = match more {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    };
    if data.is_empty() && trailers.is_none() {
        return Ok(RequestBody::Empty);
    }
    Ok(RequestBody::Buffered { data, trailers })
}

fn temp_file_error(e: std::io::Error) -> ProxyError {
    ProxyError::new(Cause::Internal, format_args!("request body temp file: {e}"))
}

/// The response body proxyd sends a client.
pub enum ResponseBody {
    /// Written by proxyd itself (errors, admin pages).
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    /// A worker's body, read ahead so the worker is free before the client has it all.
    Spooled(SpooledResponse),
    /// A static route's file.
    File(crate::files::FileBody),
    /// Either of those, compressed as it streams (the respond phase).
    Compressed(Box<Compressed>),
}

impl ResponseBody {
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody::Full(Some(data))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Spooled(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::File(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Compressed(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Spooled(b) => b.is_end_stream(),
            ResponseBody::File(b) => b.is_end_stream(),
            ResponseBody::Compressed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Spooled(b) => b.size_hint(),
            ResponseBody::File(b) => b.size_hint(),
            ResponseBody::Compressed(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;
    use http_body_util::{Empty, Full};

    use super::super::ctx::testing::{conn, snapshot};
    use super::*;

    const SMALL: &str = "limits: { max_body: 10, buffer_body: 10 }
upstreams:
  app:
    servers: [\"127.0.0.1:9\"]
";

    #[tokio::test]
    async fn a_get_has_no_body_and_a_post_is_held_whole() {
        let snap = snapshot(SMALL);
        let conn = conn("192.0.2.1:1");
        let mut req = Request::new(());
        let ctx = RequestCtx::new(&mut req, &snap, &conn);
        let up = &snap.upstreams[0];
        let nothing = http::HeaderMap::new();
        assert!(none(&Empty::<Bytes>::new(), &nothing));
        let body = read(&ctx, up, &nothing, Empty::<Bytes>::new())
            .await
            .unwrap();
        assert!(matches!(body, RequestBody::Empty));
        let mut h = http::HeaderMap::new();
        h.insert("content-length", http::HeaderValue::from_static("5"));
        let full = Full::new(Bytes::from_static(b"hello"));
        assert!(!none(&full, &h));
        let body = read(&ctx, up, &h, full).await.unwrap();
        assert_eq!(body.buffered_len(), Some(5));
    }

    #[tokio::test]
    async fn too_large_is_refused_before_reading() {
        let snap = snapshot(SMALL);
        let conn = conn("192.0.2.1:1");
        let mut req = Request::new(());
        let ctx = RequestCtx::new(&mut req, &snap, &conn);
        let up = &snap.upstreams[0];
        // Declared too large: refused, even with nothing sent yet.
        let mut h = http::HeaderMap::new();
        h.insert("content-length", http::HeaderValue::from_static("11"));
        let Err(e) = read(&ctx, up, &h, Empty::<Bytes>::new()).await else {
            panic!("a declared 11 bytes over max_body 10 was taken");
        };
        assert_eq!(e.cause, Cause::BodyTooLarge);
        // Found too large while reading.
        let full = Full::new(Bytes::from_static(b"eleven byte"));
        let nothing = http::HeaderMap::new();
        let Err(e) = read(&ctx, up, &nothing, full).await else {
            panic!("11 bytes over max_body 10 were taken");
        };
        assert_eq!(e.cause, Cause::BodyTooLarge);
    }
}
