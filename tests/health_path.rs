//! A listener's `health_path` (HAProxy's `monitor-uri`), against real proxyd instances and real
//! sockets: answered by proxyd on any host over HTTP/1.1, h2c and TLS (h1 and h2 by ALPN),
//! GET and HEAD, other methods 405; never forwarded, counted or rate limited; 503 while no
//! upstream is ready by `health_ready` (`any`, `every`, `serving`) and `admin.ready` for
//! `/readyz`; and on SIGTERM 503 while the listener still accepts (`timeouts.shutdown_delay`),
//! then the listener closes. `proxyd check` names a bad `health_path` by line and column.

mod common;
use common::procs::{python, Marker};
use common::workers::{wait_for, workers, PATIENCE};
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// proxyd in this test's runtime, with every listener's address (`TestProxy` keeps the first).
struct Proxy {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn start(yaml: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml).unwrap();
        let loaded = proxyd::config::load_file(&path)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{yaml}"));
        let app = proxyd::app::App::start(&loaded, &mut Default::default()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let addrs = app.local_addrs();
        let admin = app.admin_addr();
        let done = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Proxy {
            addrs,
            admin,
            stop: Some(stop),
            done: Some(done),
            _dir: dir,
        }
    }

    /// Starts the shutdown (as SIGTERM does) without waiting for it.
    fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for the drain (and the workers) to finish.
    async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
    }
}

/// `method` for `target` with Host `host` on a fresh HTTP/1.1 connection.
async fn h1(addr: SocketAddr, method: &str, target: &str, host: &str) -> Got {
    H1::connect(addr)
        .await
        .send(req(method, target, host))
        .await
}

fn req(method: &str, target: &str, host: &str) -> Request<BoxBody> {
    Request::builder()
        .method(method)
        .uri(target)
        .header("host", host)
        .body(full(""))
        .unwrap()
}

/// The sum of every `proxyd_requests_total` series.
async fn requests_total(admin: SocketAddr) -> f64 {
    get(admin, "/metrics")
        .await
        .text()
        .lines()
        .filter(|l| l.starts_with("proxyd_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn assert_ok(got: &Got, what: &str) {
    assert_eq!(got.status, StatusCode::OK, "{what}: {}", got.text());
    assert_eq!(got.text(), "ok\n", "{what}");
    assert_eq!(got.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{what}"
    );
}

#[tokio::test]
async fn answered_by_proxyd_on_any_host_never_forwarded_counted_or_rate_limited() {
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\n  - addr: \"127.0.0.1:0\"\n    redirect_https: true\n    health_path: /lb\nadmin:\n  addr: \"127.0.0.1:0\"\nlimits:\n  rate: {{ per_ip: \"1/h\", burst: 1 }}\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let (addr, redirecting) = (proxy.addrs[0], proxy.addrs[1]);
    let admin = proxy.admin.unwrap();

    // Any host, the query ignored, on fresh and kept-alive connections, far past the rate.
    for (target, host) in [
        ("/healthz", "test.local"),
        ("/healthz", "whatever.example"),
        ("/healthz?from=lb", "10.0.0.1"),
        ("http://other.example/healthz", "other.example"),
    ] {
        assert_ok(&h1(addr, "GET", target, host).await, target);
    }
    let mut kept = H1::connect(addr).await;
    for _ in 0..20 {
        assert_ok(&kept.get("/healthz").await, "kept-alive");
    }
    let head = kept.send(req("HEAD", "/healthz", "x")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some("3"));
    assert!(head.body.is_empty());
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let got = kept.send(req(method, "/healthz", "x")).await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(got.header("allow"), Some("GET, HEAD"), "{method}");
        assert_eq!(got.header("cache-control"), Some("no-store"), "{method}");
    }
    // Only the exact path: these are the app's.
    for other in ["/healthz/", "/healthzz", "/HEALTHZ"] {
        let got = kept.get(other).await;
        assert_ne!(got.text(), "ok\n", "{other}");
    }
    // Over h2c (prior knowledge) on the same port.
    let mut h2 = H2::connect(addr).await;
    for _ in 0..5 {
        assert_ok(&h2.send(req("GET", "/healthz", "x")).await, "h2c");
    }
    let head = h2.send(req("HEAD", "/healthz", "x")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let post = h2.send(req("POST", "/healthz", "x")).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // A redirecting listener answers its health path and redirects the rest.
    assert_ok(
        &h1(redirecting, "GET", "/lb", "site.example").await,
        "redirect_https",
    );
    let moved = h1(redirecting, "GET", "/healthz", "site.example").await;
    assert_eq!(moved.status, StatusCode::PERMANENT_REDIRECT);

    // The first of the three misses above reached the app and used the one request the
    // rate lets through; the rest were refused: the limit is on.
    let seen: Vec<String> = backend
        .requests()
        .iter()
        .map(|s| s.uri.to_string())
        .collect();
    assert_eq!(seen, ["/healthz/"], "only the one miss reached the app");
    assert_eq!(kept.get("/app").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_ok(&kept.get("/healthz").await, "after a 429");
    // A last counted request on this connection: once it is counted, every answer before it
    // on the connection has been too, and only the app's requests were.
    assert_eq!(
        kept.get("/last").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let deadline = Instant::now() + PATIENCE;
    let counted = loop {
        let n = requests_total(admin).await;
        if n >= 5.0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // /healthz/, /healthzz, /HEALTHZ, /app, /last (and the redirect on the other listener:
    // counted when its outcome is in, so it may or may not be yet).
    assert!(
        counted == 5.0 || counted == 6.0,
        "requests counted: {counted} (health checks must not be)"
    );
    assert_eq!(backend.request_count(), 1);
    proxy.shutdown().await;
}

/// An upstream whose one worker never listens: never ready. (A starting worker answers the
/// shutdown only once its start has timed out: a short one keeps the test short.)
fn never_ready(marker: &Marker) -> String {
    workers(
        marker,
        &[python(), "-c", "import time; time.sleep(600)"],
        1,
        &[("start_timeout", "2s")],
    )
}

#[tokio::test]
async fn ready_by_any_every_or_serving_and_admin_ready() {
    let marker = Marker::new("health_path_rules");
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\n    health_ready: every\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\n    health_ready: serving\nadmin:\n  addr: \"127.0.0.1:0\"\n  ready: any\ntimeouts:\n  shutdown_grace: 5s\nupstreams:\n  app:\n    servers: [\"{}\"]\n  slow:\n{}routes:\n  - {{ path: /, upstream: app }}\n  - {{ path: /slow/, upstream: slow }}\n",
        backend.addr,
        never_ready(&marker)
    );
    let proxy = Proxy::start(&yaml).await;
    let (any, every, serving) = (proxy.addrs[0], proxy.addrs[1], proxy.addrs[2]);
    // `app` has a ready backend, `slow` none.
    assert_ok(&h1(any, "GET", "/healthz", "x").await, "any");
    let got = h1(every, "GET", "/healthz", "x").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.text(), "not ready: an upstream has no ready backend\n");
    assert_eq!(got.header("cache-control"), Some("no-store"));
    let head = H1::connect(every)
        .await
        .send(req("HEAD", "/healthz", "x"))
        .await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(head.body.is_empty());
    assert_ok(&h1(serving, "GET", "/healthz", "x").await, "serving");
    // /readyz with `admin.ready: any`: 200, and it still names what is not ready.
    let readyz = get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(readyz.status, StatusCode::OK, "{}", readyz.text());
    let text = readyz.text();
    assert!(text.starts_with("ready\n"), "{text}");
    assert!(text.contains("slow: no ready backend\n"), "{text}");
    assert_eq!(backend.request_count(), 0);
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test]
async fn no_upstream_ready_is_503_on_h1_and_h2c() {
    let marker = Marker::new("health_path_none_ready");
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\nadmin:\n  addr: \"127.0.0.1:0\"\ntimeouts:\n  shutdown_grace: 5s\nupstreams:\n  slow:\n{}",
        never_ready(&marker)
    );
    let proxy = Proxy::start(&yaml).await;
    let addr = proxy.addrs[0];
    let got = h1(addr, "GET", "/healthz", "x").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.text(), "not ready: no upstream has a ready backend\n");
    // No upstream name on the traffic port; the admin's /readyz (default `every`) names it.
    assert!(!got.text().contains("slow"));
    let got = H2::connect(addr)
        .await
        .send(req("GET", "/healthz", "x"))
        .await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let readyz = get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(readyz.text().contains("slow: no ready backend"));
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

/// Polls `/healthz` on fresh connections (each one accepted by the listener) until it says
/// 503; what it said.
async fn until_draining(addr: SocketAddr) -> Got {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = h1(addr, "GET", "/healthz", "lb.internal").await;
        if got.status == StatusCode::SERVICE_UNAVAILABLE {
            return got;
        }
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "/healthz still 200 {PATIENCE:?} after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_says_503_while_the_listener_still_accepts_and_serves() {
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\nadmin:\n  addr: \"127.0.0.1:0\"\ntimeouts:\n  shutdown_delay: 10m\n  shutdown_grace: 5s\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let mut proxy = Proxy::start(&yaml).await;
    let (addr, admin) = (proxy.addrs[0], proxy.admin.unwrap());
    let mut kept = H1::connect(addr).await;
    assert_ok(&kept.get("/healthz").await, "before");
    let mut h2 = H2::connect(addr).await;
    assert_ok(&h2.send(req("GET", "/healthz", "x")).await, "h2 before");

    proxy.begin_shutdown();
    // A fresh connection is accepted and told 503: the load balancer takes the instance out
    // while it still serves.
    let got = until_draining(addr).await;
    assert_eq!(got.text(), "draining\n");
    assert_eq!(got.header("cache-control"), Some("no-store"));
    let app = h1(addr, "GET", "/app", "site.example").await;
    assert_eq!(app.status, StatusCode::OK, "the app is still served");
    assert_eq!(backend.request_count(), 1);
    let fresh_h2 = H2::connect(addr)
        .await
        .send(req("GET", "/healthz", "x"))
        .await;
    assert_eq!(fresh_h2.status, StatusCode::SERVICE_UNAVAILABLE);
    // Connections opened before say so too, and stay open: the drain has not begun.
    let got = kept.get("/healthz").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(got.header("connection"), Some("close"));
    assert_eq!(kept.get("/app").await.status, StatusCode::OK);
    let got = h2.send(req("GET", "/healthz", "x")).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let readyz = get(admin, "/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.text(), "draining\n");
    // The rest of the delay is not waited for: the runtime ends with the test.
}

#[tokio::test]
async fn after_shutdown_delay_the_listener_closes_and_the_drain_ends() {
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\ntimeouts:\n  shutdown_delay: 300ms\n  shutdown_grace: 5s\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let mut proxy = Proxy::start(&yaml).await;
    let addr = proxy.addrs[0];
    assert_ok(&h1(addr, "GET", "/healthz", "x").await, "before");
    proxy.begin_shutdown();
    // Accepted connections answer 200 (before the flip) or 503; then connections are refused.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let Ok(stream) = TcpStream::connect(addr).await else {
            break;
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        // An accept racing the close may be dropped unanswered.
        if let Ok(resp) = sender.send_request(req("GET", "/healthz", "x")).await {
            let got = read_whole(resp).await;
            assert!(
                matches!(got.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
                "{got:?}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "still accepting after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(PATIENCE, proxy.shutdown())
        .await
        .expect("the drain ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_the_health_path_before_the_listener_closes() {
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\ntimeouts:\n  shutdown_delay: 10m\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let proxy = ProxydProcess::start(&yaml);
    let addr = proxy.addr;
    assert_ok(&h1(addr, "GET", "/healthz", "x").await, "before");
    proxy.signal("TERM");
    let got = until_draining(addr).await;
    assert_eq!(got.text(), "draining\n");
    assert_eq!(
        h1(addr, "GET", "/app", "x").await.status,
        StatusCode::OK,
        "still serving"
    );
    wait_for("the shutdown_delay log line", || {
        proxy
            .stderr_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("shutdown_delay"))
    })
    .await;
    assert_eq!(backend.request_count(), 1);
    // Dropping the process kills it.
}

#[tokio::test]
async fn over_tls_by_alpn_h1_and_h2() {
    use rcgen::{CertificateParams, KeyPair};
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    health_path: /healthz\n    tls:\n      certs: [{{ cert: \"{}\", key: \"{}\" }}]\n      hsts: \"max-age=60\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        cert_path.display(),
        key_path.display(),
        backend.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let addr = proxy.addrs[0];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    for alpn in ["http/1.1", "h2"] {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn.as_bytes()));
        let io = TokioIo::new(tls);
        let got = if alpn == "h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            read_whole(
                sender
                    .send_request(req("GET", "https://localhost/healthz", "localhost"))
                    .await
                    .unwrap(),
            )
            .await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            read_whole(
                sender
                    .send_request(req("GET", "/healthz", "localhost"))
                    .await
                    .unwrap(),
            )
            .await
        };
        assert_ok(&got, alpn);
        assert_eq!(
            got.header("strict-transport-security"),
            Some("max-age=60"),
            "{alpn}"
        );
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    proxy.shutdown().await;
}

#[test]
fn check_names_a_bad_health_path_by_line_and_column() {
    let base = "listen:\n  - addr: \"127.0.0.1:8080\"\n{keys}upstreams:\n  app:\n    servers: [\"127.0.0.1:9000\"]\n";
    for (keys, want) in [
        (
            "    health_path: healthz\n",
            "proxy.yaml:3:18: listen: health_path: \"healthz\" must start with /",
        ),
        (
            "    health_path: \"/healthz?full=1\"\n",
            "proxy.yaml:3:18: listen: health_path: \"/healthz?full=1\": a path only (no query or fragment)",
        ),
        (
            "    health_ready: every\n",
            "proxy.yaml:3:19: listen: health_ready is only used with health_path",
        ),
        (
            "    health_path: /healthz\n    health_ready: most\n",
            "proxy.yaml:4:19: unknown variant `most`, expected one of any, every, serving",
        ),
    ] {
        let (ok, text) = check(&base.replace("{keys}", keys));
        assert!(!ok, "{keys}");
        assert!(text.contains(want), "{keys:?}:\n{text}");
    }
    let (ok, text) = check(&base.replace(
        "{keys}",
        "    health_path: /healthz\n    health_ready: every\n",
    ));
    assert!(ok, "{text}");
}
