//! Worker tests' shared parts: configs of app.py workers tagged with a test's marker, and
//! waiting on a proxy that runs them.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::procs::{python, Marker, MARKER_VAR};
use super::{get, TestProxy};

pub const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");
/// The bound on every wait for something to happen.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds; panics naming `what` after PATIENCE.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `workers:` block (under an upstream) running `command` `count` times, tagged with
/// `marker`. `keys` set or override keys of the block (values are YAML flow text).
pub fn workers(marker: &Marker, command: &[&str], count: usize, keys: &[(&str, &str)]) -> String {
    let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let mut all: Vec<(&str, &str)> = vec![
        ("health", "{path: /healthz, interval: 200ms, timeout: 1s}"),
        ("start_timeout", "20s"),
        ("kill_timeout", "2s"),
        ("graceful_timeout", "5s"),
    ];
    for (k, v) in keys {
        match all.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => all.push((k, v)),
        }
    }
    let mut out = format!(
        "    workers:\n      command: [{}]\n      count: {count}\n      env: {{{MARKER_VAR}: \"{}\"}}\n",
        command.join(", "),
        marker.0
    );
    for (k, v) in all {
        out += &format!("      {k}: {v}\n");
    }
    out
}

/// One upstream `app` of app.py workers, an admin listener, debug headers.
pub fn app_config(marker: &Marker, count: usize, keys: &[(&str, &str)]) -> String {
    format!(
        "{HEAD}upstreams:\n  app:\n{}",
        workers(marker, &[python(), APP], count, keys)
    )
}

pub const HEAD: &str = "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nheaders:\n  debug: true\ntimeouts:\n  shutdown_grace: 5s\n";

pub async fn start_proxy(yaml: &str) -> (TestProxy, SocketAddr) {
    let proxy = TestProxy::from_yaml(yaml).await;
    let admin = proxy.admin.expect("the config has an admin listener");
    (proxy, admin)
}

/// Polls /readyz until it answers 200.
pub async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = get(admin, "/readyz").await;
        if got.status == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {} after {PATIENCE:?}: {}",
            got.status,
            got.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
