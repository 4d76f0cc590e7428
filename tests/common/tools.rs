//! External tools a test needs (chromium, curl, openssl, nginx, varnishtest, ...). Under CI
//! (`CI` set to anything but `false` or `0`) a missing tool fails the test: a skip must never
//! look like a pass there, and `.ci/run` installs every tool. Locally the test returns early
//! and the test binary prints one line at its end naming every skip.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// True under CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The executable `tool` on PATH (or at its absolute path), if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        return executable(Path::new(tool)).then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| executable(p))
}

/// Whether `what` (a test or part of one) can run: `have` says whether its tool `tool` is
/// there. When it is not: under CI the test fails naming `install`; locally the skip is
/// recorded for the summary line and false comes back (the caller returns).
#[track_caller]
pub fn require(have: bool, what: &str, tool: &str, install: &str) -> bool {
    if have {
        return true;
    }
    assert!(
        !in_ci(),
        "{what}: {tool} is missing under CI ({install}; .ci/run installs it)"
    );
    SKIPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{what} ({tool}: {install})"));
    AT_EXIT.call_once(|| {
        // SAFETY: `summary` is a plain extern "C" function that only prints.
        unsafe { libc::atexit(summary) };
    });
    false
}

/// `require` for a program looked up with `which`.
#[track_caller]
pub fn require_tool(what: &str, tool: &str, install: &str) -> bool {
    require(which(tool).is_some(), what, tool, install)
}

extern "C" fn summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    if !skipped.is_empty() {
        eprintln!(
            "SKIPPED {} (tools missing on this machine; under CI=true they fail): {}",
            skipped.len(),
            skipped.join("; ")
        );
    }
}
