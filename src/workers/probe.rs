//! Readiness and health probes: an HTTP GET of the health path (2xx is healthy), or a TCP
//! connect when no path is set.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::config::BackendAddr;
use crate::upstream::body::RequestBody;
use crate::upstream::connect::connect;
use crate::upstream::h1;

/// One probe, bounded by `timeout`.
pub async fn probe(
    addr: &BackendAddr,
    path: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, run(addr, path, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn run(addr: &BackendAddr, path: Option<&str>, timeout: Duration) -> Result<(), String> {
    let conn = connect(addr, timeout).await.map_err(|e| e.to_string())?;
    let Some(path) = path else {
        return Ok(());
    };
    let req = Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "proxyd-health")
        .body(RequestBody::Empty)
        .map_err(|e| e.to_string())?;
    let (head, body) = match h1::send(conn, req).await {
        Ok(r) => r,
        Err(h1::SendError::Unsent(e, _) | h1::SendError::Failed(e)) => return Err(e.to_string()),
    };
    let status = head.status;
    // Read the body so the worker is not left writing to a closed socket.
    let _ = body.collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{path} answered {status}"))
    }
}
