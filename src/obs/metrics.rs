//! The Prometheus registry and every metric proxyd exports, named in one place; served as text
//! on the admin listener's `GET /metrics`.
//!
//! Two kinds of figures:
//!
//! - counted as things happen, in a registry that lives as long as the server: requests by
//!   route, upstream, method and status code (and its class), latency histograms by route and
//!   by upstream (by [`Metrics`], an observer of every finished request), client connections
//!   and TLS handshakes (by the server's accept loop);
//! - read when scraped from the live state: in-flight requests and queue depth, the counters
//!   each upstream already keeps (errors by cause, retries, queue rejections, ejections,
//!   failing open), keepalive pool reuse, backend health (active checks by result) and
//!   latency, the lookups of upstream host names (by result) and the backends they brought
//!   and took, and the workers (state,
//!   restarts by reason, RSS, requests served), handed over as plain [`super::figures`] by
//!   their owners;
//! - about proxyd itself: `proxyd_build_info` and the standard `process_*` metrics (the
//!   prometheus crate's process collector, read from `/proc/self` when scraped).
//!
//! The request path does a few atomic operations per request: handles (counters by method and
//! status code, the latency histogram per route and upstream; the queue and upstream
//! histograms per upstream) are made once and found by name.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder as _, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::figures::{UpstreamFigures, WorkerGroupFigures, BACKEND_STATES};
use super::outcome::{Observe, Outcome};
use crate::error::Cause;

/// The upstream and route label of requests no route matched.
pub const NO_UPSTREAM: &str = "-";

/// Latency buckets in seconds: sub-millisecond proxy overhead up to a minute-long upstream.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Method label values; anything else is `OTHER` (a client must not grow the label set).
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What `proxyd_build_info` says: the crate version, the git commit and the compiler it was
/// built from (set by build.rs; "unknown" when it could not read them).
const BUILD_INFO: [(&str, &str); 3] = [
    ("version", env!("CARGO_PKG_VERSION")),
    ("revision", or_unknown(option_env!("PROXYD_REVISION"))),
    ("rustc", or_unknown(option_env!("PROXYD_RUSTC"))),
];

const fn or_unknown(value: Option<&'static str>) -> &'static str {
    match value {
        Some(v) => v,
        None => "unknown",
    }
}

fn method_index(m: &Method) -> usize {
    match m.as_str() {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "CONNECT" => 5,
        "OPTIONS" => 6,
        "TRACE" => 7,
        "PATCH" => 8,
        _ => 9,
    }
}

fn class_index(s: StatusCode) -> usize {
    usize::from(s.as_u16() / 100).clamp(1, 5) - 1
}

/// A status code (100 to 999) as the index of its hundred and its place in it.
fn code_index(s: StatusCode) -> (usize, usize) {
    let code = s.as_u16();
    (
        usize::from(code / 100).clamp(1, 9) - 1,
        usize::from(code % 100),
    )
}

/// The server's metrics; one per server, shared by its listeners, its observers and the admin
/// listener.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_time: HistogramVec,
    queue_wait: HistogramVec,
    /// Per-upstream handles by upstream name; grows (rarely) when a reload adds an upstream.
    by_upstream: ArcSwap<HashMap<Box<str>, Arc<UpstreamHandles>>>,
    /// Request counters by route, then upstream; grows when a reload adds a route.
    by_route: ArcSwap<HashMap<Box<str>, ByUpstream>>,
    client_connections_open: IntGauge,
    client_connections: IntCounter,
    tls_ok: IntCounter,
    tls_failed: IntCounter,
    rate_limited: IntCounterVec,
    /// `proxyd_auth_failures_total` by route and reason.
    auth_failures: IntCounterVec,
    /// `proxyd_client_connections_rejected_total` by reason, in [`Rejected`] order.
    rejected: [IntCounter; 3],
    /// Responses compressed on the fly, by coding in [`ENCODINGS`] order.
    compressed: [CompressedHandles; 3],
    /// `proxyd_maintenance`: 1 while the maintenance switch is on (set when scraped).
    maintenance: IntGauge,
    /// Upstream error answers replaced by an error page (`intercept_errors`).
    intercepted: IntCounter,
}

/// The codings proxyd compresses with (the `encoding` label).
const ENCODINGS: [&str; 3] = ["zstd", "br", "gzip"];

/// The compression counters of one coding.
struct CompressedHandles {
    responses: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

/// Why a client connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `limits.max_connections_per_ip`.
    PerIp = 0,
    /// A PROXY protocol listener got no valid header in time.
    ProxyProtocol = 1,
    /// A PROXY protocol listener's peer is not in `trusted_proxies`.
    Untrusted = 2,
}

const REJECTED: [&str; 3] = ["per_ip_limit", "proxy_protocol", "untrusted_proxy"];

/// One upstream's queue and backend latency histograms, ready to observe.
struct UpstreamHandles {
    upstream_time: Histogram,
    queue_wait: Histogram,
}

/// One method's `proxyd_requests_total` children for a hundred status codes, made on first use
/// so unused codes stay out of the output.
type CodeBlock = [OnceLock<IntCounter>; 100];

/// A route's counters by upstream name.
type ByUpstream = HashMap<Box<str>, Arc<RouteHandles>>;

/// The request counters of one route and upstream.
struct RouteHandles {
    route: Box<str>,
    upstream: Box<str>,
    /// The upstream's histograms, so a finished request needs one lookup.
    histograms: Arc<UpstreamHandles>,
    /// `proxyd_request_duration_seconds` of the route and upstream.
    duration: Histogram,
    /// `proxyd_requests_total` children by method, then status code's hundred (1xx to 9xx);
    /// a block is made the first time a method meets a code of its hundred.
    requests: [[OnceLock<Box<CodeBlock>>; 9]; METHODS.len()],
    /// `proxyd_rate_limited_total` of the route, made on first use.
    rate_limited: OnceLock<IntCounter>,
}

/// Keeps `proxyd_client_connections_open` up while a client connection lives.
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid histogram definition")
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: &C) {
    // Only fails on a duplicate name, which the names below are not.
    let _ = registry.register(Box::new(c.clone()));
}

impl Metrics {
    /// Metrics for a server; [`Metrics::prepare`] makes the handles of its routes and
    /// upstreams.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "proxyd_requests_total",
                "Requests answered, by route, upstream (both \"-\" when no route matched), method, status code and its class.",
            ),
            &["route", "upstream", "method", "status_class", "code"],
        )
        .expect("valid counter definition");
        let duration = histogram(
            "proxyd_request_duration_seconds",
            "From a request's arrival to the end of its response, by route and upstream.",
            &["route", "upstream"],
        );
        let upstream_time = histogram(
            "proxyd_upstream_response_seconds",
            "From sending a request to a backend to its response head (the last attempt), by upstream.",
            &["upstream"],
        );
        let queue_wait = histogram(
            "proxyd_queue_wait_seconds",
            "Time a routed request waited for a free backend slot, by upstream.",
            &["upstream"],
        );
        let client_connections_open = IntGauge::new(
            "proxyd_client_connections_open",
            "Client connections open now (accepted, not yet closed).",
        )
        .expect("valid gauge definition");
        let client_connections = IntCounter::new(
            "proxyd_client_connections_total",
            "Client connections accepted.",
        )
        .expect("valid counter definition");
        let tls = IntCounterVec::new(
            Opts::new(
                "proxyd_tls_handshakes_total",
                "TLS handshakes with clients, by result (ok, failed; a time-out counts as failed).",
            ),
            &["result"],
        )
        .expect("valid counter definition");
        register(&registry, &requests);
        register(&registry, &duration);
        register(&registry, &upstream_time);
        register(&registry, &queue_wait);
        register(&registry, &client_connections_open);
        let maintenance = IntGauge::new(
            "proxyd_maintenance",
            "1 while the maintenance switch is on (admin API or maintenance.file), else 0.",
        )
        .expect("valid gauge definition");
        register(&registry, &maintenance);
        let intercepted = IntCounter::new(
            "proxyd_intercepted_responses_total",
            "Upstream error answers replaced by an error page (routes[].intercept_errors).",
        )
        .expect("valid counter definition");
        register(&registry, &intercepted);
        register(&registry, &client_connections);
        register(&registry, &tls);
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "proxyd_rate_limited_total",
                "Requests answered 429 by a rate limit (limits.rate or the route's rate), by route (\"-\" when none matched).",
            ),
            &["route"],
        )
        .expect("valid counter definition");
        let rejected = IntCounterVec::new(
            Opts::new(
                "proxyd_client_connections_rejected_total",
                "Client connections closed as soon as they were accepted, by reason: per_ip_limit (limits.max_connections_per_ip), proxy_protocol (no valid PROXY header in time), untrusted_proxy (a PROXY protocol listener's peer not in trusted_proxies).",
            ),
            &["reason"],
        )
        .expect("valid counter definition");
        let auth_failures = counter(
            "proxyd_auth_failures_total",
            "Credentials a route's basic_auth refused, by route and reason: malformed (an Authorization that is not Basic base64(user:password)), unknown_user, wrong_password. Requests without credentials are not counted; those refused for too many failures count in proxyd_rate_limited_total.",
            &["route", "reason"],
        );
        register(&registry, &auth_failures);
        register(&registry, &rate_limited);
        register(&registry, &rejected);
        let compressed = [
            counter(
                "proxyd_compressed_responses_total",
                "Upstream responses compressed on the fly (compression:), by encoding.",
                &["encoding"],
            ),
            counter(
                "proxyd_compression_in_bytes_total",
                "Response body bytes that went into compression on the fly, by encoding.",
                &["encoding"],
            ),
            counter(
                "proxyd_compression_out_bytes_total",
                "Compressed response body bytes sent, by encoding; in minus out is what compression saved.",
                &["encoding"],
            ),
        ];
        for c in &compressed {
            register(&registry, c);
        }
        let [responses, bytes_in, bytes_out] = &compressed;
        let labels: Vec<&str> = BUILD_INFO.iter().map(|(label, _)| *label).collect();
        let build_info = gauge(
            "proxyd_build_info",
            "Always 1; the labels say which proxyd this is: version, revision (git commit), rustc.",
            &labels,
        );
        let values: Vec<&str> = BUILD_INFO.iter().map(|(_, value)| *value).collect();
        build_info.with_label_values(&values).set(1);
        register(&registry, &build_info);
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...:
        // proxyd's own process (its workers have their own metrics), read when scraped.
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            registry,
            requests,
            duration,
            upstream_time,
            queue_wait,
            by_upstream: ArcSwap::from_pointee(HashMap::new()),
            by_route: ArcSwap::from_pointee(HashMap::new()),
            client_connections_open,
            maintenance,
            intercepted,
            client_connections,
            tls_ok: tls.with_label_values(&["ok"]),
            tls_failed: tls.with_label_values(&["failed"]),
            rate_limited,
            auth_failures,
            rejected: REJECTED.map(|r| rejected.with_label_values(&[r])),
            compressed: ENCODINGS.map(|e| CompressedHandles {
                responses: responses.with_label_values(&[e]),
                bytes_in: bytes_in.with_label_values(&[e]),
                bytes_out: bytes_out.with_label_values(&[e]),
            }),
        }
    }

    /// Makes the handles of a config's upstreams and routes (route name, upstream name), after
    /// a reload of those it adds, so their histograms show zeros before the first request.
    pub fn prepare<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a str>,
        routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        for u in upstreams {
            self.upstream(u);
        }
        for (route, upstream) in routes {
            self.route(route, upstream);
        }
        self.route(NO_UPSTREAM, NO_UPSTREAM);
    }

    /// The handles of upstream `name`, made the first time it is seen.
    fn upstream(&self, name: &str) -> Arc<UpstreamHandles> {
        if let Some(h) = self.by_upstream.load().get(name) {
            return h.clone();
        }
        let made = Arc::new(UpstreamHandles {
            upstream_time: self.upstream_time.with_label_values(&[name]),
            queue_wait: self.queue_wait.with_label_values(&[name]),
        });
        self.by_upstream.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(name.into()).or_insert_with(|| made.clone());
            map
        });
        self.by_upstream.load().get(name).cloned().unwrap_or(made)
    }

    /// The counters of `route` to `upstream`, made the first time the pair is seen.
    fn route(&self, route: &str, upstream: &str) -> Arc<RouteHandles> {
        if let Some(h) = self
            .by_route
            .load()
            .get(route)
            .and_then(|m| m.get(upstream))
        {
            return h.clone();
        }
        let made = Arc::new(RouteHandles {
            route: route.into(),
            upstream: upstream.into(),
            histograms: self.upstream(upstream),
            duration: self.duration.with_label_values(&[route, upstream]),
            requests: Default::default(),
            rate_limited: OnceLock::new(),
        });
        self.by_route.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.entry(route.into())
                .or_default()
                .entry(upstream.into())
                .or_insert_with(|| made.clone());
            map
        });
        self.by_route
            .load()
            .get(route)
            .and_then(|m| m.get(upstream))
            .cloned()
            .unwrap_or(made)
    }

    /// Counts an accepted client connection; the guard counts it closed when dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.client_connections.inc();
        self.client_connections_open.inc();
        ConnectionGuard(self.client_connections_open.clone())
    }

    /// Counts a client connection closed at accept.
    pub fn connection_rejected(&self, why: Rejected) {
        self.rejected[why as usize].inc();
    }

    /// Counts a finished TLS handshake with a client.
    pub fn tls_handshake(&self, ok: bool) {
        if ok {
            self.tls_ok.inc();
        } else {
            self.tls_failed.inc();
        }
    }

    /// Every metric in the Prometheus text format: the counted ones and those read now from
    /// the upstreams and the worker supervisors.
    pub fn render(&self, upstreams: &[UpstreamFigures], workers: &[WorkerGroupFigures]) -> String {
        let mut families = self.registry.gather();
        families.extend(scrape(upstreams, workers));
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// Sets `proxyd_maintenance` (the admin does, before a scrape is rendered).
    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.set(i64::from(on));
    }

    /// The `GET /metrics` response (its body as bytes: the admin frames it).
    pub fn response(
        &self,
        upstreams: &[UpstreamFigures],
        workers: &[WorkerGroupFigures],
    ) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::from(self.render(upstreams, workers)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus::TEXT_FORMAT),
        );
        resp
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Observe for Metrics {
    fn request_done(&self, o: &Outcome) {
        let routed = o.trace.upstream.as_deref();
        let name = routed.unwrap_or(NO_UPSTREAM);
        let r = self.route(o.trace.route.as_deref().unwrap_or(NO_UPSTREAM), name);
        let h = &r.histograms;
        let method = method_index(&o.method);
        let (hundred, code) = code_index(o.status);
        r.requests[method][hundred]
            .get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())))[code]
            .get_or_init(|| {
                self.requests.with_label_values(&[
                    &*r.route,
                    &*r.upstream,
                    METHODS[method],
                    STATUS_CLASSES[class_index(o.status)],
                    o.status.as_str(),
                ])
            })
            .inc();
        if o.trace.cause == Some(Cause::RateLimited) {
            r.rate_limited
                .get_or_init(|| self.rate_limited.with_label_values(&[&*r.route]))
                .inc();
        }
        if let Some(reason) = o.trace.auth_failure {
            self.auth_failures
                .with_label_values(&[&*r.route, reason])
                .inc();
        }
        if o.trace.intercepted {
            self.intercepted.inc();
        }
        r.duration.observe(seconds(o.duration));
        if routed.is_some() {
            h.queue_wait.observe(seconds(o.trace.queued));
        }
        if let Some(t) = o.trace.upstream_time {
            h.upstream_time.observe(seconds(t));
        }
        if let Some(c) = &o.trace.compressed {
            if let Some(i) = ENCODINGS.iter().position(|e| *e == c.encoding) {
                let handles = &self.compressed[i];
                handles.responses.inc();
                handles.bytes_in.inc_by(c.bytes_in);
                handles.bytes_out.inc_by(o.body_bytes);
            }
        }
    }
}

/// Metric vectors made for one scrape, filled from the live state.
fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition")
}

fn float_gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition")
}

fn as_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The figures read at scrape time from the upstreams and the worker supervisors.
fn scrape(upstreams: &[UpstreamFigures], groups: &[WorkerGroupFigures]) -> Vec<MetricFamily> {
    let in_flight = gauge(
        "proxyd_upstream_in_flight",
        "Requests in flight to the upstream's backends now.",
        &["upstream"],
    );
    let queue_depth = gauge(
        "proxyd_upstream_queue_depth",
        "Requests waiting in the upstream's admission queue now.",
        &["upstream"],
    );
    let drain_rate = float_gauge(
        "proxyd_upstream_queue_drain_rate",
        "Requests per second the upstream's backends complete while requests wait (what admission expects waits from); absent until measured.",
        &["upstream"],
    );
    let expected_wait = float_gauge(
        "proxyd_upstream_queue_expected_wait_seconds",
        "How long the requests waiting in the upstream's queue now need to drain (about what a newcomer would wait); absent until measured.",
        &["upstream"],
    );
    let overloaded = gauge(
        "proxyd_upstream_queue_overloaded",
        "1 while the standing-delay rule is engaged (requests admitted only if served within queue.target).",
        &["upstream"],
    );
    let queued = counter(
        "proxyd_upstream_queued_total",
        "Requests that had to wait in the upstream's queue for a free backend slot.",
        &["upstream"],
    );
    let errors = counter(
        "proxyd_upstream_errors_total",
        "Requests answered with an error proxyd made, by upstream and cause (the proxyd-error code).",
        &["upstream", "cause"],
    );
    let rejections = counter(
        "proxyd_queue_rejections_total",
        "Requests refused by the admission queue with a 503, by reason (full: queue.max; timeout: waited queue.timeout; deadline: expected wait over queue.timeout, refused at once; overload: could not be served within queue.target under persistent overload).",
        &["upstream", "reason"],
    );
    let retries = counter(
        "proxyd_upstream_retries_total",
        "Requests retried on another backend, by reason (unsent: nothing reached the failed backend; replayed: an idempotent request sent again).",
        &["upstream", "reason"],
    );
    let budget = counter(
        "proxyd_upstream_retry_budget_exhausted_total",
        "Retries not made because the upstream's retry budget was spent.",
        &["upstream"],
    );
    let ejections = counter(
        "proxyd_backend_ejections_total",
        "Backends ejected after consecutive failures (passive health), by upstream.",
        &["upstream"],
    );
    let failed_open = counter(
        "proxyd_failed_open_total",
        "Requests sent to an unhealthy or ejected backend because no healthy one was left.",
        &["upstream"],
    );
    let pool = counter(
        "proxyd_pool_connections_total",
        "Backend connections used, by kind: reused from the keepalive pool or newly opened.",
        &["upstream", "kind"],
    );
    let backends = gauge(
        "proxyd_upstream_backends",
        "The upstream's backends now, by state (ready, unhealthy, draining).",
        &["upstream", "state"],
    );
    let up = gauge(
        "proxyd_backend_up",
        "1 when the backend is ready (in the rotation: healthy, passing its health checks when they are on), 0 otherwise.",
        &["upstream", "backend"],
    );
    let health_checks = counter(
        "proxyd_health_checks_total",
        "Active health checks of a servers: upstream's backends (health:), by result: pass, fail (no connection, an error or a non-2xx answer), timeout (no answer within health.timeout).",
        &["upstream", "backend", "result"],
    );
    let ejected = gauge(
        "proxyd_backend_ejected",
        "1 while the backend is ejected after consecutive failures.",
        &["upstream", "backend"],
    );
    let backend_in_flight = gauge(
        "proxyd_backend_in_flight",
        "Requests in flight to the backend now.",
        &["upstream", "backend"],
    );
    let ewma = float_gauge(
        "proxyd_backend_latency_ewma_seconds",
        "The backend's peak-EWMA response-head latency (what the balancer sees).",
        &["upstream", "backend"],
    );
    let resolutions = counter(
        "proxyd_dns_resolutions_total",
        "Lookups of an upstream's host names and SRV name, by result: ok (addresses found), empty (NXDOMAIN or no records: no backends from the name), failed (the resolver failed: the last addresses were kept).",
        &["upstream", "result"],
    );
    let changes = counter(
        "proxyd_dns_backend_changes_total",
        "Backends that joined or left an upstream as its names' answers changed, by change (joined, left).",
        &["upstream", "change"],
    );
    for u in upstreams {
        let name = &*u.name;
        if let Some(d) = &u.dns {
            for (result, n) in [("ok", d.ok), ("empty", d.empty), ("failed", d.failed)] {
                resolutions.with_label_values(&[name, result]).inc_by(n);
            }
            for (change, n) in [("joined", d.joined), ("left", d.left)] {
                changes.with_label_values(&[name, change]).inc_by(n);
            }
        }
        let mut flight = 0usize;
        let mut by_state = [0i64; 3];
        for b in &u.backends {
            flight += b.in_flight;
            if let Some(i) = BACKEND_STATES.iter().position(|s| *s == b.state) {
                by_state[i] += 1;
            }
            let labels = [name, &*b.label];
            up.with_label_values(&labels)
                .set(i64::from(b.state == "ready"));
            ejected.with_label_values(&labels).set(i64::from(b.ejected));
            backend_in_flight
                .with_label_values(&labels)
                .set(as_i64(b.in_flight));
            ewma.with_label_values(&labels).set(b.latency.as_secs_f64());
            for (result, n) in b.health_checks.iter().flatten() {
                health_checks
                    .with_label_values(&[name, &*b.label, result])
                    .inc_by(*n);
            }
        }
        for (state, n) in BACKEND_STATES.into_iter().zip(by_state) {
            backends.with_label_values(&[name, state]).set(n);
        }
        in_flight.with_label_values(&[name]).set(as_i64(flight));
        queue_depth
            .with_label_values(&[name])
            .set(as_i64(u.waiting));
        if let Some(rate) = u.drain_rate {
            drain_rate.with_label_values(&[name]).set(rate);
        }
        if let Some(wait) = u.expected_wait {
            expected_wait
                .with_label_values(&[name])
                .set(wait.as_secs_f64());
        }
        overloaded
            .with_label_values(&[name])
            .set(i64::from(u.overloaded));
        pool.with_label_values(&[name, "reused"])
            .inc_by(u.pool_reused);
        pool.with_label_values(&[name, "new"]).inc_by(u.pool_opened);
        queued.with_label_values(&[name]).inc_by(u.queued);
        for &(cause, n) in &u.errors {
            errors.with_label_values(&[name, cause.code()]).inc_by(n);
            if let Some(reason) = rejection(cause) {
                rejections.with_label_values(&[name, reason]).inc_by(n);
            }
        }
        retries
            .with_label_values(&[name, "unsent"])
            .inc_by(u.retried_unsent);
        retries
            .with_label_values(&[name, "replayed"])
            .inc_by(u.retried_replayed);
        budget
            .with_label_values(&[name])
            .inc_by(u.retry_budget_exhausted);
        ejections.with_label_values(&[name]).inc_by(u.ejected);
        failed_open.with_label_values(&[name]).inc_by(u.failed_open);
    }

    let workers = gauge(
        "proxyd_workers",
        "Worker processes by state: starting (slot without a running worker), ready, unhealthy, draining.",
        &["upstream", "state"],
    );
    let desired = gauge(
        "proxyd_workers_desired",
        "Worker processes wanted now: workers.count, or with a range the scaler's choice between min and max.",
        &["upstream"],
    );
    let scaling = counter(
        "proxyd_worker_scaling_total",
        "Workers added (direction=up) or retired (direction=down) by the adaptive worker count.",
        &["upstream", "direction"],
    );
    let restarts = counter(
        "proxyd_worker_restarts_total",
        "Worker restarts by reason: crash, failed_start, hung, unhealthy, max_requests, max_memory, rolling.",
        &["upstream", "reason"],
    );
    let rss = gauge(
        "proxyd_worker_rss_bytes",
        "Resident memory of the worker process in a slot.",
        &["upstream", "worker"],
    );
    let served = counter(
        "proxyd_worker_requests_total",
        "Requests served by the worker now in a slot (starts over when the slot's worker is replaced).",
        &["upstream", "worker"],
    );
    let started = float_gauge(
        "proxyd_worker_start_time_seconds",
        "When the worker now in a slot started, in seconds since the Unix epoch.",
        &["upstream", "worker"],
    );
    for group in groups {
        let name = group.upstream.as_str();
        let mut by_state = [0i64; 3];
        for w in &group.workers {
            if let Some(i) = BACKEND_STATES.iter().position(|s| *s == w.state) {
                by_state[i] += 1;
            }
            let slot = w.slot.to_string();
            let labels = [name, slot.as_str()];
            if let Some(bytes) = w.rss {
                rss.with_label_values(&labels).set(as_i64(bytes));
            }
            served.with_label_values(&labels).inc_by(w.served);
            if let Ok(t) = w.started.duration_since(UNIX_EPOCH) {
                started.with_label_values(&labels).set(t.as_secs_f64());
            }
        }
        let count = group.desired;
        let draining = by_state[2];
        let serving = group
            .workers
            .len()
            .saturating_sub(usize::try_from(draining).unwrap_or(0));
        workers
            .with_label_values(&[name, "starting"])
            .set(as_i64(count.saturating_sub(serving)));
        for (state, n) in BACKEND_STATES.into_iter().zip(by_state) {
            workers.with_label_values(&[name, state]).set(n);
        }
        desired.with_label_values(&[name]).set(as_i64(count));
        scaling
            .with_label_values(&[name, "up"])
            .inc_by(group.scaled_up);
        scaling
            .with_label_values(&[name, "down"])
            .inc_by(group.scaled_down);
        // The usual reasons show as 0 before they first happen.
        for reason in [
            "crash",
            "failed_start",
            "hung",
            "unhealthy",
            "max_requests",
            "max_memory",
            "rolling",
        ] {
            restarts.with_label_values(&[name, reason]);
        }
        for &(reason, n) in &group.restarts {
            restarts.with_label_values(&[name, reason]).inc_by(n);
        }
    }

    [
        in_flight.collect(),
        queue_depth.collect(),
        drain_rate.collect(),
        expected_wait.collect(),
        overloaded.collect(),
        backends.collect(),
        up.collect(),
        health_checks.collect(),
        ejected.collect(),
        backend_in_flight.collect(),
        ewma.collect(),
        queued.collect(),
        errors.collect(),
        rejections.collect(),
        retries.collect(),
        budget.collect(),
        ejections.collect(),
        failed_open.collect(),
        pool.collect(),
        workers.collect(),
        desired.collect(),
        scaling.collect(),
        restarts.collect(),
        rss.collect(),
        served.collect(),
        started.collect(),
        resolutions.collect(),
        changes.collect(),
        access_log_dropped().collect(),
        trace_export(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The queue's refusals by reason (`proxyd_queue_rejections_total`), from their causes.
fn rejection(cause: Cause) -> Option<&'static str> {
    match cause {
        Cause::QueueFull => Some("full"),
        Cause::QueueTimeout => Some("timeout"),
        Cause::QueueDeadline => Some("deadline"),
        Cause::QueueOverload => Some("overload"),
        _ => None,
    }
}

/// Access-log lines dropped because a log's buffer was full (or its file unwritable).
fn access_log_dropped() -> IntCounterVec {
    let dropped = counter(
        "proxyd_access_log_dropped_lines_total",
        "Access-log lines dropped because a log's buffer was full or its file could not be written.",
        &[],
    );
    dropped
        .with_label_values(&[] as &[&str])
        .inc_by(super::access_log::dropped());
    dropped
}

/// The span exporter's counters (`tracing:`), of every exporter the process started; none
/// while tracing is off.
fn trace_export() -> Vec<MetricFamily> {
    let Some(t) = super::otel::export::totals() else {
        return Vec::new();
    };
    let exported = counter(
        "proxyd_trace_spans_exported_total",
        "Spans the OTLP collector took (a 2xx answer to their export request).",
        &[],
    );
    exported
        .with_label_values(&[] as &[&str])
        .inc_by(t.exported);
    let dropped = counter(
        "proxyd_trace_spans_dropped_total",
        "Spans dropped, by reason: queue_full (tracing.queue spans were waiting for export), export_failed (their batch got no 2xx answer within tracing.timeout: collector down, slow, or refusing).",
        &["reason"],
    );
    dropped
        .with_label_values(&["queue_full"])
        .inc_by(t.dropped_queue_full);
    dropped
        .with_label_values(&["export_failed"])
        .inc_by(t.dropped_export_failed);
    let requests = counter(
        "proxyd_trace_export_requests_total",
        "OTLP export requests to the collector, by result: ok (2xx), rejected (another status), failed (no connection or it broke), timeout.",
        &["result"],
    );
    for (result, n) in super::otel::export::RESULTS.iter().zip(t.requests) {
        requests.with_label_values(&[result]).inc_by(n);
    }
    [exported.collect(), dropped.collect(), requests.collect()]
        .into_iter()
        .flatten()
        .collect()
}
