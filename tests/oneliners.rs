//! The one-line commands with the real binary and real processes: `proxyd run` (workers of
//! examples/app.py), `proxyd proxy` (in front of real backends) and `proxyd reload` (against a
//! running proxyd, through its admin API and through its pid file).
mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::procs::{python, Marker, MARKER_VAR};
use common::workers::{wait_for, APP, PATIENCE};
use common::*;
use http::{Response, StatusCode};
use tokio::time::Instant;

/// What a command that exits printed, and its exit code.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `proxyd ARGS` to its end, off the runtime's threads.
async fn proxyd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Ran {
    let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(proxyd_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `proxyd ARGS` as a server: started, and its listening address read from its log.
fn serve(args: &[&str], marker: &Marker) -> ProxydProcess {
    let mut cmd = Command::new(proxyd_bin());
    cmd.args(args).env(MARKER_VAR, &marker.0);
    ProxydProcess::spawn(cmd)
}

/// The pid in the worker's answer to `/` ("hello from pid N").
fn pid_of(got: &Got) -> u32 {
    got.text()
        .trim()
        .strip_prefix("hello from pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a worker's greeting: {:?}", got.text()))
}

async fn stop(mut p: ProxydProcess, marker: &Marker) {
    p.signal("TERM");
    let code = tokio::task::spawn_blocking(move || p.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    marker.wait_none_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_requests_across_its_workers() {
    let marker = Marker::new("oneliner-run");
    // {port} in the arguments: app.py takes its port from its first argument.
    let p = serve(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--",
            python(),
            APP,
            "{port}",
        ],
        &marker,
    );
    // Sequential requests take turns among the ready workers: both answer, in time.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "only {seen:?} answered");
        let got = get(p.addr, "/").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        seen.insert(pid_of(&got));
    }
    // The workers are the two processes proxyd started (the marker is in proxyd's
    // environment too, and its workers inherit it).
    let mut started = marker.pids();
    assert!(started.remove(&p.child.id()));
    assert_eq!(seen, started);
    stop(p, &marker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_gives_port_in_the_environment_and_takes_gunicorn_timeout() {
    let marker = Marker::new("oneliner-run-timeout");
    // No {port}: app.py reads PORT. `-t 1`: gunicorn's seconds.
    let p = serve(
        &[
            "run",
            "-b",
            "127.0.0.1:0",
            "-w",
            "1",
            "-t",
            "1",
            "--",
            python(),
            APP,
        ],
        &marker,
    );
    let first = get(p.addr, "/").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let worker = pid_of(&first);
    // A POST is not replayed on another worker: the time-out is its answer.
    let slow = post(p.addr, "/slow?ms=20000", "").await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text());
    assert!(slow.header("proxyd-error").is_some(), "{:?}", slow.headers);
    // The hung worker was replaced, as gunicorn's --timeout does.
    let p_addr = p.addr;
    let mut replaced = None;
    let deadline = Instant::now() + PATIENCE;
    while replaced.is_none() {
        assert!(
            Instant::now() < deadline,
            "the hung worker was not replaced"
        );
        let got = get(p_addr, "/").await;
        if got.status == StatusCode::OK && pid_of(&got) != worker {
            replaced = Some(pid_of(&got));
        }
    }
    stop(p, &marker).await;
}

#[tokio::test]
async fn run_refuses_bad_flags_clearly() {
    // A value of the right type that the config's validation refuses: exit 1, the flag named.
    let r = proxyd(&[&"run", &"-w", &"0", &"--", &python(), &APP]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(
        r.stderr.trim(),
        "proxyd: run: --workers: must be at least 1"
    );
    let r = proxyd(&[&"run", &"--", &"surely-no-such-program", &"x"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("proxyd: run: COMMAND: program \"surely-no-such-program\" not found"),
        "{}",
        r.stderr
    );
    // A value that does not parse: clap's usage error (exit 2), the flag named.
    let r = proxyd(&[&"run", &"-t", &"soon", &"--", &python(), &APP]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("invalid value 'soon' for '--timeout <SECONDS>'"),
        "{}",
        r.stderr
    );
    // The global -c would be ignored: refused instead.
    let r = proxyd(&[&"run", &"-c", &"proxy.yaml", &"--", &python(), &APP]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("takes no config file"), "{}", r.stderr);
    // Nothing to run: the help, and a failure.
    let r = proxyd(&[&"run"]).await;
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("Usage: proxyd run [OPTIONS] <COMMAND>..."),
        "{}",
        r.stderr
    );
    // The help reads as gunicorn's would: flags, defaults, examples; no config file.
    let r = proxyd(&[&"run", &"--help"]).await;
    assert_eq!(r.code, Some(0));
    for want in [
        "-w, --workers <N>",
        "[default: 127.0.0.1:8000]",
        "[alias: --bind]",
        "-t, --timeout <SECONDS>",
        "Examples:",
        "proxyd run -w 4 -b 0.0.0.0:8000 -- gunicorn",
    ] {
        assert!(r.stdout.contains(want), "{want:?} not in\n{}", r.stdout);
    }
    assert!(!r.stdout.contains("--config"), "{}", r.stdout);
}

/// A backend that answers its own name, and the Host header it got.
async fn named(name: &'static str) -> TestBackend {
    TestBackend::start(move |seen| {
        let host = seen
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        Response::builder()
            .header("x-host", host)
            .body(full(name))
            .unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_balances_across_its_servers() {
    let (a, b) = (named("a").await, named("b").await);
    let marker = Marker::new("oneliner-proxy");
    let p = serve(
        &[
            "proxy",
            "--from",
            "127.0.0.1:0",
            "--to",
            &a.addr.to_string(),
            "--to",
            &b.addr.to_string(),
        ],
        &marker,
    );
    let mut answers = Vec::new();
    for _ in 0..10 {
        let got = get(p.addr, "/x").await;
        assert_eq!(got.status, StatusCode::OK);
        // The client's Host goes through, as nginx's proxy_set_header Host $host.
        assert_eq!(got.header("x-host"), Some("test.local"));
        answers.push(got.text());
    }
    assert_eq!(a.request_count() + b.request_count(), 10);
    assert!(
        a.request_count() >= 3 && b.request_count() >= 3,
        "{answers:?}"
    );
    drop(p);

    // --change-host-header: the server is asked for itself.
    let p = serve(
        &[
            "proxy",
            "--from",
            "127.0.0.1:0",
            "--to",
            &a.addr.to_string(),
            "--change-host-header",
        ],
        &marker,
    );
    let got = get(p.addr, "/").await;
    assert_eq!(got.text(), "a");
    assert_eq!(got.header("x-host"), Some(a.addr.to_string().as_str()));

    // Bad flags: the flag named, nothing started.
    let r = proxyd(&[&"proxy", &"--from", &"127.0.0.1:0"]).await;
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--to <UPSTREAM>"), "{}", r.stderr);
    let r = proxyd(&[&"proxy", &"--to", &"127.0.0.1"]).await;
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr
            .contains("invalid value '127.0.0.1' for '--to <UPSTREAM>...'")
            && r.stderr.contains("has no port"),
        "{}",
        r.stderr
    );
    let r = proxyd(&[
        &"proxy",
        &"--from",
        &"127.0.0.1:7003",
        &"--admin",
        &"127.0.0.1:7003",
        &"--to",
        &a.addr.to_string(),
    ])
    .await;
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr.trim(),
        "proxyd: proxy: --admin: 127.0.0.1:7003 is also a proxy listener"
    );
}

/// A port free right now, for an admin address `proxyd reload` reads from the config.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn to(server: SocketAddr, extra: &str) -> String {
    format!("listen:\n  - addr: \"127.0.0.1:0\"\n{extra}upstreams:\n  app:\n    servers: [\"{server}\"]\n")
}

async fn reload(path: &Path) -> Ran {
    proxyd(&[&"reload", &"-c", &path]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_admin_api() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let admin = format!("admin:\n  addr: \"127.0.0.1:{}\"\n", free_port());
    std::fs::write(&path, to(a.addr, &admin)).unwrap();

    // Nothing runs this config yet: cannot be reached.
    let r = reload(&path).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("is proxyd running with this config?"),
        "{}",
        r.stderr
    );

    let p = ProxydProcess::start_file(&path);
    assert_eq!(get(p.addr, "/").await.text(), "a");

    // A good config: exit 0 once the running proxyd serves it.
    std::fs::write(&path, to(b.addr, &admin)).unwrap();
    let r = reload(&path).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("reloaded "), "{}", r.stdout);
    assert_eq!(get(p.addr, "/").await.text(), "b");

    // A bad file: refused with file:line:column, the running proxyd untouched.
    std::fs::write(&path, format!("{}    retry: 3\n", to(a.addr, &admin))).unwrap();
    let r = reload(&path).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("proxy.yaml:8:5: unknown field `retry`"),
        "{}",
        r.stderr
    );
    assert_eq!(get(p.addr, "/").await.text(), "b");

    // A file that checks out but that the running proxyd cannot apply (a port it cannot
    // have): refused by it, with its reason; the old config keeps serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let second = format!("  - addr: \"127.0.0.1:{port}\"\n{admin}");
    std::fs::write(&path, to(a.addr, &second)).unwrap();
    let r = reload(&path).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stderr.contains("answered 422") && r.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
    assert_eq!(get(p.addr, "/").await.text(), "b");
    assert_eq!(a.request_count(), 1, "served by the first config only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_pid_file() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let pid_file = dir.path().join("proxyd.pid");
    // An admin on a port picked at start cannot be found: the pid file is.
    let extra = "admin:\n  addr: \"127.0.0.1:0\"\npid_file: proxyd.pid\n";
    std::fs::write(&path, to(a.addr, extra)).unwrap();
    let p = ProxydProcess::start_file(&path);
    wait_for("the pid file", || pid_file.exists()).await;
    assert_eq!(get(p.addr, "/").await.text(), "a");

    std::fs::write(&path, to(b.addr, extra)).unwrap();
    let r = reload(&path).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout
            .starts_with(&format!("sent SIGHUP to proxyd pid {}", p.child.id())),
        "{}",
        r.stdout
    );
    // No answer comes back by a signal: the new config shows in what is served.
    let deadline = Instant::now() + PATIENCE;
    while get(p.addr, "/").await.text() != "b" {
        assert!(Instant::now() < deadline, "still served by the old config");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A bad file is refused before anything is sent.
    std::fs::write(&path, "listen: nope\n").unwrap();
    let r = reload(&path).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("proxy.yaml:1:9:"), "{}", r.stderr);
    let hups = p
        .stderr_lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("SIGHUP"))
        .count();
    assert_eq!(hups, 1, "one signal, for the good file");
    assert_eq!(get(p.addr, "/").await.text(), "b");

    // Not running: the pid file is gone with it.
    let mut p = p;
    p.signal("TERM");
    assert_eq!(
        tokio::task::spawn_blocking(move || p.wait_exit())
            .await
            .unwrap(),
        Some(0)
    );
    std::fs::write(&path, to(b.addr, extra)).unwrap();
    let r = reload(&path).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("cannot read the pid file"),
        "{}",
        r.stderr
    );
}

/// A proxyd started from flags has no file: a reload says so and changes nothing, and an
/// upgrade starts the new binary with the same flags, on the same sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyd_made_of_flags_upgrades_with_them_and_refuses_a_reload() {
    let marker = Marker::new("oneliner-upgrade");
    let backend = named("upgraded").await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let to = backend.addr.to_string();
    let admin_flag = admin.to_string();
    let mut p = serve(
        &[
            "proxy",
            "--from",
            "127.0.0.1:0",
            "--to",
            &to,
            "--admin",
            &admin_flag,
        ],
        &marker,
    );
    assert_eq!(get(p.addr, "/").await.status, StatusCode::OK);

    let refused = post(admin, "/reload", "").await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{refused:?}"
    );
    assert!(
        refused.text().contains("started from flags"),
        "{}",
        refused.text()
    );

    let (old, addr) = (p.child.id(), p.addr);
    let upgraded = post(admin, "/upgrade", "").await;
    assert_eq!(upgraded.status, StatusCode::OK, "{}", upgraded.text());
    let new: u32 = upgraded
        .text()
        .strip_prefix("upgraded: proxyd pid ")
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {:?}", upgraded.text()));
    assert_ne!(new, old);
    let code = tokio::task::spawn_blocking(move || p.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "the old proxyd drains and exits");
    // The new proxyd serves on the same listener, made of the same flags.
    assert_eq!(get(addr, "/").await.status, StatusCode::OK);
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status").await.body).unwrap();
    assert_eq!(status["pid"], new, "{status}");
    assert!(status.to_string().contains(&to), "the same --to: {status}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    marker.wait_none_left().await;
}
