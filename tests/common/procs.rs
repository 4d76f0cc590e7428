//! Worker processes seen from a test: a unique marker in their environment to find (and, on
//! drop, kill) them, /proc readings, and the real Python interpreter.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The environment variable that carries a test's marker into its workers.
pub const MARKER_VAR: &str = "PROXYD_TEST_MARKER";

/// A unique tag for one test's workers. Dropping it SIGKILLs whatever still carries it, so a
/// failing test leaves nothing behind either.
pub struct Marker(pub String);

impl Marker {
    pub fn new(test: &str) -> Marker {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Marker(format!("{test}-{}-{nanos}", std::process::id()))
    }

    /// Live processes that carry this marker in their environment.
    pub fn pids(&self) -> HashSet<u32> {
        let needle = format!("{MARKER_VAR}={}", self.0);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return HashSet::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
            })
            .filter(|pid| alive(*pid))
            .collect()
    }
}

impl Marker {
    /// Waits (up to 30 s, then panics) until no process carries the marker.
    pub async fn wait_none_left(&self) {
        for _ in 0..1500 {
            if self.pids().is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("processes of {} still alive: {:?}", self.0, self.pids());
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// State and parent pid from /proc/<pid>/stat.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Running (a zombie waiting for its reaper counts as gone).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The Python interpreter itself: `python3` may be a wrapper (pyenv's shim runs helper
/// processes before it execs Python), and a worker's pid should be Python's from the start.
pub fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !path.is_empty(),
            "python3 has no sys.executable: {out:?}"
        );
        path
    })
}
