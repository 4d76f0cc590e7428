//! One trace across proxyd and the app: the Flask example (examples/flask_app.py) as proxyd's
//! worker, instrumented with OpenTelemetry's Flask instrumentation and exporting over
//! OTLP/HTTP to the same collector as proxyd. The app's server span is the child of proxyd's
//! attempt span, which is the child of proxyd's server span, and all share the client's
//! trace id.

mod common;

use std::process::Command;

use common::otlp::{pb, Collector};
use common::procs::{python, Marker, MARKER_VAR};
use common::workers::{start_proxy, wait_ready, HEAD};
use common::{full, H1};
use http::{Request, StatusCode};

const FLASK_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flask_app.py");
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn otel_installed() -> bool {
    Command::new(python())
        .args([
            "-c",
            "import flask, opentelemetry.instrumentation.flask, opentelemetry.exporter.otlp.proto.http",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The service that sent `span`, as its resource says.
fn service_of(c: &Collector, span: &pb::Span) -> String {
    let got = c.state.got.lock().unwrap();
    for g in got.iter() {
        for rs in &g.request.resource_spans {
            let mine = rs
                .scope_spans
                .iter()
                .any(|s| s.spans.iter().any(|x| x.span_id == span.span_id));
            if !mine {
                continue;
            }
            let name = rs.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(pb::Any::String(s)) => Some(s.clone()),
                        _ => None,
                    })
            });
            return name.unwrap_or_default();
        }
    }
    String::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_proxyd_and_the_flask_app() {
    if !common::tools::require(
        otel_installed(),
        "one_trace_across_proxyd_and_the_flask_app",
        "opentelemetry-instrumentation-flask",
        "pip install flask opentelemetry-sdk opentelemetry-exporter-otlp-proto-http opentelemetry-instrumentation-flask",
    ) {
        return;
    }
    let collector = Collector::start().await;
    let url = collector.url();
    let marker = Marker::new("otel-flask");
    let yaml = format!(
        "{HEAD}tracing: {{ otlp: \"{url}\", sample: 1.0, flush: 50ms }}\n\
         upstreams:\n  app:\n    workers:\n      command: [{:?}, {FLASK_APP:?}]\n      count: 1\n\
         \x20     env: {{ {MARKER_VAR}: \"{}\", OTEL_EXPORTER_OTLP_ENDPOINT: \"{url}\", OTEL_SERVICE_NAME: flask-example, OTEL_BSP_SCHEDULE_DELAY: \"50\" }}\n\
         \x20     health: {{ path: /healthz, interval: 200ms, timeout: 5s }}\n\
         \x20     start_timeout: 30s\n",
        python(),
        marker.0
    );
    let (proxy, admin) = start_proxy(&yaml).await;
    wait_ready(admin).await;

    let got = H1::connect(proxy.addr)
        .await
        .send(
            Request::get("/pid")
                .header("host", "app.test")
                .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());

    // proxyd's server and attempt spans, and the app's own server span for GET /pid (its
    // health checks are traces of their own, without the client's trace id).
    let wanted = |c: &Collector| {
        c.spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == TRACE)
            .collect::<Vec<_>>()
    };
    let mut mine = Vec::new();
    for _ in 0..1500 {
        mine = wanted(&collector);
        if mine.len() >= 3
            && mine
                .iter()
                .any(|s| service_of(&collector, s) == "flask-example")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let by = |kind: i32, service: &str| {
        mine.iter()
            .find(|s| s.kind == kind && service_of(&collector, s) == service)
            .unwrap_or_else(|| {
                panic!(
                    "no span of kind {kind} from {service} in trace {TRACE}: {:?}",
                    mine.iter()
                        .map(|s| (s.name.clone(), s.kind, service_of(&collector, s)))
                        .collect::<Vec<_>>()
                )
            })
    };
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    let edge = by(SERVER, "proxyd");
    let attempt = by(CLIENT, "proxyd");
    let app = by(SERVER, "flask-example");
    assert_eq!(
        hex(&edge.parent_span_id),
        PARENT,
        "proxyd continues the client's trace"
    );
    assert_eq!(
        attempt.parent_span_id, edge.span_id,
        "the attempt is proxyd's child"
    );
    assert_eq!(
        app.parent_span_id, attempt.span_id,
        "the app's span is the child of proxyd's attempt"
    );
    assert!(app.name.contains("/pid"), "the app's span: {}", app.name);

    proxy.shutdown().await;
    marker.wait_none_left().await;
}
