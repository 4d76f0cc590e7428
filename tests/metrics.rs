//! Prometheus metrics on the admin listener's `/metrics`: after a known set of requests the
//! counters have exact values, the histograms count every request, the gauges follow what is
//! in flight, worker upstreams show their workers, TLS handshakes are counted, and the whole
//! output is valid Prometheus text.
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Reading the exposition

/// One scrape, parsed: every sample by its name and sorted labels.
struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The sample `name{labels}`, labels given in any order; None when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&key(name, labels)).copied()
    }

    /// The sample, which must be present.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {}\n--- /metrics ---\n{}",
                key(name, labels),
                self.text
            )
        })
    }

    /// The sum of every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let (n, ls) = split_key(k);
                n == name
                    && labels
                        .iter()
                        .all(|(l, v)| ls.iter().any(|(a, b)| a == l && b == v))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

fn split_key(k: &str) -> (&str, Vec<(String, String)>) {
    let (name, rest) = k.split_once('{').unwrap();
    let labels = parse_labels(rest.strip_suffix('}').unwrap()).unwrap();
    (name, labels)
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `a="x",b="y"` (with \" \\ \n escapes) to pairs; Err describes what is wrong.
fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// Parses the text exposition format strictly: every line is a `# HELP`/`# TYPE` comment or
/// `name{labels} value`; every sample belongs to a family declared by a `# TYPE` before it.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut family: Option<(String, String)> = None;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment {line:?}"));
            assert!(valid_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type in {line:?}"
                );
                family = Some((name.to_string(), t.to_string()));
            } else {
                assert_eq!(kind, "HELP", "unknown comment {line:?}");
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (
                    n,
                    parse_labels(l).unwrap_or_else(|e| panic!("{e} in {line:?}")),
                )
            }
            None => (series, Vec::new()),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let (fam, kind) = family
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any # TYPE: {line:?}"));
        let ok = match kind.as_str() {
            "histogram" => [
                format!("{fam}_bucket"),
                format!("{fam}_sum"),
                format!("{fam}_count"),
            ]
            .contains(&name.to_string()),
            _ => name == fam,
        };
        assert!(ok, "{line:?} is not of family {fam} ({kind})");
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let k = key(name, &labels);
        assert!(
            samples.insert(k.clone(), value).is_none(),
            "duplicate sample {k}"
        );
    }
    Scrape {
        text: text.to_string(),
        samples,
    }
}

/// GET /metrics: checks status and content type, and parses it.
async fn scrape(admin: SocketAddr) -> Scrape {
    let got = get(admin, "/metrics").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    parse(&got.text())
}

/// Scrapes until `ready` holds (the outcome of a request is counted when its response has been
/// sent, which can be a moment after the client has read it); returns that scrape.
async fn scrape_until(admin: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = scrape(admin).await;
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen after {PATIENCE:?}\n--- /metrics ---\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Backends

/// A backend that holds each request until the test adds a permit.
struct Held {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Held {
    async fn start() -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let (a, g) = (arrived.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, g) = (a.clone(), g.clone());
                let service =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let (a, g) = (a.clone(), g.clone());
                        async move {
                            a.fetch_add(1, Ordering::SeqCst);
                            g.acquire().await.unwrap().forget();
                            Ok::<_, std::convert::Infallible>(Response::new(full("released")))
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Held {
            addr,
            arrived,
            gate,
        }
    }

    async fn wait_arrived(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "held backend: {n} never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An address where nothing listens.
async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn counters_histograms_and_gauges_after_known_traffic() {
    // `app` answers 500 on /app/fail, else 200.
    let app = TestBackend::start(|seen| {
        let mut resp = Response::new(full(seen.body.clone()));
        if seen.uri.path() == "/app/fail" {
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        resp
    })
    .await;
    let ok = TestBackend::echo().await;
    let held = Held::start().await;
    let refused = refused_addr().await;
    let yaml = format!(
        r#"listen:
  - addr: "127.0.0.1:0"
admin:
  addr: "127.0.0.1:0"
upstreams:
  app:
    servers: ["{app}"]
  refused:
    servers: ["{refused}"]
  flaky:
    balance: round_robin
    servers: ["{refused}", "{ok}"]
  held:
    concurrency: 1
    queue: {{ max: 0, timeout: 5s }}
    servers: ["{held}"]
routes:
  - {{ name: app-api, path: "/app/", upstream: app }}
  - {{ path: "/refused/", upstream: refused }}
  - {{ path: "/flaky/", upstream: flaky }}
  - {{ path: "/held/", upstream: held }}
"#,
        app = app.addr,
        ok = ok.addr,
        held = held.addr,
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();

    // Routes are labelled by their name, else by host and path.
    let route_of = |u: &str| match u {
        "app" => "app-api".to_string(),
        "-" => "-".to_string(),
        u => format!("/{u}/"),
    };
    // Before any traffic: valid, every configured route and upstream has its zeroed histograms.
    let before = scrape(admin).await;
    for u in ["app", "refused", "flaky", "held", "-"] {
        assert_eq!(
            before.value(
                "proxyd_request_duration_seconds_count",
                &[("route", &route_of(u)), ("upstream", u)]
            ),
            0.0
        );
        if u != "-" {
            assert_eq!(
                before.value("proxyd_queue_wait_seconds_count", &[("upstream", u)]),
                0.0
            );
        }
    }
    assert_eq!(
        before.get(
            "proxyd_requests_total",
            &[
                ("route", "app-api"),
                ("upstream", "app"),
                ("method", "GET"),
                ("status_class", "2xx"),
                ("code", "200")
            ]
        ),
        None,
        "no series for what has not happened"
    );

    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/app/get").await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(
            post(proxy.addr, "/app/post", "data").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get(proxy.addr, "/app/fail").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let none = get(proxy.addr, "/nowhere").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let bad = get(proxy.addr, "/refused/x").await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert_eq!(bad.header("proxyd-error"), Some("upstream-connect-refused"));
    // Round robin over [refused, ok]: of two requests exactly one meets the refused backend
    // first and is retried (nothing was sent) on the other.
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "/flaky/x").await.status, StatusCode::OK);
    }

    // One request holds `held`'s only slot; with no queue the next is refused at once.
    let holding = tokio::spawn(get(proxy.addr, "/held/1"));
    held.wait_arrived(1).await;
    let full = get(proxy.addr, "/held/2").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.header("proxyd-error"), Some("queue-full"));

    // While it is held: the gauges show it.
    let during = scrape_until(admin, "the queue-full 503 counted", |s| {
        s.get(
            "proxyd_requests_total",
            &[
                ("route", "/held/"),
                ("upstream", "held"),
                ("method", "GET"),
                ("status_class", "5xx"),
                ("code", "503"),
            ],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        during.value("proxyd_upstream_in_flight", &[("upstream", "held")]),
        1.0
    );
    assert_eq!(
        during.value("proxyd_upstream_queue_depth", &[("upstream", "held")]),
        0.0
    );
    assert_eq!(
        during.value(
            "proxyd_backend_in_flight",
            &[("upstream", "held"), ("backend", &held.addr.to_string())]
        ),
        1.0
    );
    assert_eq!(
        during.value("proxyd_upstream_in_flight", &[("upstream", "app")]),
        0.0
    );
    assert!(during.value("proxyd_client_connections_open", &[]) >= 1.0);

    held.gate.add_permits(1);
    assert_eq!(holding.await.unwrap().status, StatusCode::OK);

    let m = scrape_until(admin, "every request counted", |s| {
        s.sum("proxyd_requests_total", &[]) == 12.0
    })
    .await;
    // By status code, and its class beside it.
    let req = |u: &str, method: &str, code: &str| {
        m.value(
            "proxyd_requests_total",
            &[
                ("route", &route_of(u)),
                ("upstream", u),
                ("method", method),
                ("status_class", &format!("{}xx", &code[..1])),
                ("code", code),
            ],
        )
    };
    assert_eq!(req("app", "GET", "200"), 3.0);
    assert_eq!(req("app", "POST", "200"), 2.0);
    assert_eq!(req("app", "GET", "500"), 1.0);
    assert_eq!(req("-", "GET", "404"), 1.0);
    assert_eq!(req("refused", "GET", "502"), 1.0);
    assert_eq!(req("flaky", "GET", "200"), 2.0);
    assert_eq!(req("held", "GET", "200"), 1.0);
    assert_eq!(req("held", "GET", "503"), 1.0);
    assert_eq!(m.sum("proxyd_requests_total", &[("upstream", "app")]), 6.0);
    assert_eq!(
        m.sum("proxyd_requests_total", &[("status_class", "5xx")]),
        3.0
    );

    // Histograms: every request has a total duration (by route and upstream); queue wait for
    // every routed one; an upstream time for those a backend answered.
    let count = |h: &str, u: &str| m.value(&format!("{h}_count"), &[("upstream", u)]);
    let duration = |suffix: &str, u: &str, more: &[(&str, &str)]| {
        let route = route_of(u);
        let mut labels = vec![("route", route.as_str()), ("upstream", u)];
        labels.extend_from_slice(more);
        m.value(
            &format!("proxyd_request_duration_seconds_{suffix}"),
            &labels,
        )
    };
    for (u, n, answered) in [
        ("app", 6.0, 6.0),
        ("-", 1.0, 0.0),
        ("refused", 1.0, 0.0),
        ("flaky", 2.0, 2.0),
        ("held", 2.0, 1.0),
    ] {
        assert_eq!(duration("count", u, &[]), n, "{u}");
        assert_eq!(
            count("proxyd_upstream_response_seconds", u),
            answered,
            "{u}"
        );
        let queued = if u == "-" { 0.0 } else { n };
        assert_eq!(count("proxyd_queue_wait_seconds", u), queued, "{u}");
        let inf = duration("bucket", u, &[("le", "+Inf")]);
        assert_eq!(inf, n, "the +Inf bucket of {u} holds every request");
    }
    assert!(duration("sum", "app", &[]) > 0.0);
    assert!(duration("sum", "held", &[]) > 0.0);

    // Errors by cause, rejections, retries: from the upstreams' own counters, exact.
    let err = |u: &str, cause: &str| {
        m.value(
            "proxyd_upstream_errors_total",
            &[("upstream", u), ("cause", cause)],
        )
    };
    assert_eq!(err("refused", "upstream-connect-refused"), 1.0);
    assert_eq!(err("held", "queue-full"), 1.0);
    assert_eq!(err("app", "upstream-connect-refused"), 0.0);
    assert_eq!(
        err("flaky", "upstream-connect-refused"),
        0.0,
        "the retry answered"
    );
    assert_eq!(m.sum("proxyd_upstream_errors_total", &[]), 2.0);
    assert_eq!(
        m.value(
            "proxyd_queue_rejections_total",
            &[("upstream", "held"), ("reason", "full")]
        ),
        1.0
    );
    for reason in ["timeout", "deadline", "overload"] {
        assert_eq!(
            m.value(
                "proxyd_queue_rejections_total",
                &[("upstream", "held"), ("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    // Admission: never overloaded; no drain rate until requests have waited.
    assert_eq!(
        m.value("proxyd_upstream_queue_overloaded", &[("upstream", "held")]),
        0.0
    );
    assert_eq!(m.get("proxyd_upstream_queue_drain_rate", &[]), None);
    assert_eq!(
        m.value(
            "proxyd_upstream_retries_total",
            &[("upstream", "flaky"), ("reason", "unsent")]
        ),
        1.0
    );
    assert_eq!(m.sum("proxyd_upstream_retries_total", &[]), 1.0);
    assert_eq!(m.sum("proxyd_upstream_queued_total", &[]), 0.0);
    assert_eq!(m.sum("proxyd_backend_ejections_total", &[]), 0.0);
    assert_eq!(m.sum("proxyd_failed_open_total", &[]), 0.0);

    // Pool: every request `app` answered took one connection, new or reused.
    let pool = |u: &str, kind: &str| {
        m.value(
            "proxyd_pool_connections_total",
            &[("upstream", u), ("kind", kind)],
        )
    };
    assert_eq!(pool("app", "new") + pool("app", "reused"), 6.0);
    assert!(pool("app", "new") >= 1.0);
    assert_eq!(pool("held", "new") + pool("held", "reused"), 1.0);

    // Backends.
    let app_backend = app.addr.to_string();
    let app_b = [("upstream", "app"), ("backend", app_backend.as_str())];
    assert_eq!(m.value("proxyd_backend_up", &app_b), 1.0);
    assert_eq!(m.value("proxyd_backend_ejected", &app_b), 0.0);
    assert!(m.value("proxyd_backend_latency_ewma_seconds", &app_b) > 0.0);
    assert_eq!(
        m.value(
            "proxyd_upstream_backends",
            &[("upstream", "flaky"), ("state", "ready")]
        ),
        2.0
    );

    // Nothing in flight any more; every client connection is closed in the end.
    assert_eq!(m.sum("proxyd_upstream_in_flight", &[]), 0.0);
    assert_eq!(m.sum("proxyd_upstream_queue_depth", &[]), 0.0);
    let end = scrape_until(admin, "client connections closed", |s| {
        s.get("proxyd_client_connections_open", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(end.value("proxyd_client_connections_total", &[]), 12.0);
    assert_eq!(
        end.value("proxyd_tls_handshakes_total", &[("result", "ok")]),
        0.0
    );

    // The admin's other answers still work beside /metrics.
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn worker_upstreams_expose_their_workers() {
    let yaml = format!(
        r#"listen:
  - addr: "127.0.0.1:0"
admin:
  addr: "127.0.0.1:0"
upstreams:
  web:
    workers:
      command: ["python3", "{APP}"]
      count: 2
      env: {{ PROXYD_METRICS_TEST: "1" }}
"#
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while get(admin, "/readyz").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "workers never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // /readyz wants one ready worker per upstream; the metrics show both.
    scrape_until(admin, "both workers ready", |s| {
        s.get("proxyd_workers", &[("upstream", "web"), ("state", "ready")]) == Some(2.0)
    })
    .await;
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
    }
    let m = scrape_until(admin, "4 requests served", |s| {
        s.sum("proxyd_worker_requests_total", &[("upstream", "web")]) == 4.0
            && s.sum("proxyd_requests_total", &[("upstream", "web")]) == 4.0
    })
    .await;
    let web = [("upstream", "web")];
    assert_eq!(m.value("proxyd_workers_desired", &web), 2.0);
    assert_eq!(
        m.value("proxyd_workers", &[("upstream", "web"), ("state", "ready")]),
        2.0
    );
    assert_eq!(
        m.value(
            "proxyd_workers",
            &[("upstream", "web"), ("state", "starting")]
        ),
        0.0
    );
    for slot in ["0", "1"] {
        let w = [("upstream", "web"), ("worker", slot)];
        assert!(
            m.value("proxyd_worker_rss_bytes", &w) > 1e6,
            "a python process uses > 1 MB"
        );
        assert!(m.value("proxyd_worker_start_time_seconds", &w) > 1.6e9);
    }
    for reason in ["crash", "hung", "max_requests", "rolling"] {
        assert_eq!(
            m.value(
                "proxyd_worker_restarts_total",
                &[("upstream", "web"), ("reason", reason)]
            ),
            0.0
        );
    }
    assert_eq!(
        m.value(
            "proxyd_upstream_backends",
            &[("upstream", "web"), ("state", "ready")]
        ),
        2.0
    );

    // A POST that kills its worker (never replayed): one crash, one 502, and a replacement.
    let crashed = post(proxy.addr, "/crash", "").await;
    assert_eq!(crashed.status, StatusCode::BAD_GATEWAY);
    let m = scrape_until(admin, "the crashed worker replaced", |s| {
        s.get(
            "proxyd_worker_restarts_total",
            &[("upstream", "web"), ("reason", "crash")],
        ) == Some(1.0)
            && s.get("proxyd_workers", &[("upstream", "web"), ("state", "ready")]) == Some(2.0)
    })
    .await;
    assert_eq!(
        m.value(
            "proxyd_upstream_errors_total",
            &[("upstream", "web"), ("cause", "upstream-closed-early")]
        ),
        1.0
    );
    assert_eq!(m.sum("proxyd_upstream_retries_total", &web), 0.0);
    assert_eq!(
        m.value(
            "proxyd_requests_total",
            &[
                ("route", "/"),
                ("upstream", "web"),
                ("method", "POST"),
                ("status_class", "5xx"),
                ("code", "502")
            ]
        ),
        1.0
    );
    // Pool counts of the crashed worker's backend stay in the totals.
    let pool = m.sum("proxyd_pool_connections_total", &web);
    assert!(
        pool >= 5.0,
        "5 requests took a connection each, pool total {pool}"
    );

    // A rolling restart is counted by its reason.
    let restart = H1::connect(admin)
        .await
        .send(
            Request::post("/upstreams/web/restart")
                .header("host", "admin")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(restart.status, StatusCode::OK);
    let m = scrape(admin).await;
    assert_eq!(
        m.value(
            "proxyd_worker_restarts_total",
            &[("upstream", "web"), ("reason", "rolling")]
        ),
        2.0
    );
    assert!(
        m.sum("proxyd_pool_connections_total", &web) >= pool,
        "counters never go back when workers are replaced"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn tls_handshakes_are_counted_by_result() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls: {{ certs: [{{ cert: \"{}\", key: \"{}\" }}] }}\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        cert_path.display(),
        key_path.display(),
        backend.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();

    // Two good handshakes, each followed by a request.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for _ in 0..2 {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Two failed ones: plaintext on the TLS port, and a client that hangs up at once.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;
    drop(TcpStream::connect(proxy.addr).await.unwrap());

    let m = scrape_until(admin, "4 handshakes counted", |s| {
        s.sum("proxyd_tls_handshakes_total", &[]) == 4.0
    })
    .await;
    assert_eq!(
        m.value("proxyd_tls_handshakes_total", &[("result", "ok")]),
        2.0
    );
    assert_eq!(
        m.value("proxyd_tls_handshakes_total", &[("result", "failed")]),
        2.0
    );
    assert_eq!(
        m.value(
            "proxyd_requests_total",
            &[
                ("route", "/"),
                ("upstream", "app"),
                ("method", "GET"),
                ("status_class", "2xx"),
                ("code", "200")
            ]
        ),
        2.0
    );
    scrape_until(admin, "client connections closed", |s| {
        s.get("proxyd_client_connections_open", &[]) == Some(0.0)
            && s.get("proxyd_client_connections_total", &[]) == Some(4.0)
    })
    .await;
    proxy.shutdown().await;
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\n";
    assert_eq!(
        parse(good).value("a_total", &[("y", "q\"z"), ("x", "1")]),
        3.0
    );
    for bad in [
        "a_total 1\n",                                    // no # TYPE
        "# TYPE a_total counter\na_total{x=1} 1\n",       // unquoted value
        "# TYPE a_total counter\na_total{x=\"1\"}\n",     // no value
        "# TYPE a counter\na 1\n",                        // counter without _total
        "# TYPE a_total counter\nb_total 1\n",            // wrong family
        "# TYPE a_total counter\na_total 1\na_total 2\n", // duplicate
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
}
