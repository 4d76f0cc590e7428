//! Adaptive worker count (`count: { min, max }`) with real app workers (examples/app.py):
//! requests held in the queue add workers up to `max` and never past it, an idle pool shrinks
//! back to `min` while a client keeps sending (no request fails while workers drain), the
//! decisions show in /status and /metrics, crashes, rolling restarts, recycling and reloads
//! keep working with a variable count, and bad ranges are config errors with file:line:col.
//!
//! Requests are held with `/slow?until=FILE` (the app answers once FILE exists), so nothing
//! here depends on how long a worker takes to start: every wait polls with a deadline.
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::procs::*;
use common::*;
use http::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");
/// The bound on every wait for something to happen.
const PATIENCE: Duration = Duration::from_secs(60);

/// One upstream `app` of app.py workers with `count` (YAML flow text) and `extra` keys of the
/// workers block, an admin listener, debug headers. A one-request-at-a-time worker holding a
/// request cannot answer its health probe either, so failed probes never restart one here.
fn config(marker: &Marker, count: &str, extra: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nheaders:\n  debug: true\ntimeouts:\n  shutdown_grace: 5s\nupstreams:\n  app:\n    queue: {{max: 100, timeout: 60s}}\n    workers:\n      command: [{:?}, {APP:?}]\n      count: {count}\n      concurrency: 1\n      env: {{{MARKER_VAR}: \"{}\"}}\n      health: {{path: /healthz, interval: 200ms, timeout: 1s, unhealthy_restart: 1000}}\n      start_timeout: 20s\n      kill_timeout: 2s\n      graceful_timeout: 10s\n{extra}",
        python(),
        marker.0
    )
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after PATIENCE.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `worker_count` of upstream `app` in /status.
async fn worker_count(admin: SocketAddr) -> Value {
    let s = status(admin).await;
    s["upstreams"]
        .as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == "app"))
        .map(|u| u["worker_count"].clone())
        .expect("upstream app in /status")
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Polls /status until `cond` holds for upstream app's worker_count (asserting `each` on every
/// report seen on the way); returns the report that satisfied it.
async fn wait_count(
    admin: SocketAddr,
    what: &str,
    cond: impl Fn(&Value) -> bool,
    each: impl Fn(&Value),
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let c = worker_count(admin).await;
        each(&c);
        if cond(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}; last worker_count: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample of `metric` whose labels include every one of `labels`.
async fn metric(admin: SocketAddr, metric: &str, labels: &[&str]) -> Option<f64> {
    let got = get(admin, "/metrics").await;
    assert_eq!(got.status, StatusCode::OK);
    got.text().lines().find_map(|l| {
        let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
        let (names, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|want| names.split(',').any(|n| n == *want))
            .then(|| value.trim().parse().ok())?
    })
}

/// A file that releases held requests once it exists.
struct Gate {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Gate {
    fn new() -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("release");
        Gate { _dir: dir, path }
    }

    /// A request path held until `release` (20 s at most).
    fn held_path(&self) -> String {
        format!("/slow?ms=20000&until={}", self.path.display())
    }

    fn release(&self) {
        std::fs::write(&self.path, b"go").unwrap();
    }
}

/// `n` requests to `path`, each on its own connection, running in the background.
fn send_held(addr: SocketAddr, path: &str, n: usize) -> Vec<tokio::task::JoinHandle<Got>> {
    (0..n)
        .map(|_| {
            let path = path.to_string();
            tokio::spawn(async move { get(addr, &path).await })
        })
        .collect()
}

fn pid_in(body: &str) -> u32 {
    body.trim()
        .trim_start_matches("hello from pid ")
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {body:?}"))
}

/// Asserts each held request got a 200 from a worker; returns the pids that served them.
async fn all_ok(held: Vec<tokio::task::JoinHandle<Got>>) -> HashSet<u32> {
    let mut pids = HashSet::new();
    for h in held {
        let got = h.await.expect("a held request's task");
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert_eq!(got.header("proxyd-error"), None);
        pids.insert(pid_in(&got.text()));
    }
    pids
}

/// A client sending GET /pid one at a time, paced so that it keeps the pool mostly idle,
/// until stopped; records every response and the workers in the rotation at each request.
struct Trickle {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Got>, Vec<usize>)>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl Trickle {
    fn start(proxy: &TestProxy) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let upstream = proxy.upstream("app");
        let addr = proxy.addr;
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut client = H1::connect(addr).await;
            let (mut got, mut ready) = (Vec::new(), Vec::new());
            while !stop2.load(Ordering::Acquire) {
                ready.push(upstream.backends().len());
                got.push(client.get("/pid").await);
                sent2.fetch_add(1, Ordering::AcqRel);
                // Pacing (a light load, well under the 25 % that keeps workers), not a wait
                // for anything to happen.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (got, ready)
        });
        Trickle { stop, task, sent }
    }

    fn sent(&self) -> usize {
        self.sent.load(Ordering::Acquire)
    }

    /// Stops it; asserts every request got a 200 from a worker; returns the ready counts seen.
    async fn finish(self) -> (usize, Vec<usize>) {
        self.stop.store(true, Ordering::Release);
        let (got, ready) = self.task.await.expect("the trickle client");
        let failed: Vec<&Got> = got
            .iter()
            .filter(|g| g.status != StatusCode::OK || g.header("proxyd-error").is_some())
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed while the pool shrank: {failed:?}",
            failed.len(),
            got.len()
        );
        (got.len(), ready)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_adds_workers_up_to_max_and_idling_retires_them_without_failures() {
    let marker = Marker::new("adaptive");
    let count = "{min: 1, max: 3, scale_up_after: 300ms, scale_down_after: 1s, cooldown: 200ms}";
    let proxy = TestProxy::from_yaml(&config(&marker, count, "")).await;
    let admin = proxy.admin.expect("an admin listener");
    let upstream = proxy.upstream("app");
    let first = wait_count(admin, "the first worker", |c| c["current"] == 1, |_| {}).await;
    assert_eq!(first["adaptive"], true, "{first}");
    assert_eq!((num(&first["min"]), num(&first["max"])), (1, 3));
    assert_eq!(num(&first["desired"]), 1);
    assert_eq!(marker.pids().len(), 1);
    assert_eq!(
        metric(admin, "proxyd_workers_desired", &["upstream=\"app\""]).await,
        Some(1.0)
    );

    // Six requests held by one-at-a-time workers: the queue never empties, so workers are
    // added — as many per decision as the queue needs — until max, and no further.
    let gate = Gate::new();
    let held = send_held(proxy.addr, &gate.held_path(), 6);
    let never_past_max = |c: &Value| {
        assert!(num(&c["desired"]) <= 3, "past max: {c}");
        assert!(num(&c["current"]) <= 3, "past max: {c}");
        let in_rotation = upstream.backends().len();
        assert!(in_rotation <= 3, "{in_rotation} backends");
        let running = marker.pids().len();
        assert!(running <= 3, "{running} worker processes");
    };
    let at_max = wait_count(
        admin,
        "3 workers, held back at max",
        |c| {
            c["current"] == 3
                && c["held_back"]
                    .as_str()
                    .is_some_and(|h| h.contains("at max (3 workers)"))
        },
        never_past_max,
    )
    .await;
    // One decision when all six had arrived by then (5 queued: +2, capped by max), two when
    // the first saw fewer waiting.
    let decisions = num(&at_max["scaled_up"]);
    assert!((1..=2).contains(&decisions), "{at_max}");
    assert_eq!(at_max["last_decision"]["direction"], "up", "{at_max}");
    assert_eq!(num(&at_max["last_decision"]["workers"]), 3, "{at_max}");
    let reason = at_max["last_decision"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("queue"), "{reason}");
    // Three in flight, three still queued, and still no fourth worker.
    wait_for("3 requests in flight and 3 queued", || {
        upstream.in_flight() == 3 && upstream.queued() == 3
    })
    .await;
    never_past_max(&worker_count(admin).await);
    assert_eq!(
        metric(admin, "proxyd_workers_desired", &["upstream=\"app\""]).await,
        Some(3.0)
    );

    // A client that keeps sending from now on (its first request queues behind the held
    // ones), through the shrink below.
    let trickle = Trickle::start(&proxy);
    gate.release();
    let served_by = all_ok(held).await;
    assert_eq!(served_by.len(), 3, "the held requests ran on all 3 workers");
    assert_eq!(served_by, marker.pids());
    let ups = metric(
        admin,
        "proxyd_worker_scaling_total",
        &["upstream=\"app\"", "direction=\"up\""],
    )
    .await;
    assert_eq!(ups, Some(decisions as f64));

    // Idle now: the pool shrinks back to min, one worker at a time, while the client keeps
    // sending — and none of its requests fails as workers leave and drain.
    let shrunk = wait_count(
        admin,
        "the pool to shrink back to 1",
        |c| c["current"] == 1 && c["desired"] == 1,
        never_past_max,
    )
    .await;
    assert_eq!(num(&shrunk["scaled_down"]), 2, "{shrunk}");
    assert_eq!(shrunk["last_decision"]["direction"], "down", "{shrunk}");
    assert!(
        shrunk["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("busy on average")),
        "{shrunk}"
    );
    wait_for("the retired workers to stop", || marker.pids().len() == 1).await;
    assert!(served_by.is_superset(&marker.pids()));
    // A few more requests on the pool of one.
    let sent = trickle.sent();
    wait_for("requests after the shrink", || trickle.sent() >= sent + 5).await;
    let (n, ready) = trickle.finish().await;
    assert!(n >= 5, "{n}");
    assert_eq!(ready.first(), Some(&3), "the client started on 3 workers");
    assert_eq!(ready.last(), Some(&1), "and ended on 1");
    assert_eq!(
        metric(
            admin,
            "proxyd_worker_scaling_total",
            &["upstream=\"app\"", "direction=\"down\""]
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        metric(admin, "proxyd_workers_desired", &["upstream=\"app\""]).await,
        Some(1.0)
    );
    // Never below min: the one worker stays.
    let c = worker_count(admin).await;
    assert_eq!((num(&c["current"]), num(&c["desired"])), (1, 1), "{c}");

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_rolling_restarts_keep_the_scaled_count() {
    let marker = Marker::new("adaptive-restarts");
    // Scale-down far away: the pool stays at what it grew to.
    let count = "{min: 1, max: 2, scale_up_after: 200ms, scale_down_after: 1h, cooldown: 100ms}";
    let proxy = TestProxy::from_yaml(&config(&marker, count, "")).await;
    let admin = proxy.admin.expect("an admin listener");
    wait_count(admin, "the first worker", |c| c["current"] == 1, |_| {}).await;

    let gate = Gate::new();
    let held = send_held(proxy.addr, &gate.held_path(), 3);
    wait_count(admin, "2 workers", |c| c["current"] == 2, |_| {}).await;
    gate.release();
    let two = all_ok(held).await;
    assert_eq!(two.len(), 2);
    assert_eq!(two, marker.pids());

    // A crash: the slot's worker is replaced, the count stays 2.
    let victim = *two.iter().next().expect("two pids");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("a replacement for the killed worker", || {
        let now = marker.pids();
        now.len() == 2 && !now.contains(&victim)
    })
    .await;
    let after_crash = wait_count(admin, "2 workers again", |c| c["current"] == 2, |_| {}).await;
    assert_eq!(num(&after_crash["desired"]), 2, "{after_crash}");
    let before_roll = marker.pids();

    // A rolling restart replaces both, one at a time, and keeps the count.
    let got = common::admin_post(admin, "/upstreams/app/restart").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    wait_for("the old workers to stop", || {
        before_roll.iter().all(|p| !alive(*p))
    })
    .await;
    let after_roll = wait_count(
        admin,
        "2 workers after the restart",
        |c| c["current"] == 2,
        |_| {},
    )
    .await;
    assert_eq!(num(&after_roll["desired"]), 2, "{after_roll}");
    let now = marker.pids();
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.is_disjoint(&before_roll), "{before_roll:?} {now:?}");
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let got = get(proxy.addr, "/pid").await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        seen.insert(pid_in(&got.text()));
    }
    assert_eq!(seen, now);
    assert_eq!(
        metric(
            admin,
            "proxyd_worker_restarts_total",
            &["upstream=\"app\"", "reason=\"crash\""]
        )
        .await,
        Some(1.0)
    );

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_in_a_scaled_pool_fails_no_request() {
    let marker = Marker::new("adaptive-recycle");
    let count = "{min: 1, max: 2, scale_up_after: 200ms, scale_down_after: 1h, cooldown: 100ms}";
    let proxy = TestProxy::from_yaml(&config(&marker, count, "      max_requests: 10\n")).await;
    let admin = proxy.admin.expect("an admin listener");
    wait_count(admin, "the first worker", |c| c["current"] == 1, |_| {}).await;
    let gate = Gate::new();
    let held = send_held(proxy.addr, &gate.held_path(), 3);
    wait_count(admin, "2 workers", |c| c["current"] == 2, |_| {}).await;
    gate.release();
    let mut seen = all_ok(held).await;

    // Rounds of four clients x 10 requests until workers were recycled three times: each
    // retires after 10 requests, replaced before it leaves; nothing fails.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let addr = proxy.addr;
                tokio::spawn(async move {
                    let mut c = H1::connect(addr).await;
                    let mut out = Vec::new();
                    for _ in 0..10 {
                        out.push(c.get("/slow?ms=5").await);
                    }
                    out
                })
            })
            .collect();
        for c in clients {
            for got in c.await.expect("a client") {
                assert_eq!(got.status, StatusCode::OK, "{got:?}");
                seen.insert(pid_in(&got.text()));
            }
        }
        let recycled = metric(
            admin,
            "proxyd_worker_restarts_total",
            &["upstream=\"app\"", "reason=\"max_requests\""],
        )
        .await
        .unwrap_or(0.0);
        // Two first workers, three replacements that served.
        if recycled >= 3.0 && seen.len() >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers were not recycled: {seen:?}"
        );
    }
    let c = wait_count(admin, "2 workers", |c| c["current"] == 2, |_| {}).await;
    assert_eq!(num(&c["desired"]), 2, "{c}");
    assert_eq!(num(&c["scaled_down"]), 0, "{c}");

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_to_a_range_waits_for_its_min_workers() {
    let marker = Marker::new("adaptive-reload");
    let proxy = TestProxy::from_yaml(&config(&marker, "1", "")).await;
    let admin = proxy.admin.expect("an admin listener");
    let fixed = wait_count(admin, "the first worker", |c| c["current"] == 1, |_| {}).await;
    assert_eq!(fixed["adaptive"], false, "{fixed}");
    assert_eq!((num(&fixed["min"]), num(&fixed["max"])), (1, 1));

    std::fs::write(
        proxy.config_path(),
        config(&marker, "{min: 3, max: 4, scale_down_after: 1h}", ""),
    )
    .unwrap();
    let got = common::admin_post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    // The swap waited for the new range's min: 3 ready workers the moment it answers.
    let upstream = proxy.upstream("app");
    assert_eq!(upstream.ready_count(), 3);
    let c = worker_count(admin).await;
    assert_eq!(c["adaptive"], true, "{c}");
    assert_eq!((num(&c["min"]), num(&c["max"])), (3, 4), "{c}");
    assert_eq!((num(&c["current"]), num(&c["desired"])), (3, 3), "{c}");

    // Back to a smaller range: the new group starts at its min, the old one drains away.
    std::fs::write(
        proxy.config_path(),
        config(&marker, "{min: 2, max: 4, scale_down_after: 1h}", ""),
    )
    .unwrap();
    let got = common::admin_post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(proxy.upstream("app").ready_count(), 2);
    wait_for("the old group's workers to stop", || {
        marker.pids().len() == 2
    })
    .await;

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_is_no_scale_up_and_no_outage() {
    let marker = Marker::new("adaptive-nostart");
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    // Workers start until `full` exists; then the app cannot start more (out of something).
    let script = format!(
        "if [ -e {full:?} ]; then echo 'cannot start: full' >&2; exit 3; fi; exec {:?} {APP:?}",
        python()
    );
    let yaml = config(
        &marker,
        "{min: 1, max: 3, scale_up_after: 200ms, scale_down_after: 1h, cooldown: 100ms}",
        "",
    )
    .replace(
        &format!("command: [{:?}, {APP:?}]", python()),
        &format!("command: [\"sh\", \"-c\", {script:?}]"),
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.expect("an admin listener");
    wait_count(admin, "the first worker", |c| c["current"] == 1, |_| {}).await;
    let first = marker.pids();
    std::fs::write(&full, b"").unwrap();

    let gate = Gate::new();
    let held = send_held(proxy.addr, &gate.held_path(), 3);
    // The scaler tries, the new worker fails to start, the slot is given up again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = status(admin).await;
        let up = &s["upstreams"][0];
        let failed = up["restarts"]["failed_start"].as_u64().unwrap_or(0);
        if failed >= 1 && up["worker_count"]["desired"] == 1 {
            assert_eq!(up["worker_count"]["scaled_up"], 0, "{up}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed scale-up seen: {up}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The working worker serves on; the upstream is not given up.
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    gate.release();
    let served = all_ok(held).await;
    assert_eq!(served, first);
    let c = worker_count(admin).await;
    assert_eq!((num(&c["current"]), num(&c["desired"])), (1, 1), "{c}");

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

fn check_count(count: &str) -> String {
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"python3\", \"app.py\"]\n      count: {count}\n"
    );
    let (ok, text) = check(&yaml);
    assert!(!ok, "count: {count} was accepted: {text}");
    text
}

#[test]
fn bad_ranges_are_config_errors_with_their_place() {
    for (count, want) in [
        (
            "{min: 4, max: 2}",
            "proxy.yaml:7:14: upstreams.app.workers.count: min (4) is above max (2)",
        ),
        (
            "{min: 0, max: 2}",
            "proxy.yaml:7:14: upstreams.app.workers.count.min: must be at least 1",
        ),
        (
            "{min: 1, max: 100000}",
            "proxy.yaml:7:14: upstreams.app.workers.count.max: 100000 workers is more than the 1024 proxyd runs at most",
        ),
        (
            "{min: 1, maxx: 2}",
            "proxy.yaml:7:23: unknown field `maxx`, expected one of min, max,",
        ),
        ("{min: 1}", "proxy.yaml:7:15: missing field `max`"),
        (
            "{min: 1, max: 2, scale_up_after: soon}",
            "proxy.yaml:7:47: invalid duration \"soon\"",
        ),
        (
            "{min: 1, max: 2, scale_down_after: 10ms}",
            "proxy.yaml:7:14: upstreams.app.workers.count.scale_down_after: at least 100ms",
        ),
        (
            "lots",
            "proxy.yaml:7:7: invalid type: string \"lots\", expected a number of workers (count: 4) or a range (count: { min: 2, max: 8 })",
        ),
        ("0", "proxy.yaml:7:14: upstreams.app.workers.count: must be at least 1"),
    ] {
        let err = check_count(count);
        assert!(err.contains(want), "count: {count}\nwant {want}\ngot  {err}");
    }
}

#[test]
fn ranges_and_fixed_counts_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for count in [
        "4",
        "{min: 2, max: 8}",
        "{ min: 1, max: 1 }",
        "{min: 2, max: 8, scale_up_after: 500ms, scale_down_after: 30s, cooldown: 2s, min_free_memory: 256MiB}",
        "\n        min: 2\n        max: 8",
    ] {
        let path: &Path = &dir.path().join("proxy.yaml");
        std::fs::write(
            path,
            format!(
                "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"python3\", \"app.py\"]\n      count: {count}\n"
            ),
        )
        .unwrap();
        let (ok, text) = check_path(path);
        assert!(ok, "count: {count}: {text}");
    }
}
