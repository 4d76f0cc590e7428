//! The admin API seen from outside: `/status` after known traffic (counts, worker pids that
//! match what the workers themselves report), the bearer token on POSTs, `proxyd status`
//! against the real binary, and the status page in a real headless Chromium driven over the
//! DevTools Protocol: one open page is watched updating itself through a rolling restart
//! (a failure under CI where /usr/bin/chromium is missing, a listed skip locally; .ci/run
//! installs it).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

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
// The status page in a real browser, driven over the Chrome DevTools Protocol: one page stays
// open while the workers restart, and is watched updating itself.

/// Headless Chromium with remote debugging on a port it picks, in a process group of its own.
/// Dropping it SIGKILLs that group (the browser and its renderers) by its id, so a failing test
/// leaves no browser behind; the profile directory goes after it.
struct Browser {
    child: tokio::process::Child,
    /// The browser's DevTools websocket, from "DevTools listening on ws://..." on its stderr.
    ws_url: String,
    /// The last lines of its stderr, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// None when Chromium is not installed (a failure under CI, a skip locally).
    async fn launch() -> Option<Browser> {
        if !common::tools::require_tool(
            "the status page in a browser",
            CHROMIUM,
            "apt-get install chromium",
        ) {
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // What a killed browser cannot clean up (its singleton socket) goes with the profile.
            .env("TMPDIR", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Read stderr to its end (a full pipe would stall the browser), handing over the
        // DevTools URL when it shows up.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = stderr.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.to_string());
                    }
                }
                let mut kept = kept.lock().unwrap();
                kept.push(line);
                if kept.len() > 100 {
                    kept.remove(0);
                }
            }
        });
        let mut browser = Browser {
            child,
            ws_url: String::new(),
            stderr,
            _profile: profile,
        };
        match tokio::time::timeout(PATIENCE, rx).await {
            Ok(Ok(url)) => browser.ws_url = url,
            Ok(Err(_)) => panic!("chromium exited without a DevTools URL:\n{}", browser.log()),
            Err(_) => panic!("no DevTools URL from chromium in 30 s:\n{}", browser.log()),
        }
        Some(browser)
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn kill(&self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills the browser and reaps it.
    async fn close(mut self) {
        self.kill();
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("chromium did not die of SIGKILL")
            .unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal DevTools Protocol client: one command at a time, with the events that arrive
/// meanwhile kept in order.
struct Cdp {
    ws: Ws,
    next_id: u64,
    /// The page session (flat mode) that commands go to once attached.
    session: Option<String>,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connecting to DevTools timed out")
            .expect("connecting to DevTools");
        Cdp {
            ws,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    /// Sends `method` and returns its result, or the protocol's error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            msg["sessionId"] = session.clone().into();
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} in 30 s"))
                .unwrap_or_else(|| panic!("DevTools closed the connection during {method}"))
                .unwrap();
            let Message::Text(text) = frame else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// The value of `expression` in the page, or None when it could not be evaluated (say,
    /// the document is being replaced) or threw.
    async fn evaluate(&mut self, expression: &str) -> Option<Value> {
        let params = serde_json::json!({"expression": expression, "returnByValue": true});
        let r = self.try_call("Runtime.evaluate", params).await.ok()?;
        if r.get("exceptionDetails").is_some() {
            return None;
        }
        Some(r["result"]["value"].clone())
    }

    /// The `params` of the events named `method` received so far.
    fn events(&self, method: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["method"] == method)
            .map(|e| &e["params"])
            .collect()
    }
}

/// What the status page shows right now, read from its live DOM.
const PAGE_STATE: &str = r##"(() => {
  const card = document.getElementById("up-app");
  const rows = card ? [...card.querySelectorAll("tr.worker")] : [];
  return {
    marker: window.__proxydTestMarker ?? null,
    timeOrigin: performance.timeOrigin,
    polls: Number(document.body.dataset.polls),
    live: document.getElementById("conn").className === "live",
    error: document.getElementById("error").textContent,
    pids: rows.map(r => Number(r.querySelector("td.pid").textContent)),
    states: rows.map(r => r.querySelector(".st").textContent),
    cards: [...document.querySelectorAll("#upstreams section.card")].map(c => c.dataset.upstream),
    sparklines: card ? card.querySelectorAll("h2 .spark svg.sl").length : 0,
    drawn: card ? card.querySelectorAll("h2 .spark svg.sl polyline").length : 0,
    restarts: document.getElementById("t-restarts").textContent,
    events: document.getElementById("events").innerText,
    text: document.body.innerText,
    linked: [...document.querySelectorAll("[src], [href], link, iframe, object, embed")]
      .map(e => e.outerHTML.slice(0, 200)),
    resources: performance.getEntriesByType("resource").map(e => e.name),
  };
})()"##;

/// Reads the page's state every 100 ms until `cond` holds on it (then returns it), checking
/// `each` on every reading; gives up after 30 s.
async fn page_until(
    cdp: &mut Cdp,
    what: &str,
    cond: impl Fn(&Value) -> bool,
    mut each: impl FnMut(&Value),
) -> Value {
    let deadline = Instant::now() + PATIENCE;
    let mut last = Value::Null;
    loop {
        if let Some(state) = cdp.evaluate(PAGE_STATE).await {
            each(&state);
            if cond(&state) {
                return state;
            }
            last = state;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for the page to show {what}; it shows: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn shown_pids(state: &Value) -> HashSet<u32> {
    state["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_u64())
        .map(|p| p as u32)
        .collect()
}

#[tokio::test]
async fn status_page_in_headless_chromium_updates_live_when_workers_restart() {
    if !common::tools::require_tool(
        "the live status page in a browser",
        CHROMIUM,
        "apt-get install chromium",
    ) {
        return;
    }
    let marker = Marker::new("admin-page");
    let proxy = TestProxy::from_yaml(&config(&marker, "127.0.0.1:0", "")).await;
    let admin = proxy.admin.unwrap();
    wait_ready(admin).await;
    for _ in 0..6 {
        get(proxy.addr, "/pid").await;
    }

    // The page as served: HTML, and self-contained (nothing but ./status is fetched).
    let page = admin_get(admin, "/").await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
        assert!(!html.contains(external), "the page refers to {external}");
    }
    let before = worker_pids(&status(admin).await);
    assert_eq!(before.len(), 2);

    let Some(browser) = Browser::launch().await else {
        return;
    };
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    // A page of our own, attached in flat mode: its commands and events carry its session id.
    let target = cdp
        .call(
            "Target.createTarget",
            serde_json::json!({"url": "about:blank"}),
        )
        .await["targetId"]
        .clone();
    let session = cdp
        .call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": target, "flatten": true}),
        )
        .await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    cdp.session = Some(session);
    cdp.call("Network.enable", serde_json::json!({})).await;
    cdp.call("Page.enable", serde_json::json!({})).await;
    let origin = format!("http://{admin}");
    let url = format!("{origin}/");
    let nav = cdp
        .call("Page.navigate", serde_json::json!({"url": url}))
        .await;
    assert!(nav.get("errorText").is_none(), "navigation failed: {nav}");

    // The page loads and shows every worker, with both sparklines drawn (a line takes two
    // samples, so three polls).
    let shown = page_until(
        &mut cdp,
        "both workers and drawn sparklines",
        |s| shown_pids(s) == before && s["drawn"] == 2 && s["live"] == true,
        |_| {},
    )
    .await;
    assert_eq!(shown["cards"], serde_json::json!(["app"]), "{shown:#}");
    assert_eq!(shown["sparklines"], 2, "request rate and latency");
    assert_eq!(shown["states"], serde_json::json!(["ready", "ready"]));
    assert_eq!(shown["error"], "", "{shown:#}");
    assert_eq!(shown["linked"], serde_json::json!([]), "no linked resource");
    for pid in &before {
        let text = shown["text"].as_str().unwrap();
        assert!(text.contains(&pid.to_string()), "pid {pid} shown: {text}");
    }

    // Mark this very document: a reload or a new navigation would lose the marker and start a
    // new time origin (and its poll count would start again from zero).
    let mark = cdp
        .evaluate(&format!(
            "window.__proxydTestMarker = {:?}; performance.timeOrigin",
            marker.0
        ))
        .await
        .expect("the marker is set");
    let polls_at_mark = cdp.evaluate(PAGE_STATE).await.unwrap()["polls"]
        .as_u64()
        .unwrap();

    // A rolling restart, while the same page keeps being read: it ends up showing the new
    // workers only, without ever having been reloaded.
    let restart =
        tokio::spawn(async move { admin_post(admin, "/upstreams/app/restart", None).await });
    let same_document = |s: &Value| {
        assert_eq!(
            s["marker"],
            marker.0.as_str(),
            "the page was reloaded: {s:#}"
        );
        assert_eq!(s["timeOrigin"], mark, "the page was reloaded: {s:#}");
        assert!(s["polls"].as_u64().unwrap() >= polls_at_mark, "{s:#}");
    };
    let mut seen_states = Vec::new();
    page_until(
        &mut cdp,
        "two new workers",
        |s| {
            let pids = shown_pids(s);
            pids.len() == 2 && pids.is_disjoint(&before)
        },
        |s| {
            same_document(s);
            let pids = shown_pids(s);
            if seen_states.last() != Some(&pids) {
                seen_states.push(pids);
            }
        },
    )
    .await;
    let got = restart.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let after = worker_pids(&status(admin).await);
    assert!(after.is_disjoint(&before), "{after:?} {before:?}");
    let shown = page_until(
        &mut cdp,
        "the restarts counted",
        |s| shown_pids(s) == after && s["restarts"] == "2" && s["live"] == true,
        same_document,
    )
    .await;
    eprintln!("worker pids as the open page showed them, in order: {seen_states:?}");

    let text = shown["text"].as_str().unwrap();
    assert!(text.contains("rolling 2"), "restarts by reason: {text}");
    for pid in &after {
        assert!(text.contains(&pid.to_string()), "pid {pid} shown: {text}");
    }
    // The page itself noticed each replacement (its event list compares one report with the
    // one before, so only a page that stayed open through the restart can list them).
    let events = shown["events"].as_str().unwrap();
    for pid in before.iter().chain(&after) {
        assert!(
            events.contains(&format!("(pid {pid})")),
            "no event about pid {pid}: {events}"
        );
    }
    assert!(
        shown["polls"].as_u64().unwrap() > polls_at_mark,
        "{shown:#}"
    );
    assert_eq!(shown["error"], "", "{shown:#}");
    // And it goes on refreshing afterwards (not one lucky update).
    let polls = shown["polls"].as_u64().unwrap();
    page_until(
        &mut cdp,
        "two more polls",
        |s| s["polls"].as_u64().unwrap() >= polls + 2 && shown_pids(s) == after,
        same_document,
    )
    .await;

    // Navigated once, to the status page; every request it made went to the admin listener,
    // and it kept fetching /status.
    let main_frame_navigations: Vec<String> = cdp
        .events("Page.frameNavigated")
        .iter()
        .filter(|p| p["frame"]["parentId"].is_null())
        .map(|p| p["frame"]["url"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(main_frame_navigations, std::slice::from_ref(&url));
    let requested: Vec<String> = cdp
        .events("Network.requestWillBeSent")
        .iter()
        .map(|p| p["request"]["url"].as_str().unwrap_or_default().to_string())
        .collect();
    let resources: Vec<String> = shown["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_string())
        .collect();
    for u in requested.iter().chain(&resources) {
        assert!(
            u.starts_with(&format!("{origin}/")),
            "the page fetched {u} from elsewhere"
        );
    }
    assert_eq!(requested.first(), Some(&url), "{requested:?}");
    let status_fetches = requested
        .iter()
        .filter(|u| *u == &format!("{origin}/status"))
        .count();
    assert!(status_fetches >= 4, "{requested:?}");

    drop(cdp);
    browser.close().await;
    proxy.shutdown().await;
    marker.wait_none_left().await;
}
