//! Reloading the whole config without a restart (POST /reload; SIGHUP does the same): routes
//! and upstreams swap atomically, a bad file keeps the old config serving, unchanged workers
//! stay, changed workers are replaced by ready ones, and nothing in flight fails.
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::procs::*;
use common::*;
use http::{Request, StatusCode};

async fn reload(admin: std::net::SocketAddr) -> Got {
    let mut c = H1::connect(admin).await;
    c.send(
        Request::post("/reload")
            .header("host", "admin")
            .body(full(""))
            .unwrap(),
    )
    .await
}

fn two_backends(a: std::net::SocketAddr, b: std::net::SocketAddr, route_to: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nheaders: {{ debug: true }}\nupstreams:\n  a:\n    servers: [\"{a}\"]\n  b:\n    servers: [\"{b}\"]\nroutes:\n  - {{ path: \"/\", upstream: {route_to} }}\n"
    )
}

#[tokio::test]
async fn routes_swap_and_a_bad_file_keeps_the_old_config() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let proxy = TestProxy::from_yaml(&two_backends(a.addr, b.addr, "a")).await;
    let admin = proxy.admin.unwrap();
    let mut kept = H1::connect(proxy.addr).await;
    assert_eq!(
        kept.get("/1").await.header("proxyd-backend"),
        Some(a.addr.to_string().as_str())
    );

    std::fs::write(proxy.config_path(), two_backends(a.addr, b.addr, "b")).unwrap();
    let got = reload(admin).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    // The keep-alive connection opened before the reload goes on, now routed to b.
    assert_eq!(
        kept.get("/2").await.header("proxyd-backend"),
        Some(b.addr.to_string().as_str())
    );

    std::fs::write(
        proxy.config_path(),
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  a:\n    servers: [\"nope\"]\n",
    )
    .unwrap();
    let bad = reload(admin).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad.text().contains("test.yaml:5:15: upstreams.a.servers:"),
        "{}",
        bad.text()
    );
    assert_eq!(
        kept.get("/3").await.header("proxyd-backend"),
        Some(b.addr.to_string().as_str())
    );
    assert_eq!((a.request_count(), b.request_count()), (1, 2));
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_their_connections_drain() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let proxy = TestProxy::from_yaml(&two_backends(a.addr, b.addr, "a")).await;
    let admin = proxy.admin.unwrap();
    let with_second = two_backends(a.addr, b.addr, "a")
        .replace("listen:\n", "listen:\n  - addr: \"127.0.0.2:0\"\n");
    std::fs::write(proxy.config_path(), &with_second).unwrap();
    let got = reload(admin).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let added: std::net::SocketAddr = got
        .text()
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split(|c: char| c == ';' || c.is_whitespace()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no new listener in {:?}", got.text()));
    assert_eq!(added.ip().to_string(), "127.0.0.2");
    let mut on_second = H1::connect(added).await;
    assert_eq!(on_second.get("/x").await.status, StatusCode::OK);

    // Removed again: no new connections there, the open one drains normally.
    std::fs::write(proxy.config_path(), two_backends(a.addr, b.addr, "a")).unwrap();
    let got = reload(admin).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(
        got.text()
            .contains(&format!("stopped listening on {added}")),
        "{}",
        got.text()
    );
    assert!(
        tokio::net::TcpStream::connect(added).await.is_err(),
        "still accepting"
    );
    assert_eq!(on_second.get("/y").await.status, StatusCode::OK);
    assert_eq!(get(proxy.addr, "/z").await.status, StatusCode::OK);

    // A port that cannot be had calls the reload off.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let clash = two_backends(a.addr, b.addr, "b").replace(
        "listen:\n",
        &format!("listen:\n  - addr: \"127.0.0.1:{port}\"\n"),
    );
    std::fs::write(proxy.config_path(), clash).unwrap();
    let got = reload(admin).await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        got.text()
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{}",
        got.text()
    );
    assert_eq!(
        get(proxy.addr, "/").await.header("proxyd-backend"),
        Some(a.addr.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let proxy = Arc::new(TestProxy::from_yaml(&two_backends(a.addr, b.addr, "a")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in 0..4 {
        let (proxy, stop, served) = (proxy.clone(), stop.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let mut kept = H1::connect(proxy.addr).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let got = if c % 2 == 0 {
                    kept.get("/k").await
                } else {
                    get(proxy.addr, "/n").await
                };
                assert_eq!(got.status, StatusCode::OK, "client {c} request {n}");
                n += 1;
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for i in 0..6 {
        let to = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(proxy.config_path(), two_backends(a.addr, b.addr, to)).unwrap();
        let got = reload(proxy.admin.unwrap()).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        let before = served.load(Ordering::Relaxed);
        while served.load(Ordering::Relaxed) < before + 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(a.request_count() > 0 && b.request_count() > 0);
}

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");

fn workers_config(marker: &Marker, greeting: &str, other: std::net::SocketAddr) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"{}\", \"{APP}\"]\n      count: 2\n      env: {{ {MARKER_VAR}: \"{}\", GREETING: \"{greeting}\" }}\n      health: {{ path: /healthz, interval: 200ms }}\n  other:\n    servers: [\"{other}\"]\nroutes:\n  - {{ path: \"/other\", upstream: other }}\n  - {{ path: \"/\", upstream: app }}\n",
        python(),
        marker.0
    )
}

async fn pids(addr: std::net::SocketAddr, n: usize) -> HashSet<u32> {
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let got = get(addr, "/pid").await;
        if got.status == StatusCode::OK {
            seen.insert(got.text().trim().parse().unwrap());
            if seen.len() == n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_workers_stay_and_changed_ones_are_replaced_by_ready_ones() {
    let marker = Marker::new("reload-workers");
    let other = TestBackend::echo().await;
    let proxy = Arc::new(TestProxy::from_yaml(&workers_config(&marker, "one", other.addr)).await);
    let first = pids(proxy.addr, 2).await;
    assert_eq!(first.len(), 2);

    // Only a route changes (moved lines, same app settings): the workers stay.
    let moved =
        workers_config(&marker, "one", other.addr).replace("routes:\n", "# a comment\nroutes:\n");
    std::fs::write(proxy.config_path(), moved).unwrap();
    let got = reload(proxy.admin.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(
        got.text().contains("2 upstreams kept, 0 new or changed"),
        "{}",
        got.text()
    );
    assert_eq!(pids(proxy.addr, 2).await, first);

    // The app's environment changes: new workers, ready before they take traffic, while a
    // client keeps sending.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = get(proxy.addr, "/").await;
                assert_eq!(got.status, StatusCode::OK, "request {n}: {got:?}");
                n += 1;
            }
            n
        })
    };
    std::fs::write(
        proxy.config_path(),
        workers_config(&marker, "two", other.addr),
    )
    .unwrap();
    let got = reload(proxy.admin.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(
        got.text().contains("1 upstreams kept, 1 new or changed"),
        "{}",
        got.text()
    );
    let second = pids(proxy.addr, 2).await;
    assert!(second.is_disjoint(&first), "{first:?} {second:?}");
    stop.store(true, Ordering::Relaxed);
    assert!(client.await.unwrap() > 0);
    // The old workers were drained and stopped.
    for pid in first {
        for _ in 0..500 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(pid), "old worker {pid} still running");
    }
    Arc::try_unwrap(proxy).ok().unwrap().shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_workers_that_never_get_ready_call_the_reload_off() {
    let marker = Marker::new("reload-broken");
    let other = TestBackend::echo().await;
    let proxy = TestProxy::from_yaml(&workers_config(&marker, "one", other.addr)).await;
    let first = pids(proxy.addr, 2).await;
    assert_eq!(first.len(), 2);
    // The new command crashes at once: the reload must not replace working workers with it.
    let broken = workers_config(&marker, "one", other.addr)
        .replace(APP, "/nonexistent/app.py")
        .replace(
            "      count: 2\n",
            "      count: 2\n      restart: { backoff: 10ms, max_restarts: 1 }\n",
        );
    std::fs::write(proxy.config_path(), broken).unwrap();
    let got = reload(proxy.admin.unwrap()).await;
    assert_eq!(
        got.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        got.text()
    );
    assert!(got.text().contains("did not get ready"), "{}", got.text());
    assert_eq!(
        pids(proxy.addr, 2).await,
        first,
        "the old workers keep serving"
    );
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test]
async fn access_log_settings_change_with_a_reload() {
    let a = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let config = |log: &std::path::Path| {
        format!(
            "{}access_log:\n  - {{ format: json, path: {:?} }}\n",
            two_backends(a.addr, a.addr, "a"),
            log
        )
    };
    let proxy = TestProxy::from_yaml(&config(&first)).await;
    get(proxy.addr, "/before").await;
    std::fs::write(proxy.config_path(), config(&second)).unwrap();
    let got = reload(proxy.admin.unwrap()).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(
        got.text().contains("access logs reopened"),
        "{}",
        got.text()
    );
    get(proxy.addr, "/after").await;
    // The writers flush within a fraction of a second; poll with a bound.
    let mut seen = (String::new(), String::new());
    for _ in 0..300 {
        seen = (
            std::fs::read_to_string(&first).unwrap_or_default(),
            std::fs::read_to_string(&second).unwrap_or_default(),
        );
        if seen.0.contains("/before") && seen.1.contains("/after") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.0.contains("/before") && !seen.0.contains("/after"),
        "{seen:?}"
    );
    assert!(
        seen.1.contains("/after") && !seen.1.contains("/before"),
        "{seen:?}"
    );
}

/// A TLS client that trusts `cert` and speaks HTTP/1.1 over it.
async fn https_get(
    addr: std::net::SocketAddr,
    cert: &rustls_pki_types::CertificateDer<'static>,
    path: &str,
) -> std::io::Result<Got> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .body(full(""))
                .unwrap(),
        )
        .await
        .map_err(std::io::Error::other)?;
    Ok(read_whole(resp).await)
}

#[tokio::test]
async fn a_kept_listener_takes_new_settings_for_new_connections() {
    let a = TestBackend::echo().await;
    let base = two_backends(a.addr, a.addr, "a");
    let proxy = TestProxy::from_yaml(&base).await;
    let admin = proxy.admin.unwrap();
    let mut kept = H1::connect(proxy.addr).await;
    assert_eq!(kept.get("/plain").await.status, StatusCode::OK);

    // The same address (as configured) now redirects to https, and the head limit shrinks.
    let redirecting = base.replacen(
        "  - addr: \"127.0.0.1:0\"\n",
        "  - addr: \"127.0.0.1:0\"\n    redirect_https: true\n",
        1,
    ) + "limits:\n  max_header_bytes: 8KiB\n";
    std::fs::write(proxy.config_path(), &redirecting).unwrap();
    let got = reload(admin).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(got.text().contains("new settings on"), "{}", got.text());
    // New connections get the new settings; the connection opened before keeps its own.
    let fresh = get(proxy.addr, "/x").await;
    assert_eq!(fresh.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(fresh.header("location"), Some("https://test.local/x"));
    let big = "a".repeat(12000);
    let mut c = H1::connect(proxy.addr).await;
    let oversize = c
        .send(
            Request::get("/big")
                .header("host", "test.local")
                .header("x-big", big.as_str())
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(oversize.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let old = kept
        .send(
            Request::get("/still-plain")
                .header("host", "test.local")
                .header("x-big", big.as_str())
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(old.status, StatusCode::OK, "{}", old.text());

    // Then TLS on the same address: new connections must handshake; the kept one goes on.
    let certs = tempfile::tempdir().unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(certs.path().join("localhost.pem"), issued.cert.pem()).unwrap();
    std::fs::write(
        certs.path().join("localhost.key"),
        issued.signing_key.serialize_pem(),
    )
    .unwrap();
    let trusted = issued.cert.der().clone();
    let dir = certs.path().display();
    let tls = base.replacen(
        "  - addr: \"127.0.0.1:0\"\n",
        &format!("  - addr: \"127.0.0.1:0\"\n    tls:\n      certs: [{{ cert: \"{dir}/localhost.pem\", key: \"{dir}/localhost.key\" }}]\n"),
        1,
    );
    std::fs::write(proxy.config_path(), &tls).unwrap();
    let got = reload(admin).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let secure = https_get(proxy.addr, &trusted, "/secure").await.unwrap();
    assert_eq!(secure.status, StatusCode::OK, "{}", secure.text());
    assert_eq!(kept.get("/kept").await.status, StatusCode::OK);
    let status: serde_json::Value =
        serde_json::from_str(&get(admin, "/status").await.text()).unwrap();
    assert_eq!(status["listeners"][0]["tls"], true, "{status}");

    // A certificate that does not load calls the reload off: TLS keeps serving.
    std::fs::write(
        proxy.config_path(),
        tls.replace("localhost.key", "missing.key"),
    )
    .unwrap();
    let bad = reload(admin).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().contains("missing.key"), "{}", bad.text());
    let secure = https_get(proxy.addr, &trusted, "/still-secure")
        .await
        .unwrap();
    assert_eq!(secure.status, StatusCode::OK);
}
