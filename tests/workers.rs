//! Worker supervision with real app processes (examples/app.py, examples/flask_app.py): spawn
//! and readiness, crashes and crash loops, hung workers, recycling, rolling restarts, and that
//! no worker outlives proxyd. Every test tags its workers with a unique environment variable
//! so it can find them in /proc, and checks that none is left when it ends.
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::procs::*;
use common::workers::*;
use common::*;
use http::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

const FLASK_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flask_app.py");

// ---------------------------------------------------------------------------------------------
// Processes

fn parent(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, ppid)| ppid)
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

fn flask_installed() -> bool {
    std::process::Command::new(python())
        .args(["-c", "import flask"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Configs

// ---------------------------------------------------------------------------------------------
// Clients

/// Polls /readyz until it answers 503 with `text` in its body; returns the body.
async fn wait_unready_with(admin: SocketAddr, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = get(admin, "/readyz").await;
        if got.status == StatusCode::SERVICE_UNAVAILABLE && got.text().contains(text) {
            return got.text();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said 503 with {text:?} within {PATIENCE:?}; last: {} {}",
            got.status,
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls GET `path` until it answers 200.
async fn wait_serving(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = get(addr, path).await;
        if got.status == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still {} after {PATIENCE:?}: {got:?}",
            got.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /pid`, asserted 200.
async fn pid_of_next(addr: SocketAddr) -> u32 {
    let got = get(addr, "/pid").await;
    assert_eq!(got.status, StatusCode::OK, "GET /pid: {got:?}");
    got.text().trim().parse().expect("/pid answers a number")
}

/// The pids that `n` GET /pid requests landed on (every one asserted 200).
async fn pids_serving(addr: SocketAddr, n: usize) -> HashSet<u32> {
    let mut pids = HashSet::new();
    for _ in 0..n {
        pids.insert(pid_of_next(addr).await);
    }
    pids
}

/// /readyz says 200 once each upstream has one ready worker: polls GET /pid until `n`
/// distinct workers answer, and returns their pids.
async fn wait_all_serving(addr: SocketAddr, n: usize) -> HashSet<u32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pids = pids_serving(addr, 3 * n).await;
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{n} workers never all served within {PATIENCE:?}; last saw {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls GET /pid until a pid not in `old` answers; returns it.
async fn wait_new_pid(addr: SocketAddr, old: &HashSet<u32>) -> u32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = get(addr, "/pid").await;
        if got.status == StatusCode::OK {
            let pid: u32 = got.text().trim().parse().expect("/pid answers a number");
            if !old.contains(&pid) {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new worker answered within {PATIENCE:?}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one load request got.
#[derive(Debug)]
struct Outcome {
    status: StatusCode,
    error: Option<String>,
    body: String,
}

/// `clients` keep-alive clients sending up to `max_each` GETs of `path` each; they stop early
/// once `stop` is set.
struct Load {
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, max_each: usize, path: &'static str) -> Load {
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (done, stop) = (done.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut client = H1::connect(addr).await;
                    let mut out = Vec::new();
                    for _ in 0..max_each {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let got = client.get(path).await;
                        out.push(Outcome {
                            status: got.status,
                            error: got.header("proxyd-error").map(str::to_string),
                            body: got.text(),
                        });
                        done.fetch_add(1, Ordering::AcqRel);
                    }
                    out
                })
            })
            .collect();
        Load { tasks, done, stop }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    async fn wait_done_at_least(&self, n: usize) {
        wait_for(&format!("{n} load requests"), || self.done() >= n).await;
    }

    /// Stops the clients (if `stop`) and returns every outcome, asserting each was a 200 from
    /// a worker (no proxyd error).
    async fn finish(self, stop: bool) -> Vec<Outcome> {
        if stop {
            self.stop.store(true, Ordering::Release);
        }
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a load client failed"));
        }
        let failed: Vec<&Outcome> = all
            .iter()
            .filter(|o| o.status != StatusCode::OK || o.error.is_some())
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {failed:?}",
            failed.len(),
            all.len()
        );
        all
    }
}

fn pids_in(outcomes: &[Outcome]) -> HashSet<u32> {
    outcomes
        .iter()
        .map(|o| o.body.trim().parse().expect("/pid answers a number"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The binary

/// The admin address from a running binary's log.
async fn admin_of(p: &ProxydProcess) -> SocketAddr {
    let mut found = None;
    wait_for("the admin listening line", || {
        let lines = p.stderr_lines.lock().unwrap();
        found = lines
            .iter()
            .find(|l| l.contains("admin listening"))
            .and_then(|l| l.split("addr=Some(").nth(1))
            .and_then(|rest| rest.split(')').next())
            .and_then(|a| a.parse().ok());
        found.is_some()
    })
    .await;
    found.expect("checked above")
}

fn log_of(p: &ProxydProcess) -> String {
    p.stderr_lines.lock().unwrap().join("\n")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_spawn_get_ready_and_share_traffic() {
    let marker = Marker::new("spawn");
    let (proxy, admin) = start_proxy(&app_config(&marker, 3, &[])).await;
    wait_ready(admin).await;
    let pids = wait_all_serving(proxy.addr, 3).await;

    let mut hits = std::collections::HashMap::<u32, usize>::new();
    for _ in 0..30 {
        *hits.entry(pid_of_next(proxy.addr).await).or_default() += 1;
    }
    assert_eq!(
        hits.keys().copied().collect::<HashSet<_>>(),
        pids,
        "traffic should reach all 3 workers: {hits:?}"
    );
    assert!(hits.values().all(|n| *n >= 5), "lopsided: {hits:?}");
    assert_eq!(
        pids,
        marker.pids(),
        "the workers serving are the ones running"
    );
    for pid in &pids {
        assert!(alive(*pid), "worker {pid} is not running");
        assert_eq!(
            parent(*pid),
            Some(std::process::id()),
            "worker {pid} is not proxyd's child"
        );
    }

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_workers_serve() {
    let marker = Marker::new("unix");
    let (proxy, admin) = start_proxy(&app_config(&marker, 2, &[("listen", "unix")])).await;
    wait_ready(admin).await;

    for _ in 0..4 {
        let got = get(proxy.addr, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert!(got.text().starts_with("hello from pid"), "{}", got.text());
        let backend = got.header("proxyd-backend").unwrap_or_default();
        assert!(backend.starts_with("unix:"), "not a unix socket: {backend}");
    }
    let socket = get(proxy.addr, "/")
        .await
        .header("proxyd-backend")
        .map(|b| b.trim_start_matches("unix:").to_string())
        .unwrap_or_default();

    proxy.shutdown().await;
    marker.wait_none_left().await;
    assert!(
        !std::path::Path::new(&socket).exists(),
        "socket {socket} left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_under_load_is_invisible_to_clients() {
    let marker = Marker::new("kill9");
    let (proxy, admin) = start_proxy(&app_config(&marker, 3, &[])).await;
    wait_ready(admin).await;
    let before = wait_all_serving(proxy.addr, 3).await;
    let victim = *before.iter().next().expect("3 pids");

    let load = Load::start(proxy.addr, 3, 100, "/slow?ms=5");
    load.wait_done_at_least(100).await;
    sigkill(victim);
    let done_at_kill = load.done();
    let outcomes = load.finish(false).await;
    assert_eq!(outcomes.len(), 300);
    assert!(done_at_kill < 300, "the kill came after the load ended");

    // A new worker takes the dead one's place.
    wait_for("a replacement for the killed worker", || {
        let now = marker.pids();
        now.len() == 3 && !now.contains(&victim)
    })
    .await;
    wait_ready(admin).await;
    let after = pids_serving(proxy.addr, 30).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains(&victim), "the killed worker still answers");
    assert_eq!(after, marker.pids());
    assert!(!alive(victim));

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_is_reported_and_other_upstreams_keep_serving() {
    let marker = Marker::new("crashloop");
    let bad = workers(
        &marker,
        &[
            python(),
            "-c",
            "import sys; print('ImportError: no module named nope', file=sys.stderr); sys.exit(3)",
        ],
        1,
        &[(
            "restart",
            "{backoff: 10ms, max_backoff: 50ms, max_restarts: 2, window: 60s}",
        )],
    );
    let good = workers(&marker, &[python(), APP], 1, &[]);
    let yaml = format!(
        "{HEAD}upstreams:\n  bad:\n{bad}  good:\n{good}routes:\n  - {{path: \"/bad/\", upstream: bad}}\n  - {{path: \"/\", upstream: good}}\n"
    );
    let (proxy, admin) = start_proxy(&yaml).await;
    wait_serving(proxy.addr, "/good/x").await;

    let body = wait_unready_with(admin, "ImportError: no module named nope").await;
    assert!(body.contains("bad: workers keep failing"), "{body}");
    assert!(!body.contains("good"), "the good upstream is fine: {body}");

    let got = get(proxy.addr, "/bad/x").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{got:?}");
    assert_eq!(got.header("proxyd-error"), Some("no-healthy-backend"));

    for _ in 0..5 {
        let got = get(proxy.addr, "/good/x").await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert!(got.text().starts_with("hello from pid"), "{}", got.text());
    }
    // Given up: no crashing worker is started again (only the good one runs).
    assert_eq!(marker.pids().len(), 1, "{:?}", marker.pids());

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_worker_gets_504_and_is_replaced() {
    let marker = Marker::new("hung");
    let (proxy, admin) =
        start_proxy(&app_config(&marker, 1, &[("request_timeout", "500ms")])).await;
    wait_ready(admin).await;
    let hung = pid_of_next(proxy.addr).await;

    // A POST: never replayed, so the 504 is the hung worker's (a GET would go once more, to
    // the replacement: tests/admission_by_time.rs).
    let got = post(proxy.addr, "/slow?ms=5000", "x").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{got:?}");
    assert_eq!(
        got.header("proxyd-error"),
        Some("upstream-response-timeout")
    );

    wait_for("the hung worker to be killed", || !alive(hung)).await;
    let new = wait_new_pid(proxy.addr, &HashSet::from([hung])).await;
    assert!(alive(new));
    assert_eq!(marker.pids(), HashSet::from([new]));

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_workers_without_failed_requests() {
    let marker = Marker::new("maxreq");
    let (proxy, admin) = start_proxy(&app_config(&marker, 2, &[("max_requests", "20")])).await;
    wait_ready(admin).await;

    let mut seen = HashSet::new();
    for i in 0..200 {
        let got = get(proxy.addr, "/pid").await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {got:?}");
        seen.insert(got.text().trim().parse::<u32>().expect("a pid"));
    }
    let outcomes = Load::start(proxy.addr, 4, 25, "/pid").finish(false).await;
    seen.extend(pids_in(&outcomes));
    // 300 requests at 20 per worker: several generations of workers.
    assert!(seen.len() > 2, "workers were not recycled: {seen:?}");

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_via_admin_under_load_fails_no_request() {
    let marker = Marker::new("rolling");
    let (proxy, admin) = start_proxy(&app_config(&marker, 3, &[])).await;
    wait_ready(admin).await;
    let old = wait_all_serving(proxy.addr, 3).await;

    let load = Load::start(proxy.addr, 4, 300, "/slow?ms=20");
    load.wait_done_at_least(10).await;
    let mut client = H1::connect(admin).await;
    let restart = client
        .send(
            http::Request::post("/upstreams/app/restart")
                .header("host", "admin")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(restart.status, StatusCode::OK, "{}", restart.text());
    let done_at_restart = load.done();
    let outcomes = load.finish(true).await;
    assert!(
        outcomes.len() < 4 * 300,
        "the load ended before the restart did ({done_at_restart} requests done by then)"
    );

    wait_for("the old workers to stop", || old.iter().all(|p| !alive(*p))).await;
    let new = pids_serving(proxy.addr, 30).await;
    assert_eq!(new.len(), 3, "{new:?}");
    assert!(new.is_disjoint(&old), "old {old:?}, now {new:?}");
    assert_eq!(new, marker.pids());

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rolling_restart_under_load_fails_no_request() {
    let marker = Marker::new("sighup");
    let mut p = ProxydProcess::start(&app_config(&marker, 3, &[]));
    let admin = admin_of(&p).await;
    wait_ready(admin).await;
    let old = wait_all_serving(p.addr, 3).await;

    let load = Load::start(p.addr, 4, 300, "/slow?ms=20");
    load.wait_done_at_least(10).await;
    p.signal("HUP");
    wait_for("3 new workers in place of the old ones", || {
        let now = marker.pids();
        now.len() == 3 && now.is_disjoint(&old)
    })
    .await;
    let done_at_restart = load.done();
    let outcomes = load.finish(true).await;
    assert!(
        outcomes.len() < 4 * 300,
        "the load ended before the restart did ({done_at_restart} requests done by then)"
    );

    let new = pids_serving(p.addr, 30).await;
    assert_eq!(new.len(), 3, "{new:?}");
    assert!(new.is_disjoint(&old), "old {old:?}, now {new:?}");

    p.signal("TERM");
    assert_eq!(p.wait_exit(), Some(0), "{}", log_of(&p));
    assert!(marker.pids().is_empty(), "{:?}", marker.pids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_worker_before_exit() {
    let marker = Marker::new("sigterm");
    let mut p = ProxydProcess::start(&app_config(&marker, 2, &[]));
    let admin = admin_of(&p).await;
    wait_ready(admin).await;
    let pids = wait_all_serving(p.addr, 2).await;
    assert_eq!(pids, marker.pids());
    for pid in &pids {
        assert_eq!(
            parent(*pid),
            Some(p.child.id()),
            "worker {pid} is not proxyd's child"
        );
    }

    p.signal("TERM");
    assert_eq!(p.wait_exit(), Some(0), "{}", log_of(&p));
    // proxyd waited for them: gone the moment it exits, no polling.
    for pid in &pids {
        assert!(!alive(*pid), "worker {pid} outlived proxyd");
    }
    assert!(marker.pids().is_empty(), "{:?}", marker.pids());
    // Stopped by the shutdown, not by the parent-death signal as proxyd exited.
    wait_for("a 'worker stopped' log line per worker", || {
        let lines = p.stderr_lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains("worker stopped"))
            .count()
            == pids.len()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_proxyd_takes_its_workers_down() {
    let marker = Marker::new("sigkill");
    let mut p = ProxydProcess::start(&app_config(&marker, 2, &[]));
    let admin = admin_of(&p).await;
    wait_ready(admin).await;
    let pids = wait_all_serving(p.addr, 2).await;
    assert_eq!(pids, marker.pids());

    p.signal("KILL");
    assert_eq!(p.wait_exit(), None, "killed by a signal");
    wait_for("the workers of a SIGKILLed proxyd to die", || {
        pids.iter().all(|pid| !alive(*pid))
    })
    .await;
    assert!(marker.pids().is_empty(), "{:?}", marker.pids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_that_never_gets_ready_is_killed_as_a_failed_start() {
    let marker = Marker::new("neverready");
    // Never listens, and ignores SIGTERM: only the SIGKILL after kill_timeout ends it.
    let cmd = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)";
    let yaml = format!(
        "{HEAD}upstreams:\n  app:\n{}",
        workers(
            &marker,
            &[python(), "-c", cmd],
            1,
            &[
                ("start_timeout", "500ms"),
                ("kill_timeout", "300ms"),
                ("restart", "{backoff: 10ms, max_restarts: 0}"),
            ],
        )
    );
    let (proxy, admin) = start_proxy(&yaml).await;

    let mut started = HashSet::new();
    wait_for("the worker to start", || {
        started = marker.pids();
        !started.is_empty()
    })
    .await;
    assert_eq!(started.len(), 1, "{started:?}");
    let body = wait_unready_with(admin, "1 crashes or failed starts").await;
    assert!(body.contains("app: workers keep failing"), "{body}");
    // Counted only once it was stopped, and not started again.
    for pid in &started {
        assert!(!alive(*pid), "worker {pid} still runs");
    }
    assert!(marker.pids().is_empty(), "{:?}", marker.pids());

    let got = get(proxy.addr, "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{got:?}");
    assert_eq!(got.header("proxyd-error"), Some("no-healthy-backend"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_workers_serve() {
    if !common::tools::require(
        flask_installed(),
        "flask_workers_serve",
        "Flask",
        "pip install flask",
    ) {
        return;
    }
    let marker = Marker::new("flask");
    let yaml = format!(
        "{HEAD}upstreams:\n  app:\n{}",
        workers(&marker, &[python(), FLASK_APP], 2, &[])
    );
    let (proxy, admin) = start_proxy(&yaml).await;
    wait_ready(admin).await;
    let pids = wait_all_serving(proxy.addr, 2).await;
    assert_eq!(pids, marker.pids());
    for _ in 0..10 {
        let got = get(proxy.addr, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert!(got.text().starts_with("hello from pid"), "{}", got.text());
    }

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_recycles_workers_without_failed_requests() {
    let marker = Marker::new("maxmem");
    let (proxy, admin) = start_proxy(&app_config(&marker, 2, &[("max_memory", "1KiB")])).await;
    wait_ready(admin).await;
    let first = pids_serving(proxy.addr, 4).await;

    // Every worker is over 1 KiB, so each health round (200 ms) recycles it.
    let mut seen = first.clone();
    for i in 0..500 {
        let got = get(proxy.addr, "/slow?ms=10").await;
        assert_eq!(got.status, StatusCode::OK, "request {i}: {got:?}");
        let pid: u32 = got
            .text()
            .trim()
            .trim_start_matches("hello from pid ")
            .parse()
            .expect("a pid");
        seen.insert(pid);
        if seen.len() >= first.len() + 2 {
            break;
        }
    }
    assert!(
        seen.len() >= first.len() + 2,
        "workers over max_memory were not recycled: first {first:?}, seen {seen:?}"
    );

    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_a_ready_worker_is_reported_with_its_last_output() {
    let marker = Marker::new("crashready");
    let (proxy, admin) = start_proxy(&app_config(
        &marker,
        1,
        &[("restart", "{backoff: 10ms, max_restarts: 0}")],
    ))
    .await;
    wait_ready(admin).await;
    let pid = pid_of_next(proxy.addr).await;

    // The one worker dies mid-request: nothing to retry on.
    let got = get(proxy.addr, "/crash").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{got:?}");
    assert_eq!(got.header("proxyd-error"), Some("upstream-closed-early"));

    let body = wait_unready_with(admin, "workers keep failing").await;
    assert!(body.contains("crashing on purpose"), "{body}");
    assert!(!alive(pid));
    assert!(marker.pids().is_empty(), "{:?}", marker.pids());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_worker_gets_no_requests_then_is_restarted() {
    let marker = Marker::new("unhealthy");
    // Phase 1: never restarted, so its exclusion from the rotation can be watched.
    let health =
        "{path: /healthz, interval: 100ms, timeout: 1s, unhealthy: 2, unhealthy_restart: 1000}";
    let (proxy, admin) = start_proxy(&app_config(&marker, 2, &[("health", health)])).await;
    wait_ready(admin).await;
    let both = wait_all_serving(proxy.addr, 2).await;
    let sick: u32 = get(proxy.addr, "/sick")
        .await
        .text()
        .trim()
        .parse()
        .unwrap();
    assert!(both.contains(&sick));
    // Once two health rounds failed, every request goes to the other worker.
    let deadline = Instant::now() + PATIENCE;
    let mut streak = 0;
    while streak < 20 {
        assert!(
            Instant::now() < deadline,
            "the sick worker kept getting requests"
        );
        streak = if pid_of_next(proxy.addr).await == sick {
            0
        } else {
            streak + 1
        };
    }
    assert!(alive(sick), "phase 1 must not restart it");
    wait_ready(admin).await;
    proxy.shutdown().await;
    marker.wait_none_left().await;

    // Phase 2: after 3 failed rounds it is replaced by a healthy worker.
    let health =
        "{path: /healthz, interval: 100ms, timeout: 1s, unhealthy: 1, unhealthy_restart: 3}";
    let (proxy, admin) = start_proxy(&app_config(&marker, 1, &[("health", health)])).await;
    wait_ready(admin).await;
    let sick: u32 = get(proxy.addr, "/sick")
        .await
        .text()
        .trim()
        .parse()
        .unwrap();
    wait_for("the unhealthy worker to be stopped", || !alive(sick)).await;
    let fresh = wait_new_pid(proxy.addr, &HashSet::from([sick])).await;
    assert_ne!(fresh, sick);
    proxy.shutdown().await;
    marker.wait_none_left().await;
}
