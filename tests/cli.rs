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

/// `proxyd check` with extra environment variables.
fn check_env(yaml: &str, vars: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(proxyd_bin())
        .args(["check", "-c"])
        .arg(&path)
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn env_references_in_comments_are_not_expanded() {
    // README's old minimal config: the comment's ${VAR} was once expanded, and failed.
    let yaml = GOOD.replace(
        "  - addr: \"127.0.0.1:8080\"\n",
        "  - addr: \"127.0.0.1:${PROXYD_TEST_SURELY_UNSET:-8080}\"   # ${VAR} and ${VAR:-default} expand\n# ${UNTERMINATED\n",
    );
    let (ok, text) = check(&yaml);
    assert!(ok, "{text}");
}

#[test]
fn a_value_stays_one_scalar_whatever_it_holds() {
    // The route's path must start with /: the error quotes the whole value back, so each
    // character of it stayed in the one scalar, whatever YAML would make of it as text.
    let hostile = "x\" # y: z\nadmin: {addr: \"127.0.0.1:1\"}\n- [";
    for route in [
        "  - path: ${PROXYD_T_VALUE}\n    upstream: app\n",
        "  - { path: \"${PROXYD_T_VALUE}\", upstream: app }\n",
        "  - path: 'v=${PROXYD_T_VALUE}'\n    upstream: app\n",
    ] {
        let yaml = format!("{GOOD}routes:\n{route}");
        let (ok, text) = check_env(&yaml, &[("PROXYD_T_VALUE", hostile)]);
        assert!(!ok, "{route}: {text}");
        let shown = format!(
            "{:?}",
            if route.contains("v=") {
                format!("v={hostile}")
            } else {
                hostile.to_string()
            }
        );
        assert!(
            text.contains("proxy.yaml:")
                && text.contains(&format!("routes: path {shown} must start with /")),
            "{route}: {text}"
        );
    }
}

#[test]
fn expanded_numbers_are_still_numbers() {
    let yaml =
        format!("{GOOD}limits:\n  max_headers: ${{PROXYD_T_N}}\n  max_body: ${{PROXYD_T_SIZE}}\n");
    let (ok, text) = check_env(&yaml, &[("PROXYD_T_N", "50"), ("PROXYD_T_SIZE", "1MiB")]);
    assert!(ok, "{text}");
    let (ok, text) = check_env(
        &yaml,
        &[("PROXYD_T_N", "50 # more"), ("PROXYD_T_SIZE", "1")],
    );
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:7:16: invalid") && !text.contains("quoted"),
        "{text}"
    );
}

#[test]
fn places_after_an_expanded_value_are_those_of_the_file() {
    // The expansion is longer than `${...}`; the bad address after it keeps its column.
    let yaml = GOOD.replace(
        "[\"127.0.0.1:5001\"]",
        "[\"${PROXYD_T_LONG}:5001\", \"127.0.0.1\"]",
    );
    let (ok, text) = check_env(
        &yaml,
        &[("PROXYD_T_LONG", "127.000.000.001.example.invalid")],
    );
    assert!(!ok);
    assert!(text.contains("proxy.yaml:5:"), "{text}");
    let (ok, text) = check_env(
        &GOOD.replace(
            "[\"127.0.0.1:5001\"]",
            "[\"${PROXYD_T_LONG}:5001\", \"127.0.0.1\"]",
        ),
        &[("PROXYD_T_LONG", "127.0.0.1")],
    );
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:5:40: upstreams.app.servers:") && text.contains("no port"),
        "{text}"
    );
}

#[test]
fn an_unquoted_reference_in_brackets_gets_a_hint() {
    let (ok, text) =
        check(&GOOD.replace("[\"127.0.0.1:5001\"]", "[${PROXYD_T_HOST:-127.0.0.1}:5001]"));
    assert!(!ok);
    assert!(
        text.contains("proxy.yaml:5:") && text.contains("must be quoted"),
        "{text}"
    );
}

/// `proxyd check --print -c path` with extra environment variables: success, stdout, stderr.
fn print_config(path: &std::path::Path, vars: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(proxyd_bin())
        .args(["check", "--print", "-c"])
        .arg(path)
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The printout without its leading comment lines (they name the file printed).
fn body(printed: &str) -> String {
    printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn print_writes_every_shipped_config_back_as_a_config_that_passes_check() {
    // A copy of config/ (certificates and error pages included): each printout is saved
    // beside its file, so relative paths mean the same, and must pass check and print the
    // same again.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("config");
    std::fs::create_dir_all(copy.join("certs")).unwrap();
    std::fs::create_dir_all(copy.join("errors")).unwrap();
    for sub in ["", "certs", "errors"] {
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, copy.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    // The static files the configs serve (config/flask-static.yaml, config/full.yaml).
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/static");
    std::fs::create_dir_all(dir.path().join("examples/static")).unwrap();
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        let to = dir
            .path()
            .join("examples/static")
            .join(path.file_name().unwrap());
        std::fs::copy(&path, to).unwrap();
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&copy).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let (ok, printed, err) = print_config(&path, &[]);
        assert!(ok, "{}: {err}", path.display());
        assert!(err.contains("is valid"), "{err}");
        assert!(
            !body(&printed).contains("${"),
            "{}: not expanded:\n{printed}",
            path.display()
        );
        let again = path.with_extension("printed.yml");
        std::fs::write(&again, &printed).unwrap();
        let (ok, reprinted, err) = print_config(&again, &[]);
        assert!(
            ok,
            "{}: the printout fails check: {err}\n{printed}",
            path.display()
        );
        assert_eq!(body(&reprinted), body(&printed), "{}", path.display());
        n += 1;
    }
    assert!(n >= 3, "expected the example configs, found {n}");
}

#[test]
fn print_expands_fills_in_defaults_and_redacts_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let yaml = "listen:\n  - addr: \"127.0.0.1:${PROXYD_T_PORT}\"   # ${NOT_EXPANDED}\nadmin:\n  addr: \"127.0.0.1:0\"\n  token: ${PROXYD_T_TOKEN}\nupstreams:\n  app:\n    workers:\n      command: [\"sh\", \"-c\", \"echo $HOME\"]\n      env: { GREETING: \"${PROXYD_T_HELLO}\", LITERAL: \"$${KEPT}\" }\n";
    std::fs::write(&path, yaml).unwrap();
    let vars = [
        ("PROXYD_T_PORT", "8123"),
        ("PROXYD_T_TOKEN", "s3cret-token"),
        ("PROXYD_T_HELLO", "hi: \"there\" # not a comment"),
    ];
    let (ok, printed, err) = print_config(&path, &vars);
    assert!(ok, "{err}");
    assert!(!printed.contains("s3cret-token"), "{printed}");
    assert!(printed.contains("token: <redacted>"), "{printed}");
    assert!(printed.contains("# admin.token is redacted"), "{printed}");
    assert!(printed.contains("127.0.0.1:8123"), "{printed}");
    assert!(
        printed.contains("echo $HOME"),
        "a bare $ is not expanded: {printed}"
    );
    // A literal ${ is written escaped, so reading the printout keeps it literal.
    assert!(printed.contains("LITERAL: $${KEPT}"), "{printed}");
    // Defaults written out: a time-out, the worker count (2 x cores + 1), the queue's bound.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for line in [
        "request_timeout: 30s".to_string(),
        format!("count: {}", 2 * cores + 1),
        "max: 10000".to_string(),
        "max_headers: 100".to_string(),
        "keepalive: 75s".to_string(),
    ] {
        assert!(printed.contains(&line), "{line}: {printed}");
    }
    // It is a config: check takes it (with the token put back as any value) and reads the
    // same values from it.
    let again = dir.path().join("printed.yaml");
    std::fs::write(&again, &printed).unwrap();
    let (ok, reprinted, err) = print_config(&again, &[]);
    assert!(ok, "{err}\n{printed}");
    assert_eq!(body(&reprinted), body(&printed));
    assert!(
        reprinted.contains("GREETING: 'hi: \"there\" # not a comment'")
            || reprinted.contains("GREETING: \"hi: \\\"there\\\" # not a comment\""),
        "{reprinted}"
    );
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
