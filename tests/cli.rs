//! The binary: `proxyd check`, `--version`, config errors, and signals.
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[test]
fn every_shipped_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (ok, text) = check_path(&path);
            assert!(ok, "{}: {text}", path.display());
            assert!(text.contains("is valid"), "{text}");
            n += 1;
        }
    }
    assert!(n >= 3, "expected the example configs, found {n}");
}

#[test]
fn version_prints() {
    let out = Command::new(proxyd_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("proxyd {}", env!("CARGO_PKG_VERSION"))
    );
}

const GOOD: &str = "listen:\n  - addr: \"127.0.0.1:8080\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:5001\"]\n";

#[test]
fn unknown_key_names_file_line_column_and_expected() {
    let (ok, text) = check(&format!("{GOOD}    retry: 3\n"));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:6:5: unknown field `retry`, expected one of"),
        "{text}"
    );
    assert!(text.contains("servers"), "{text}");
}

/// `proxyd check --skip-programs`: what a deploy can check before the app's dependencies
/// (the workers' programs) are installed; everything else is still checked.
#[test]
fn check_skip_programs_checks_all_but_the_workers_programs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let yaml = "listen:\n  - addr: \"127.0.0.1:8080\"\nupstreams:\n  app:\n    workers:\n      command: [\"surely-not-installed-yet\", \"app:application\"]\n";
    std::fs::write(&path, yaml).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(proxyd_bin())
            .arg("check")
            .args(args)
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run(&[]);
    assert!(!ok);
    assert!(
        text.contains(
            "proxy.yaml:6:16: upstreams.app.workers.command: program \"surely-not-installed-yet\" not found"
        ),
        "{text}"
    );
    let (ok, text) = run(&["--skip-programs"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("is valid (the workers' programs not looked up)"),
        "{text}"
    );
    // Anything else is still an error, located.
    std::fs::write(&path, format!("{yaml}      cuont: 2\n")).unwrap();
    let (ok, text) = run(&["--skip-programs"]);
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:7:7: unknown field `cuont`"),
        "{text}"
    );
    // A command with no program at all is an error now, not a program missing for now.
    let empty = yaml.replace("[\"surely-not-installed-yet\", \"app:application\"]", "[]");
    std::fs::write(&path, empty).unwrap();
    let (ok, text) = run(&["--skip-programs"]);
    assert!(!ok);
    assert!(text.contains("command: needs a program to run"), "{text}");
}

#[test]
fn bad_listen_address_is_located() {
    let (ok, text) = check(&GOOD.replace("127.0.0.1:8080", "127.0.0.1:80800"));
    assert!(!ok);
    assert!(text.contains("proxy.yaml:2:11: listen:"), "{text}");
    assert!(text.contains("not a number from 0 to 65535"), "{text}");
}

#[test]
fn bad_server_address_is_located() {
    let (ok, text) = check(&GOOD.replace("127.0.0.1:5001", "127.0.0.1"));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:5:15: upstreams.app.servers:"),
        "{text}"
    );
    assert!(text.contains("no port"), "{text}");
}

#[test]
fn duplicate_listener_is_refused() {
    let yaml = GOOD.replace(
        "  - addr: \"127.0.0.1:8080\"\n",
        "  - addr: \"127.0.0.1:8080\"\n  - addr: \"0.0.0.0:8080\"\n",
    );
    let (ok, text) = check(&yaml);
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:3:11: listen: 0.0.0.0:8080 is listed twice"),
        "{text}"
    );
}

#[test]
fn missing_file_is_named() {
    let (ok, text) = check_path(std::path::Path::new("/nonexistent/proxy.yaml"));
    assert!(!ok);
    assert!(
        text.contains("/nonexistent/proxy.yaml: cannot read config file"),
        "{text}"
    );
}

#[test]
fn wrong_types_and_values_are_located() {
    let (ok, text) = check(&format!("{GOOD}timeouts:\n  keepalive: \"forever\"\n"));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:7:14:") && text.contains("invalid duration"),
        "{text}"
    );
    let (ok, text) = check(&format!("{GOOD}limits:\n  max_body: \"lots\"\n"));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:7:13:") && text.contains("invalid size"),
        "{text}"
    );
    let (ok, text) = check("listen: 8080\n");
    assert!(!ok);
    assert!(text.contains("proxy.yaml:1:9:"), "{text}");
}

#[test]
fn route_to_unknown_upstream_is_located() {
    let (ok, text) = check(&format!(
        "{GOOD}routes:\n  - {{ path: \"/\", upstream: nope }}\n"
    ));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:7:28: routes: unknown upstream \"nope\"; expected one of app"),
        "{text}"
    );
}

#[test]
fn two_upstreams_need_routes() {
    let (ok, text) = check(&format!(
        "{GOOD}  other:\n    servers: [\"127.0.0.1:5002\"]\n"
    ));
    assert!(!ok);
    assert!(text.contains("routes: needed"), "{text}");
}

#[test]
fn unset_env_var_without_default_is_located() {
    let (ok, text) = check(&GOOD.replace("127.0.0.1:5001", "${PROXYD_TEST_SURELY_UNSET}:5001"));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:5:16: environment variable PROXYD_TEST_SURELY_UNSET is not set"),
        "{text}"
    );
}

#[test]
fn env_expansion_with_default_passes() {
    let (ok, text) = check(&GOOD.replace("8080", "${PROXYD_TEST_SURELY_UNSET:-8081}"));
    assert!(ok, "{text}");
}

#[test]
fn bind_failure_exits_nonzero_with_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, GOOD.replace("8080", &port.to_string())).unwrap();
    let out = Command::new(proxyd_bin())
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

/// A backend that holds each request until `release` is sent, to have one in flight.
async fn held_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<()>,
    tokio::sync::mpsc::Sender<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::mpsc::channel(8);
    let (release_tx, mut release_rx) = tokio::sync::mpsc::channel::<()>(8);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let mut head = Vec::new();
        while find(&head, b"\r\n\r\n").is_none() {
            let n = s.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        got_tx.send(()).await.unwrap();
        release_rx.recv().await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlate!")
            .await
            .unwrap();
        let _ = s.read(&mut buf).await;
    });
    (addr, got_rx, release_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    for sig in ["TERM", "INT"] {
        let (backend, mut got, release) = held_backend().await;
        let mut proxy =
            ProxydProcess::start(&yaml_to(&[backend], "timeouts: { shutdown_grace: 30s }\n"));
        let addr = proxy.addr;
        let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
        got.recv().await.unwrap();
        proxy.signal(sig);
        // The listener closes: new connections are refused while the old request finishes.
        let mut refused = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(refused, "SIG{sig}: listener still accepting");
        release.send(()).await.unwrap();
        let resp = in_flight.await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "late!");
        let code = tokio::task::spawn_blocking(move || proxy.wait_exit())
            .await
            .unwrap();
        assert_eq!(code, Some(0), "SIG{sig}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_bounds_the_drain() {
    let (backend, mut got, _release) = held_backend().await;
    let mut proxy = ProxydProcess::start(&yaml_to(
        &[backend],
        "timeouts: { shutdown_grace: 200ms }\n",
    ));
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "x")
            .body(full(""))
            .unwrap();
        sender.send_request(req).await
    });
    got.recv().await.unwrap();
    proxy.signal("TERM");
    let code = tokio::task::spawn_blocking(move || proxy.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    // The held request was cut off when the grace period ended.
    assert!(in_flight.await.unwrap().is_err());
}

#[test]
fn unreadable_tls_certificate_is_named() {
    let yaml = GOOD.replace(
        "  - addr: \"127.0.0.1:8080\"\n",
        "  - addr: \"127.0.0.1:8443\"\n    tls:\n      certs: [{ cert: a.pem, key: a.key }]\n",
    );
    let (ok, text) = check(&yaml);
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:4:23: listen: tls: cannot read "),
        "{text}"
    );
    assert!(text.contains("a.pem"), "{text}");
}
