//! Sending one request to one backend over a pooled or new connection.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
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

/// Sends `req` to `backend`. A pooled connection found closed before the request was written
/// is dropped and the request goes out on the next one (any method: the backend saw nothing).
pub async fn send(
    backend: &Arc<Backend>,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<Sent, ProxyError> {
    loop {
        let mut conn = match backend.pool.checkout().await {
            Some(c) => c,
            None => {
                let sender = connect(&backend.addr, connect_timeout).await?;
                backend
                    .pool
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Conn {
                    sender,
                    reused: false,
                }
            }
        };
        let sent = tokio::time::timeout(response_timeout, conn.sender.try_send_request(req)).await;
        match sent {
            Ok(Ok(response)) => return Ok(Sent { response, conn }),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if conn.reused => {
                    tracing::debug!(backend = %backend.label, "pooled connection was closed; using another");
                    req = back;
                }
                Some(_) => {
                    return Err(ProxyError::new(Cause::UpstreamClosed, e.error()).nothing_sent());
                }
                None => return Err(response_error(e.error(), &backend.label)),
            },
            Err(_) => {
                return Err(ProxyError::new(
                    Cause::UpstreamResponseTimeout,
                    format_args!(
                        "{} sent no response head within {response_timeout:?}",
                        backend.label
                    ),
                ))
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
