//! Sending one request to one backend over a pooled or new connection, and the rules for
//! retrying it on another backend.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;

use super::body::RequestBody;
use super::error::{Cause, ProxyError};
use crate::upstream::connect::connect;
use crate::upstream::pool::Conn;
use crate::upstream::Backend;

/// A backend's response head and the connection it came on.
pub struct Sent {
    pub response: Response<Incoming>,
    pub conn: Conn,
}

/// A failed attempt; `request` is handed back when none of it reached the backend.
pub struct Failed {
    pub error: ProxyError,
    pub request: Option<Request<RequestBody>>,
}

impl Failed {
    fn unsent(error: ProxyError, request: Request<RequestBody>) -> Failed {
        Failed {
            error: error.nothing_sent(),
            request: Some(request),
        }
    }
}

/// Sends `req` to `backend`. A pooled connection found closed before the request was written
/// is dropped and the request goes out on the next one (any method: the backend saw nothing).
pub async fn send(
    backend: &Arc<Backend>,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<Sent, Failed> {
    loop {
        let mut conn = match backend.pool.checkout().await {
            Some(c) => c,
            None => match connect(&backend.addr, connect_timeout).await {
                Ok(sender) => {
                    backend
                        .pool
                        .opened
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Conn {
                        sender,
                        reused: false,
                    }
                }
                Err(e) => return Err(Failed::unsent(e, req)),
            },
        };
        let sent = tokio::time::timeout(response_timeout, conn.sender.try_send_request(req)).await;
        match sent {
            Ok(Ok(response)) => return Ok(Sent { response, conn }),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if conn.reused => {
                    tracing::debug!(backend = %backend.label, "pooled connection was closed; using another");
                    req = back;
                }
                Some(back) => {
                    let error = ProxyError::new(Cause::UpstreamClosed, e.error());
                    return Err(Failed::unsent(error, back));
                }
                None => {
                    return Err(Failed {
                        error: response_error(e.error(), &backend.label),
                        request: None,
                    })
                }
            },
            Err(_) => {
                let error = ProxyError::new(
                    Cause::UpstreamResponseTimeout,
                    format_args!(
                        "{} sent no response head within {response_timeout:?}",
                        backend.label
                    ),
                );
                return Err(Failed {
                    error,
                    request: None,
                });
            }
        }
    }
}

fn response_error(e: &hyper::Error, backend: &str) -> ProxyError {
    let cause = if e.is_parse() || e.is_parse_status() {
        Cause::UpstreamProtocol
    } else {
        Cause::UpstreamClosed
    };
    ProxyError::new(cause, format_args!("{backend}: {e}"))
}

/// Methods whose repetition has the same effect as one request (RFC 9110, 9.2.2), and any
/// request the client marked with an `Idempotency-Key`.
pub fn is_idempotent(method: &Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

/// A copy to send again after the backend failed before answering; None when the body was
/// streamed (it cannot be replayed).
pub fn replayable_copy(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let body = req.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Points `req` at `backend` when the client's Host is not passed on.
pub fn set_backend_host(req: &mut Request<RequestBody>, backend: &Backend) {
    if let Ok(v) = http::HeaderValue::from_str(&backend.label) {
        req.headers_mut().insert(header::HOST, v);
    }
}
