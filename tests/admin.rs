//! The admin API seen from outside: `/status` after known traffic (counts, worker pids that
//! match what the workers themselves report), the bearer token on POSTs, `proxyd status`
//! against the real binary, and the status page in a real headless Chromium (skipped, with a
//! notice, where /usr/bin/chromium is missing; CI installs it).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::*;
use common::*;
use http::{Request, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");
const PATIENCE: Duration = Duration::from_secs(30);
const CHROMIUM: &str = "/usr/bin/chromium";

/// A config: one listener, the admin (with `admin_extra` keys), and upstream `app` with two
/// app.py workers tagged with `marker`.
fn config(marker: &Marker, admin: &str, admin_extra: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"{admin}\"\n{admin_extra}upstreams:\n  app:\n    workers:\n      command: [{:?}, {APP:?}]\n      count: 2\n      env: {{{MARKER_VAR}: \"{}\"}}\n      health: {{path: /healthz, interval: 200ms, timeout: 1s}}\n      start_timeout: 20s\n      kill_timeout: 2s\n      graceful_timeout: 5s\n",
        python(),
        marker.0
    )
}

async fn admin_get(admin: SocketAddr, path: &str) -> Got {
    tokio::time::timeout(PATIENCE, get(admin, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} on the admin timed out"))
}

async fn admin_post(admin: SocketAddr, path: &str, auth: Option<&str>) -> Got {
    let mut req = Request::post(path).header("host", "admin");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req.body(full("")).unwrap();
    tokio::time::timeout(PATIENCE * 2, H1::connect(admin).await.send(req))
        .await
        .unwrap_or_else(|_| panic!("POST {path} on the admin timed out"))
}

/// Polls /readyz until it answers 200, then /status until both workers are in the rotation.
async fn wait_ready(admin: SocketAddr) {
    wait_readyz(admin).await;
    status_until(admin, "two ready workers", |s| {
        app(s)["ready_backends"] == 2
    })
    .await;
}

async fn wait_readyz(admin: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        {
            drop(stream);
            if get(admin, "/readyz").await.status == StatusCode::OK {
                return;
            }
        }
        assert!(Instant::now() < deadline, "proxyd never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(admin: SocketAddr) -> Value {
    let got = admin_get(admin, "/status").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("application/json"));
    serde_json::from_slice(&got.body).unwrap()
}

fn app(s: &Value) -> &Value {
    s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app")
        .unwrap()
}

fn worker_pids(s: &Value) -> HashSet<u32> {
    app(s)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

/// Polls /status until `cond` holds on it; returns that report.
async fn status_until(admin: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = status(admin).await;
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn status_reports_listeners_upstreams_backends_and_workers() {
    let marker = Marker::new("admin-status");
    let proxy = TestProxy::from_yaml(&config(&marker, "127.0.0.1:0", "")).await;
    let admin = proxy.admin.unwrap();
    wait_ready(admin).await;

    // Known traffic: 10 requests, each answered with the pid of the worker that served it.
    let mut seen = HashSet::new();
    let mut client = H1::connect(proxy.addr).await;
    for _ in 0..10 {
        let got = client.get("/pid").await;
        assert_eq!(got.status, StatusCode::OK);
        seen.insert(got.text().trim().parse::<u32>().unwrap());
    }
    // A slot is counted as served once its response is done: wait for all ten.
    let s = status_until(admin, "10 served", |s| {
        app(s)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["served"].as_u64().unwrap())
            .sum::<u64>()
            == 10
    })
    .await;

    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["pid"], std::process::id());
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["draining"], false);
    assert_eq!(s["listeners"][0]["addr"], proxy.addr.to_string());
    assert_eq!(s["listeners"][0]["tls"], false);

    let u = app(&s);
    assert_eq!(u["balance"], "least_outstanding");
    assert_eq!(u["concurrency"], 1);
    assert_eq!(u["queue_depth"], 0);
    assert_eq!(u["in_flight"], 0);
    assert_eq!(u["requests"], 10);
    assert_eq!(u["counters"]["requests"], 10);
    assert_eq!(u["counters"]["no_backend"], 0);
    assert_eq!(u["ready_backends"], 2);
    assert!(u["failure"].is_null());
    assert_eq!(u["restarts"], serde_json::json!({}));

    let backends = u["backends"].as_array().unwrap();
    let workers = u["workers"].as_array().unwrap();
    assert_eq!((backends.len(), workers.len()), (2, 2), "{u:#}");
    for b in backends {
        assert_eq!(b["state"], "ready");
        assert_eq!(b["ejected"], false);
        assert_eq!(b["limit"], 1);
        assert_eq!(b["weight"], 1);
        assert!(b["ewma_ms"].as_f64().unwrap() > 0.0, "{b}");
    }
    // The pids reported are the workers' own (what GET /pid answered through the proxy), and
    // the very processes proxyd started (the marker's).
    assert_eq!(
        worker_pids(&s),
        seen,
        "both workers served (least outstanding)"
    );
    assert_eq!(worker_pids(&s), marker.pids());
    let mut slots = Vec::new();
    for w in workers {
        slots.push(w["slot"].as_u64().unwrap());
        assert_eq!(w["state"], "ready");
        assert!(w["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert!(w["rss_bytes"].as_u64().unwrap() > 1 << 20, "{w}");
        let port = w["port"].as_u64().unwrap();
        assert_eq!(w["address"], format!("127.0.0.1:{port}"));
        // A worker's requests are its backend's.
        let b = backends
            .iter()
            .find(|b| b["address"] == w["address"])
            .unwrap();
        assert_eq!(w["requests"], b["served"]);
        assert_eq!(b["worker_id"], w["id"]);
    }
    assert_eq!(slots, [0, 1]);
    let per_worker: u64 = workers
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_worker, 10);

    // A rolling restart: new pids, and the restarts counted by reason.
    let got = admin_post(admin, "/upstreams/app/restart", None).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let s = status_until(admin, "two new workers", |s| {
        let pids = worker_pids(s);
        pids.len() == 2 && pids.is_disjoint(&seen)
    })
    .await;
    assert_eq!(app(&s)["restarts"]["rolling"], 2);
    assert_eq!(app(&s)["requests"], 10);

    // The other GETs answer as before.
    assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);
    assert_eq!(
        admin_get(admin, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
    proxy.shutdown().await;
    marker.wait_none_left().await;
}

#[tokio::test]
async fn posts_need_the_bearer_token_when_one_is_set() {
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\n  token: \"s3cret-token\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();

    for path in ["/reload", "/upstreams/app/restart", "/anything"] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-token2"),
            Some("Basic s3cret-token"),
            Some("s3cret-token"),
        ] {
            let got = admin_post(admin, path, auth).await;
            assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
            assert_eq!(
                got.header("www-authenticate"),
                Some("Bearer realm=\"proxyd admin\"")
            );
        }
    }
    // With the token: the POSTs run (no TLS listener: nothing to reload; app has no workers).
    let got = admin_post(admin, "/reload", Some("Bearer s3cret-token")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert!(
        got.text().contains("1 upstreams kept, 0 new or changed"),
        "{}",
        got.text()
    );
    let got = admin_post(admin, "/upstreams/app/restart", Some("bearer s3cret-token")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text());
    assert!(
        got.text().contains("no upstream with workers"),
        "{}",
        got.text()
    );

    // GETs stay open.
    for path in ["/healthz", "/readyz", "/status", "/"] {
        assert_eq!(
            admin_get(admin, path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let s = status(admin).await;
    assert!(
        app(&s)["workers"].is_null(),
        "a servers upstream has no workers"
    );
    assert_eq!(app(&s)["backends"][0]["address"], backend.addr.to_string());
    assert!(app(&s)["backends"][0]["limit"].is_null(), "unlimited");
    proxy.shutdown().await;

    // An empty token would leave the POSTs open by mistake: refused.
    let (ok, out) = check(&yaml.replace("s3cret-token", ""));
    assert!(!ok && out.contains("token must not be empty"), "{out}");
}

/// A port free right now, for a config the real binary and `proxyd status` both read.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn proxyd_status(path: &Path) -> (bool, String, String) {
    let out = Command::new(proxyd_bin())
        .args(["status", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn proxyd_status_prints_the_workers() {
    let marker = Marker::new("admin-cli");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let yaml = config(&marker, &admin.to_string(), "  token: \"cli-token\"\n");
    std::fs::write(&path, &yaml).unwrap();

    // Not running yet: a clear error.
    let (ok, _, err) = proxyd_status(&path);
    assert!(!ok && err.contains("is proxyd running"), "{err}");

    let mut proxyd = ProxydProcess::start_file(&path);
    wait_ready(admin).await;
    for _ in 0..4 {
        assert_eq!(get(proxyd.addr, "/pid").await.status, StatusCode::OK);
    }
    let pids = worker_pids(&status(admin).await);
    assert_eq!(pids, marker.pids());

    let (ok, out, err) = tokio::task::spawn_blocking(move || proxyd_status(&path))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("Upstream: app"), "{out}");
    assert!(out.contains(&proxyd.addr.to_string()), "{out}");
    assert!(out.contains("Requests  : 4 "), "{out}");
    for pid in &pids {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no worker row with pid {pid}:\n{out}"));
        assert!(row.contains("ready") && row.contains("MiB"), "{row}");
    }

    // A config without an admin section says so.
    let bare = dir.path().join("bare.yaml");
    std::fs::write(
        &bare,
        yaml.replace(
            &format!("admin:\n  addr: \"{admin}\"\n  token: \"cli-token\"\n"),
            "",
        ),
    )
    .unwrap();
    let (ok, _, err) = proxyd_status(&bare);
    assert!(!ok && err.contains("no admin"), "{err}");

    proxyd.signal("TERM");
    assert_eq!(proxyd.wait_exit(), Some(0));
    marker.wait_none_left().await;
}

// ---------------------------------------------------------------------------------------------
// The status page in a real browser

/// Loads `url` in headless Chromium and returns the DOM after `budget_ms` of (virtual) time,
/// during which the page polls /status. None when Chromium is not installed.
async fn chromium_dom(url: String, budget_ms: u32) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: {CHROMIUM} is missing (apt-get install chromium); the status page was not tested in a browser");
        return None;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let read = async {
        let mut dom = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut dom)
            .await
            .unwrap();
        dom
    };
    let dom = tokio::time::timeout(Duration::from_secs(90), read)
        .await
        .expect("chromium did not finish within 90 s");
    let _ = child.wait().await;
    Some(dom)
}

/// The values of `attr="..."` in `html`.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

fn page_pids(dom: &str) -> HashSet<u32> {
    // The page's own script also spells data-pid="${...}": only numbers are pids.
    attr_values(dom, "data-pid")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
async fn status_page_in_headless_chromium_shows_workers_and_follows_restarts() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED: {CHROMIUM} is missing (apt-get install chromium); the status page was not tested in a browser");
        return;
    }
    let marker = Marker::new("admin-page");
    let proxy = TestProxy::from_yaml(&config(&marker, "127.0.0.1:0", "")).await;
    let admin = proxy.admin.unwrap();
    wait_ready(admin).await;
    for _ in 0..6 {
        get(proxy.addr, "/pid").await;
    }

    // The page is self-contained: nothing but ./status is fetched.
    let page = admin_get(admin, "/").await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
        assert!(!html.contains(external), "the page refers to {external}");
    }

    let url = format!("http://{admin}/");
    let before = worker_pids(&status(admin).await);
    assert_eq!(before.len(), 2);
    let Some(dom) = chromium_dom(url.clone(), 3000).await else {
        return;
    };
    assert_eq!(
        page_pids(&dom),
        before,
        "every worker's pid is shown:\n{dom}"
    );
    // It kept polling: several reports arrived during the 3 s budget (live refresh).
    let polls: u32 = attr_values(&dom, "data-polls")
        .iter()
        .find_map(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(polls >= 2, "the page polled {polls} times:\n{dom}");
    assert!(
        dom.contains("id=\"up-app\""),
        "the upstream's card is there"
    );
    assert!(dom.contains("<svg class=\"sl\""), "sparklines are drawn");
    assert!(dom.contains(">live<"), "the page says it is connected");
    let error_box = dom.split("id=\"error\"").nth(1).unwrap_or_default();
    let error_box = error_box.split("</div>").next().unwrap_or_default();
    assert!(!error_box.contains("Cannot"), "{error_box}");

    // A rolling restart: a new load of the page shows the new workers only.
    let got = admin_post(admin, "/upstreams/app/restart", None).await;
    assert_eq!(got.status, StatusCode::OK);
    let after = status_until(admin, "new workers", |s| {
        let p = worker_pids(s);
        p.len() == 2 && p.is_disjoint(&before)
    })
    .await;
    let after = worker_pids(&after);
    let dom = chromium_dom(url, 2000).await.unwrap_or_default();
    assert_eq!(page_pids(&dom), after, "the new workers are shown:\n{dom}");
    assert!(
        dom.contains("rolling 2"),
        "the restarts are counted on the page"
    );

    proxy.shutdown().await;
    marker.wait_none_left().await;
}
