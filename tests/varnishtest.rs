//! The .vtc scripts in tests/vtc run with varnishtest (Debian's `varnish` package): an
//! independent HTTP/1.1 and h2 implementation drives the proxyd binary as client and backend.
//! varnishtest runs client/server-only scripts without varnishd. Each script gets its own
//! proxyd, whose one upstream is the script's `server s1`, listening on a unix socket in a temp
//! dir (`${backend}`); the script's clients connect to `${proxyd_addr} ${proxyd_port}`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ProxydProcess;

fn varnishtest_installed() -> bool {
    Command::new("varnishtest")
        .arg("-h")
        .output()
        .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
}

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vtc");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "vtc"))
        .collect();
    all.sort();
    all
}

/// Runs one script against a fresh proxyd; Err with varnishtest's log when it fails.
fn run(script: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s1.sock");
    // A long pool idle time: the scripts' backends serve one connection, proxyd's pooled one.
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"unix:{}\"]\n    pool: {{ idle_timeout: 60s }}\n",
        socket.display()
    );
    let proxyd = ProxydProcess::start(&yaml);
    let out = Command::new("varnishtest")
        .arg("-v")
        .args(["-t", "30"])
        .arg("-D")
        .arg(format!("proxyd_addr={}", proxyd.addr.ip()))
        .arg("-D")
        .arg(format!("proxyd_port={}", proxyd.addr.port()))
        .arg("-D")
        .arg(format!("backend={}", socket.display()))
        .arg(script)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let lines = proxyd.stderr_lines.lock().unwrap().clone();
    if let Some(p) = lines.iter().find(|l| l.contains("panicked")) {
        return Err(format!("proxyd panicked: {p}"));
    }
    let passed = log
        .lines()
        .any(|l| l.contains("TEST") && l.trim_end().contains(" passed ("));
    if out.status.success() && passed {
        Ok(())
    } else {
        let failures: Vec<&str> = log.lines().filter(|l| l.starts_with("----")).collect();
        Err(format!(
            "{failures:#?}\n--- varnishtest log ---\n{log}\n--- proxyd ---\n{}",
            lines.join("\n")
        ))
    }
}

#[test]
fn vtc_scripts_pass_against_the_proxyd_binary() {
    if !common::tools::require(
        varnishtest_installed(),
        "the vtc scripts",
        "varnishtest",
        "apt-get install varnish",
    ) {
        return;
    }
    let scripts = scripts();
    assert!(
        scripts.len() >= 10,
        "tests/vtc holds {} scripts",
        scripts.len()
    );
    let mut failed = Vec::new();
    for script in &scripts {
        let name = script.file_name().unwrap().to_string_lossy().into_owned();
        match run(script) {
            Ok(()) => println!("{name}: passed"),
            Err(e) => {
                eprintln!("{name}: FAILED\n{e}");
                failed.push(name);
            }
        }
    }
    assert!(failed.is_empty(), "vtc scripts failed: {failed:?}");
}
