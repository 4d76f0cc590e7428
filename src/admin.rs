//! The admin listener: `/healthz` (the process is up), `/readyz` (every upstream has a ready
//! backend; 503 once shutdown has begun, so load balancers stop sending before the drain
//! ends), `POST /reload` (TLS certificates; a bad new one is refused and the old one stays), and
//! `POST /upstreams/{name}/restart` (a rolling restart of that upstream's workers).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Snapshot;
use crate::server::Certificates;
use crate::workers::Supervisors;

/// What the admin answers from.
struct Admin {
    stop: watch::Receiver<bool>,
    state: Arc<ArcSwap<Snapshot>>,
    supervisors: Arc<Supervisors>,
    certificates: Certificates,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Serves until the task is aborted; it keeps answering through the drain.
pub async fn serve(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    state: Arc<ArcSwap<Snapshot>>,
    supervisors: Arc<Supervisors>,
    certificates: Certificates,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let admin = Arc::new(Admin {
        stop,
        state,
        supervisors,
        certificates,
        metrics,
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.answer(req.method(), req.uri().path()).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    async fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        match (method, path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                self.metrics.response(&self.state.load(), &self.supervisors)
            }
            (&Method::POST, "/reload") => match self.certificates.reload().as_slice() {
                [] => text(StatusCode::OK, "reloaded\n".into()),
                errors => text(StatusCode::UNPROCESSABLE_ENTITY, errors.join("\n") + "\n"),
            },
            (&Method::POST, p) => match p
                .strip_prefix("/upstreams/")
                .and_then(|r| r.strip_suffix("/restart"))
            {
                Some(name) => match self.supervisors.rolling_restart(Some(name)).await {
                    Ok(()) => text(StatusCode::OK, format!("restarted the workers of {name}\n")),
                    Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
                },
                None => text(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        if *self.stop.borrow() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
        }
        let mut problems = String::new();
        for (name, why) in self.supervisors.failures() {
            let _ = writeln!(problems, "{name}: {why}");
        }
        for u in &self.state.load().upstreams {
            if u.ready_count() == 0 {
                let _ = writeln!(problems, "{}: no ready backend", u.name);
            }
        }
        if problems.is_empty() {
            text(StatusCode::OK, "ready\n".into())
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, problems)
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
