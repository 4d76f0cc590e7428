//! Request bodies (buffered before a backend is picked; past `buffer_body` streamed, or for
//! workers spooled to a temp file) and response bodies (a backend's stream, a worker's body
//! read ahead into a buffer, or a body proxyd wrote itself).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::{sleep, Instant, Sleep};

use super::error::{Cause, ProxyError};
use super::spool::{RequestSpooler, SpooledRequest, SpooledResponse};
use crate::upstream::pool::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body of any protocol (proxyd's HTTP/1.1 body, hyper's h2 `Incoming`),
/// boxed once it streams past `buffer_body`.
pub type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

/// What a request body from a client must be: its frames are read by `read_request_body`.
pub trait FromClient: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> FromClient for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// Limits applied while reading a client's request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_body: u64,
    pub buffer_body: u64,
    /// Longest wait between two reads.
    pub read_timeout: Duration,
    /// Memory for a worker's response read ahead of its client; the rest goes to a file.
    pub buffer_response: u64,
}

/// The request body proxyd sends upstream.
pub enum RequestBody {
    Empty,
    /// Read whole; can be replayed.
    Buffered {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Larger than `buffer_body`: what was read so far, then the rest as it arrives.
    Streaming(Box<Streaming>),
    /// Larger than `buffer_body`, for a worker: read whole, the rest in a temp file; replayable.
    Spooled(Box<SpooledRequest>),
}

pub struct Streaming {
    prefix: Option<Bytes>,
    rest: ClientBody,
    /// Bytes still allowed before `max_body` is exceeded.
    allowed: u64,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
}

impl RequestBody {
    /// The whole body, when it was buffered.
    pub fn buffered_len(&self) -> Option<u64> {
        match self {
            RequestBody::Empty => Some(0),
            RequestBody::Buffered { data, .. } => Some(data.len() as u64),
            RequestBody::Spooled(s) => Some(s.len()),
            RequestBody::Streaming(_) => None,
        }
    }

    /// A copy for a retry, when the body was read whole.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Buffered { data, trailers } => Some(RequestBody::Buffered {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            RequestBody::Spooled(s) => Some(RequestBody::Spooled(Box::new(s.replay()))),
            RequestBody::Streaming(_) => None,
        }
    }

    pub fn has_trailers(&self) -> bool {
        match self {
            RequestBody::Buffered { trailers, .. } => trailers.is_some(),
            RequestBody::Spooled(s) => s.has_trailers(),
            _ => false,
        }
    }
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
            return Ok(RequestBody::Streaming(Box::new(Streaming {
                prefix: Some(prefix),
                rest: UnsyncBoxBody::new(http_body_util::BodyExt::map_err(body, Into::into)),
                allowed: limits.max_body - total,
                timeout: limits.read_timeout,
                timer: Box::pin(sleep(limits.read_timeout)),
            })));
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

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Buffered { data, trailers } => {
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(data)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Streaming(s) => s.poll_next(cx),
            RequestBody::Spooled(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Buffered { data, trailers } => data.is_empty() && trailers.is_none(),
            RequestBody::Spooled(s) => s.is_end_stream(),
            RequestBody::Streaming(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Buffered { data, .. } => SizeHint::with_exact(data.len() as u64),
            RequestBody::Spooled(s) => SizeHint::with_exact(s.len()),
            RequestBody::Streaming(_) => SizeHint::default(),
        }
    }
}

impl Streaming {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        let Poll::Ready(next) = polled else {
            ready!(self.timer.as_mut().poll(cx));
            return Poll::Ready(Some(Err("client request body timed out".into())));
        };
        self.timer.as_mut().reset(Instant::now() + self.timeout);
        Poll::Ready(match next {
            None => None,
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.allowed {
                        return Poll::Ready(Some(Err("request body over max_body".into())));
                    }
                    self.allowed -= n;
                }
                Some(Ok(frame))
            }
        })
    }
}

/// The response body proxyd sends a client.
pub enum ResponseBody {
    /// Written by proxyd itself (errors, admin pages).
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    /// A worker's body, read ahead so the worker is free before the client has it all.
    Spooled(SpooledResponse),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Spooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Spooled(b) => b.size_hint(),
        }
    }
}
