//! Orphans: processes a worker leaves behind are reparented to proxyd (a child subreaper here,
//! PID 1 in a container), and proxyd reaps them when they exit, so none stays a zombie; the
//! workers' own exits still reach the supervisor with their real status (the reaper never
//! waits for a process proxyd started itself). Run with the proxyd binary, where the reaper
//! runs (main starts it; a library user's process is left alone).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::procs::{python, stat, Marker, MARKER_VAR};
use common::{get, ProxydProcess};

/// A worker (standard library only) that leaves processes behind on request:
///   /healthz               ok
///   /orphan?release=FILE   forks a child that forks a grandchild and exits at once, so the
///                          grandchild outlives its parent; answers "GRANDCHILD WORKER"
///   /exit?code=N&release=FILE  forks a child that leaves the worker's process group (as a
///                          daemon does), answers "CHILD WORKER", then the worker itself exits
///                          with code N, leaving the child behind
/// A process left behind waits until FILE exists, then exits.
const WORKER: &str = r#"
import os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse, parse_qs

def linger(release):
    # Nothing of the worker's kept: not its sockets, not proxyd's pipes.
    os.closerange(3, 65536)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    deadline = time.time() + 60
    while not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.01)
    os._exit(0)

def orphan(release):
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        grandchild = os.fork()
        if grandchild == 0:
            linger(release)
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 64))
    os.close(r)
    os.waitpid(child, 0)
    return pid

EXIT = None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        global EXIT
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/healthz":
            body = "ok"
        elif url.path == "/orphan":
            body = "%d %d" % (orphan(q["release"]), os.getpid())
        elif url.path == "/exit":
            child = os.fork()
            if child == 0:
                # A session of its own, as a daemon makes: proxyd's SIGKILL to the exited
                # worker's process group does not reach it.
                os.setsid()
                linger(q["release"])
            body = "%d %d" % (child, os.getpid())
            EXIT = int(q["code"])
        else:
            self.send_error(404)
            return
        data = (body + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
while EXIT is None:
    server.handle_request()
server.server_close()
os._exit(EXIT)
"#;

const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it holds; panics naming `what` after PATIENCE.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET through proxyd, answered 200: the two pids in the body.
async fn pids(addr: SocketAddr, path: &str) -> (u32, u32) {
    let got = tokio::time::timeout(PATIENCE, get(addr, path))
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{path}: {got:?}");
    let text = got.text();
    let mut words = text.split_whitespace().map(|w| w.parse::<u32>().unwrap());
    (words.next().unwrap(), words.next().unwrap())
}

/// The zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(s, ppid)| s == 'Z' && ppid == parent))
        .collect()
}

#[tokio::test]
async fn orphans_are_reaped_and_workers_exits_still_reach_the_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("worker.py");
    std::fs::write(&script, WORKER).unwrap();
    let marker = Marker::new("reaper");
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      \
         command: [{:?}, {:?}]\n      count: 1\n      env: {{{MARKER_VAR}: \"{}\"}}\n      \
         health: {{path: /healthz, interval: 200ms}}\n      start_timeout: 20s\n      \
         kill_timeout: 2s\n      \
         restart: {{backoff: 50ms, max_backoff: 100ms, max_restarts: 100}}\n\
         timeouts:\n  shutdown_grace: 5s\n",
        python(),
        script.display(),
        marker.0
    );
    let mut proxyd = ProxydProcess::start(&yaml);
    let me = proxyd.child.id();
    let addr = proxyd.addr;

    // A grandchild whose parent exited: reparented to proxyd (a subreaper), and reaped by it
    // once it exits.
    let release = dir.path().join("release-orphan");
    let (grandchild, _) = pids(addr, &format!("/orphan?release={}", release.display())).await;
    wait_until("the grandchild is proxyd's", || {
        stat(grandchild).is_some_and(|(_, ppid)| ppid == me)
    })
    .await;
    std::fs::write(&release, "").unwrap();
    wait_until("the exited grandchild is reaped (no zombie left)", || {
        stat(grandchild).is_none()
    })
    .await;

    // The worker itself exits, leaving a child behind: the supervisor sees the worker's own
    // exit code (the reaper did not take it) and replaces it; the child, reparented to proxyd,
    // is reaped when it exits. Several times (a reaper that waited for any child would take
    // some of these exits from the supervisor), each exit code its own.
    for code in 3..=9 {
        let release = dir.path().join(format!("release-{code}"));
        let (child, worker) = pids(
            addr,
            &format!("/exit?code={code}&release={}", release.display()),
        )
        .await;
        let pid = format!("pid={worker}");
        let exited = || {
            proxyd
                .stderr_lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("worker exited") && l.contains(&pid))
                .cloned()
        };
        wait_until(&format!("proxyd logs worker {worker}'s exit"), || {
            exited().is_some()
        })
        .await;
        let line = exited().unwrap();
        assert!(
            line.contains(&format!("worker exited (exit code {code}); replacing it")),
            "the supervisor did not get the worker's own exit status: {line}"
        );
        wait_until("the worker's child is proxyd's", || {
            stat(child).is_some_and(|(_, ppid)| ppid == me)
        })
        .await;
        std::fs::write(&release, "").unwrap();
        wait_until("the exited child is reaped", || stat(child).is_none()).await;
        // The replacement serves.
        let release = dir.path().join(format!("release-after-{code}"));
        std::fs::write(&release, "").unwrap();
        let (_, replacement) = pids(addr, &format!("/orphan?release={}", release.display())).await;
        assert_ne!(replacement, worker);
    }
    wait_until("proxyd has no zombie children", || {
        zombies_of(me).is_empty()
    })
    .await;

    proxyd.signal("TERM");
    assert_eq!(proxyd.wait_exit(), Some(0));
    marker.wait_none_left().await;
}
