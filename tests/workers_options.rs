//! The spawn options of `workers:`: `{port}` in arguments, `env`, `cwd`, `user`/`group`, and
//! worker output relayed into proxyd's log with the worker's id. Real processes, the real
//! binary.
mod common;

use std::time::Duration;

use common::*;

fn app_py() -> String {
    format!("{}/examples/app.py", env!("CARGO_MANIFEST_DIR"))
}

fn workers_yaml(workers: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n{workers}      health: {{ interval: 200ms }}\n"
    )
}

/// Polls GET `path` until it answers 200 (the workers are starting); panics after 30 s.
async fn until_ok(proxy: &ProxydProcess, path: &str) -> Got {
    for _ in 0..300 {
        let got = get(proxy.addr, path).await;
        if got.status == 200 {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no 200 from {path} within 30 s: {:?}",
        proxy.stderr_lines.lock().unwrap()
    );
}

fn log_has(proxy: &ProxydProcess, needles: &[&str]) -> bool {
    proxy
        .stderr_lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| needles.iter().all(|n| l.contains(n)))
}

/// Polls the log (lines arrive from a reader thread) until a line has all `needles`.
async fn until_logged(proxy: &ProxydProcess, needles: &[&str]) {
    for _ in 0..100 {
        if log_has(proxy, needles) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no log line with {needles:?}: {:?}",
        proxy.stderr_lines.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_placeholder_env_and_output_relay() {
    // The worker only learns its port from {port} (PORT is unset before the app starts), and
    // reports its env var on stderr, which proxyd relays with the worker id.
    let script = format!(
        "echo \"greeting is $GREETING\" >&2; unset PORT; exec python3 {} {{port}}",
        app_py()
    );
    let yaml = workers_yaml(&format!(
        "      command: [\"sh\", \"-c\", {script:?}]\n      count: 1\n      env: {{ GREETING: hello-from-config }}\n"
    ));
    let proxy = ProxydProcess::start(&yaml);
    let got = until_ok(&proxy, "/").await;
    assert!(got.text().starts_with("hello from pid"), "{}", got.text());
    until_logged(
        &proxy,
        &["greeting is hello-from-config", "worker=1", "stderr"],
    )
    .await;
    // The app's own request log line comes through too.
    until_logged(&proxy, &["GET / HTTP/1.1", "worker=1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cwd_is_relative_to_the_config_file() {
    // The config lives in a temp dir; cwd points from there to the examples folder, so the
    // relative script name only resolves if cwd was applied.
    let dir = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::os::unix::fs::symlink(&examples, dir.path().join("ex")).unwrap();
    let yaml =
        workers_yaml("      command: [\"python3\", \"app.py\"]\n      cwd: ex\n      count: 1\n");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (ok, text) = check_path(&path);
    assert!(ok, "{text}");
    let proxy = ProxydProcess::start_file(&path);
    let got = until_ok(&proxy, "/").await;
    assert!(got.text().starts_with("hello from pid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_as_the_configured_user() {
    let what = "workers_run_as_the_configured_user";
    if !common::tools::require(
        nix::unistd::geteuid().is_root(),
        what,
        "root",
        "run the tests as root",
    ) || !common::tools::require_tool(what, "/usr/bin/python3", "apt-get install python3")
    {
        return;
    }
    let yaml = workers_yaml(&format!(
        "      command: [\"/usr/bin/python3\", {:?}]\n      count: 1\n      user: nobody\n",
        app_py()
    ));
    let proxy = ProxydProcess::start(&yaml);
    let pid: u32 = until_ok(&proxy, "/pid")
        .await
        .text()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.to_string()),
        "{uid_line}"
    );
}

#[test]
fn unknown_user_is_a_config_error() {
    let yaml =
        workers_yaml("      command: [\"python3\", \"app.py\"]\n      user: no-such-user-here\n");
    let (ok, err) = check(&yaml);
    assert!(!ok);
    assert!(
        err.contains("proxy.yaml:7:13: upstreams.app.workers.user: no user \"no-such-user-here\""),
        "{err}"
    );
}

#[test]
fn servers_and_workers_exclude_each_other() {
    let yaml = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\n    workers:\n      command: [\"x\"]\n";
    let (ok, err) = check(yaml);
    assert!(!ok);
    assert!(
        err.contains("upstreams.app: has both servers and workers"),
        "{err}"
    );
}

#[test]
fn missing_program_is_a_config_error() {
    let yaml = workers_yaml("      command: [\"pyhton3-typo\", \"app.py\"]\n");
    let (ok, err) = check(&yaml);
    assert!(!ok);
    assert!(
        err.contains(
            "proxy.yaml:6:16: upstreams.app.workers.command: program \"pyhton3-typo\" not found"
        ),
        "{err}"
    );
}
