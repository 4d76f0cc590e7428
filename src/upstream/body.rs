//! The request body proxyd sends upstream: empty, buffered whole, spooled to a temp file
//! (`spool`), or streamed from the client past `buffer_body`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::{sleep, Instant, Sleep};

use super::spool::SpooledRequest;
use crate::error::{Cause, ProxyError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body of any protocol (proxyd's HTTP/1.1 body, hyper's h2 `Incoming`),
/// boxed once it streams past `buffer_body`.
pub type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

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

impl Streaming {
    /// `prefix` was read already; `rest` follows, at most `allowed` more bytes, each read
    /// within `timeout` of the previous one.
    pub fn new(prefix: Bytes, rest: ClientBody, allowed: u64, timeout: Duration) -> Streaming {
        Streaming {
            prefix: Some(prefix),
            rest,
            allowed,
            timeout,
            timer: Box::pin(sleep(timeout)),
        }
    }
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
            return Poll::Ready(Some(Err(Box::new(ProxyError::new(
                Cause::ClientBodyTimeout,
                "client sent no body data in time",
            )))));
        };
        self.timer.as_mut().reset(Instant::now() + self.timeout);
        Poll::Ready(match next {
            None => None,
            Some(Err(e)) => Some(Err(Box::new(ProxyError::new(
                Cause::BadRequest("bad-body"),
                format_args!("request body: {e}"),
            )))),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.allowed {
                        return Poll::Ready(Some(Err(Box::new(ProxyError::new(
                            Cause::BodyTooLarge,
                            "request body over max_body",
                        )))));
                    }
                    self.allowed -= n;
                }
                Some(Ok(frame))
            }
        })
    }
}
