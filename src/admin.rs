//! The admin listener: `/healthz` (the process is up) and `/readyz` (it accepts traffic; 503
//! once shutdown has begun, so load balancers stop sending before the drain ends).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves until the task is aborted; it keeps answering through the drain.
pub async fn serve(listener: TcpListener, stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let stop = stop.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let draining = *stop.borrow();
            async move { Ok::<_, Infallible>(answer(req.uri().path(), draining)) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, draining: bool) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/readyz" if draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}
