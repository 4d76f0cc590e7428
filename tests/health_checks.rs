//! Active health checks of `servers:` (`upstreams.NAME.health`): a backend whose health path
//! fails is taken out of the rotation and put back when it passes again, one that does not
//! answer within the time-out counts as failing, one that fails from the start never gets a
//! request, and requests meanwhile all succeed; checks follow a reload; the checks go over
//! TLS (SNI and Host as the server is written) and HTTP/2; /status, the metrics and
//! `proxyd check` show them. Real backends on 127.0.0.1:0; every wait polls /status or the
//! metrics, bounded.

mod common;
use common::*;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const PATIENCE: Duration = Duration::from_secs(20);

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// A backend whose health paths answer what the test sets (200 until told otherwise);
/// every other request gets 200 "app".
struct App {
    backend: TestBackend,
    codes: Arc<Mutex<HashMap<String, u16>>>,
}

impl App {
    async fn start(health_paths: &[&str]) -> App {
        let codes: HashMap<String, u16> =
            health_paths.iter().map(|p| (p.to_string(), 200)).collect();
        let codes = Arc::new(Mutex::new(codes));
        let answers = codes.clone();
        let backend = TestBackend::start(move |seen| {
            let code = answers.lock().unwrap().get(seen.uri.path()).copied();
            let mut resp = Response::new(full(if code.is_some() { "health" } else { "app" }));
            *resp.status_mut() = StatusCode::from_u16(code.unwrap_or(200)).unwrap();
            resp
        })
        .await;
        App { backend, codes }
    }

    fn set(&self, path: &str, code: u16) {
        self.codes.lock().unwrap().insert(path.to_string(), code);
    }

    fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    /// Requests other than health checks that reached it.
    fn served(&self) -> usize {
        let codes = self.codes.lock().unwrap();
        self.backend
            .requests()
            .iter()
            .filter(|s| !codes.contains_key(s.uri.path()))
            .count()
    }

    /// The health checks that reached it, on `path`.
    fn checks(&self, path: &str) -> Vec<Seen> {
        self.backend
            .requests()
            .into_iter()
            .filter(|s| s.uri.path() == path)
            .collect()
    }
}

fn config(servers: &[String], upstream_extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nheaders:\n  debug: true\nupstreams:\n  app:\n    servers: [{}]\n    balance: round_robin\n{upstream_extra}",
        list.join(", ")
    )
}

/// The backend `addr` of upstream `app` in a /status report.
fn backend(s: &Value, addr: &str) -> Value {
    s["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr)
        .cloned()
        .unwrap_or(Value::Null)
}

fn health_state(s: &Value, addr: SocketAddr) -> String {
    backend(s, &addr.to_string())["health"]["state"]
        .as_str()
        .unwrap_or("-")
        .to_string()
}

/// Waits until each backend's checks say `state` ("healthy", "unhealthy").
async fn wait_health(admin: SocketAddr, want: &[(SocketAddr, &str)]) -> Value {
    let what = format!("health states {want:?}");
    status_until(admin, &what, |s| {
        want.iter().all(|(a, state)| health_state(s, *a) == *state)
    })
    .await
}

async fn metrics(admin: SocketAddr) -> String {
    within("GET /metrics", get(admin, "/metrics")).await.text()
}

/// The value of the one sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Requests sent back to back on one keep-alive connection until stopped: every status
/// that was not 200 is kept.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut client = H1::connect(addr).await;
            while !stop2.load(Ordering::SeqCst) {
                let got = client.get("/load").await;
                if got.status != StatusCode::OK {
                    bad.push(format!("{} {}", got.status, got.text()));
                }
                sent2.fetch_add(1, Ordering::SeqCst);
            }
            bad
        });
        Load { stop, sent, task }
    }

    /// Stops it; returns how many were sent, and the failures.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let bad = within("the load", self.task).await.unwrap();
        (self.sent.load(Ordering::SeqCst), bad)
    }
}

/// `n` GETs, one after another on one connection: which backend served each.
async fn served_by(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut client = H1::connect(addr).await;
    let mut by = Vec::new();
    for _ in 0..n {
        let got = within("a request", client.get("/x")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        by.push(got.header("proxyd-backend").unwrap_or("?").to_string());
    }
    by
}

/// GETs one after another until `backend` serves one (other clients may be taking turns in
/// the round robin meanwhile); panics after 100.
async fn reaches(addr: SocketAddr, backend: SocketAddr) {
    let mut client = H1::connect(addr).await;
    for _ in 0..100 {
        let got = within("a request", client.get("/x")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        if got.header("proxyd-backend") == Some(&*backend.to_string()) {
            return;
        }
    }
    panic!("{backend} served none of 100 requests");
}

#[tokio::test]
async fn a_failing_backend_is_taken_out_and_readmitted() {
    let (a, b) = (
        App::start(&["/health"]).await,
        App::start(&["/health"]).await,
    );
    let yaml = config(
        &[a.addr().to_string(), b.addr().to_string()],
        "    health: { path: /health, interval: 50ms, timeout: 1s, healthy: 2, unhealthy: 2 }\n",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    let s = wait_health(admin, &[(a.addr(), "healthy"), (b.addr(), "healthy")]).await;
    assert_eq!(s["upstreams"][0]["health"]["path"], "/health");
    assert_eq!(s["upstreams"][0]["ready_backends"], 2);
    let load = Load::start(proxy.addr);

    // /health answers 500: after two failures in a row, no more requests.
    b.set("/health", 500);
    let s = wait_health(admin, &[(b.addr(), "unhealthy")]).await;
    let hb = &backend(&s, &b.addr().to_string());
    assert_eq!(hb["state"], "unhealthy");
    assert_eq!(hb["health"]["last"]["result"], "fail");
    assert_eq!(
        hb["health"]["last"]["detail"],
        "/health answered 500 Internal Server Error"
    );
    assert!(hb["health"]["failures"].as_u64().unwrap() >= 2, "{hb}");
    assert_eq!(s["upstreams"][0]["ready_backends"], 1);
    let m = metrics(admin).await;
    let labels = [("upstream", "app"), ("backend", &*b.addr().to_string())];
    assert_eq!(sample(&m, "proxyd_backend_up", &labels), Some(0.0), "{m}");
    let failed = [labels[0], labels[1], ("result", "fail")];
    assert!(
        sample(&m, "proxyd_health_checks_total", &failed).unwrap() >= 2.0,
        "{m}"
    );
    let before = b.served();
    let by = served_by(proxy.addr, 20).await;
    assert!(by.iter().all(|x| *x == a.addr().to_string()), "{by:?}");
    assert_eq!(b.served(), before, "the unhealthy backend got requests");

    // Healthy again after two passes in a row: back in the rotation.
    b.set("/health", 200);
    wait_health(admin, &[(b.addr(), "healthy")]).await;
    reaches(proxy.addr, b.addr()).await;
    let m = metrics(admin).await;
    assert_eq!(sample(&m, "proxyd_backend_up", &labels), Some(1.0), "{m}");

    let (sent, bad) = load.finish().await;
    assert!(sent > 0);
    assert!(
        bad.is_empty(),
        "{} of {sent} requests failed: {bad:?}",
        bad.len()
    );
    // The checks: GET of the path, Host the server as written.
    let check = &b.checks("/health")[0];
    assert_eq!(check.method, http::Method::GET);
    assert_eq!(check.headers["host"], b.addr().to_string().as_str());
    assert_eq!(check.headers["user-agent"], "proxyd-health");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_ejected_backend_returns_only_when_its_checks_pass() {
    let (a, b) = (
        App::start(&["/health"]).await,
        App::start(&["/health"]).await,
    );
    let yaml = config(
        &[a.addr().to_string(), b.addr().to_string()],
        "    health: { path: /health, interval: 50ms, timeout: 1s, unhealthy: 1 }\n    eject: { failures: 1, base: 300ms, max: 300ms }\n    retries: { attempts: 1 }\n",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    wait_health(admin, &[(a.addr(), "healthy"), (b.addr(), "healthy")]).await;

    // b answers requests with 500: the first one ejects it (passive).
    b.set("/x", 500);
    let mut client = H1::connect(proxy.addr).await;
    let mut ejected = false;
    for _ in 0..100 {
        let got = within("a request", client.get("/x")).await;
        if got.status == StatusCode::INTERNAL_SERVER_ERROR {
            ejected = true;
            break;
        }
    }
    assert!(ejected, "b never answered a request");
    let s = status(admin).await;
    assert_eq!(s["upstreams"][0]["counters"]["ejected"], 1, "{s:#}");
    // Then its checks fail too, and its requests would pass again.
    b.set("/health", 500);
    b.set("/x", 200);
    wait_health(admin, &[(b.addr(), "unhealthy")]).await;
    // The ejection ends; the checks still say no: b stays out.
    status_until(admin, "b's ejection to end", |s| {
        backend(s, &b.addr().to_string())["ejected"] == false
    })
    .await;
    let served = b.served();
    let by = served_by(proxy.addr, 20).await;
    assert!(by.iter().all(|x| *x == a.addr().to_string()), "{by:?}");
    assert_eq!(b.served(), served);
    // Its checks pass: back.
    b.set("/health", 200);
    wait_health(admin, &[(b.addr(), "healthy")]).await;
    reaches(proxy.addr, b.addr()).await;
    proxy.shutdown().await;
}

/// What discovery does with a new address of a `servers:` upstream: `server_backend` + `add`,
/// and `remove` when it vanishes.
#[tokio::test]
async fn a_backend_added_at_run_time_joins_after_its_first_pass_and_its_checks_end_with_it() {
    let (a, c) = (
        App::start(&["/health"]).await,
        App::start(&["/health"]).await,
    );
    c.set("/health", 503);
    let yaml = config(
        &[a.addr().to_string()],
        "    health: { path: /health, interval: 50ms, timeout: 1s }\n    slow_start: 1s\n",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    wait_health(admin, &[(a.addr(), "healthy")]).await;
    let load = Load::start(proxy.addr);

    let up = proxy.upstream("app");
    let added = up.server_backend(
        proxyd::config::BackendAddr::Tcp(c.addr()),
        1,
        true,
        None,
        Some("c.internal:8000"),
    );
    assert!(
        !added.is_ready() && added.is_checking(),
        "out of the rotation until checked"
    );
    up.add(added.clone());
    wait_health(admin, &[(c.addr(), "unhealthy")]).await;
    let by = served_by(proxy.addr, 20).await;
    assert!(by.iter().all(|x| *x == a.addr().to_string()), "{by:?}");
    assert_eq!(c.served(), 0, "a backend failing its checks got requests");

    c.set("/health", 200);
    wait_health(admin, &[(c.addr(), "healthy")]).await;
    reaches(proxy.addr, c.addr()).await;
    assert_eq!(c.checks("/health")[0].headers["host"], "c.internal:8000");

    // Gone from the group: no requests, and its checks stop.
    up.remove(&added);
    let checks_then = c.checks("/health").len();
    let a_then = a.checks("/health").len();
    status_until(admin, "five more rounds of a's checks", |_| {
        a.checks("/health").len() >= a_then + 5
    })
    .await;
    assert!(
        c.checks("/health").len() <= checks_then + 1,
        "the removed backend is still checked"
    );
    let served = c.served();
    served_by(proxy.addr, 10).await;
    assert_eq!(c.served(), served);

    let (sent, bad) = load.finish().await;
    assert!(
        bad.is_empty(),
        "{} of {sent} requests failed: {bad:?}",
        bad.len()
    );
    proxy.shutdown().await;
}

/// A backend that accepts connections and reads what comes, but never answers.
struct Silent {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Silent { addr, received }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_backend_that_does_not_answer_within_the_timeout_fails() {
    let a = App::start(&["/health"]).await;
    let silent = Silent::start().await;
    let yaml = config(
        &[a.addr().to_string(), silent.addr.to_string()],
        "    health: { path: /health, interval: 50ms, timeout: 200ms }\n",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    let s = wait_health(admin, &[(a.addr(), "healthy"), (silent.addr, "unhealthy")]).await;
    let last = &backend(&s, &silent.addr.to_string())["health"]["last"];
    assert_eq!(last["result"], "timeout", "{s:#}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap()
            .contains("no answer within 200ms"),
        "{last}"
    );
    let by = served_by(proxy.addr, 10).await;
    assert!(by.iter().all(|x| *x == a.addr().to_string()), "{by:?}");
    let m = metrics(admin).await;
    let labels = [
        ("upstream", "app"),
        ("backend", &*silent.addr.to_string()),
        ("result", "timeout"),
    ];
    assert!(
        sample(&m, "proxyd_health_checks_total", &labels).unwrap() >= 1.0,
        "{m}"
    );
    // It saw health checks only.
    let seen = silent.text();
    assert!(seen.contains("GET /health HTTP/1.1"), "{seen:?}");
    assert!(!seen.contains("GET /x"), "{seen:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn at_start_a_failing_backend_never_gets_a_request() {
    let (a, b) = (
        App::start(&["/health"]).await,
        App::start(&["/health"]).await,
    );
    b.set("/health", 503);
    let yaml = config(
        &[b.addr().to_string(), a.addr().to_string()],
        "    health: { path: /health, interval: 50ms, timeout: 1s }\n",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    // At once, before any verdict: the requests wait for one instead of going to a backend
    // nothing has checked yet.
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(served_by(proxy.addr, 5)))
        .collect();
    for c in clients {
        let by = within("the clients", c).await.unwrap();
        assert!(by.iter().all(|x| *x == a.addr().to_string()), "{by:?}");
    }
    assert_eq!(b.served(), 0, "the failing backend got a request");
    assert_eq!(a.served(), 40);
    let s = wait_health(proxy.admin.unwrap(), &[(b.addr(), "unhealthy")]).await;
    assert_eq!(backend(&s, &b.addr().to_string())["state"], "unhealthy");
    proxy.shutdown().await;
}

#[tokio::test]
async fn checks_follow_a_reload() {
    let (a, b) = (
        App::start(&["/health", "/ready"]).await,
        App::start(&["/health", "/ready"]).await,
    );
    b.set("/ready", 500);
    let servers = [a.addr().to_string(), b.addr().to_string()];
    let proxy = TestProxy::from_yaml(&config(
        &servers,
        "    health: { path: /health, interval: 50ms, timeout: 1s }\n",
    ))
    .await;
    let admin = proxy.admin.unwrap();
    wait_health(admin, &[(a.addr(), "healthy"), (b.addr(), "healthy")]).await;
    let load = Load::start(proxy.addr);

    // New settings: checks on /ready, which b fails. The reload answers once the new checks
    // have their first verdicts: b is out of the rotation from the swap on.
    std::fs::write(
        proxy.config_path(),
        config(
            &servers,
            "    health: { path: /ready, interval: 50ms, timeout: 1s }\n",
        ),
    )
    .unwrap();
    let reloaded = within("POST /reload", post(admin, "/reload", "")).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    let s = status(admin).await;
    assert_eq!(s["upstreams"][0]["health"]["path"], "/ready");
    assert_eq!(health_state(&s, b.addr()), "unhealthy", "{s:#}");
    let before = b.served();
    let by = served_by(proxy.addr, 10).await;
    assert!(by.iter().all(|x| *x == a.addr().to_string()), "{by:?}");
    assert_eq!(b.served(), before);
    // The old upstream's checks stopped with it: /health is asked no more.
    let health_then = b.checks("/health").len();
    status_until(admin, "a few /ready rounds", |_| {
        b.checks("/ready").len() >= health_then + 5
    })
    .await;
    assert!(
        b.checks("/health").len() <= health_then + 1,
        "the old checks still run"
    );

    // No health: any more: b is back at once, with no checks.
    std::fs::write(proxy.config_path(), config(&servers, "")).unwrap();
    let reloaded = within("POST /reload", post(admin, "/reload", "")).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    let s = status(admin).await;
    assert!(s["upstreams"][0]["health"].is_null(), "{s:#}");
    assert!(
        backend(&s, &b.addr().to_string())["health"].is_null(),
        "{s:#}"
    );
    reaches(proxy.addr, b.addr()).await;

    let (sent, bad) = load.finish().await;
    assert!(
        bad.is_empty(),
        "{} of {sent} requests failed: {bad:?}",
        bad.len()
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Over the upstream's own protocol: TLS with SNI and Host as written, HTTP/2

/// A request as `Proto` saw it: its version, its Host (or :authority), the connection's SNI.
type Arrived = (http::Version, String, Option<String>);

/// A hyper backend, TLS or cleartext, HTTP/2 (by ALPN, or h2c) or HTTP/1.1, that records
/// each request's version, Host or :authority, and SNI; /health answers `code`.
struct Proto {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Arrived>>>,
    code: Arc<std::sync::atomic::AtomicU16>,
}

impl Proto {
    async fn start(tls: Option<Arc<rustls::ServerConfig>>, h2c: bool) -> Proto {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let code = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (seen2, code2) = (seen.clone(), code.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, code, tls) = (seen2.clone(), code2.clone(), tls.clone());
                tokio::spawn(async move {
                    let Some(cfg) = tls else {
                        return serve(tcp, h2c, None, seen, code).await;
                    };
                    let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                        return;
                    };
                    let sni = s.get_ref().1.server_name().map(str::to_string);
                    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve(s, h2, sni, seen, code).await;
                });
            }
        });
        Proto { addr, seen, code }
    }

    fn seen(&self) -> Vec<Arrived> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve<I>(
    io: I,
    h2: bool,
    sni: Option<String>,
    seen: Arc<Mutex<Vec<Arrived>>>,
    code: Arc<std::sync::atomic::AtomicU16>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (seen, code, sni) = (seen.clone(), code.clone(), sni.clone());
        async move {
            let host = req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let health = req.uri().path() == "/health";
            seen.lock().unwrap().push((req.version(), host, sni));
            let _ = req.into_body().collect().await;
            let mut resp = Response::new(full("ok"));
            if health {
                *resp.status_mut() = StatusCode::from_u16(code.load(Ordering::SeqCst)).unwrap();
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

/// A CA (its PEM) and a server config for `localhost` signed by it, offering `alpn`.
fn localhost_tls(alpn: &[&[u8]]) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (ca.pem(), Arc::new(cfg))
}

/// Starts proxyd on one server of upstream `app`, `upstream` its further keys (`ca.pem`
/// names the CA PEM, if any, written to a directory that lives as long as the proxy).
async fn proxy_to(
    server: &str,
    upstream: &str,
    ca: Option<&str>,
) -> (TestProxy, tempfile::TempDir) {
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{server}\"]\n{upstream}    health: {{ path: /health, interval: 50ms, timeout: 2s }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    if let Some(pem) = ca {
        std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
    }
    let yaml = yaml.replace("ca.pem", &dir.path().join("ca.pem").display().to_string());
    (TestProxy::from_yaml(&yaml).await, dir)
}

/// The one backend's health verdict, once it has one.
async fn verdict(admin: SocketAddr) -> String {
    let s = status_until(admin, "a verdict", |s| {
        let st = &s["upstreams"][0]["backends"][0]["health"]["state"];
        st == "healthy" || st == "unhealthy"
    })
    .await;
    s["upstreams"][0]["backends"][0]["health"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn checks_go_over_tls_with_the_server_name_as_written() {
    let (ca, cfg) = localhost_tls(&[b"http/1.1"]);
    let backend = Proto::start(Some(cfg), false).await;
    let server = format!("https://localhost:{}", backend.addr.port());
    let (proxy, _ca) = proxy_to(&server, "    tls: { ca: ca.pem }\n", Some(&ca)).await;
    let admin = proxy.admin.unwrap();
    assert_eq!(verdict(admin).await, "healthy");
    let (version, host, sni) = backend.seen()[0].clone();
    assert_eq!(version, http::Version::HTTP_11);
    assert_eq!(host, format!("localhost:{}", backend.addr.port()));
    assert_eq!(sni.as_deref(), Some("localhost"));
    // A failing answer over TLS takes it out.
    backend.code.store(503, Ordering::SeqCst);
    status_until(admin, "unhealthy over TLS", |s| {
        s["upstreams"][0]["backends"][0]["health"]["state"] == "unhealthy"
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn checks_speak_http2_to_h2_and_h2c_upstreams() {
    // h2 by ALPN over TLS.
    let (ca, cfg) = localhost_tls(&[b"h2"]);
    let tls = Proto::start(Some(cfg), false).await;
    let server = format!("https://localhost:{}", tls.addr.port());
    let (proxy, _ca) = proxy_to(
        &server,
        "    protocol: h2\n    tls: { ca: ca.pem }\n",
        Some(&ca),
    )
    .await;
    assert_eq!(verdict(proxy.admin.unwrap()).await, "healthy");
    let (version, authority, _) = tls.seen()[0].clone();
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(authority, format!("localhost:{}", tls.addr.port()));
    proxy.shutdown().await;

    // h2c: cleartext, prior knowledge; a failing answer is a failure.
    let h2c = Proto::start(None, true).await;
    h2c.code.store(500, Ordering::SeqCst);
    let (proxy, _dir) = proxy_to(&h2c.addr.to_string(), "    protocol: h2c\n", None).await;
    assert_eq!(verdict(proxy.admin.unwrap()).await, "unhealthy");
    assert_eq!(h2c.seen()[0].0, http::Version::HTTP_2);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// proxyd check

#[test]
fn check_names_the_place_of_a_bad_health_block() {
    let servers =
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\n";
    let workers = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"sh\"]\n";
    for (base, extra, want) in [
        (
            servers,
            "    health: { path: health }\n",
            "proxy.yaml:6:21: upstreams.app.health.path: must start with /",
        ),
        (
            servers,
            "    health: { interval: 0s }\n",
            "proxy.yaml:6:25: must be longer than 0s",
        ),
        (
            servers,
            "    health: { healthy: 1001 }\n",
            "proxy.yaml:6:24: 1001 is out of range: expected a number from 1 to 1000",
        ),
        (
            servers,
            "    health: { unhealthy_restart: 3 }\n",
            "proxy.yaml:6:15: unknown field `unhealthy_restart`",
        ),
        (
            workers,
            "    health: { path: /health }\n",
            "proxy.yaml:7:5: upstreams.app.health: not used with workers: their health checks are workers.health",
        ),
    ] {
        let (ok, out) = check(&format!("{base}{extra}"));
        assert!(!ok, "{extra:?} passed: {out}");
        assert!(out.contains(want), "{extra:?}:\n got {out}\nwant {want}");
    }
    let (ok, out) = check(&format!(
        "{servers}    health: {{ path: /health, interval: 1s, timeout: 500ms, healthy: 2, unhealthy: 3 }}\n"
    ));
    assert!(ok, "{out}");
}
