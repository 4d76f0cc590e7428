//! Admission by time, with real one-request-at-a-time workers (examples/app.py): a burst far
//! larger than the workers is served without an error when the deadline allows; a request
//! that cannot make its deadline is refused at once with a Retry-After; the standing-delay
//! rule engages under an open-loop overload and releases after it; a client that leaves the
//! queue frees its place; and a worker that dies or hangs mid-response costs a GET nothing (it
//! goes to another worker) while a POST is never sent twice.
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::procs::*;
use common::workers::*;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// An upstream `app` of `count` app.py workers with `keys` in its workers block, and
/// `upstream` (YAML lines at the upstream's indentation, e.g. a `queue:`) after it.
fn config(marker: &Marker, count: usize, keys: &[(&str, &str)], upstream: &str) -> String {
    format!("{}{upstream}", app_config(marker, count, keys))
}

/// A path in `dir` for a test's flag or receipt file.
fn file_in(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

/// The requests a receipt file says reached a worker.
fn receipts(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn counter(
    proxy: &TestProxy,
    pick: fn(&proxyd::upstream::stats::Stats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(&proxy.upstream("app").stats).load(Ordering::Relaxed)
}

/// Keeps the one worker busy with a request held until `hold` exists; returns once it runs.
async fn hold_the_worker(proxy: &TestProxy, hold: &str) -> tokio::task::JoinHandle<Got> {
    let path = format!("/slow?ms=60000&until={hold}");
    let addr = proxy.addr;
    let held = tokio::spawn(async move { get(addr, &path).await });
    let up = proxy.upstream("app");
    wait_for("the held request to reach the worker", || {
        up.in_flight() == 1
    })
    .await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_ten_times_the_workers_is_served_without_errors() {
    let marker = Marker::new("burst");
    let (proxy, admin) = start_proxy(&config(&marker, 2, &[], "")).await;
    wait_ready(admin).await;
    let addr = proxy.addr;
    // 40 clients at once, 3 requests each, for 2 one-at-a-time workers: a queue of ~38.
    let clients: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1::connect(addr).await;
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(c.get("/slow?ms=20").await);
                }
                got
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        for got in c.await.unwrap() {
            statuses.push((got.status, got.header("proxyd-error").map(str::to_string)));
        }
    }
    assert_eq!(statuses.len(), 120);
    let failed: Vec<_> = statuses
        .iter()
        .filter(|(s, e)| *s != StatusCode::OK || e.is_some())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(counter(&proxy, |s| &s.queued) > 0, "requests queued");
    for (what, n) in [
        ("queue-full", counter(&proxy, |s| &s.queue_full)),
        ("queue-timeout", counter(&proxy, |s| &s.queue_timeout)),
        ("queue-deadline", counter(&proxy, |s| &s.queue_deadline)),
        ("queue-overload", counter(&proxy, |s| &s.queue_overload)),
    ] {
        assert_eq!(n, 0, "{what}");
    }
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_make_its_deadline_is_refused_at_once() {
    let marker = Marker::new("deadline");
    let dir = tempfile::tempdir().unwrap();
    let queue = "    queue: { timeout: 15s, target: 0s }\n";
    let (proxy, admin) = start_proxy(&config(&marker, 1, &[], queue)).await;
    wait_ready(admin).await;
    let addr = proxy.addr;
    let up = proxy.upstream("app");

    // The drain rate is measured while requests wait: three clients on one worker.
    let warm: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1::connect(addr).await;
                for _ in 0..10 {
                    assert_eq!(c.get("/slow?ms=20").await.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    assert!(up.admission().drain_rate.is_some(), "drain rate measured");
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status").await.body).expect("/status is JSON");
    let rate = status["upstreams"][0]["queue_drain_rate"].as_f64();
    assert!(rate.is_some_and(|r| r > 0.0), "/status: {status}");

    // Nothing completes while the worker is held: queue requests until one is refused.
    let hold = file_in(&dir, "hold");
    let held = hold_the_worker(&proxy, &hold).await;
    let mut admitted = Vec::new();
    let refused = 'fill: {
        for k in 1..=1000 {
            let waiter = tokio::spawn(async move { get(addr, "/slow?ms=1").await });
            let deadline = Instant::now() + PATIENCE;
            loop {
                if waiter.is_finished() {
                    break 'fill waiter.await.unwrap();
                }
                if up.queued() >= k {
                    admitted.push(waiter);
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "request {k} neither queued nor answered"
                );
                sleep(Duration::from_millis(2)).await;
            }
        }
        panic!("1000 requests queued and none was refused");
    };
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(refused.header("proxyd-error"), Some("queue-deadline"));
    let retry_after: u32 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(
        (1..=300).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    // At once: everything admitted still waits behind the held request, none timed out.
    assert_eq!(up.queued(), admitted.len());
    assert_eq!(up.in_flight(), 1);
    assert!(!held.is_finished());
    assert_eq!(counter(&proxy, |s| &s.queue_timeout), 0);

    std::fs::write(&hold, "").unwrap();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    for w in admitted {
        let got = w.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "an admitted request: {got:?}");
    }
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standing_delay_rule_engages_under_overload_and_releases() {
    let marker = Marker::new("standing");
    let queue = "    queue: { timeout: 30s, target: 300ms, interval: 400ms }\n";
    let (proxy, admin) = start_proxy(&config(&marker, 1, &[], queue)).await;
    wait_ready(admin).await;
    let addr = proxy.addr;
    let up = proxy.upstream("app");

    // An open loop at 100 requests per second on a worker that serves about 40.
    let mut sent = Vec::new();
    let mut engaged = false;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..400 {
        tick.tick().await;
        sent.push(tokio::spawn(async move { get(addr, "/slow?ms=20").await }));
        engaged |= up.admission().overloaded;
    }
    let (mut ok, mut shed) = (0, 0);
    for s in sent {
        let got = s.await.unwrap();
        match (got.status, got.header("proxyd-error")) {
            (StatusCode::OK, None) => ok += 1,
            (StatusCode::SERVICE_UNAVAILABLE, Some("queue-overload")) => {
                assert_eq!(got.header("retry-after"), Some("1"));
                shed += 1;
            }
            other => panic!("only 200s and queue-overload 503s, got {other:?}: {got:?}"),
        }
    }
    assert!(engaged, "the rule engaged");
    assert!(ok > 0 && shed > 0, "{ok} served, {shed} shed");
    assert_eq!(counter(&proxy, |s| &s.queue_overload), shed);
    wait_for("the rule to release", || !up.admission().overloaded).await;
    assert_eq!(get(addr, "/slow?ms=1").await.status, StatusCode::OK);
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_the_queue_frees_its_place() {
    let marker = Marker::new("leaves");
    let dir = tempfile::tempdir().unwrap();
    let receipt = file_in(&dir, "receipt");
    let (proxy, admin) = start_proxy(&config(&marker, 1, &[], "    queue: { max: 1 }\n")).await;
    wait_ready(admin).await;
    let hold = file_in(&dir, "hold");
    let held = hold_the_worker(&proxy, &hold).await;

    let mut leaver = TcpStream::connect(proxy.addr).await.unwrap();
    let gone = format!("GET /slow?ms=1&rid=gone&receipt={receipt} HTTP/1.1\r\nHost: x\r\n\r\n");
    leaver.write_all(gone.as_bytes()).await.unwrap();
    proxy.wait_queued("app", 1).await;
    drop(leaver);
    proxy.wait_queued("app", 0).await;

    // Its place is free again: the queue of one takes the next request.
    let addr = proxy.addr;
    let kept_path = format!("/slow?ms=1&rid=kept&receipt={receipt}");
    let kept = tokio::spawn(async move { get(addr, &kept_path).await });
    proxy.wait_queued("app", 1).await;
    std::fs::write(&hold, "").unwrap();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(kept.await.unwrap().status, StatusCode::OK);
    let seen = receipts(&receipt);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].contains("rid=kept"),
        "the one that left never reached the worker"
    );
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

/// The body `/half?bytes=N` sends when nothing goes wrong.
fn whole_half(n: usize) -> Vec<u8> {
    let mut body = vec![b'a'; n / 2];
    body.resize(n, b'b');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_body_costs_a_get_nothing_and_a_post_is_not_replayed() {
    let marker = Marker::new("mid-body");
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = start_proxy(&config(&marker, 2, &[], "")).await;
    wait_ready(admin).await;

    // The first worker to get it sends half of 200,000 bytes and dies.
    let (die, receipt) = (file_in(&dir, "die-get"), file_in(&dir, "get"));
    let got = get(
        proxy.addr,
        &format!("/half?bytes=200000&die={die}&receipt={receipt}"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert!(
        got.body == whole_half(200_000),
        "the whole body, from the other worker"
    );
    assert_eq!(
        receipts(&receipt).len(),
        2,
        "sent to the dead worker, then another"
    );
    assert_eq!(counter(&proxy, |s| &s.retried_replayed), 1);

    wait_ready(admin).await;
    let (die, receipt) = (file_in(&dir, "die-post"), file_in(&dir, "post"));
    let got = post(
        proxy.addr,
        &format!("/half?bytes=200000&die={die}&receipt={receipt}"),
        "an order",
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
    assert_eq!(got.header("proxyd-error"), Some("upstream-closed-early"));
    assert_eq!(
        receipts(&receipt).len(),
        1,
        "a POST reaches one worker, once"
    );
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

/// Worker restarts for being hung, from the admin's /metrics.
async fn hung_restarts(admin: std::net::SocketAddr) -> u64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find(|l| {
            l.starts_with("proxyd_worker_restarts_total{")
                && l.contains("reason=\"hung\"")
                && l.contains("upstream=\"app\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_silent_mid_body_past_request_timeout_is_replaced() {
    let marker = Marker::new("stall");
    let dir = tempfile::tempdir().unwrap();
    let keys = [("request_timeout", "1s")];
    let (proxy, admin) = start_proxy(&config(&marker, 2, &keys, "")).await;
    wait_ready(admin).await;

    // Before the head went out: a GET goes to the other worker, a POST gets a 504.
    let (stall, receipt) = (file_in(&dir, "stall-get"), file_in(&dir, "get"));
    let got = get(
        proxy.addr,
        &format!("/half?bytes=2000&stall={stall}&receipt={receipt}"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert!(got.body == whole_half(2000));
    assert_eq!(receipts(&receipt).len(), 2);
    wait_for_hung(admin, 1).await;

    wait_ready(admin).await;
    let (stall, receipt) = (file_in(&dir, "stall-post"), file_in(&dir, "post"));
    let path = format!("/half?bytes=2000&stall={stall}&receipt={receipt}");
    let got = post(proxy.addr, &path, "an order").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{got:?}");
    assert_eq!(
        got.header("proxyd-error"),
        Some("upstream-response-timeout")
    );
    assert_eq!(receipts(&receipt).len(), 1);
    wait_for_hung(admin, 2).await;
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_response_whose_worker_goes_silent_is_cut_visibly() {
    let marker = Marker::new("stall-committed");
    let dir = tempfile::tempdir().unwrap();
    let keys = [("request_timeout", "1s")];
    let yaml = format!(
        "{}limits:\n  buffer_response: 1KiB\n",
        config(&marker, 1, &keys, "")
    );
    let (proxy, admin) = start_proxy(&yaml).await;
    wait_ready(admin).await;

    // 100,000 bytes are past the 1 KiB buffer: the head goes out, then the worker stalls.
    let stall = file_in(&dir, "stall");
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/half?bytes=200000&stall={stall}"))
        .header("host", "test.local")
        .body(full(""))
        .unwrap();
    let resp = timeout(PATIENCE, client.send_request(req))
        .await
        .expect("the head came")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = timeout(PATIENCE, resp.into_body().collect())
        .await
        .expect("the body ends");
    assert!(body.is_err(), "the cut body must not look complete");
    wait_for_hung(admin, 1).await;
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

/// Polls /metrics until `n` workers were restarted for being hung.
async fn wait_for_hung(admin: std::net::SocketAddr, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while hung_restarts(admin).await < n {
        assert!(Instant::now() < deadline, "{n} hung restarts never counted");
        sleep(Duration::from_millis(50)).await;
    }
}
