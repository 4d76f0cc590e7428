//! Distributed tracing end to end, as the upstream sees it: the `traceparent` (and
//! `tracestate`) proxyd sends for new, continued, invalid and unsampled traces, with tracing
//! off, across a reload, and one span id per attempt of a retried request; the trace id in
//! the JSON access log. (The spans' export over OTLP is tested with the exporter.)

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{full, Got, TestBackend, TestProxy, H1};
use http::Request;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 10s"))
}

/// GET / with `headers`.
async fn get(proxy: SocketAddr, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get("/").header("host", "test.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(
        "request",
        H1::connect(proxy).await.send(req.body(full("")).unwrap()),
    )
    .await
}

/// A `traceparent` as the upstream got it: (trace id, parent id, flags), checked well formed.
fn parsed(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(v.len(), 55, "{v}");
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00", "{v}");
    let hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    assert!(parts[1..].iter().all(|p| hex(p)), "{v}");
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The last request's header `name`, as the backend saw it.
fn seen(backend: &TestBackend, name: &str) -> Option<String> {
    let reqs = backend.requests();
    let last = reqs.last().expect("the backend got the request");
    let mut all = last.headers.get_all(name).iter();
    let v = all.next().map(|v| v.to_str().unwrap().to_string());
    assert!(all.next().is_none(), "{name} sent once");
    v
}

fn traced(extra: &str) -> String {
    format!("tracing:\n  otlp: \"http://127.0.0.1:4318\"\n{extra}")
}

/// Polls `path` until it holds `n` lines (the log is written on its own thread).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{}: never held {n} lines", path.display());
}

#[tokio::test]
async fn a_new_trace_and_its_id_in_the_json_access_log() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let extra = format!(
        "{}access_log:\n  - {{ format: json, path: \"{}\" }}\n",
        traced("  sample: 1.0\n"),
        log.display()
    );
    let proxy = TestProxy::to(&[backend.addr], &extra).await;
    let got = get(proxy.addr, &[("tracestate", "rojo=1")]).await;
    assert_eq!(got.status, 200);
    let (trace, _, flags) = parsed(&seen(&backend, "traceparent").expect("a traceparent"));
    assert_eq!(flags, "01", "sampled");
    assert_eq!(
        seen(&backend, "tracestate"),
        None,
        "not without a valid traceparent"
    );

    let lines = wait_lines(&log, 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["trace_id"], trace.as_str());

    // Another request, another trace.
    get(proxy.addr, &[]).await;
    let (other, _, _) = parsed(&seen(&backend, "traceparent").unwrap());
    assert_ne!(other, trace);
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_with_a_new_parent() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], &traced("  sample: 0.0\n")).await;
    let got = get(
        proxy.addr,
        &[
            ("traceparent", VALID),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    let (trace, parent, flags) = parsed(&seen(&backend, "traceparent").unwrap());
    assert_eq!(trace, TRACE, "the same trace");
    assert_ne!(parent, PARENT, "proxyd's attempt is the app's parent");
    assert_eq!(flags, "01", "the caller's sampled flag, whatever the ratio");
    assert_eq!(
        seen(&backend, "tracestate").as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        "passed on as it came"
    );
}

#[tokio::test]
async fn an_invalid_traceparent_is_replaced() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], &traced("")).await;
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ] {
        let got = get(
            proxy.addr,
            &[("traceparent", bad), ("tracestate", "rojo=1")],
        )
        .await;
        assert_eq!(got.status, 200);
        let v = seen(&backend, "traceparent").unwrap();
        assert_ne!(v, bad);
        let (trace, parent, flags) = parsed(&v);
        assert_ne!(trace, TRACE, "{bad}: a new trace");
        assert_ne!(parent, PARENT);
        assert_eq!(flags, "01");
        assert_eq!(seen(&backend, "tracestate"), None, "{bad}");
    }
}

#[tokio::test]
async fn not_sampled_passes_a_valid_header_and_adds_none() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], &traced("  sample: 0\n")).await;

    get(
        proxy.addr,
        &[("traceparent", UNSAMPLED), ("tracestate", "rojo=1")],
    )
    .await;
    assert_eq!(seen(&backend, "traceparent").as_deref(), Some(UNSAMPLED));
    assert_eq!(seen(&backend, "tracestate").as_deref(), Some("rojo=1"));

    get(proxy.addr, &[]).await;
    assert_eq!(seen(&backend, "traceparent"), None, "nothing new");

    get(proxy.addr, &[("traceparent", "00-nope")]).await;
    assert_eq!(
        seen(&backend, "traceparent"),
        None,
        "invalid: never passed on"
    );
}

#[tokio::test]
async fn with_tracing_off_the_header_passes_untouched() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    for tp in [VALID, UNSAMPLED, "whatever-a-client-sends"] {
        get(proxy.addr, &[("traceparent", tp), ("tracestate", "rojo=1")]).await;
        assert_eq!(seen(&backend, "traceparent").as_deref(), Some(tp));
        assert_eq!(seen(&backend, "tracestate").as_deref(), Some("rojo=1"));
    }
    get(proxy.addr, &[]).await;
    assert_eq!(seen(&backend, "traceparent"), None);
}

#[tokio::test]
async fn a_reload_turns_tracing_on_and_off() {
    let backend = TestBackend::echo().await;
    let base = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let proxy = TestProxy::from_yaml(&base).await;
    let admin = proxy.admin.unwrap();
    let reload = || async {
        let got = within(
            "reload",
            H1::connect(admin).await.send(
                Request::post("/reload")
                    .header("host", "admin")
                    .body(full(""))
                    .unwrap(),
            ),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
    };

    get(proxy.addr, &[("traceparent", "garbage")]).await;
    assert_eq!(seen(&backend, "traceparent").as_deref(), Some("garbage"));

    std::fs::write(proxy.config_path(), format!("{base}{}", traced(""))).unwrap();
    reload().await;
    get(proxy.addr, &[("traceparent", "garbage")]).await;
    parsed(&seen(&backend, "traceparent").unwrap());

    std::fs::write(proxy.config_path(), &base).unwrap();
    reload().await;
    get(proxy.addr, &[("traceparent", "garbage")]).await;
    assert_eq!(seen(&backend, "traceparent").as_deref(), Some("garbage"));
}

#[tokio::test]
async fn each_attempt_of_a_retried_request_has_its_own_span() {
    let (servers, heads) = common::dies_once().await;
    let proxy = TestProxy::to(&servers, &traced("")).await;
    let got = get(proxy.addr, &[("traceparent", VALID)]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "the request went twice");
    let (t1, p1, _) = parsed(&common::traceparent_in(&heads[0]));
    let (t2, p2, _) = parsed(&common::traceparent_in(&heads[1]));
    assert_eq!((t1.as_str(), t2.as_str()), (TRACE, TRACE));
    assert_ne!(p1, p2, "one span per attempt");
    assert_ne!(p1, PARENT);
    assert_ne!(p2, PARENT);
}
