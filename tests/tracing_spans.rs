//! Distributed tracing end to end through a real proxyd: each test runs proxyd with
//! `tracing:` in front of a recording backend, exporting over OTLP/HTTP to the collector in
//! tests/common/otlp.rs, and asserts on the spans as the collector decoded them (prost, not
//! proxyd's encoder): the tree (server -> queue wait -> attempts) with and without an
//! incoming `traceparent`, a retried request's two attempts, an invalid `traceparent`
//! replaced, sampling (ratio, parent-based, errors), the exporter's queue full and the
//! collector down (requests unaffected, drops counted on /metrics).

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::otlp::{pb, Collector};
use common::{full, Got, TestBackend, TestProxy, H1};
use http::{HeaderMap, Request, Response};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const PATIENCE: Duration = Duration::from_secs(30);

/// SpanKind as OTLP numbers it.
const INTERNAL: i32 = 1;
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
/// Status.code: error.
const ERROR: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Helpers

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in {PATIENCE:?}"))
}

/// proxyd with one upstream `app` over `servers` (`upstream` added to it), routed on `/`,
/// tracing to `otlp` with `tracing` keys added, and an admin listener.
async fn proxy(servers: &[SocketAddr], upstream: &str, otlp: &str, tracing: &str) -> TestProxy {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n\
         admin: {{ addr: \"127.0.0.1:0\" }}\n\
         upstreams:\n  app:\n    servers: [{}]\n{upstream}\
         routes:\n  - {{ path: \"/\", upstream: app }}\n\
         tracing: {{ otlp: \"{otlp}\", flush: 50ms{tracing} }}\n",
        list.join(", ")
    );
    TestProxy::from_yaml(&yaml).await
}

/// GET `path` with `headers` on `conn`.
async fn get_on(conn: &mut H1, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(path).header("host", "test.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within("request", conn.send(req.body(full("")).unwrap())).await
}

/// GET `path` with `headers` on a new connection.
async fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    get_on(&mut H1::connect(proxy).await, path, headers).await
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A sampled `traceparent` (as the upstream got it): trace id and parent id, checked well
/// formed.
fn parsed(v: &str) -> (String, String) {
    let (trace, parent, flags) = parsed_with_flags(v);
    assert_eq!(flags, "01", "sampled: {v}");
    (trace, parent)
}

/// A `traceparent`: trace id, parent id and flags, checked well formed.
fn parsed_with_flags(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3].len()),
        ("00", 32, 16, 2),
        "{v}"
    );
    let is_hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    assert!(parts[1..].iter().all(|p| is_hex(p)), "{v}");
    assert_ne!(parts[1], "0".repeat(32), "{v}");
    assert_ne!(parts[2], "0".repeat(16), "{v}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    let mut all = h.get_all(name).iter();
    let v = all.next().map(|v| v.to_str().unwrap().to_string());
    assert!(all.next().is_none(), "{name} sent once");
    v
}

fn attr<'a>(s: &'a pb::Span, key: &str) -> Option<&'a pb::Any> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(s: &'a pb::Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(pb::Any::String(v)) => Some(v),
        other => panic!("{key}: not a string: {other:?}"),
    }
}

fn int_attr(s: &pb::Span, key: &str) -> Option<i64> {
    match attr(s, key)? {
        pb::Any::Int(v) => Some(*v),
        other => panic!("{key}: not an int: {other:?}"),
    }
}

fn is_error(s: &pb::Span) -> bool {
    s.status.as_ref().is_some_and(|st| st.code == ERROR)
}

/// The spans of trace `trace` (hex), by kind: the one server span, the queue waits, the
/// attempts (in start order).
struct Tree {
    server: pb::Span,
    waits: Vec<pb::Span>,
    attempts: Vec<pb::Span>,
}

fn tree(spans: &[pb::Span], trace: &str) -> Tree {
    let mine: Vec<&pb::Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let servers: Vec<&pb::Span> = mine.iter().copied().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 1, "one server span in {trace}: {mine:#?}");
    let server = servers[0].clone();
    let of = |kind| {
        let mut v: Vec<pb::Span> = mine
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (*s).clone())
            .collect();
        v.sort_by_key(|s| s.start_time_unix_nano);
        v
    };
    let (waits, attempts) = (of(INTERNAL), of(CLIENT));
    assert_eq!(
        mine.len(),
        1 + waits.len() + attempts.len(),
        "no other kind: {mine:#?}"
    );
    for child in waits.iter().chain(&attempts) {
        assert_eq!(
            child.parent_span_id, server.span_id,
            "a child of the server span"
        );
        assert_ne!(child.span_id, server.span_id);
        assert!(child.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= server.end_time_unix_nano);
        assert!(child.start_time_unix_nano <= child.end_time_unix_nano);
    }
    Tree {
        server,
        waits,
        attempts,
    }
}

/// A counter's value on the admin's /metrics (0 while the series is absent).
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let got = within("GET /metrics", common::get(admin, "/metrics")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls /metrics until `series` reaches `at_least`.
async fn metric_reaches(admin: SocketAddr, series: &str, at_least: f64) -> f64 {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = metric(admin, series).await;
        if v >= at_least {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{series} stayed at {v}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An address nothing listens on: bound (so no other test's listener gets the port while
/// the socket is kept) but never listening, so a connection to it is refused.
fn nothing_listens() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A backend that holds each request until the test adds a permit to `gate`, and records
/// each request's path and headers in arrival order.
struct Gated {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    gate: Arc<Semaphore>,
}

impl Gated {
    async fn start() -> Gated {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (s, g) = (seen.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, g) = (s.clone(), g.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (s, g) = (s.clone(), g.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                s.lock()
                                    .unwrap()
                                    .push((path.clone(), req.headers().clone()));
                                g.acquire().await.unwrap().forget();
                                Ok::<_, std::convert::Infallible>(Response::new(full(path)))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gated { addr, seen, gate }
    }

    async fn wait_arrived(&self, n: usize) {
        let give_up = tokio::time::Instant::now() + PATIENCE;
        while self.seen.lock().unwrap().len() < n {
            assert!(tokio::time::Instant::now() < give_up, "{n} never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn headers(&self, path: &str) -> HeaderMap {
        let seen = self.seen.lock().unwrap();
        let got: Vec<&HeaderMap> = seen
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h)
            .collect();
        assert_eq!(got.len(), 1, "{path} arrived once");
        got[0].clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The tree

#[tokio::test]
async fn a_new_trace_server_queue_wait_and_attempt() {
    let backend = Gated::start().await;
    let collector = Collector::start().await;
    let proxy = proxy(
        &[backend.addr],
        "    concurrency: 1\n",
        &collector.url(),
        "",
    )
    .await;

    // /held takes the one slot; /waited waits in the queue for it.
    let addr = proxy.addr;
    let held = tokio::spawn(async move { get(addr, "/held", &[]).await });
    backend.wait_arrived(1).await;
    let waited =
        tokio::spawn(async move { get(addr, "/waited", &[("user-agent", "e2e/1")]).await });
    proxy.wait_queued("app", 1).await;
    backend.gate.add_permits(2);
    for (r, path) in [(held, "/held"), (waited, "/waited")] {
        let got = r.await.unwrap();
        assert_eq!((got.status.as_u16(), got.text()), (200, path.to_string()));
    }

    // Two traces: 2 spans for /held, 3 for /waited.
    collector.wait_spans(5).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    let (trace, parent) =
        parsed(&header(&backend.headers("/waited"), "traceparent").expect("a traceparent"));
    let t = tree(&spans, &trace);
    assert_eq!(t.server.parent_span_id, Vec::<u8>::new(), "a root");
    assert_eq!(t.server.name, "GET /");
    assert_eq!(t.server.trace_state, "");
    assert!(!is_error(&t.server));
    assert_eq!(str_attr(&t.server, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(&t.server, "http.route"), Some("/"));
    assert_eq!(str_attr(&t.server, "url.path"), Some("/waited"));
    assert_eq!(str_attr(&t.server, "url.scheme"), Some("http"));
    assert_eq!(str_attr(&t.server, "server.address"), Some("test.local"));
    assert_eq!(str_attr(&t.server, "client.address"), Some("127.0.0.1"));
    assert_eq!(str_attr(&t.server, "user_agent.original"), Some("e2e/1"));
    assert_eq!(str_attr(&t.server, "proxyd.upstream"), Some("app"));
    assert_eq!(int_attr(&t.server, "http.response.status_code"), Some(200));
    assert_eq!(
        int_attr(&t.server, "http.response.body.size"),
        Some("/waited".len() as i64)
    );
    assert!(str_attr(&t.server, "proxyd.request_id").is_some_and(|r| !r.is_empty()));

    assert_eq!(t.waits.len(), 1, "it waited once");
    let wait = &t.waits[0];
    assert_eq!(wait.name, "queue wait");
    assert_eq!(str_attr(wait, "proxyd.upstream"), Some("app"));

    assert_eq!(t.attempts.len(), 1);
    let a = &t.attempts[0];
    assert_eq!(
        hex(&a.span_id),
        parent,
        "the backend's parent is the attempt"
    );
    assert!(
        a.start_time_unix_nano >= wait.end_time_unix_nano,
        "after the wait"
    );
    assert!(!is_error(a));
    assert_eq!(a.name, "GET");
    assert_eq!(str_attr(a, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(a, "server.address"), Some("127.0.0.1"));
    assert_eq!(
        int_attr(a, "server.port"),
        Some(i64::from(backend.addr.port()))
    );
    assert_eq!(
        str_attr(a, "proxyd.backend"),
        Some(backend.addr.to_string().as_str())
    );
    assert_eq!(int_attr(a, "proxyd.attempt"), Some(1));
    assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
    assert!(attr(a, "proxyd.connection.reused").is_some());
    assert_eq!(attr(a, "proxyd.retry.reason"), None);

    // /held: its own trace, no wait.
    let (held_trace, held_parent) =
        parsed(&header(&backend.headers("/held"), "traceparent").unwrap());
    assert_ne!(held_trace, trace);
    let h = tree(&spans, &held_trace);
    assert!(h.waits.is_empty());
    assert_eq!(h.attempts.len(), 1);
    assert_eq!(hex(&h.attempts[0].span_id), held_parent);
}

#[tokio::test]
async fn an_incoming_traceparent_is_continued() {
    let backend = TestBackend::echo().await;
    let collector = Collector::start().await;
    let proxy = proxy(&[backend.addr], "", &collector.url(), ", sample: 0.5").await;
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let got = get(
        proxy.addr,
        "/x",
        &[("traceparent", VALID), ("tracestate", state)],
    )
    .await;
    assert_eq!(got.status, 200);

    collector.wait_spans(2).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let t = tree(&spans, TRACE);
    assert_eq!(hex(&t.server.parent_span_id), PARENT, "the caller's span");
    assert_ne!(hex(&t.server.span_id), PARENT);
    assert!(t.waits.is_empty());
    assert_eq!(t.attempts.len(), 1);
    for s in [&t.server, &t.attempts[0]] {
        assert_eq!(s.trace_state, state, "tracestate kept");
    }

    let seen = &backend.requests()[0].headers;
    let (trace, parent) = parsed(&header(seen, "traceparent").unwrap());
    assert_eq!(trace, TRACE);
    assert_eq!(parent, hex(&t.attempts[0].span_id));
    assert_eq!(header(seen, "tracestate").as_deref(), Some(state));
}

#[tokio::test]
async fn a_retried_request_has_two_attempt_spans() {
    let (servers, heads) = common::dies_once().await;
    let collector = Collector::start().await;
    let proxy = proxy(&servers, "", &collector.url(), "").await;
    let got = get(proxy.addr, "/", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());

    collector.wait_spans(3).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "the request went twice");
    let (trace, p1) = parsed(&common::traceparent_in(&heads[0]));
    let (trace2, p2) = parsed(&common::traceparent_in(&heads[1]));
    assert_eq!(trace, trace2);
    let t = tree(&spans, &trace);
    assert_eq!(t.server.parent_span_id, Vec::<u8>::new());
    assert!(!is_error(&t.server), "the client got a 200");
    assert_eq!(t.attempts.len(), 2);
    let (first, second) = (&t.attempts[0], &t.attempts[1]);
    assert_ne!(first.span_id, second.span_id);
    assert_eq!(first.parent_span_id, second.parent_span_id);
    assert_eq!((hex(&first.span_id), hex(&second.span_id)), (p1, p2));

    assert!(is_error(first), "{first:#?}");
    let cause = str_attr(first, "error.type").expect("the failure's cause");
    assert_eq!(attr(first, "http.response.status_code"), None, "no answer");
    assert_eq!(int_attr(first, "proxyd.attempt"), Some(1));
    assert!(first.end_time_unix_nano <= second.start_time_unix_nano);

    assert!(!is_error(second));
    assert_eq!(int_attr(second, "proxyd.attempt"), Some(2));
    assert_eq!(str_attr(second, "proxyd.retry.reason"), Some(cause));
    assert!(matches!(
        attr(second, "proxyd.retry.replayed"),
        Some(pb::Any::Bool(_))
    ));
    assert_eq!(int_attr(second, "http.response.status_code"), Some(200));
    assert_ne!(
        str_attr(first, "proxyd.backend"),
        str_attr(second, "proxyd.backend"),
        "another backend"
    );
}

#[tokio::test]
async fn an_invalid_traceparent_is_replaced_by_a_new_trace() {
    let backend = TestBackend::echo().await;
    let collector = Collector::start().await;
    let proxy = proxy(&[backend.addr], "", &collector.url(), "").await;
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let got = get(
        proxy.addr,
        "/",
        &[("traceparent", bad), ("tracestate", "rojo=1")],
    )
    .await;
    assert_eq!(got.status, 200);

    collector.wait_spans(2).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let seen = &backend.requests()[0].headers;
    let (trace, parent) = parsed(&header(seen, "traceparent").unwrap());
    assert_ne!(trace, TRACE);
    assert_eq!(header(seen, "tracestate"), None);
    let t = tree(&spans, &trace);
    assert_eq!(t.server.parent_span_id, Vec::<u8>::new(), "a new root");
    assert_eq!(t.server.trace_state, "");
    assert_eq!(hex(&t.attempts[0].span_id), parent);
    for s in &spans {
        assert_ne!(hex(&s.trace_id), TRACE);
        assert_ne!(hex(&s.parent_span_id), PARENT);
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling

#[tokio::test]
async fn sample_zero_exports_only_what_the_caller_sampled() {
    let backend = TestBackend::echo().await;
    let collector = Collector::start().await;
    let proxy = proxy(&[backend.addr], "", &collector.url(), ", sample: 0").await;
    // One connection: each request's spans are handed over before the next is read, and the
    // exporter keeps their order, so the first request's spans would arrive no later.
    let mut conn = H1::connect(proxy.addr).await;
    assert_eq!(get_on(&mut conn, "/unsampled", &[]).await.status, 200);
    assert_eq!(header(&backend.requests()[0].headers, "traceparent"), None);
    let got = get_on(&mut conn, "/sampled", &[("traceparent", VALID)]).await;
    assert_eq!(got.status, 200);

    collector.wait_spans(2).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "only the sampled request's: {spans:#?}");
    let t = tree(&spans, TRACE);
    assert_eq!(str_attr(&t.server, "url.path"), Some("/sampled"));
    assert_eq!(hex(&t.server.parent_span_id), PARENT, "parent-based");
    assert_eq!(t.attempts.len(), 1);
}

#[tokio::test]
async fn errors_are_exported_at_sample_zero_and_successes_are_not() {
    let backend = TestBackend::echo().await;
    let (dead, _kept) = nothing_listens();
    let collector = Collector::start().await;
    let list = format!("\"{}\"", backend.addr);
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n\
         upstreams:\n  app:\n    servers: [{list}]\n  dead:\n    servers: [\"{dead}\"]\n\
         routes:\n  - {{ path: \"/dead\", upstream: dead }}\n  - {{ path: \"/\", upstream: app }}\n\
         tracing: {{ otlp: \"{}\", flush: 50ms, sample: 0, errors: true }}\n",
        collector.url()
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let mut conn = H1::connect(proxy.addr).await;
    assert_eq!(get_on(&mut conn, "/ok", &[]).await.status, 200);
    // Recorded in case it fails, but not sampled: the app is told so.
    let tp = header(&backend.requests()[0].headers, "traceparent").unwrap();
    let (ok_trace, _, flags) = parsed_with_flags(&tp);
    assert_eq!(flags, "00", "{tp}");
    let got = get_on(&mut conn, "/dead", &[]).await;
    assert_eq!(got.status, 502, "{}", got.text());

    collector.wait_spans(2).await;
    let spans = collector.spans();
    let servers: Vec<&pb::Span> = spans.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 1, "only the 502: {spans:#?}");
    assert_ne!(hex(&servers[0].trace_id), ok_trace);
    let t = tree(&spans, &hex(&servers[0].trace_id));
    assert_eq!(str_attr(&t.server, "url.path"), Some("/dead"));
    assert_eq!(int_attr(&t.server, "http.response.status_code"), Some(502));
    assert!(is_error(&t.server));
    assert!(str_attr(&t.server, "error.type").is_some());
    assert_eq!(t.server.parent_span_id, Vec::<u8>::new());
    assert!(!t.attempts.is_empty());
    for a in &t.attempts {
        assert!(is_error(a), "{a:#?}");
        assert_eq!(
            str_attr(a, "proxyd.backend"),
            Some(dead.to_string().as_str())
        );
    }
    assert_eq!(spans.len(), 1 + t.attempts.len(), "{spans:#?}");
}

// ---------------------------------------------------------------------------------------------
// The exporter in trouble: requests unaffected, drops counted

const QUEUE_FULL: &str = "proxyd_trace_spans_dropped_total{reason=\"queue_full\"}";
const EXPORT_FAILED: &str = "proxyd_trace_spans_dropped_total{reason=\"export_failed\"}";

#[tokio::test]
async fn a_full_export_queue_drops_spans_and_never_a_request() {
    let backend = TestBackend::echo().await;
    let (collector, hold) = Collector::holding().await;
    // The first batch is held by the collector (until the long time-out), and with it the
    // queue's room: the spans of the requests after it are dropped.
    let proxy = proxy(
        &[backend.addr],
        "",
        &collector.url(),
        ", queue: 2, timeout: 120s",
    )
    .await;
    let admin = proxy.admin.unwrap();
    let before = metric(admin, QUEUE_FULL).await;
    let n = 20;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let addr = proxy.addr;
        requests.spawn(async move { get(addr, &format!("/{i}"), &[]).await });
    }
    while let Some(got) = requests.join_next().await {
        let got = got.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(backend.request_count(), n);
    // Each request has 2 spans; the queue holds 2: at most one request's are taken before
    // the collector answers.
    let dropped = metric_reaches(admin, QUEUE_FULL, before + 2.0 * (n as f64 - 1.0)).await;
    assert!(dropped >= before + 38.0);
    let got = collector.state.got.lock().unwrap().len();
    assert!(got <= 1, "{got} export requests with the queue's 2 spans");
    hold.add_permits(1000);
}

#[tokio::test]
async fn the_collector_down_costs_spans_not_requests() {
    let backend = TestBackend::echo().await;
    let (down, _kept) = nothing_listens();
    let proxy = proxy(&[backend.addr], "", &format!("http://{down}"), "").await;
    let admin = proxy.admin.unwrap();
    let before = metric(admin, EXPORT_FAILED).await;
    let failed = "proxyd_trace_export_requests_total{result=\"failed\"}";
    let failed_before = metric(admin, failed).await;
    let n = 5;
    let mut conn = H1::connect(proxy.addr).await;
    for _ in 0..n {
        let got = get_on(&mut conn, "/", &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        parsed(&header(&backend.requests().last().unwrap().headers, "traceparent").unwrap());
    }
    // Every span of the n requests (2 each) is dropped, as the batches fail.
    metric_reaches(admin, EXPORT_FAILED, before + 2.0 * n as f64).await;
    metric_reaches(admin, failed, failed_before + 1.0).await;
}
