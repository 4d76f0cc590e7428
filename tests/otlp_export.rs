//! The OTLP/HTTP span exporter (`obs::otel::export`) against a collector on loopback: a small
//! hyper server here that decodes each POST with prost (message structs derived below from
//! opentelemetry-proto's .proto files, not proxyd's encoder) and records it. Every field
//! arrives intact; batches are bounded; a full queue drops and counts without blocking; a
//! collector that is down or answers 500 costs the batch (counted), and spans flow again
//! once it is back; a 503 with Retry-After is tried once more.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use proxyd::config::tracing::Tracing;
use proxyd::obs::otel::export::{Exporter, Stats};
use proxyd::obs::otel::{SpanKind, SpanRecord, Value};
use tokio::net::TcpListener;

use common::otlp::{pb, Collector};

const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers

fn config(url: &str, extra: &str) -> Tracing {
    let yaml = format!("otlp: \"{url}\"\n{extra}");
    serde_saphyr::from_str(&yaml).unwrap()
}

fn span(n: u8) -> SpanRecord {
    SpanRecord {
        trace_id: [n; 16],
        span_id: [n; 8],
        parent_span_id: None,
        trace_state: None,
        name: format!("span {n}"),
        kind: SpanKind::Internal,
        start: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        end: UNIX_EPOCH + Duration::from_secs(1_800_000_001),
        attributes: Vec::new(),
        error: None,
    }
}

/// Polls the exporter's figures until `ok` holds (or panics after a long patience).
async fn until(exporter: &Exporter, what: &str, ok: impl Fn(&Stats) -> bool) -> Stats {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = exporter.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "never: {what}; stats {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric's value in a scrape of a fresh registry (the exporter's counters are the
/// process's).
fn metric(name_and_labels: &str) -> f64 {
    let text = proxyd::obs::metrics::Metrics::new().render(&[], &[]);
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

/// An address nothing listens on (bound, then closed).
async fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn any(v: &pb::KeyValue) -> &pb::Any {
    v.value.as_ref().unwrap().value.as_ref().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn spans_arrive_with_every_field_intact() {
    let collector = Collector::start().await;
    let exporter = Exporter::start(&config(
        &collector.url(),
        "service_name: edge-proxy\nflush: 20ms\n",
    ));
    let start = UNIX_EPOCH + Duration::from_nanos(1_800_000_000_123_456_789);
    let end = start + Duration::from_micros(1500);
    let server = SpanRecord {
        trace_id: *b"0123456789abcdef",
        span_id: *b"server!!",
        parent_span_id: Some(*b"client!!"),
        trace_state: Some("vendor=opaque,x=1".into()),
        name: "GET /api".into(),
        kind: SpanKind::Server,
        start,
        end,
        attributes: vec![
            ("http.request.method", Value::Str("GET".into())),
            ("http.response.status_code", Value::Int(200)),
            ("proxyd.negative", Value::Int(-42)),
            ("proxyd.reused", Value::Bool(true)),
            ("proxyd.false", Value::Bool(false)),
            ("proxyd.ratio", Value::Double(0.25)),
            ("proxyd.empty", Value::Str(String::new())),
            ("url.path", Value::Str("/é/ü".into())),
        ],
        error: None,
    };
    let attempt = SpanRecord {
        trace_id: *b"0123456789abcdef",
        span_id: *b"attempt1",
        parent_span_id: Some(*b"server!!"),
        trace_state: None,
        name: "upstream attempt".into(),
        kind: SpanKind::Client,
        start,
        end: start + Duration::from_millis(1),
        attributes: vec![("server.address", Value::Str("127.0.0.1".into()))],
        error: Some("upstream-refused".into()),
    };
    let queue = SpanRecord {
        span_id: *b"queue!!!",
        name: "queue wait".into(),
        kind: SpanKind::Internal,
        parent_span_id: Some(*b"server!!"),
        attributes: Vec::new(),
        error: Some(String::new()),
        ..attempt.clone()
    };
    exporter.submit(vec![server, attempt, queue]);
    collector.wait_spans(3).await;
    let stats = until(&exporter, "3 spans counted exported", |s| s.exported == 3).await;
    assert_eq!(stats.requests, [1, 0, 0, 0]);
    assert_eq!(stats.dropped_queue_full + stats.dropped_export_failed, 0);
    assert!(metric("proxyd_trace_spans_exported_total") >= 3.0);

    let got = collector.state.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.path, "/v1/traces");
    assert_eq!(g.content_type, "application/x-protobuf");
    let rs = &g.request.resource_spans;
    assert_eq!(rs.len(), 1);
    let resource: Vec<(String, pb::Any)> = rs[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), any(kv).clone()))
        .collect();
    assert_eq!(
        resource,
        [
            ("service.name".into(), pb::Any::String("edge-proxy".into())),
            (
                "service.version".into(),
                pb::Any::String(env!("CARGO_PKG_VERSION").into())
            ),
        ]
    );
    assert_eq!(rs[0].scope_spans.len(), 1);
    assert_eq!(rs[0].scope_spans[0].scope.as_ref().unwrap().name, "proxyd");
    let spans = g.spans();
    assert_eq!(spans.len(), 3);

    let s = &spans[0];
    assert_eq!(s.trace_id, b"0123456789abcdef");
    assert_eq!(s.span_id, b"server!!");
    assert_eq!(s.parent_span_id, b"client!!");
    assert_eq!(s.trace_state, "vendor=opaque,x=1");
    assert_eq!(s.name, "GET /api");
    assert_eq!(s.kind, 2);
    assert_eq!(s.start_time_unix_nano, 1_800_000_000_123_456_789);
    assert_eq!(s.end_time_unix_nano, 1_800_000_000_124_956_789);
    let attrs: Vec<(&str, &pb::Any)> = s.attributes.iter().map(|kv| (&*kv.key, any(kv))).collect();
    assert_eq!(
        attrs,
        [
            ("http.request.method", &pb::Any::String("GET".into())),
            ("http.response.status_code", &pb::Any::Int(200)),
            ("proxyd.negative", &pb::Any::Int(-42)),
            ("proxyd.reused", &pb::Any::Bool(true)),
            ("proxyd.false", &pb::Any::Bool(false)),
            ("proxyd.ratio", &pb::Any::Double(0.25)),
            ("proxyd.empty", &pb::Any::String(String::new())),
            ("url.path", &pb::Any::String("/é/ü".into())),
        ]
    );
    assert_eq!(s.status, None, "no error: status unset");

    let a = &spans[1];
    assert_eq!(a.span_id, b"attempt1");
    assert_eq!(a.parent_span_id, b"server!!");
    assert_eq!(a.trace_state, "");
    assert_eq!(a.kind, 3);
    assert_eq!(a.end_time_unix_nano, 1_800_000_000_124_456_789);
    assert_eq!(
        a.status,
        Some(pb::Status {
            message: "upstream-refused".into(),
            code: 2
        })
    );

    let q = &spans[2];
    assert_eq!((q.name.as_str(), q.kind), ("queue wait", 1));
    assert!(q.attributes.is_empty());
    assert_eq!(
        q.status,
        Some(pb::Status {
            message: String::new(),
            code: 2
        })
    );
}

#[tokio::test]
async fn batches_are_bounded_and_none_is_lost() {
    let collector = Collector::start().await;
    // No timed flush here: full batches go at once, the rest at shutdown.
    let exporter = Exporter::start(&config(
        &collector.url(),
        "batch: 3\nflush: 1h\nqueue: 100\n",
    ));
    for n in 0..10 {
        exporter.submit(vec![span(n)]);
    }
    collector.wait_spans(9).await;
    exporter.shutdown().await;
    collector.wait_spans(10).await;

    let got = collector.state.got.lock().unwrap();
    let sizes: Vec<usize> = got.iter().map(|g| g.spans().len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
    drop(got);
    let ids: Vec<Vec<u8>> = collector.spans().into_iter().map(|s| s.span_id).collect();
    let want: Vec<Vec<u8>> = (0..10).map(|n| vec![n; 8]).collect();
    assert_eq!(ids, want);
    // One connection, kept alive between the batches.
    assert_eq!(collector.state.connections.load(Ordering::SeqCst), 1);
    let stats = exporter.stats();
    assert_eq!((stats.exported, stats.requests[0]), (10, 4));

    // After shutdown, spans are dropped and counted, not queued forever.
    exporter.submit(vec![span(11)]);
    let stats = exporter.stats();
    assert_eq!(stats.dropped_export_failed, 1);
}

#[tokio::test]
async fn a_full_queue_drops_at_once_and_counts() {
    let (collector, hold) = Collector::holding().await;
    let exporter = Exporter::start(&config(
        &collector.url(),
        "queue: 10\nbatch: 5\nflush: 10ms\ntimeout: 60s\n",
    ));
    // The collector holds its answer: nothing leaves the queue, so exactly `queue` spans are
    // taken and the rest dropped, and submit (a plain fn) cannot wait for the collector.
    for round in 0..100u8 {
        exporter.submit((0..10).map(|i| span(round.wrapping_add(i))).collect());
        exporter.submit(vec![span(round)]);
    }
    let stats = exporter.stats();
    assert_eq!(stats.dropped_queue_full, 100 * 11 - 10, "{stats:?}");
    assert_eq!(stats.exported, 0);
    assert!(metric("proxyd_trace_spans_dropped_total{reason=\"queue_full\"}") >= 1090.0);

    // Let the collector answer: the 10 queued spans arrive, and the queue takes spans again.
    hold.add_permits(1000);
    collector.wait_spans(10).await;
    until(&exporter, "10 exported", |s| s.exported == 10).await;
    exporter.submit(vec![span(200)]);
    collector.wait_spans(11).await;
    assert_eq!(exporter.stats().dropped_queue_full, 1090);
}

#[tokio::test]
async fn a_collector_that_is_down_costs_its_batches_then_spans_flow_again() {
    let addr = closed_addr().await;
    let exporter = Exporter::start(&config(
        &format!("http://{addr}"),
        "flush: 10ms\nbatch: 10\n",
    ));
    exporter.submit(vec![span(1), span(2)]);
    exporter.submit(vec![span(3)]);
    let stats = until(&exporter, "3 spans dropped", |s| {
        s.dropped_export_failed == 3
    })
    .await;
    assert_eq!(stats.exported, 0);
    assert!(stats.requests[2] >= 1, "{stats:?}");
    assert!(metric("proxyd_trace_spans_dropped_total{reason=\"export_failed\"}") >= 3.0);
    assert!(metric("proxyd_trace_export_requests_total{result=\"failed\"}") >= 1.0);

    // The collector comes up on that address: later spans arrive.
    let collector = Collector::on(TcpListener::bind(addr).await.unwrap(), None);
    exporter.submit(vec![span(4), span(5)]);
    collector.wait_spans(2).await;
    let ids: Vec<Vec<u8>> = collector.spans().into_iter().map(|s| s.span_id).collect();
    assert_eq!(ids, [vec![4; 8], vec![5; 8]]);
    until(&exporter, "2 exported", |s| s.exported == 2).await;
}

#[tokio::test]
async fn a_collector_answering_500_costs_the_batch() {
    let collector = Collector::start().await;
    collector.state.status.store(500, Ordering::SeqCst);
    let exporter = Exporter::start(&config(&collector.url(), "flush: 10ms\n"));
    exporter.submit(vec![span(1), span(2), span(3), span(4)]);
    let stats = until(&exporter, "4 spans dropped", |s| {
        s.dropped_export_failed == 4
    })
    .await;
    assert_eq!(stats.exported, 0);
    assert_eq!(stats.requests, [0, 1, 0, 0]);
    // Received (and refused) once: a 500 is not retried.
    assert_eq!(collector.state.got.lock().unwrap().len(), 1);
    assert!(metric("proxyd_trace_export_requests_total{result=\"rejected\"}") >= 1.0);

    collector.state.status.store(200, Ordering::SeqCst);
    exporter.submit(vec![span(5)]);
    collector.wait_spans(1).await;
}

#[tokio::test]
async fn a_503_with_retry_after_is_tried_once_more() {
    let collector = Collector::start().await;
    collector.state.busy.store(1, Ordering::SeqCst);
    let exporter = Exporter::start(&config(&collector.url(), "flush: 10ms\n"));
    exporter.submit(vec![span(1)]);
    collector.wait_spans(1).await;
    let stats = until(&exporter, "1 exported", |s| s.exported == 1).await;
    assert_eq!(stats.dropped_export_failed, 0);
    assert_eq!(collector.state.got.lock().unwrap().len(), 2);

    // Busy twice in a row: one retry only, then the batch is dropped.
    collector.state.busy.store(2, Ordering::SeqCst);
    exporter.submit(vec![span(2)]);
    let stats = until(&exporter, "1 dropped", |s| s.dropped_export_failed == 1).await;
    assert_eq!(stats.requests[1], 1);
    assert_eq!(collector.state.got.lock().unwrap().len(), 4);
}

#[test]
fn an_unusable_url_only_drops_and_a_stopped_runtime_keeps_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exporter = rt.block_on(async {
        let exporter = Exporter::start(&config("https://collector:4318", "flush: 10ms\n"));
        exporter.submit(vec![span(1)]);
        until(&exporter, "dropped", |s| s.dropped_export_failed == 1).await;
        exporter
    });
    drop(rt);
    // The task went with its runtime: spans are dropped and counted, not kept.
    exporter.submit(vec![span(2)]);
    assert_eq!(exporter.stats().dropped_export_failed, 2);
}
