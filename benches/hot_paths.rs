//! Micro-benches of proxyd's per-request hot paths, through its public library API:
//!
//! - header rewriting: `proxy::headers::check_request`, `prepare_request`, `prepare_response`
//!   and `ensure_request_id` on a typical browser-like request head;
//! - route matching: `state::route::Router::pick` over a dozen routes, and `host_only`;
//! - balancer pick: `upstream::balancer::Policy::choose` for each policy over 4 and 16
//!   backends;
//! - a shed request: `upstream::queue::Line::admit` refusing a newcomer whose expected wait
//!   is past its deadline (1,000 waiting), and the 503 that `proxy::error::error_response`
//!   makes of it;
//! - access-log formatting: `access_log::format` is private, so this goes through
//!   `AccessLogger::request_done` (the per-request call: format the line and hand it to the
//!   writer thread, here writing to /dev/null) for each format.
//!
//! The request and response heads are built outside the timed part (`iter_batched`), so the
//! figures are the rewrite alone.
//!
//! - metrics: `Metrics::request_done`, what every finished request costs the Prometheus
//!   counters and histograms (a routed 200, its handles already made).
//!
//! - route rules: `proxy::rules::apply` (a route's response rules: two fixed sets, one
//!   template, a remove, the security headers) on a backend's response head, and
//!   `proxy::rewrite::apply` (strip_prefix, then a regex rewrite) on a request head.
//!
//! - tracing: `obs::otel::otlp::encode` (a batch of 510 spans, a request's server, queue-wait
//!   and attempt span 170 times over), off the request path in the exporter's task; and
//!   `Exporter::submit`, what a traced request costs the request path: its 3 spans handed
//!   over (made outside the timed part), taken by the queue or dropped at a full one.
//!
//! Run: `cargo bench --bench hot_paths` (add a filter: `cargo bench --bench hot_paths -- route`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};

use proxyd::config::{AccessLogFormat, BackendAddr, Balance};
use proxyd::obs::access_log::{AccessLogger, Destination};
use proxyd::obs::{Observe, Outcome, Trace};
use proxyd::proxy::headers::{
    check_request, ensure_request_id, prepare_request, prepare_response, ClientSide,
};
use proxyd::state::route::{host_only, HostMatch, Router};
use proxyd::upstream::balancer::{Choice, Policy};
use proxyd::upstream::body::RequestBody;
use proxyd::upstream::clock::now_ns;
use proxyd::upstream::pool::Pool;
use proxyd::upstream::{Backend, BackendSpec};

/// A browser-like GET as hyper hands it over: 10 headers, a keep-alive Connection.
fn request_parts() -> http::request::Parts {
    let (parts, ()) = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/items?page=2&sort=name")
        .version(Version::HTTP_11)
        .header("host", "app.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        )
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("accept-language", "en-US,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br")
        .header("connection", "keep-alive")
        .header("cookie", "session=4f2a9c81d7e3b6a0; theme=dark")
        .header("referer", "https://app.example.com/items")
        .header("x-forwarded-for", "203.0.113.9")
        .header("upgrade-insecure-requests", "1")
        .body(())
        .expect("a valid request")
        .into_parts();
    parts
}

fn response_parts() -> http::response::Parts {
    let (parts, ()) = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("content-length", "1234")
        .header("date", "Fri, 27 Nov 2026 05:00:00 GMT")
        .header("server", "gunicorn")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("cache-control", "no-store")
        .body(())
        .expect("a valid response")
        .into_parts();
    parts
}

fn headers(c: &mut Criterion) {
    let side = ClientSide {
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        proto: "https",
        preserve_host: true,
    };
    let body = RequestBody::Empty;
    let id_name = HeaderName::from_static("x-request-id");
    let mut g = c.benchmark_group("headers");
    let parts = request_parts();
    g.bench_function("check_request", |b| {
        b.iter(|| check_request(black_box(&parts)).is_ok())
    });
    g.bench_function("prepare_request", |b| {
        b.iter_batched(
            request_parts,
            |mut p| {
                prepare_request(&mut p, &body, false, &side);
                p
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ensure_request_id (new id)", |b| {
        b.iter_batched(
            request_parts,
            |mut p| {
                let id = ensure_request_id(&mut p.headers, &id_name);
                (p, id)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("prepare_response", |b| {
        b.iter_batched(
            response_parts,
            |mut p| {
                prepare_response(&mut p);
                p
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn routes(c: &mut Criterion) {
    let h = |s: &str| Some(HostMatch::parse(s).expect("a valid host"));
    let router = Router::new([
        (None, "/".to_string(), 0),
        (None, "/static/".to_string(), 1),
        (None, "/api/".to_string(), 2),
        (None, "/api/v1/".to_string(), 3),
        (None, "/api/v2/".to_string(), 4),
        (None, "/ws/".to_string(), 5),
        (h("api.example.com"), "/".to_string(), 6),
        (h("api.example.com"), "/v1/".to_string(), 7),
        (h("*.example.com"), "/".to_string(), 8),
        (h("*.cdn.example.com"), "/img/".to_string(), 9),
        (h("admin.example.org"), "/".to_string(), 10),
        (h("www.example.org"), "/blog/".to_string(), 11),
    ]);
    let mut g = c.benchmark_group("route");
    g.bench_function("pick: exact host, long prefix", |b| {
        b.iter(|| {
            router.pick(
                black_box(Some("api.example.com")),
                black_box("/v1/users/42"),
            )
        })
    });
    g.bench_function("pick: wildcard host", |b| {
        b.iter(|| router.pick(black_box(Some("shop.example.com")), black_box("/cart")))
    });
    g.bench_function("pick: no host route, falls to a path prefix", |b| {
        b.iter(|| router.pick(black_box(Some("other.test")), black_box("/api/v1/items")))
    });
    g.bench_function("host_only", |b| {
        b.iter(|| host_only(black_box("App.Example.com:8443")).len())
    });
    g.finish();
}

fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
            Arc::new(Backend::new(
                BackendSpec {
                    addr: BackendAddr::Tcp(addr),
                    pool: Pool::new(64, Duration::from_secs(1)),
                    worker: None,
                    limit: usize::MAX,
                    weight: 1 + (i % 3) as u32,
                    fresh: false,
                    source: None,
                },
                Weak::new(),
            ))
        })
        .collect()
}

fn balancer(c: &mut Criterion) {
    let mut g = c.benchmark_group("balancer");
    for n in [4usize, 16] {
        let list = backends(n);
        for (name, kind, key) in [
            ("round_robin", Balance::RoundRobin, None),
            ("least_outstanding", Balance::LeastOutstanding, None),
            ("p2c_ewma", Balance::P2cEwma, None),
            ("hash", Balance::Hash, Some(0x9e37_79b9_7f4a_7c15u64)),
        ] {
            let policy = Policy::new(kind);
            g.bench_function(format!("choose {name}, {n} backends"), |b| {
                b.iter(|| {
                    let choice = Choice {
                        now: now_ns(),
                        slow_start_ns: 0,
                        key,
                    };
                    policy.choose(black_box(&list), |_| true, choice)
                })
            });
        }
    }
    g.finish();
}

fn outcome() -> Outcome {
    Outcome {
        at: SystemTime::now(),
        method: Method::GET,
        target: "/api/v1/items?page=2&sort=name".into(),
        path_len: "/api/v1/items".len(),
        version: Version::HTTP_11,
        host: Some(HeaderValue::from_static("app.example.com")),
        client: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        forwarded_for: Some(HeaderValue::from_static("203.0.113.9")),
        user_agent: Some(HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        )),
        referer: Some(HeaderValue::from_static("https://app.example.com/items")),
        request_id: HeaderValue::from_static("4f2a9c81d7e3b6a0"),
        status: StatusCode::OK,
        body_bytes: 1234,
        duration: Duration::from_micros(1830),
        trace: Trace {
            compressed: None,
            upstream_time: Some(Duration::from_micros(1650)),
            ..Trace::default()
        },
    }
}

fn access_log(c: &mut Criterion) {
    let o = outcome();
    let mut g = c.benchmark_group("access_log");
    for (name, format) in [
        ("combined", AccessLogFormat::Combined),
        ("json", AccessLogFormat::Json),
    ] {
        let logger = match AccessLogger::start(
            format,
            Destination::File("/dev/null".into()),
            proxyd::obs::access_log::CAPACITY,
        ) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("access_log {name}: cannot open /dev/null ({e:#}); skipped");
                continue;
            }
        };
        g.bench_function(format!("request_done {name} (format + hand-off)"), |b| {
            b.iter(|| logger.request_done(black_box(&o)))
        });
    }
    g.finish();
}

/// A queue of 1,000 waiters draining at 1,000 per second, each waiter's receiver kept.
fn long_queue() -> (proxyd::upstream::queue::Line, Vec<impl Sized>) {
    use proxyd::upstream::queue::{Waiter, Waiters};
    let mut line = Waiters::new(Duration::from_secs(1), Duration::from_secs(1))
        .line
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let mut receivers = Vec::new();
    for id in 0..1000 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        receivers.push(rx);
        let w = Waiter {
            id,
            tx,
            key: None,
            tried: Vec::new(),
            since: 0,
        };
        line.push(w, false, 0);
    }
    for k in 1..=200 {
        line.completed(k * 1_000_000);
    }
    (line, receivers)
}

fn admission(c: &mut Criterion) {
    let (mut line, _receivers) = long_queue();
    let now = 200_000_000;
    let mut g = c.benchmark_group("admission");
    g.bench_function("refuse a newcomer past its deadline (1,000 waiting)", |b| {
        b.iter(|| {
            let refused = line.admit(black_box(now), Duration::from_millis(500), 4);
            black_box(refused.is_err())
        })
    });
    let refusal = proxyd::proxy::error::ProxyError::new(
        proxyd::proxy::error::Cause::QueueDeadline,
        "upstream app",
    )
    .retry_after(1);
    g.bench_function("the 503 response it gets", |b| {
        b.iter(|| proxyd::proxy::error::error_response(black_box(&refusal)))
    });
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let yaml = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:5001\"]\nroutes:\n  - { name: api, path: \"/api/\", upstream: app }\n";
    let loaded = proxyd::config::load_str(yaml, "bench.yaml", std::env::temp_dir())
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    let snapshot =
        proxyd::state::Snapshot::build(&loaded).unwrap_or_else(|e| panic!("bench snapshot: {e}"));
    let metrics = proxyd::obs::metrics::Metrics::new();
    snapshot.prepare_metrics(&metrics);
    let mut o = outcome();
    o.trace.route = Some("api".into());
    o.trace.upstream = snapshot.upstreams.first().map(|u| u.name.clone());
    o.trace.queued = Duration::from_micros(20);
    // The first call makes the 200's counter; the timed ones find it.
    metrics.request_done(&o);
    let mut g = c.benchmark_group("metrics");
    g.bench_function("request_done (routed GET 200)", |b| {
        b.iter(|| metrics.request_done(black_box(&o)))
    });
    g.finish();
}

fn route_rules(c: &mut Criterion) {
    let yaml = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app: { servers: [\"127.0.0.1:9\"] }\nroutes:\n  - path: /api/\n    upstream: app\n    strip_prefix: true\n    rewrite: [{ from: \"^/v1/(.*)$\", to: \"/v2/$1\" }]\n    headers:\n      response: { set: { X-Frame-Options: DENY, Cache-Control: no-store, X-Route: \"{route}\" }, remove: [X-Powered-By], security: true }\n";
    let loaded = proxyd::config::load_str(yaml, "bench.yaml", std::env::temp_dir())
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    let snap =
        proxyd::state::Snapshot::build(&loaded).unwrap_or_else(|e| panic!("bench snapshot: {e}"));
    let conn = proxyd::proxy::ConnInfo::new(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 40000),
        &Arc::new(proxyd::proxy::ListenerSettings::default()),
        None,
    );
    let mut req = Request::get("/api/v1/users?id=3")
        .header("host", "example.com")
        .body(())
        .expect("a request");
    let mut ctx = proxyd::proxy::RequestCtx::new(&mut req, &snap, &conn);
    let route = snap.routes.first();
    ctx.route = route;
    ctx.trace.route = route.map(|r| r.name.clone());
    let ops = route
        .and_then(|r| r.rules.response.as_deref())
        .expect("response rules");
    let mut g = c.benchmark_group("route_rules");
    g.bench_function(
        "response rules: 3 sets (1 template), 1 remove, security",
        |b| {
            b.iter_batched(
                || response_parts().headers,
                |mut h| {
                    proxyd::proxy::rules::apply(ops, &ctx, &mut h);
                    h
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.bench_function("rewrite: strip_prefix then a regex", |b| {
        b.iter_batched(
            || {
                let mut p = request_parts();
                p.uri = http::Uri::from_static("/api/v1/users?id=3");
                p
            },
            |mut p| {
                let _ = proxyd::proxy::rewrite::apply(route, &mut p);
                p
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A traced request's spans: server (8 attributes), queue wait, one attempt (6 attributes).
fn request_spans(n: u8) -> Vec<proxyd::obs::otel::SpanRecord> {
    use proxyd::obs::otel::{SpanKind, SpanRecord, Value};
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let server = SpanRecord {
        trace_id: [n; 16],
        span_id: [1; 8],
        parent_span_id: Some([9; 8]),
        trace_state: None,
        name: "GET /api/v1/items".into(),
        kind: SpanKind::Server,
        start,
        end: start + Duration::from_millis(12),
        attributes: vec![
            ("http.request.method", Value::Str("GET".into())),
            ("url.path", Value::Str("/api/v1/items".into())),
            ("http.route", Value::Str("api".into())),
            ("http.response.status_code", Value::Int(200)),
            ("client.address", Value::Str("203.0.113.7".into())),
            ("server.address", Value::Str("api.example.com".into())),
            ("http.response.body.size", Value::Int(5321)),
            ("proxyd.upstream", Value::Str("flask".into())),
        ],
        error: None,
    };
    let queue = SpanRecord {
        span_id: [2; 8],
        parent_span_id: Some([1; 8]),
        name: "queue wait".into(),
        kind: SpanKind::Internal,
        attributes: vec![("proxyd.queue.depth", Value::Int(3))],
        ..server.clone()
    };
    let attempt = SpanRecord {
        span_id: [3; 8],
        parent_span_id: Some([1; 8]),
        name: "GET".into(),
        kind: SpanKind::Client,
        attributes: vec![
            ("server.address", Value::Str("127.0.0.1".into())),
            ("server.port", Value::Int(5001)),
            ("proxyd.worker.id", Value::Int(2)),
            ("proxyd.worker.pid", Value::Int(41234)),
            ("proxyd.connection.reused", Value::Bool(true)),
        ],
        ..server.clone()
    };
    vec![server, queue, attempt]
}

fn tracing(c: &mut Criterion) {
    use proxyd::obs::otel::export::Exporter;
    use proxyd::obs::otel::otlp;
    let mut g = c.benchmark_group("tracing");
    let batch: Vec<_> = (0..170).flat_map(request_spans).collect();
    let prelude = otlp::Prelude::new("proxyd");
    let mut out = Vec::new();
    g.bench_function("otlp::encode 510 spans", |b| {
        b.iter(|| {
            out.clear();
            otlp::encode(black_box(&prelude), black_box(&batch), &mut out);
            out.len()
        })
    });
    // The collector's port is closed: the task drops each batch as soon as the connection
    // is refused, on its own thread. A tight loop of submits outruns any task, so the two
    // cases are timed apart: taken (in rounds of 2,000 requests that fit the queue, each
    // drained untimed before the next) and dropped at a full queue.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let start = |yaml: &str| {
        let cfg: proxyd::config::tracing::Tracing =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("tracing config: {e}"));
        rt.block_on(async { Exporter::start(&cfg) })
    };
    let exporter = start("otlp: \"http://127.0.0.1:9\"\nqueue: 8192\nbatch: 512\nflush: 1ms\n");
    let settled = |s: proxyd::obs::otel::export::Stats| {
        s.exported + s.dropped_export_failed + s.dropped_queue_full
    };
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("Exporter::submit a request's 3 spans (taken)", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(2000);
                left -= n;
                let requests: Vec<_> = (0..n).map(|_| request_spans(1)).collect();
                let want = settled(exporter.stats()) + 3 * n;
                let t = std::time::Instant::now();
                for spans in requests {
                    exporter.submit(spans);
                }
                timed += t.elapsed();
                while settled(exporter.stats()) < want {
                    std::thread::yield_now();
                }
            }
            timed
        })
    });
    let taken = exporter.stats();
    let full = start("otlp: \"http://127.0.0.1:9\"\nqueue: 1\nflush: 1h\n");
    g.bench_function(
        "Exporter::submit a request's 3 spans (queue full: dropped)",
        |b| {
            b.iter_batched(
                || request_spans(1),
                |spans| full.submit(spans),
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
    eprintln!("tracing: taken run {taken:?}; full run {:?}", full.stats());
}

criterion_group!(
    hot_paths,
    tracing,
    headers,
    routes,
    balancer,
    admission,
    access_log,
    metrics,
    route_rules
);
criterion_main!(hot_paths);
