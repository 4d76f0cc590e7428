//! Sending one request to one backend over a pooled or new connection: a failure before any
//! of it was written hands the request back, so the caller may send it elsewhere.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{header, response, Request, Uri, Version};
use hyper::client::conn::http2;

use super::body::RequestBody;
use super::connect::{Connector, Sender};
use super::h1;
use super::pool::{Conn, Received};
use super::Backend;
use crate::config::BackendAddr;
use crate::error::{Cause, ProxyError};

/// A backend's response head and its body, which holds the connection it came on.
pub struct Sent {
    pub head: response::Parts,
    pub body: Received,
    /// It came on a connection that served an earlier request.
    pub reused: bool,
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
/// `response_timeout` bounds the wait for the response head, sending included.
pub async fn send(
    backend: &Arc<Backend>,
    mut req: Request<RequestBody>,
    connector: &Connector,
    response_timeout: Duration,
) -> Result<Sent, Failed> {
    loop {
        let conn = match checkout(backend, connector).await {
            Ok(c) => c,
            Err(e) => return Err(Failed::unsent(e, req)),
        };
        let reused = conn.reused;
        let sent = match conn.sender {
            Sender::Http1(h1) => tokio::time::timeout(response_timeout, h1::send(h1, req))
                .await
                .map(|r| r.map(|(head, body)| (head, Received::H1(body)))),
            Sender::Http2(sender) => {
                to_http2(&mut req, &backend.addr);
                let sending = send_h2(backend, sender, conn.shared, req);
                tokio::time::timeout(response_timeout, sending).await
            }
        };
        let labelled = |e: ProxyError| ProxyError {
            detail: format!("{}: {}", backend.label, e.detail),
            ..e
        };
        match sent {
            Ok(Ok((head, body))) => return Ok(Sent { head, body, reused }),
            Ok(Err(h1::SendError::Unsent(e, back))) if reused => {
                tracing::debug!(backend = %backend.label, error = %e, "pooled connection was closed; using another");
                req = *back;
            }
            Ok(Err(h1::SendError::Unsent(e, back))) => {
                return Err(Failed::unsent(labelled(e), *back))
            }
            Ok(Err(h1::SendError::Failed(e))) => {
                return Err(Failed {
                    error: labelled(e),
                    request: None,
                })
            }
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

/// Sends on a shared HTTP/2 connection; one that is gone is replaced (a failed stream alone
/// leaves it in service).
async fn send_h2(
    backend: &Backend,
    mut sender: http2::SendRequest<RequestBody>,
    shared: Option<u64>,
    req: Request<RequestBody>,
) -> Result<(response::Parts, Received), h1::SendError> {
    match sender.try_send_request(req).await {
        Ok(response) => {
            let (head, body) = response.into_parts();
            Ok((head, Received::H2(body)))
        }
        Err(mut e) => {
            if let Some(id) = shared {
                if e.message().is_some() || sender.is_closed() {
                    backend.pool.drop_shared(id).await;
                }
            }
            match e.take_message() {
                Some(back) => Err(h1::SendError::Unsent(
                    ProxyError::new(Cause::UpstreamClosed, e.error()),
                    Box::new(back),
                )),
                None => Err(h1::SendError::Failed(response_error(e.error()))),
            }
        }
    }
}

/// Turns the HTTP/1.1 request `prepare_request` made into an HTTP/2 one: absolute URI (its
/// scheme and authority become `:scheme` and `:authority`), and Host moved into the
/// authority, as RFC 9113 8.3.1 asks. Hop-by-hop headers are already gone; hyper drops any
/// other connection-specific one (`transfer-encoding`), keeping `te: trailers`.
fn to_http2(req: &mut Request<RequestBody>, backend: &BackendAddr) {
    let tls = matches!(backend, BackendAddr::Tls { .. });
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok()?.parse::<Authority>().ok())
        .or_else(|| req.uri().authority().cloned())
        .or_else(|| backend.host_header().parse().ok())
        .unwrap_or_else(|| Authority::from_static("localhost"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    parts.path_and_query = req.uri().path_and_query().cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(header::TRANSFER_ENCODING);
    *req.version_mut() = Version::HTTP_2;
}

/// A connection for one request: HTTP/2 backends share one, HTTP/1.1 ones take an idle
/// connection or open a new one.
async fn checkout(backend: &Backend, connector: &Connector) -> Result<Conn, ProxyError> {
    // Opening a connection (TCP, TLS, handshake) is a large future, boxed so that the
    // request's own future, moved on every request, stays small.
    if connector.multiplexed() {
        return Box::pin(backend.pool.shared(connector.connect(&backend.addr))).await;
    }
    if let Some(c) = backend.pool.checkout() {
        return Ok(c);
    }
    let sender = Box::pin(connector.connect(&backend.addr)).await?;
    backend
        .pool
        .opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Conn {
        sender,
        reused: false,
        shared: None,
    })
}

fn response_error(e: &hyper::Error) -> ProxyError {
    let cause = if e.is_parse() || e.is_parse_status() {
        Cause::UpstreamProtocol
    } else {
        Cause::UpstreamClosed
    };
    ProxyError::new(cause, e)
}
