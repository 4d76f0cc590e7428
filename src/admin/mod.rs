//! The admin listener: `/healthz` (the process is up), `/readyz` (every upstream has a ready
//! backend; 503 once shutdown has begun, so load balancers stop sending before the drain
//! ends), `/status` (JSON: listeners, upstreams, backends, workers; see `status`), `/` (the
//! live status page, `status.html`), `POST /reload` (TLS certificates; a bad new one is
//! refused and the old one stays), and `POST /upstreams/{name}/restart` (a rolling restart of
//! that upstream's workers), and `POST /upgrade` (hand the listening sockets to a new proxyd
//! binary and answer once it serves, or with why it did not). With `admin.token` set, every POST needs
//! `Authorization: Bearer <token>`; GETs stay open (the listener binds loopback by default).
//! `client` is the other side: `proxyd status`.

pub mod auth;
pub mod client;
pub mod status;

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

use crate::server::listeners::ListenerSet;
use crate::server::reload::Reloader;
use crate::server::upgrade::{UpgradeError, Upgrader};
use crate::state::Snapshot;
use crate::workers::Supervisors;

/// The status page, built into the binary: no files to deploy, nothing fetched from elsewhere.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the admin answers from.
pub struct Admin {
    /// Turns true once shutdown has begun (`/readyz` says 503 then).
    pub stop: watch::Receiver<bool>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub supervisors: Arc<Supervisors>,
    pub reloader: Arc<Reloader>,
    /// The proxy listeners, for /status.
    pub listeners: Arc<ListenerSet>,
    /// `admin.token`: required on POSTs when set.
    pub token: Option<String>,
    /// When proxyd started, for /status.
    pub started: std::time::SystemTime,
    pub metrics: Arc<crate::obs::metrics::Metrics>,
    pub upgrader: Arc<Upgrader>,
}

/// Serves `admin` on `listener` until the task is aborted; it keeps answering through the
/// drain. After a hand-over to a new proxyd (an upgrade) it stops accepting (the new one
/// answers on the same socket), finishes the requests it has and returns.
pub async fn serve(listener: std::net::TcpListener, admin: Admin) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the admin listener");
            return;
        }
    };
    tracing::info!(addr = ?listener.local_addr().ok(), "admin listening");
    let upgrader = admin.upgrader.clone();
    let admin = Arc::new(admin);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = upgrader.handed_over() => break,
        };
        let (stream, _) = match accepted {
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
            async move { Ok::<_, Infallible>(admin.handle(&req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    // As for the proxy listeners: a request on an open connection is still answered (with
    // `Connection: close`) for a moment before idle connections are closed.
    let _ = tokio::time::timeout(crate::upgrade::CLOSE_WINDOW, async {
        while graceful.count() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    graceful.shutdown().await;
}

impl Admin {
    /// Checks the token on POSTs, then answers.
    async fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() == Method::POST && !auth::allowed(self.token.as_deref(), req.headers()) {
            return auth::unauthorized();
        }
        let mut resp = self.answer(req.method(), req.uri().path()).await;
        if self.upgrader.is_handed_over() {
            // A new proxyd answers on this socket now: the next request goes there.
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        resp
    }

    async fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        match (method, path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                self.metrics
                    .response(&self.state.load().figures(), &self.supervisors.figures())
            }
            (&Method::GET, "/status") => self.status(),
            (&Method::GET, "/") => typed(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            (&Method::POST, "/reload") => match self.reloader.reload().await {
                Ok(summary) => text(StatusCode::OK, format!("{summary}\n")),
                Err(e) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
            },
            (&Method::POST, "/upgrade") => match self.upgrader.upgrade().await {
                Ok(h) => text(
                    StatusCode::OK,
                    format!(
                        "upgraded: proxyd pid {} serves now; pid {} drains its connections and exits\n",
                        h.new_pid, h.old_pid
                    ),
                ),
                Err(e @ UpgradeError::Busy(_)) => text(StatusCode::CONFLICT, format!("{e}\n")),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("upgrade failed, this proxyd keeps serving: {e}\n"),
                ),
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

    fn status(&self) -> Response<Full<Bytes>> {
        let report = status::collect(
            &self.state.load(),
            &self.supervisors,
            &self.listeners.info(),
            self.started,
            *self.stop.borrow(),
        );
        match serde_json::to_vec_pretty(&report) {
            Ok(body) => typed(StatusCode::OK, "application/json", body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
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
    typed(status, "text/plain; charset=utf-8", body)
}

fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    // Live figures: never from a cache.
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}
