//! Readiness and health probes: an HTTP GET of the health path (2xx is healthy), or a TCP
//! connect when no path is set.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::config::BackendAddr;
use crate::upstream::body::RequestBody;
use crate::upstream::connect::connect;

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
    let mut sender = connect(addr, timeout).await.map_err(|e| e.to_string())?;
    let Some(path) = path else {
        return Ok(());
    };
    let req = Request::get(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::USER_AGENT, "proxyd-health")
        .body(RequestBody::Empty)
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read the body so the worker is not left writing to a closed socket.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{path} answered {status}"))
    }
}
