//! Upstream servers from DNS (issue 18): host names in `servers:` and an upstream's `srv:`,
//! answered by a responder inside the test (tests/common/dns.rs) whose answers change while
//! proxyd runs; backends on 127.0.0.2, .3 and .4, on one port when a name maps to several.
//! Every wait polls /status or the responder's query log; nothing sleeps for readiness.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::dns::{Dns, Entry, Mode};
use common::{check, get, status, BoxBody, TestBackend, TestProxy, H1};
use hickory_resolver::proto::rr::RecordType;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

const V2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const V3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// Longest any wait below may take (a loaded machine included).
const PATIENCE: Duration = Duration::from_secs(30);

/// A config with an admin listener, debug headers (`proxyd-backend`), the responder as the
/// only name server and quick refreshes; `upstream` is the body of upstream `app`.
fn yaml(dns: &Dns, upstream: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin: {{ addr: \"127.0.0.1:0\" }}\nheaders: {{ debug: true }}\n\
         resolver:\n  nameservers: [\"{}\"]\n  timeout: 300ms\n\
         discovery: {{ min_refresh: 200ms, max_refresh: 2s }}\n\
         upstreams:\n  app:\n{upstream}",
        dns.addr
    )
}

/// Answers "OK from ADDR" at once; `/slow` sends its head at once and its body once
/// `release` says true.
fn handler(
    addr: SocketAddr,
    release: watch::Receiver<bool>,
) -> impl Fn(&common::Seen) -> Response<BoxBody> {
    move |seen| {
        if seen.uri.path() == "/slow" {
            let mut rx = release.clone();
            let body = futures_util::stream::once(async move {
                let _ = rx.wait_for(|go| *go).await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                    Bytes::from(format!("slow from {addr}")),
                ))
            });
            return Response::new(BodyExt::boxed(http_body_util::StreamBody::new(body)));
        }
        Response::new(common::full(format!("OK from {addr}")))
    }
}

/// Backends on 127.0.0.2, .3 and .4, all on one port (so one name can map to all three).
async fn trio(release: &watch::Receiver<bool>) -> (u16, Vec<TestBackend>) {
    for _ in 0..50 {
        let first = TcpListener::bind((V2, 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let (Ok(b), Ok(c)) = (
            TcpListener::bind((V3, port)).await,
            TcpListener::bind((V4, port)).await,
        ) else {
            continue;
        };
        let mut out = Vec::new();
        for l in [first, b, c] {
            let addr = l.local_addr().unwrap();
            out.push(TestBackend::start_with(l, handler(addr, release.clone())).await);
        }
        return (port, out);
    }
    panic!("no port free on 127.0.0.2, .3 and .4 at once");
}

/// A backend on `ip`, port chosen by the system.
async fn one(ip: Ipv4Addr, release: &watch::Receiver<bool>) -> TestBackend {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    TestBackend::start_with(l, handler(addr, release.clone())).await
}

fn app(s: &Value) -> &Value {
    s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app")
        .unwrap()
}

fn addresses(s: &Value) -> BTreeSet<String> {
    app(s)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_string())
        .collect()
}

/// Polls /status until app's backends are exactly `want`; returns that status.
async fn wait_backends(proxy: &TestProxy, want: &[SocketAddr]) -> Value {
    let want: BTreeSet<String> = want.iter().map(|a| a.to_string()).collect();
    let start = Instant::now();
    loop {
        let s = status(proxy.admin.unwrap()).await;
        if addresses(&s) == want {
            return s;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "backends {:?}, expected {want:?}; names: {}",
            addresses(&s),
            app(&s)["names"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls /status until app's first name is in `state`; returns that status.
async fn wait_name_state(proxy: &TestProxy, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let s = status(proxy.admin.unwrap()).await;
        if app(&s)["names"][0]["state"] == state {
            return s;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "name never {state}: {}",
            app(&s)["names"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counter(s: &Value, name: &str) -> u64 {
    app(s)["counters"][name].as_u64().unwrap()
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[tokio::test]
async fn a_name_that_resolves_late_queues_its_requests_until_it_does() {
    let (_release_tx, release) = watch::channel(false);
    let (port, _backends) = trio(&release).await;
    let dns = Dns::start().await;
    let proxy = TestProxy::from_yaml(&yaml(
        &dns,
        &format!("    servers: [\"late.test:{port}\"]\n"),
    ))
    .await;
    // Looked up, and nothing there: no backend, not ready, no error that stops proxyd.
    let s = wait_name_state(&proxy, "empty").await;
    assert!(addresses(&s).is_empty());
    assert_eq!(app(&s)["ready_backends"], 0);
    assert!(
        app(&s)["names"][0]["error"]
            .as_str()
            .unwrap()
            .contains("NXDOMAIN"),
        "{}",
        app(&s)["names"]
    );
    let ready = get(proxy.admin.unwrap(), "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);

    // A request now waits in the queue, and is served once the name resolves.
    let addr = proxy.addr;
    let waiting = tokio::spawn(async move { get(addr, "/first").await });
    proxy.wait_queued("app", 1).await;
    dns.set_a("late.test", &[V2], 1);
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), format!("OK from {}", at(V2, port)));
    let s = wait_backends(&proxy, &[at(V2, port)]).await;
    let b = &app(&s)["backends"][0];
    assert_eq!(b["source"], "late.test");
    assert_eq!(app(&s)["names"][0]["state"], "ok");
    assert!(counter(&s, "dns_empty") >= 1 && counter(&s, "dns_ok") >= 1);
    assert_eq!(counter(&s, "backends_joined"), 1);
    assert_eq!(
        get(proxy.admin.unwrap(), "/readyz").await.status,
        StatusCode::OK
    );

    // NXDOMAIN after a good answer: the name's backends leave (documented choice), and
    // requests wait again until it comes back.
    dns.remove("late.test");
    let s = wait_name_state(&proxy, "empty").await;
    assert!(addresses(&s).is_empty(), "{:?}", addresses(&s));
    assert_eq!(counter(&s, "backends_left"), 1);
    let waiting = tokio::spawn(async move { get(addr, "/again").await });
    proxy.wait_queued("app", 1).await;
    dns.set_a("late.test", &[V3], 1);
    let got = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.text(), format!("OK from {}", at(V3, port)));

    // The metrics say the same.
    let m = get(proxy.admin.unwrap(), "/metrics").await.text();
    for line in [
        "proxyd_dns_backend_changes_total{change=\"joined\",upstream=\"app\"} 2",
        "proxyd_dns_backend_changes_total{change=\"left\",upstream=\"app\"} 1",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    for result in ["ok", "empty"] {
        let prefix =
            format!("proxyd_dns_resolutions_total{{result=\"{result}\",upstream=\"app\"}} ");
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
            .parse()
            .unwrap();
        assert!(n >= 1, "{prefix}{n}");
    }
    proxy.shutdown().await;
}

/// Sends `/slow` on a connection of its own and returns once the response head is in: the
/// backend that answers, and the body still to come.
async fn slow(addr: SocketAddr) -> (String, tokio::task::JoinHandle<String>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/slow")
        .header("host", "test.local")
        .body(common::full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let backend = resp.headers()["proxyd-backend"]
        .to_str()
        .unwrap()
        .to_string();
    let body = tokio::spawn(async move {
        let _keep = sender;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    (backend, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_change_under_steady_load_fail_no_request() {
    let (release_tx, release) = watch::channel(false);
    let (port, backends) = trio(&release).await;
    let (a2, a3, a4) = (at(V2, port), at(V3, port), at(V4, port));
    let dns = Dns::start().await;
    dns.set_a("app.test", &[V2, V3], 0);
    // Two requests at a time per backend: with the slow one below and four clients, some
    // requests wait in the queue while the answer changes.
    let proxy = TestProxy::from_yaml(&yaml(
        &dns,
        &format!("    servers: [\"app.test:{port}\"]\n    concurrency: 2\n"),
    ))
    .await;
    wait_backends(&proxy, &[a2, a3]).await;
    let leaving = proxy
        .upstream("app")
        .backends()
        .iter()
        .find(|b| *b.label == a2.to_string())
        .unwrap()
        .clone();

    // A slow response under way on 127.0.0.2 before the change.
    let mut slow_ones = Vec::new();
    let mut on_leaving = None;
    for _ in 0..8 {
        let (backend, body) = slow(proxy.addr).await;
        if backend == a2.to_string() {
            on_leaving = Some(body);
            break;
        }
        slow_ones.push(body);
    }
    let on_leaving = on_leaving.expect("a slow request on 127.0.0.2");

    // Steady load from four clients; each notes whether it started after the change was
    // applied, and which backend answered.
    let applied = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (addr, applied) = (proxy.addr, applied.clone());
        clients.push(tokio::spawn(async move {
            let mut h1 = H1::connect(addr).await;
            let mut seen = Vec::new();
            let mut after = 0;
            for _ in 0..5000 {
                let started_after = applied.load(Ordering::SeqCst);
                let got = h1.get("/").await;
                let backend = got.header("proxyd-backend").unwrap_or("-").to_string();
                seen.push((started_after, got.status, backend, got.text()));
                if started_after {
                    after += 1;
                    if after == 40 {
                        break;
                    }
                }
            }
            seen
        }));
    }
    // Some load before the change.
    let start = Instant::now();
    while backends[1].request_count() < 20 {
        assert!(start.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dns.set_a("app.test", &[V3, V4], 0);
    let s = wait_backends(&proxy, &[a3, a4]).await;
    applied.store(true, Ordering::SeqCst);
    for b in app(&s)["backends"].as_array().unwrap() {
        assert_eq!(b["source"], "app.test");
    }

    // The leaving backend drains: its slow request is still in flight, its idle
    // connections are closed.
    assert_eq!(leaving.state(), proxyd::upstream::BackendState::Draining);
    assert_eq!(leaving.in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(leaving.pool.idle_count(), 0);

    let mut total = 0;
    let mut after = 0;
    let mut after_on_new = 0;
    let mut before_on_leaving = 0;
    for c in clients {
        for (started_after, status, backend, text) in
            tokio::time::timeout(PATIENCE, c).await.unwrap().unwrap()
        {
            total += 1;
            assert_eq!(status, StatusCode::OK, "{backend}: {text}");
            if started_after {
                after += 1;
                assert_ne!(backend, a2.to_string(), "a request sent after the change");
                after_on_new += usize::from(backend == a4.to_string());
            } else {
                before_on_leaving += usize::from(backend == a2.to_string());
            }
        }
    }
    assert_eq!(after, 160);
    assert!(after_on_new > 0, "the new address got no request");
    assert!(
        before_on_leaving > 0,
        "127.0.0.2 served nothing before the change"
    );
    assert!(total > after);

    // The slow request on the address that left finishes whole; its connection is not
    // kept for anyone.
    release_tx.send(true).unwrap();
    let body = tokio::time::timeout(PATIENCE, on_leaving)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, format!("slow from {a2}"));
    for b in slow_ones {
        tokio::time::timeout(PATIENCE, b).await.unwrap().unwrap();
    }
    assert_eq!(leaving.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(leaving.pool.idle_count(), 0);
    let s = status(proxy.admin.unwrap()).await;
    assert_eq!(counter(&s, "backends_joined"), 3);
    assert_eq!(counter(&s, "backends_left"), 1);
    // Four clients on fewer free slots: requests waited in the queue, and none failed.
    assert!(counter(&s, "queued") > 0);
    proxy.shutdown().await;
}

/// The intervals between consecutive queries, in arrival order.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn lookups_follow_the_ttl_within_the_clamps() {
    let (_release_tx, release) = watch::channel(false);
    let (port, _backends) = trio(&release).await;
    let dns = Dns::start().await;
    // TTL 0 (refreshed at min_refresh), 1 s (its own), an hour (refreshed at max_refresh).
    dns.set_a("short.test", &[V2], 0);
    dns.set_a("mid.test", &[V3], 1);
    dns.set_a("long.test", &[V4], 3600);
    let yaml = yaml(
        &dns,
        &format!(
            "    servers: [\"short.test:{port}\", \"mid.test:{port}\", \"long.test:{port}\"]\n"
        ),
    )
    .replace(
        "discovery: { min_refresh: 200ms, max_refresh: 2s }",
        "discovery: { min_refresh: 300ms, max_refresh: 1500ms, family: ipv4 }",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    // An hour's TTL is looked up again after max_refresh: three lookups take two of them.
    dns.wait_queries("long.test", RecordType::A, 3, PATIENCE)
        .await;
    let short = dns.queries("short.test", RecordType::A);
    let mid = dns.queries("mid.test", RecordType::A);
    let long = dns.queries("long.test", RecordType::A);
    let at_least = |times: &[Instant], d: Duration, what: &str| {
        for g in gaps(times) {
            // A lookup starts its wait after the previous answer: never sooner than this.
            assert!(
                g >= d - Duration::from_millis(5),
                "{what}: {g:?} < {d:?} in {:?}",
                gaps(times)
            );
        }
    };
    at_least(
        &short,
        Duration::from_millis(300),
        "TTL 0, min_refresh 300ms",
    );
    at_least(&mid, Duration::from_secs(1), "TTL 1s");
    at_least(
        &long,
        Duration::from_millis(1500),
        "TTL 3600, max_refresh 1500ms",
    );
    // In the same time the shorter intervals asked more often.
    assert!(
        short.len() > long.len(),
        "{} vs {}",
        short.len(),
        long.len()
    );
    assert!(short.len() >= mid.len(), "{} vs {}", short.len(), mid.len());
    // family: ipv4 asks for no AAAA.
    assert!(dns.queries("short.test", RecordType::AAAA).is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn srv_records_give_ports_weights_and_the_lowest_priority() {
    let (_release_tx, release) = watch::channel(false);
    let (b2, b3, b4) = (
        one(V2, &release).await,
        one(V3, &release).await,
        one(V4, &release).await,
    );
    let dns = Dns::start().await;
    dns.set_a("a.test", &[V2], 60);
    dns.set_a("b.test", &[V3], 60);
    dns.set_a("c.test", &[V4], 60);
    dns.set(
        "_http._tcp.app.test",
        Entry {
            srv: vec![
                (10, 0, b2.addr.port(), "a.test".into()),
                (10, 3, b3.addr.port(), "b.test".into()),
                (20, 5, b4.addr.port(), "c.test".into()),
            ],
            ttl: 0,
            ..Entry::default()
        },
    );
    let proxy = TestProxy::from_yaml(&yaml(
        &dns,
        "    srv: \"_http._tcp.app.test\"\n    balance: round_robin\n",
    ))
    .await;
    // Priority 10 only; each target's own port; weight 0 counts as 1.
    let s = wait_backends(&proxy, &[b2.addr, b3.addr]).await;
    let weight = |s: &Value, a: SocketAddr| {
        app(s)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == a.to_string())
            .unwrap()["weight"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(weight(&s, b2.addr), 1);
    assert_eq!(weight(&s, b3.addr), 3);
    assert_eq!(app(&s)["names"][0]["name"], "srv _http._tcp.app.test");
    assert_eq!(app(&s)["backends"][0]["source"], "_http._tcp.app.test");
    let mut h1 = H1::connect(proxy.addr).await;
    for _ in 0..40 {
        assert_eq!(h1.get("/").await.status, StatusCode::OK);
    }
    let (n2, n3) = (b2.request_count(), b3.request_count());
    assert_eq!(n2 + n3, 40);
    assert!(
        (20..=36).contains(&n3) && n2 >= 4,
        "weights 1:3 gave {n2}:{n3}"
    );
    assert_eq!(
        b4.request_count(),
        0,
        "priority 20 is not used while 10 has addresses"
    );

    // Priority 10's targets gone: priority 20 takes over.
    dns.remove("a.test");
    dns.remove("b.test");
    let s = wait_backends(&proxy, &[b4.addr]).await;
    assert_eq!(weight(&s, b4.addr), 5);
    assert_eq!(h1.get("/").await.text(), format!("OK from {}", b4.addr));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_resolver_that_fails_keeps_the_last_good_addresses() {
    let (_release_tx, release) = watch::channel(false);
    let (port, _backends) = trio(&release).await;
    let dns = Dns::start().await;
    dns.set_a("app.test", &[V2, V3], 0);
    let proxy = TestProxy::from_yaml(&yaml(
        &dns,
        &format!("    servers: [\"app.test:{port}\"]\n"),
    ))
    .await;
    wait_backends(&proxy, &[at(V2, port), at(V3, port)]).await;

    // SERVFAIL: failing, the two addresses stay and serve.
    dns.set_mode(Mode::ServFail);
    let s = wait_name_state(&proxy, "failing").await;
    assert!(app(&s)["names"][0]["error"]
        .as_str()
        .unwrap()
        .contains("app.test"));
    assert_eq!(addresses(&s).len(), 2);
    let failed = counter(&s, "dns_failed");
    assert!(failed >= 1);
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
    }

    // No answer at all (time-outs): still the same two.
    dns.set_mode(Mode::Silent);
    let asked = dns.queries("app.test", RecordType::A).len();
    dns.wait_queries("app.test", RecordType::A, asked + 2, PATIENCE)
        .await;
    let start = Instant::now();
    let s = loop {
        let s = status(proxy.admin.unwrap()).await;
        if counter(&s, "dns_failed") > failed {
            break s;
        }
        assert!(start.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(app(&s)["names"][0]["state"], "failing");
    assert_eq!(
        addresses(&s),
        [at(V2, port), at(V3, port)]
            .iter()
            .map(|a| a.to_string())
            .collect()
    );
    assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);

    // Back, with another answer: it is applied.
    dns.set_a("app.test", &[V4], 0);
    dns.set_mode(Mode::Answer);
    let s = wait_backends(&proxy, &[at(V4, port)]).await;
    assert_eq!(app(&s)["names"][0]["state"], "ok");
    assert_eq!(
        get(proxy.addr, "/").await.text(),
        format!("OK from {}", at(V4, port))
    );
    proxy.shutdown().await;
}

#[test]
fn check_accepts_names_that_do_not_resolve_and_places_errors() {
    // Nothing answers on this name server: check does not look names up.
    let base = "listen:\n  - addr: \"127.0.0.1:0\"\nresolver:\n  nameservers: [\"127.0.0.1:9\"]\nupstreams:\n";
    let (ok, text) = check(&format!(
        "{base}  app:\n    servers: [\"nowhere.invalid:80\", \"https://api.nowhere.invalid:443 weight=2\"]\n    srv: \"_http._tcp.nowhere.invalid\"\n"
    ));
    assert!(ok, "{text}");
    let cases = [
        (
            format!("{base}  app:\n    servers: [\"a..b:80\"]\n"),
            "proxy.yaml:7:15: upstreams.app.servers:",
            "not an IP address or a host name",
        ),
        (
            format!("{base}  app:\n    srv: \"_http._tcp.app:80\"\n"),
            "proxy.yaml:7:10: upstreams.app.srv:",
            "not an IP address or a host name",
        ),
        (
            "listen:\n  - addr: \"127.0.0.1:0\"\nresolver:\n  nameservers: [\"dns.local\"]\nupstreams:\n  app:\n    servers: [\"a.test:80\"]\n".to_string(),
            "proxy.yaml:4:17: resolver.nameservers:",
            "expected an IP address",
        ),
        (
            format!("{base}  app:\n    servers: [\"a.test:80\"]\ndiscovery:\n  min_refresh: 10s\n  max_refresh: 5s\n"),
            "proxy.yaml:10:16: discovery.max_refresh:",
            "shorter than discovery.min_refresh",
        ),
        (
            format!("{base}  app:\n    servers: [\"a.test:80\"]\ndiscovery: {{ min_refresh: 10ms }}\n"),
            "proxy.yaml:8:27: discovery.min_refresh:",
            "at least 100ms",
        ),
        (
            format!("{base}  app:\n    srv: \"_http._tcp.app\"\n    workers: {{ command: [\"true\"] }}\n"),
            "proxy.yaml:7:10: upstreams.app: has both srv and workers",
            "",
        ),
        (
            format!("{base}  app:\n    servers: [\"127.0.0.1:80\"]\n"),
            "proxy.yaml:3:1: resolver: only used when a server is a host name",
            "",
        ),
        (
            format!("{base}  app:\n    srv: \"_h._tcp.app\"\n    protocol: h2c\n    tls: {{ server_name: a.test }}\n"),
            "upstreams.app.tls: only used with https:// servers",
            "",
        ),
    ];
    let mut wrong = Vec::new();
    for (yaml, place, what) in cases {
        let (ok, text) = check(&yaml);
        if ok || !text.contains(place) || !text.contains(what) {
            wrong.push(format!("expected {place} {what}, got ok={ok}: {text}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

async fn reload(proxy: &TestProxy, yaml: &str) {
    std::fs::write(proxy.config_path(), yaml).unwrap();
    let got = H1::connect(proxy.admin.unwrap())
        .await
        .send(
            Request::post("/reload")
                .header("host", "admin")
                .body(common::full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
}

#[tokio::test]
async fn a_reload_keeps_the_lookups_of_a_kept_upstream_and_ends_those_of_a_replaced_one() {
    let (_release_tx, release) = watch::channel(false);
    let (port, _backends) = trio(&release).await;
    let dns = Dns::start().await;
    dns.set_a("a.test", &[V2], 0);
    dns.set_a("b.test", &[V3], 0);
    let first = yaml(&dns, &format!("    servers: [\"a.test:{port}\"]\n"));
    let proxy = TestProxy::from_yaml(&first).await;
    wait_backends(&proxy, &[at(V2, port)]).await;

    // Another setting changes: the upstream and its lookup go on as they were.
    let before = proxy.upstream("app");
    reload(
        &proxy,
        &first.replace(
            "headers: { debug: true }",
            "headers: { debug: true, request_id: x-req }",
        ),
    )
    .await;
    assert!(Arc::ptr_eq(&before, &proxy.upstream("app")));
    drop(before);
    let s = wait_backends(&proxy, &[at(V2, port)]).await;
    assert_eq!(counter(&s, "backends_joined"), 1);

    // The upstream's name changes: a new upstream looks up the new name, the old one's
    // lookups end with it.
    reload(
        &proxy,
        &yaml(&dns, &format!("    servers: [\"b.test:{port}\"]\n")),
    )
    .await;
    wait_backends(&proxy, &[at(V3, port)]).await;
    let asked = dns.queries("a.test", RecordType::A).len();
    let b_asked = dns.queries("b.test", RecordType::A).len();
    dns.wait_queries("b.test", RecordType::A, b_asked + 5, PATIENCE)
        .await;
    // At most one lookup of a.test was under way as the old upstream went.
    assert!(
        dns.queries("a.test", RecordType::A).len() <= asked + 1,
        "a.test still looked up: {} after {asked}",
        dns.queries("a.test", RecordType::A).len()
    );
    assert_eq!(
        get(proxy.addr, "/").await.text(),
        format!("OK from {}", at(V3, port))
    );
    proxy.shutdown().await;
}

/// A backend on `ip`:`port` whose `/health` answers 200 or 500 as `healthy` says; every
/// other path "OK from ADDR".
async fn checked(ip: Ipv4Addr, port: u16, healthy: Arc<AtomicBool>) -> TestBackend {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    let addr = l.local_addr().unwrap();
    TestBackend::start_with(l, move |seen| {
        if seen.uri.path() == "/health" {
            let mut r = Response::new(common::full(""));
            if !healthy.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            return r;
        }
        Response::new(common::full(format!("OK from {addr}")))
    })
    .await
}

/// app's backend at `addr` in status `s`.
fn backend(s: &Value, addr: SocketAddr) -> Option<&Value> {
    app(s)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
}

/// Polls /status until `ok` holds for app's backend at `addr`.
async fn wait_backend(proxy: &TestProxy, addr: SocketAddr, ok: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let s = status(proxy.admin.unwrap()).await;
        if backend(&s, addr).is_some_and(&ok) {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "backend {addr}: {:?}",
            backend(&s, addr)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With active checks on, an address a new answer brings joins only once its check passes:
/// while it fails, every request goes to the address that passes; when it passes, it serves.
#[tokio::test]
async fn a_new_address_joins_only_after_its_health_check_passes() {
    let (good, bad) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let first = checked(V2, 0, good).await;
    let port = first.addr.port();
    let second = checked(V3, port, bad.clone()).await;
    let (a2, a3) = (at(V2, port), at(V3, port));
    let dns = Dns::start().await;
    dns.set_a("app.test", &[V2], 0);
    let proxy = TestProxy::from_yaml(&yaml(
        &dns,
        &format!(
            "    servers: [\"app.test:{port}\"]\n    health: {{ path: /health, interval: 100ms, timeout: 2s, healthy: 1, unhealthy: 1 }}\n"
        ),
    ))
    .await;
    wait_backend(&proxy, a2, |b| b["state"] == "ready").await;

    dns.set_a("app.test", &[V2, V3], 0);
    // Joined the list, checked, and failed: out of the rotation.
    wait_backend(&proxy, a3, |b| b["health"]["failures"].as_u64() >= Some(1)).await;
    let mut h1 = H1::connect(proxy.addr).await;
    for _ in 0..20 {
        let got = h1.get("/").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.text(), format!("OK from {a2}"));
    }
    let served = |b: &TestBackend| b.requests().iter().filter(|r| r.uri.path() == "/").count();
    assert_eq!(served(&second), 0, "the failing address was served");

    bad.store(true, Ordering::SeqCst);
    wait_backend(&proxy, a3, |b| b["state"] == "ready").await;
    let start = Instant::now();
    loop {
        if h1.get("/").await.text() == format!("OK from {a3}") {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "{a3} never served once healthy");
    }
    assert!(served(&first) >= 20);
}
