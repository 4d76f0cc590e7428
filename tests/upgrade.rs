//! Zero-downtime binary upgrade (SIGUSR2, `proxyd upgrade`, `POST /upgrade`): the real binary
//! hands its listening sockets to a new proxyd under a continuous load of keep-alive and
//! new-connection clients, and not one request fails nor one connection is refused; a new
//! binary that fails (exits, or never gets ready) is killed and the old proxyd serves on.
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long anything here may take before the test gives up (a limit, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

fn give_up_at() -> Instant {
    Instant::now() + PATIENCE
}

// ---------------------------------------------------------------------------------------------
// The client load
// ---------------------------------------------------------------------------------------------

/// What the load's clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Connections refused (or otherwise not made).
    refused: AtomicUsize,
    /// Requests that failed: an error after the request was sent, or a status other than 200.
    failures: Mutex<Vec<String>>,
    /// Keep-alive connections found closed before a request was written on them (the client
    /// then opens a new one, as any HTTP client does; nothing was sent, so nothing failed).
    reconnects: AtomicUsize,
    /// Keep-alive connections the server closed with `Connection: close` on a response.
    moved: AtomicUsize,
    /// Response bodies since the last `mark`.
    bodies: Mutex<HashSet<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn served(&self, body: &[u8]) {
        self.ok.fetch_add(1, Ordering::SeqCst);
        self.bodies
            .lock()
            .unwrap()
            .insert(String::from_utf8_lossy(body).into_owned());
    }
}

/// Keep-alive clients and new-connection clients sending GETs back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

type Sender = hyper::client::conn::http1::SendRequest<BoxBody>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(path: &str, close: bool) -> Request<BoxBody> {
    let mut req = Request::get(path).header("host", "upgrade.test");
    if close {
        req = req.header("connection", "close");
    }
    req.body(full("")).unwrap()
}

/// One response read whole: Ok(body) for a 200, Err otherwise. `closing` is set when the
/// server said `Connection: close`.
async fn read(
    resp: http::Response<hyper::body::Incoming>,
    closing: &mut bool,
) -> Result<Vec<u8>, String> {
    let status = resp.status();
    *closing = resp
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body.to_vec())
}

async fn keepalive_client(
    addr: SocketAddr,
    path: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<Sender> = None;
    while !stop.load(Ordering::SeqCst) {
        let sender = match conn.as_mut() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(addr).await {
                Ok(s) => conn.insert(s),
                Err(e) => {
                    tally.refused.fetch_add(1, Ordering::SeqCst);
                    tally.fail(format!("keep-alive client: {e}"));
                    continue;
                }
            },
        };
        if sender.ready().await.is_err() {
            // Closed before anything was written on it.
            tally.reconnects.fetch_add(1, Ordering::SeqCst);
            conn = None;
            continue;
        }
        match sender.try_send_request(request(&path, false)).await {
            Ok(resp) => {
                let mut closing = false;
                match read(resp, &mut closing).await {
                    Ok(body) => tally.served(&body),
                    Err(e) => {
                        tally.fail(format!("keep-alive client: {e}"));
                        closing = true;
                    }
                }
                if closing {
                    tally.moved.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
            }
            Err(mut e) => {
                if e.take_message().is_some() {
                    // Not written: the connection had closed. Not sent, so not failed.
                    tally.reconnects.fetch_add(1, Ordering::SeqCst);
                } else {
                    tally.fail(format!("keep-alive client: {}", e.into_error()));
                }
                conn = None;
            }
        }
    }
}

async fn fresh_client(addr: SocketAddr, path: String, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let mut sender = match connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                tally.refused.fetch_add(1, Ordering::SeqCst);
                tally.fail(format!("new-connection client: {e}"));
                continue;
            }
        };
        let got = match sender.send_request(request(&path, true)).await {
            Ok(resp) => read(resp, &mut false).await,
            Err(e) => Err(e.to_string()),
        };
        match got {
            Ok(body) => tally.served(&body),
            Err(e) => tally.fail(format!("new-connection client: {e}")),
        }
    }
}

impl Load {
    fn start(addr: SocketAddr, path: &str, keepalive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for _ in 0..keepalive {
            tasks.push(tokio::spawn(keepalive_client(
                addr,
                path.to_string(),
                tally.clone(),
                stop.clone(),
            )));
        }
        for _ in 0..fresh {
            tasks.push(tokio::spawn(fresh_client(
                addr,
                path.to_string(),
                tally.clone(),
                stop.clone(),
            )));
        }
        Load { stop, tally, tasks }
    }

    /// Waits until `n` more requests have been served (panics on a failure meanwhile).
    async fn more(&self, n: usize) {
        let target = self.tally.ok.load(Ordering::SeqCst) + n;
        let deadline = give_up_at();
        while self.tally.ok.load(Ordering::SeqCst) < target {
            let failures = self.tally.failures.lock().unwrap().clone();
            assert!(failures.is_empty(), "requests failed: {failures:?}");
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Forgets the response bodies seen so far.
    fn mark(&self) {
        self.tally.bodies.lock().unwrap().clear();
    }

    fn bodies(&self) -> HashSet<String> {
        self.tally.bodies.lock().unwrap().clone()
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.tally
    }
}

fn assert_clean(tally: &Tally) {
    let failures = tally.failures.lock().unwrap();
    assert_eq!(
        tally.refused.load(Ordering::SeqCst),
        0,
        "connections refused: {failures:?}"
    );
    assert!(
        failures.is_empty(),
        "{} requests failed: {failures:?}",
        failures.len()
    );
    eprintln!(
        "served {} requests, 0 failed, 0 refused; keep-alive connections closed by a response's \
         Connection: close: {}, found closed before a request was written on them: {}",
        tally.ok.load(Ordering::SeqCst),
        tally.moved.load(Ordering::SeqCst),
        tally.reconnects.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------------
// proxyd processes
// ---------------------------------------------------------------------------------------------

/// The proxyd the test started, its config and admin address. Its marker is in the
/// environment of every process it leads to (the new proxyd of an upgrade, every worker):
/// dropping it SIGKILLs, by pid, whatever of those is left.
struct Proxyd {
    process: ProxydProcess,
    admin: SocketAddr,
    dir: tempfile::TempDir,
    marker: Marker,
}

impl Proxyd {
    /// Writes `yaml(marker)` as proxy.yaml in a new directory (executable `files` next to
    /// it) and starts proxyd on it with `env`.
    fn start(
        name: &str,
        yaml: impl FnOnce(&str) -> String,
        files: &[(&str, &str)],
        env: &[(&str, &Path)],
    ) -> Proxyd {
        let marker = Marker::new(name);
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in files {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&path, perms).unwrap();
        }
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, yaml(&marker.0)).unwrap();
        let mut cmd = Command::new(proxyd_bin());
        cmd.arg("-c").arg(&config).env(MARKER_VAR, &marker.0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = ProxydProcess::spawn(cmd);
        let admin = wait_line(&process, "admin listening", |l| {
            l.split("addr=Some(")
                .nth(1)?
                .split(')')
                .next()?
                .parse()
                .ok()
        });
        Proxyd {
            process,
            admin,
            dir,
            marker,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    fn pid(&self) -> u32 {
        self.process.child.id()
    }

    fn logged(&self, needle: &str) -> bool {
        self.process
            .stderr_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits until a line containing `needle` was logged; returns the first one.
    async fn wait_logged(&self, needle: &str) -> String {
        let deadline = give_up_at();
        loop {
            if let Some(l) = self
                .process
                .stderr_lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "proxyd never logged {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (blocking the runtime off this thread) until the first proxyd has exited.
    async fn wait_exit(self) -> (Option<i32>, Proxyd) {
        tokio::task::spawn_blocking(move || {
            let mut me = self;
            (me.process.wait_exit(), me)
        })
        .await
        .unwrap()
    }
}

/// Waits for a stderr line that `f` maps to Some.
fn wait_line<T>(p: &ProxydProcess, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(t) = p.stderr_lines.lock().unwrap().iter().find_map(|l| f(l)) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} line from proxyd: {:?}",
            p.stderr_lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One admin request on a new connection: status and body.
async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, String), String> {
    let mut sender = connect(addr).await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("connection", "close");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(full("")).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET /status.
async fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = admin(addr, "GET", "/status", None)
        .await
        .unwrap_or_else(|e| panic!("GET /status: {e}"));
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls /status until another process than `old` answers; returns its pid.
async fn new_pid(admin: SocketAddr, old: u32) -> u32 {
    let deadline = give_up_at();
    loop {
        let pid = status(admin).await["pid"].as_u64().unwrap() as u32;
        if pid != old {
            return pid;
        }
        assert!(Instant::now() < deadline, "pid {old} still answers /status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The worker pids /status reports for the first upstream.
fn worker_pids(status: &serde_json::Value) -> HashSet<u32> {
    status["upstreams"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

/// Process group and session of `pid`, from /proc/<pid>/stat.
fn group_and_session(pid: u32) -> (u32, u32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// SIGTERM to a process this test started (by its pid), then waits until it is gone.
async fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = give_up_at();
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every datagram waiting on the socket now (none waited for).
fn queued(sock: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// The next datagram (waiting up to PATIENCE).
fn next_datagram(sock: &std::os::unix::net::UnixDatagram) -> String {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no notification from proxyd");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A backend that holds the first request it gets until released: a request in flight
/// across the hand-over.
struct HeldBackend {
    addr: SocketAddr,
    arrived: tokio::sync::oneshot::Receiver<()>,
    release: tokio::sync::oneshot::Sender<()>,
}

impl HeldBackend {
    async fn start() -> HeldBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while find(&head, b"\r\n\r\n").is_none() {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "proxyd closed the held request's connection");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = arrived_tx.send(());
            let _ = released.await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld")
                .await
                .unwrap();
            // Keep the connection until proxyd drops it.
            let _ = stream.read(&mut buf).await;
        });
        HeldBackend {
            addr,
            arrived,
            release,
        }
    }
}

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_over_under_load_with_no_failed_request() {
    let backend = TestBackend::echo().await;
    let held = HeldBackend::start().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\npid_file: proxyd.pid\nupstreams:\n  app:\n    servers: [\"{}\"]\n  held:\n    servers: [\"{}\"]\nroutes:\n  - {{ path: /held, upstream: held }}\n  - {{ path: /, upstream: app }}\n",
        backend.addr, held.addr
    );
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let p = Proxyd::start(
        "upgrade-static",
        |_| yaml,
        &[],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let old = p.pid();
    assert_eq!(next_datagram(&notify), "READY=1");
    assert_eq!(status(p.admin).await["pid"], old);
    let pid_file = p.dir.path().join("proxyd.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old.to_string()
    );
    let addr = p.process.addr;

    let load = Load::start(addr, "/", 4, 4);
    load.more(300).await;
    // A request in flight across the hand-over, on a keep-alive connection to the old proxyd.
    let mut held_conn = connect(addr).await.unwrap();
    let held_response = tokio::spawn(async move {
        let resp = held_conn
            .send_request(request("/held", false))
            .await
            .unwrap();
        let mut closing = false;
        let body = read(resp, &mut closing).await.unwrap();
        (body, closing)
    });
    held.arrived.await.unwrap();

    p.process.signal("USR2");
    let new = new_pid(p.admin, old).await;
    let mut p = p;
    // The old proxyd drains: it cannot exit while it owes a response.
    assert!(p.process.child.try_wait().unwrap().is_none());
    load.more(300).await;
    held.release.send(()).unwrap();
    let (body, closing) = held_response.await.unwrap();
    assert_eq!(body, b"held");
    assert!(
        closing,
        "the drained connection was not closed after its last response"
    );

    // The new proxyd leads a session of its own: nothing sent to the old one's process
    // group (the test's) reaches it, and it outlives the old one.
    assert_eq!(group_and_session(new), (new, new));
    assert_ne!(
        group_and_session(new).0,
        group_and_session(std::process::id()).0
    );
    let (code, p) = p.wait_exit().await;
    assert_eq!(code, Some(0), "the old proxyd did not exit cleanly");
    assert!(alive(new), "the new proxyd died with the old one");
    // Served by the new one alone now, on the same address and admin address.
    load.more(300).await;
    let tally = load.finish().await;
    assert_clean(&tally);
    let s = status(p.admin).await;
    assert_eq!(s["pid"], new);
    assert_eq!(s["listeners"][0]["addr"], addr.to_string());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new.to_string()
    );

    // systemd heard of the new main process before the old one exited (already queued now),
    // from the new process and from the old one; the old one never said STOPPING.
    assert_eq!(
        queued(&notify),
        [
            format!("MAINPID={new}\nREADY=1\nSTATUS=serving; took over from pid {old}"),
            format!("MAINPID={new}"),
        ]
    );
    p.wait_logged("handed over to the new proxyd").await;

    // The new proxyd is a proxyd like any other: SIGTERM drains it, it says STOPPING and
    // removes its pid file.
    terminate(new).await;
    assert_eq!(next_datagram(&notify), "STOPPING=1");
    assert!(!pid_file.exists(), "the new proxyd left its pid file");
    p.marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyd_upgrade_replaces_the_workers_by_ready_ones_under_load() {
    // The admin is on port 0, so `proxyd upgrade` finds the running proxyd by its pid file.
    // One thread (a current-thread runtime): the workers are forked by the main thread.
    let yaml = |marker: &str| {
        format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\npid_file: proxyd.pid\nthreads: 1\nupstreams:\n  app:\n    workers:\n      command: [\"{}\", \"{APP}\"]\n      count: 2\n      env: {{ {MARKER_VAR}: \"{marker}\" }}\n      health: {{ path: /healthz, interval: 200ms }}\n",
            python(),
        )
    };
    let p = Proxyd::start("upgrade-workers", yaml, &[], &[]);
    let old = p.pid();
    // Both workers ready before the load starts.
    let deadline = give_up_at();
    while status(p.admin).await["upstreams"][0]["ready_backends"] != 2 {
        assert!(Instant::now() < deadline, "the workers never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old_workers = worker_pids(&status(p.admin).await);
    assert_eq!(old_workers.len(), 2);

    let load = Load::start(p.process.addr, "/", 3, 3);
    load.more(100).await;
    let config = p.config();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(proxyd_bin())
            .arg("upgrade")
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "proxyd upgrade: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = new_pid(p.admin, old).await;
    assert_eq!(
        stdout,
        format!(
            "upgraded: proxyd pid {new} serves now; pid {old} drains its connections and exits\n"
        )
    );
    let (code, p) = p.wait_exit().await;
    assert_eq!(code, Some(0));

    // The new proxyd's own workers, ready before it took over; the old ones are gone.
    let s = status(p.admin).await;
    let new_workers = worker_pids(&s);
    assert_eq!(new_workers.len(), 2);
    assert!(new_workers.is_disjoint(&old_workers));
    for w in &new_workers {
        assert_eq!(
            stat(*w).unwrap().1,
            new,
            "worker {w} is not the new proxyd's"
        );
    }
    let deadline = give_up_at();
    while old_workers.iter().any(|w| alive(*w)) {
        assert!(Instant::now() < deadline, "old workers left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From now on only the new workers answer.
    load.mark();
    load.more(100).await;
    let expected: HashSet<String> = new_workers
        .iter()
        .map(|w| format!("hello from pid {w}\n"))
        .collect();
    assert!(
        load.bodies().is_subset(&expected),
        "{:?} not from {expected:?}",
        load.bodies()
    );
    let tally = load.finish().await;
    assert_clean(&tally);

    terminate(new).await;
    p.marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let backend = TestBackend::echo().await;
    let yaml = |binary: &str| {
        format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\n  token: s3cret\nupstreams:\n  app:\n    servers: [\"{}\"]\nupgrade:\n  binary: {binary}\n  timeout: 2s\n",
            backend.addr
        )
    };
    let p = Proxyd::start(
        "upgrade-broken",
        |_| yaml("broken.sh"),
        &[
            (
                "broken.sh",
                "#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 1\n",
            ),
            // Starts, and never says it is ready.
            (
                "hangs.sh",
                "#!/bin/sh\necho $$ > \"$(dirname \"$0\")/hangs.pid\"\nexec sleep 600\n",
            ),
        ],
        &[],
    );
    let old = p.pid();
    let load = Load::start(p.process.addr, "/", 2, 2);
    load.more(100).await;

    // POST /upgrade needs the admin token, like every POST.
    let (code, _) = admin(p.admin, "POST", "/upgrade", None).await.unwrap();
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // A binary that exits: the answer and the log say so, and the old proxyd serves on.
    let (code, body) = admin(p.admin, "POST", "/upgrade", Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body.contains("upgrade failed, this proxyd keeps serving")
            && body.contains("broken.sh) exited before it was ready (exit code 1)"),
        "{body}"
    );
    p.wait_logged("broken build: cannot start").await;
    p.wait_logged("upgrade failed, this proxyd keeps serving")
        .await;
    load.more(100).await;

    // A binary that never gets ready: killed (by its pid) after upgrade.timeout.
    std::fs::write(p.config(), yaml("hangs.sh")).unwrap();
    let (code, body) = admin(p.admin, "POST", "/reload", Some("s3cret"))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    p.process.signal("USR2");
    let why = p.wait_logged("not ready within upgrade.timeout").await;
    assert!(why.contains("killed it (signal 9)"), "{why}");
    let hung: u32 = std::fs::read_to_string(p.dir.path().join("hangs.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(hung),
        "the new binary that never got ready still runs"
    );

    load.more(100).await;
    let tally = load.finish().await;
    assert_clean(&tally);
    assert_eq!(status(p.admin).await["pid"], old);
    assert!(!p.logged("handed over"));
    p.process.signal("TERM");
    let (code, _p) = p.wait_exit().await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_upgrade_answers_once_the_new_config_took_the_sockets_it_keeps() {
    let backend = TestBackend::echo().await;
    let yaml = |listen: &[&str]| {
        let listen: String = listen
            .iter()
            .map(|a| format!("  - addr: \"{a}\"\n"))
            .collect();
        format!(
            "listen:\n{listen}admin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
            backend.addr
        )
    };
    let p = Proxyd::start(
        "upgrade-listeners",
        |_| yaml(&["127.0.0.1:0", "127.0.0.2:0"]),
        &[],
        &[],
    );
    let bound = |s: &serde_json::Value| -> Vec<SocketAddr> {
        s["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["addr"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let before = bound(&status(p.admin).await);
    assert_eq!(before.len(), 2);
    let old = p.pid();
    // The new binary's config keeps the first listener, drops the second, adds a third.
    std::fs::write(p.config(), yaml(&["127.0.0.1:0", "127.0.0.3:0"])).unwrap();
    // POST /upgrade answers once the new proxyd serves (the old one's admin finishes this
    // request after it stopped accepting).
    let (code, body) = admin(p.admin, "POST", "/upgrade", None).await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    let new = new_pid(p.admin, old).await;
    assert_eq!(
        body,
        format!(
            "upgraded: proxyd pid {new} serves now; pid {old} drains its connections and exits\n"
        )
    );
    let (code, p) = p.wait_exit().await;
    assert_eq!(code, Some(0));
    let after = bound(&status(p.admin).await);
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[0], "the kept listener changed its port");
    assert_eq!(after[1].ip().to_string(), "127.0.0.3");
    for a in &after {
        assert_eq!(get(*a, "/").await.status, StatusCode::OK);
    }
    assert!(
        TcpStream::connect(before[1]).await.is_err(),
        "the dropped listener still accepts"
    );
    p.wait_logged("inherited socket not in the config; closed")
        .await;
    terminate(new).await;
    p.marker.wait_none_left().await;
}
