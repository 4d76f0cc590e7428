//! The admin listener: `/healthz` (the process is up), `/readyz` (every upstream has a ready
//! backend, or any one by `admin.ready`; 503 once shutdown has begun, so load balancers stop
//! sending before the listeners close, given `timeouts.shutdown_delay`), `/status` (JSON:
//! listeners, upstreams, backends, workers; see `status`), `/` (the live status page,
//! `status.html`), `POST /reload` (TLS certificates; a bad new one is refused and the old one
//! stays), `POST /upstreams/{name}/restart` (a rolling restart of that upstream's workers),
//! `POST /upgrade` (hand the listening sockets to a new proxyd binary and answer once it
//! serves, or with why it did not), and `POST /maintenance/on|off`, `GET /maintenance` (the
//! maintenance switch: the routes it covers answer 503 with the maintenance page). With `admin.token` set, every POST needs
//! `Authorization: Bearer <token>`; GETs stay open (the listener binds loopback by default).
//! `client` is the other side: `proxyd status`.

pub mod auth;
pub mod client;
pub mod status;

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Ready;
use crate::obs::Observers;
use crate::proxy::body::{FromClient, ResponseBody};
use crate::proxy::{ConnInfo, ListenerSettings, Pending};
use crate::server::drain::Drain;
use crate::server::h1::{self, HeadLimits};
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
    /// `admin.ready`: when `/readyz` says 200.
    pub ready: Ready,
    /// When proxyd started, for /status.
    pub started: std::time::SystemTime,
    pub metrics: Arc<crate::obs::metrics::Metrics>,
    pub upgrader: Arc<Upgrader>,
}

/// The admin's own head limits and clocks, fixed rather than the proxy listeners' (which a
/// config may tighten for the public): its clients are operators, scrapers and `proxyd`
/// itself. The idle time-out outlasts the usual scrape intervals (15 s to 60 s) so a
/// scraper's kept-alive connection is not closed under it between two scrapes.
const LIMITS: HeadLimits = HeadLimits {
    header_timeout: Duration::from_secs(30),
    idle_timeout: Duration::from_secs(120),
    send_timeout: Duration::from_secs(30),
    max_head_bytes: 64 * 1024,
    max_headers: 100,
};

/// Serves `admin` on `listener` until the task is aborted; it keeps answering through the
/// proxy's drain. After a hand-over to a new proxyd (an upgrade) it stops accepting (the new
/// one answers on the same socket), finishes the requests it has and returns.
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
    let api = Api(Arc::new(admin));
    // The admin's own drain: the proxy's leaves it answering.
    let drain = Drain::new();
    let closing = Arc::new(AtomicBool::new(false));
    let settings = Arc::new(ListenerSettings::default());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = upgrader.handed_over() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = h1::Ctx {
            handler: api.clone(),
            info: ConnInfo::new(peer, &settings, None),
            // Admin requests are neither logged nor counted, as before.
            observers: Observers::default(),
            closing: closing.clone(),
            limits: LIMITS,
            watcher: drain.watcher(),
        };
        let started = tokio::time::Instant::now();
        tokio::spawn(h1::serve(stream, BytesMut::new(), started, ctx));
    }
    drop(listener);
    closing.store(true, Ordering::Relaxed);
    // As for the proxy listeners: a request on an open connection is still answered (with
    // `Connection: close`) for a moment before idle connections are closed.
    let _ = tokio::time::timeout(crate::upgrade::CLOSE_WINDOW, async {
        while drain.count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drain.shutdown().await;
}

/// The admin as the HTTP/1.1 server's handler.
#[derive(Clone)]
struct Api(Arc<Admin>);

impl h1::Handler for Api {
    fn handle<B: FromClient>(
        &self,
        req: Request<B>,
        _: &ConnInfo,
    ) -> impl Future<Output = (Response<ResponseBody>, Option<Pending>)> + Send {
        // No endpoint reads a body: the server discards what the client sent.
        let (head, _) = req.into_parts();
        async move { (self.0.handle(&head).await, None) }
    }
}

impl Admin {
    /// Checks the token on POSTs, then answers.
    async fn handle(&self, req: &http::request::Parts) -> Response<ResponseBody> {
        if req.method == Method::POST && !auth::allowed(self.token.as_deref(), &req.headers) {
            return auth::unauthorized();
        }
        let mut resp = self.answer(&req.method, req.uri.path()).await;
        if self.upgrader.is_handed_over() {
            // A new proxyd answers on this socket now: the next request goes there.
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        resp
    }

    async fn answer(&self, method: &Method, path: &str) -> Response<ResponseBody> {
        match (method, path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => {
                let snap = self.state.load();
                self.metrics.set_maintenance(snap.maintenance.switch.on());
                self.metrics
                    .response(&snap.figures(), &self.supervisors.figures())
                    .map(ResponseBody::full)
            }
            (&Method::GET, "/maintenance") => self.maintenance(None),
            (&Method::POST, "/maintenance/on") => self.maintenance(Some(true)),
            (&Method::POST, "/maintenance/off") => self.maintenance(Some(false)),
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

    /// Turns the switch on or off (`set`), then says where it stands. Held outside the
    /// snapshot, so it outlives a reload.
    fn maintenance(&self, set: Option<bool>) -> Response<ResponseBody> {
        let snap = self.state.load();
        let switch = &snap.maintenance.switch;
        if let Some(on) = set {
            switch.set_api(on);
            tracing::info!(on, "maintenance switched by the admin API");
        }
        let mut body = format!(
            "maintenance: {}
",
            if switch.on() { "on" } else { "off" }
        );
        if switch.by_file() {
            // Turning the API's side off leaves the file's on.
            if let Some(f) = &snap.maintenance.file {
                let _ = writeln!(body, "on while {} exists", f.display());
            }
        }
        text(StatusCode::OK, body)
    }

    fn status(&self) -> Response<ResponseBody> {
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

    fn readiness(&self) -> Response<ResponseBody> {
        if *self.stop.borrow() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
        }
        let failures = self.supervisors.failures();
        let snap = self.state.load();
        let mut problems = String::new();
        for (name, why) in &failures {
            let _ = writeln!(problems, "{name}: {why}");
        }
        for u in &snap.upstreams {
            if u.ready_count() == 0 {
                let _ = writeln!(problems, "{}: no ready backend", u.name);
            }
        }
        let ready = match self.ready {
            // As before `admin.ready`: any problem at all is one.
            Ready::Every => problems.is_empty(),
            rule => snap.ready_by(rule),
        };
        match ready {
            // What is not ready is still said when the rule lets it pass.
            true => text(StatusCode::OK, format!("ready\n{problems}")),
            false => text(StatusCode::SERVICE_UNAVAILABLE, problems),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    typed(status, "text/plain; charset=utf-8", body)
}

fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body.into()));
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
