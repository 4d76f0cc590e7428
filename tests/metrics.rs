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

#[tokio::test]
async fn a_reload_shows_new_routes_with_zeroed_histograms() {
    let backend = TestBackend::echo().await;
    let config = |routes: &str| {
        format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n  more:\n    servers: [\"{}\"]\nroutes:\n{routes}",
            backend.addr, backend.addr
        )
    };
    let first = "  - { name: old, path: \"/\", upstream: app }\n";
    let proxy = TestProxy::from_yaml(&config(first)).await;
    let admin = proxy.admin.unwrap();
    let duration = |s: &Scrape, route: &str, upstream: &str| {
        s.get(
            "proxyd_request_duration_seconds_count",
            &[("route", route), ("upstream", upstream)],
        )
    };
    assert_eq!(duration(&scrape(admin).await, "old", "app"), Some(0.0));
    assert_eq!(duration(&scrape(admin).await, "new", "more"), None);

    let second = format!("{first}  - {{ name: new, path: \"/new/\", upstream: more }}\n");
    std::fs::write(proxy.config_path(), config(&second)).unwrap();
    let reloaded = H1::connect(admin)
        .await
        .send(
            Request::post("/reload")
                .header("host", "admin")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    let m = scrape(admin).await;
    assert_eq!(duration(&m, "new", "more"), Some(0.0));
    assert_eq!(duration(&m, "old", "app"), Some(0.0));
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

// ---------------------------------------------------------------------------------------------
// deploy/monitoring: the alert rules and the dashboard against a real proxyd's scrape

const MONITORING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/monitoring");

/// The program's path on the PATH. Missing: under CI the test fails (.ci/run installs it); a
/// local run skips that part and it is listed (tests/common/tools.rs).
fn tool(name: &str, what: &str, package: &str) -> Option<std::path::PathBuf> {
    let found = common::tools::which(name);
    let install = format!("apt-get install {package}");
    common::tools::require(found.is_some(), what, name, &install);
    found
}

/// Runs `program args` (in `dir`, with `stdin` as its input); panics with its output unless
/// it succeeds.
fn run_ok(program: &std::path::Path, args: &[&str], dir: &str, stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {}: {}\n{text}",
        program.display(),
        args.join(" "),
        out.status
    );
    text
}

/// What a scrape has: every sample name, with its label names and each one's values.
type Index = BTreeMap<String, BTreeMap<String, std::collections::BTreeSet<String>>>;

fn index(scrape: &Scrape) -> Index {
    let mut index = Index::new();
    for k in scrape.samples.keys() {
        let (name, labels) = split_key(k);
        let metric = index.entry(name.to_string()).or_default();
        for (label, value) in labels {
            metric.entry(label).or_default().insert(value);
        }
    }
    index
}

/// Labels Prometheus adds to every target's samples (not in the scrape).
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// The selectors and grouping labels (by, without, on, ignoring, group_left/right) of a
/// PromQL expression.
#[derive(Default)]
struct Used {
    selectors: Vec<promql_parser::parser::VectorSelector>,
    grouping: Vec<String>,
}

fn walk(e: &promql_parser::parser::Expr, used: &mut Used) {
    use promql_parser::parser::Expr;
    match e {
        Expr::Aggregate(a) => {
            if let Some(m) = &a.modifier {
                used.grouping.extend(m.labels().labels.iter().cloned());
            }
            walk(&a.expr, used);
            if let Some(p) = &a.param {
                walk(p, used);
            }
        }
        Expr::Binary(b) => {
            walk(&b.lhs, used);
            walk(&b.rhs, used);
            if let Some(m) = &b.modifier {
                if let Some(on) = &m.matching {
                    used.grouping.extend(on.labels().labels.iter().cloned());
                }
                if let Some(group) = m.card.labels() {
                    used.grouping.extend(group.labels.iter().cloned());
                }
            }
        }
        Expr::Unary(u) => walk(&u.expr, used),
        Expr::Paren(p) => walk(&p.expr, used),
        Expr::Subquery(s) => walk(&s.expr, used),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, used)),
        Expr::VectorSelector(v) => used.selectors.push(v.clone()),
        Expr::MatrixSelector(m) => used.selectors.push(m.vs.clone()),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// What `expr` names that a scrape does not have: metrics, label names, label values of `=`
/// matchers, regex matchers that match no value (each word of `a|b|c` must be a value), and
/// grouping labels no selected metric has. With `values` false only names are checked (the
/// made-up series of a rules test).
fn problems(what: &str, expr: &str, index: &Index, values: bool) -> Vec<String> {
    use promql_parser::label::MatchOp;
    let parsed = match promql_parser::parser::parse(expr) {
        Ok(e) => e,
        Err(e) => return vec![format!("{what}: {e} in {expr:?}")],
    };
    let mut used = Used::default();
    walk(&parsed, &mut used);
    let mut out = Vec::new();
    let mut labels_seen: Vec<&str> = TARGET_LABELS.to_vec();
    for v in &used.selectors {
        let Some(name) = v.name.as_deref() else {
            out.push(format!(
                "{what}: a selector without a metric name in {expr:?}"
            ));
            continue;
        };
        let Some(metric) = index.get(name) else {
            out.push(format!("{what}: {name} is not in proxyd's scrape"));
            continue;
        };
        labels_seen.extend(metric.keys().map(String::as_str));
        let matchers = v.matchers.matchers.iter();
        for m in matchers.chain(v.matchers.or_matchers.iter().flatten()) {
            if m.name == "__name__" || TARGET_LABELS.contains(&m.name.as_str()) {
                continue;
            }
            let Some(have) = metric.get(&m.name) else {
                out.push(format!("{what}: {name} has no label {}", m.name));
                continue;
            };
            if !values {
                continue;
            }
            match &m.op {
                MatchOp::Equal if !have.contains(&m.value) => out.push(format!(
                    "{what}: {name}{{{}}} has no value {:?} (it has {have:?})",
                    m.name, m.value
                )),
                MatchOp::Re(_) => {
                    if !have.iter().any(|h| m.is_match(h)) {
                        out.push(format!(
                            "{what}: {name}{{{}=~{:?}}} matches no value (it has {have:?})",
                            m.name, m.value
                        ));
                    }
                    let words = m.value.split('|');
                    // Plain words (no regex syntax but |): each must be a value.
                    if m.value
                        .chars()
                        .all(|c| c.is_alphanumeric() || "_-|".contains(c))
                    {
                        for w in words.filter(|w| !have.contains(*w)) {
                            out.push(format!(
                                "{what}: {name}{{{}}} has no value {w:?} (it has {have:?})",
                                m.name
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for g in &used.grouping {
        if !labels_seen.contains(&g.as_str()) {
            out.push(format!("{what}: no metric in {expr:?} has the label {g}"));
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
}

#[derive(serde::Deserialize)]
struct RuleTests {
    tests: Vec<RuleTest>,
}

#[derive(serde::Deserialize)]
struct RuleTest {
    input_series: Vec<InputSeries>,
}

#[derive(serde::Deserialize)]
struct InputSeries {
    series: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The dashboard's queries (panels, rows' panels, template variables) with Grafana's
/// variables replaced: a template variable by `.*` (its "All"), `$__rate_interval` and its
/// kind by a duration. `label_values(SELECTOR, label)` gives its selector; the label is
/// checked by `{label=~".*"}` on it.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut queries = Vec::new();
    for p in all {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("no expr in {t}"));
            let title = p["title"].as_str().unwrap_or_default();
            queries.push((format!("panel {title:?}"), expr.to_string()));
        }
    }
    let label_values = regex::Regex::new(r"^label_values\((.+),\s*(\w+)\)$").unwrap();
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().unwrap();
        let c = label_values
            .captures(q)
            .unwrap_or_else(|| panic!("variable {}: not label_values(selector, label)", v["name"]));
        let selector = c[1].trim();
        let check = match selector.strip_suffix('}') {
            Some(s) => format!("{s},{}=~\".*\"}}", &c[2]),
            None => format!("{selector}{{{}=~\".*\"}}", &c[2]),
        };
        queries.push((format!("variable {}", v["name"]), check));
    }
    let mut names: Vec<&str> = vars.clone();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    queries
        .into_iter()
        .map(|(what, mut q)| {
            for interval in ["$__rate_interval", "$__interval", "$__range"] {
                q = q.replace(interval, "5m");
            }
            for n in &names {
                q = q
                    .replace(&format!("${{{n}}}"), ".*")
                    .replace(&format!("${n}"), ".*");
            }
            assert!(
                !q.contains('$'),
                "{what}: a variable the dashboard does not define in {q:?}"
            );
            (what, q)
        })
        .collect()
}

/// The dashboard's own shape: unique panel ids, every panel on the templated data source with
/// a title and a place on the 24-column grid, every query with a refId of its own.
fn check_dashboard_shape(dashboard: &serde_json::Value) {
    assert_eq!(dashboard["uid"], "proxyd");
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    let mut ids = std::collections::BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let id = p["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(
            !p["title"].as_str().unwrap().is_empty(),
            "a panel without a title"
        );
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{}",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        let mut refs = std::collections::BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{}", p["title"]);
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

/// proxyd (the binary) with every kind of upstream and traffic that makes every series
/// appear: a worker upstream, a queue that drained (drain rate), a 429, a 502, two routes to
/// one upstream. Returns its scrape; the caller holds the guards.
async fn busy_proxyd() -> (Scrape, ProxydProcess, SocketAddr) {
    let echo = TestBackend::echo().await;
    let held = Held::start().await;
    let refused = refused_addr().await;
    let yaml = format!(
        r#"listen:
  - addr: "127.0.0.1:0"
admin:
  addr: "127.0.0.1:0"
upstreams:
  web:
    workers:
      command: ["python3", "{APP}"]
      count: 1
  api:
    concurrency: 1
    servers: ["{held}"]
  echo:
    servers: ["{echo}"]
  down:
    servers: ["{refused}"]
routes:
  - {{ name: api, path: "/api/", upstream: api }}
  - {{ name: echo-v1, path: "/v1/", upstream: echo }}
  - {{ name: echo-v2, path: "/v2/", upstream: echo }}
  - {{ name: limited, path: "/limited/", upstream: echo, rate: {{ limit: "1/h", burst: 1 }} }}
  - {{ name: down, path: "/down/", upstream: down }}
  - {{ name: web, path: "/", upstream: web }}
"#,
        held = held.addr,
        echo = echo.addr,
    );
    let proxyd = ProxydProcess::start(&yaml);
    let deadline = Instant::now() + PATIENCE;
    let admin: SocketAddr = loop {
        let found = proxyd.stderr_lines.lock().unwrap().iter().find_map(|l| {
            l.contains("admin listening")
                .then(|| {
                    l.split("addr=Some(")
                        .nth(1)?
                        .split(')')
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no admin address in proxyd's log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while get(admin, "/readyz").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "proxyd never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = proxyd.addr;
    for _ in 0..3 {
        assert_eq!(get(addr, "/v1/x").await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(get(addr, "/v2/x").await.status, StatusCode::OK);
    }
    assert_eq!(get(addr, "/limited/x").await.status, StatusCode::OK);
    assert_eq!(
        get(addr, "/limited/x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(get(addr, "/down/x").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(addr, "/").await.status, StatusCode::OK);
    // One request holds api's only slot, six wait; released one by one, six complete while
    // others wait: enough for a drain rate.
    let waiting: Vec<_> = (0..7)
        .map(|i| tokio::spawn(get(addr, if i == 0 { "/api/first" } else { "/api/next" })))
        .collect();
    held.wait_arrived(1).await;
    scrape_until(admin, "six requests queued", |s| {
        s.get("proxyd_upstream_queue_depth", &[("upstream", "api")]) == Some(6.0)
    })
    .await;
    for n in 1..=7 {
        held.gate.add_permits(1);
        if n < 7 {
            held.wait_arrived(n + 1).await;
        }
    }
    for w in waiting {
        assert_eq!(w.await.unwrap().status, StatusCode::OK);
    }
    let scrape = scrape_until(
        admin,
        "every request counted, the drain rate measured",
        |s| {
            s.sum("proxyd_requests_total", &[]) == 16.0
                && s.get("proxyd_upstream_queue_drain_rate", &[("upstream", "api")])
                    .is_some()
        },
    )
    .await;
    (scrape, proxyd, admin)
}

#[tokio::test]
async fn monitoring_rules_and_dashboard_match_a_real_scrape() {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (m, _proxyd, _admin) = busy_proxyd().await;

    // The conventions: a code label beside status_class, latency by route, build info,
    // process metrics (of proxyd's own process: it started after this test).
    let code = |route: &str, upstream: &str, code: &str| {
        m.sum(
            "proxyd_requests_total",
            &[("route", route), ("upstream", upstream), ("code", code)],
        )
    };
    assert_eq!(code("echo-v1", "echo", "200"), 3.0);
    // A rate limit answers before an upstream is chosen.
    assert_eq!(code("limited", "-", "429"), 1.0);
    assert_eq!(code("down", "down", "502"), 1.0);
    assert_eq!(code("api", "api", "200"), 7.0);
    assert_eq!(
        m.sum(
            "proxyd_requests_total",
            &[("code", "502"), ("status_class", "5xx")]
        ),
        1.0
    );
    let by_route = |route: &str| {
        m.value(
            "proxyd_request_duration_seconds_count",
            &[("route", route), ("upstream", "echo")],
        )
    };
    assert_eq!(
        (
            by_route("echo-v1"),
            by_route("echo-v2"),
            by_route("limited")
        ),
        (3.0, 2.0, 1.0)
    );
    assert_eq!(
        m.value(
            "proxyd_upstream_response_seconds_count",
            &[("upstream", "echo")]
        ),
        6.0,
        "the 429 never reached the backend"
    );
    let revision = option_env!("PROXYD_REVISION").unwrap_or("unknown");
    let build = index(&m)["proxyd_build_info"].clone();
    assert_eq!(build["version"].first().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(build["revision"].first().unwrap(), revision);
    let rustc = build["rustc"].first().unwrap();
    assert!(
        regex::Regex::new(r"^\d+\.\d+\.\d+")
            .unwrap()
            .is_match(rustc),
        "rustc={rustc:?}"
    );
    // Built from this git checkout (and no PROXYD_REVISION): its HEAD, kept current by build.rs.
    let head = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success());
    if let (Some(out), None) = (head, std::env::var_os("PROXYD_REVISION")) {
        assert_eq!(
            revision,
            String::from_utf8_lossy(&out.stdout).trim(),
            "build.rs"
        );
    }
    assert!(m.value("process_start_time_seconds", &[]) >= started - 5.0);
    assert!(m.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.value("process_open_fds", &[]) > 0.0);
    assert!(m.value("process_max_fds", &[]) >= m.value("process_open_fds", &[]));
    assert!(m.value("process_threads", &[]) >= 1.0);
    assert!(m.get("process_cpu_seconds_total", &[]).is_some());

    // Every metric, label and value the alert rules, their tests and the dashboard name is in
    // the scrape: a rename cannot silently break them.
    let index = index(&m);
    let mut found = Vec::new();
    let rules_path = format!("{MONITORING}/proxyd-alerts.yaml");
    let rules: RuleFile = serde_saphyr::from_str(&read(&rules_path)).unwrap();
    let mut alerts = 0;
    for r in rules.groups.iter().flat_map(|g| &g.rules) {
        let what = r.alert.as_ref().or(r.record.as_ref()).unwrap();
        alerts += usize::from(r.alert.is_some());
        found.extend(problems(what, &r.expr, &index, true));
    }
    assert!(alerts >= 8, "{alerts} alerts");
    let tests: RuleTests =
        serde_saphyr::from_str(&read(&format!("{MONITORING}/proxyd-alerts.test.yaml"))).unwrap();
    for s in tests.tests.iter().flat_map(|t| &t.input_series) {
        found.extend(problems("rules test series", &s.series, &index, false));
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&format!("{MONITORING}/proxyd-dashboard.json"))).unwrap();
    check_dashboard_shape(&dashboard);
    let queries = dashboard_queries(&dashboard);
    for (what, q) in &queries {
        found.extend(problems(what, q, &index, true));
    }
    assert!(
        found.is_empty(),
        "{}\n--- /metrics ---\n{}",
        found.join("\n"),
        m.text
    );
    // What the issue asks to watch is watched.
    let everything: String = rules
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .map(|r| r.expr.as_str())
        .chain(queries.iter().map(|(_, q)| q.as_str()))
        .collect();
    for name in [
        "proxyd_queue_wait_seconds_bucket",
        "proxyd_worker_restarts_total",
        "proxyd_workers",
        "proxyd_backend_ejected",
        "proxyd_queue_rejections_total",
        "proxyd_upstream_queue_overloaded",
        "proxyd_upstream_queue_depth",
        "proxyd_upstream_queue_drain_rate",
        "proxyd_pool_connections_total",
        "proxyd_request_duration_seconds_bucket",
        "proxyd_upstream_response_seconds_bucket",
    ] {
        assert!(everything.contains(name), "{name} is watched nowhere");
    }

    // promtool: the scrape passes its lint, the rules their check and their unit tests, and
    // every dashboard query parses as Prometheus parses it (as recording rules).
    let Some(promtool) = tool(
        "promtool",
        "promtool checks of deploy/monitoring",
        "prometheus",
    ) else {
        return;
    };
    let lint = run_ok(&promtool, &["check", "metrics"], MONITORING, Some(&m.text));
    assert!(lint.trim().is_empty(), "promtool check metrics: {lint}");
    run_ok(
        &promtool,
        &["check", "rules", "proxyd-alerts.yaml"],
        MONITORING,
        None,
    );
    run_ok(
        &promtool,
        &["test", "rules", "proxyd-alerts.test.yaml"],
        MONITORING,
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, q))| serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": q }))
        .collect();
    let file = dir.path().join("dashboard-queries.yaml");
    let body = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": records }] });
    std::fs::write(&file, body.to_string()).unwrap();
    run_ok(
        &promtool,
        &["check", "rules", file.to_str().unwrap()],
        MONITORING,
        None,
    );
    if let Some(yamllint) = tool(
        "yamllint",
        "yamllint of deploy/monitoring",
        "yamllint (pip)",
    ) {
        let config = "{extends: default, rules: {line-length: {max: 100}}}";
        run_ok(
            &yamllint,
            &[
                "--strict",
                "-d",
                config,
                "proxyd-alerts.yaml",
                "proxyd-alerts.test.yaml",
            ],
            MONITORING,
            None,
        );
    }
}

#[test]
fn the_monitoring_check_finds_what_a_scrape_lacks() {
    let scrape = parse(
        "# TYPE proxyd_workers gauge\nproxyd_workers{upstream=\"web\",state=\"ready\"} 2\nproxyd_workers{upstream=\"web\",state=\"starting\"} 0\n",
    );
    let index = index(&scrape);
    let ok = |e: &str| problems("t", e, &index, true);
    assert!(
        ok(r#"sum by (job, upstream) (proxyd_workers{state=~"starting|ready",job="x"})"#)
            .is_empty()
    );
    for (bad, says) in [
        ("proxyd_worker", "not in proxyd's scrape"),
        (r#"proxyd_workers{status="ready"}"#, "no label status"),
        (r#"proxyd_workers{state="up"}"#, "no value \"up\""),
        (
            r#"proxyd_workers{state=~"starting|broken"}"#,
            "no value \"broken\"",
        ),
        (
            r#"proxyd_workers{state=~"ready|start-ing"}"#,
            "no value \"start-ing\"",
        ),
        (r#"proxyd_workers{state=~"x.*"}"#, "matches no value"),
        ("sum by (reason) (proxyd_workers)", "the label reason"),
        ("sum(rate(proxyd_workers[5m])", "t:"),
    ] {
        let found = ok(bad).join("\n");
        assert!(found.contains(says), "{bad}: {found:?}");
    }
    assert!(problems("t", r#"proxyd_workers{state="up"}"#, &index, false).is_empty());
}
