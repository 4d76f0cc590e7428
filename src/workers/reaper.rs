//! Orphans. A process a worker started and left behind (a daemonizing app, a grandchild that
//! outlives its parent) is reparented to the nearest "child subreaper" ancestor, or to PID 1.
//! In a container proxyd *is* PID 1, and elsewhere it makes itself a subreaper: either way
//! those orphans become proxyd's children, and each one that exits stays a zombie until proxyd
//! waits for it.
//!
//! proxyd waits for its own children by pid (tokio::process: the workers, an upgrade's new
//! binary), so a blind `waitpid(-1)` would steal their exit statuses from the supervisor.
//! Instead every child proxyd starts goes through [`spawn`], which records its pid, and
//! [`sweep`] reaps only the zombie children that are not on that list, by pid.
//!
//! Written here rather than taken from a crate: the PID-1 helpers (pid1, tini's logic) reap
//! with `waitpid(-1)`, which is exactly what cannot be done beside tokio's own waits.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How often orphans are looked for without a SIGCHLD (signals coalesce; a zombie whose pid
/// was briefly on the list is caught by the next sweep).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The pids of the children proxyd started and waits for itself.
static OWN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn own() -> std::sync::MutexGuard<'static, Option<HashSet<u32>>> {
    OWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts `cmd` and records the child as proxyd's own. The list stays locked from before the
/// fork until the pid is on it, so a sweep never sees the child unlisted, even one that exits
/// at once.
pub fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut own = own();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        own.get_or_insert_with(HashSet::new).insert(pid);
    }
    Ok(child)
}

/// Takes a child proxyd started off the list, once it has been waited for (its pid may be
/// reused from then on).
pub fn forget(pid: u32) {
    if let Some(own) = own().as_mut() {
        own.remove(&pid);
    }
}

/// Makes proxyd the reaper of its orphaned descendants (a child subreaper, unless it is PID 1
/// already) and reaps them on every SIGCHLD and every few seconds. For the binary only, once,
/// inside the runtime and before any worker starts: a library user's own children are not on
/// the list.
pub fn start() -> io::Result<()> {
    let me = std::process::id();
    if me != 1 {
        nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)?;
    }
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = every.tick() => {}
            }
            // /proc reads: off the runtime's threads.
            match tokio::task::spawn_blocking(move || sweep(me)).await {
                Ok(0) | Err(_) => {}
                Ok(n) => tracing::debug!(reaped = n, "reaped orphaned processes"),
            }
        }
    });
    tracing::debug!(pid = me, "reaping orphaned descendants");
    Ok(())
}

/// Reaps the zombie children of process `me` that it did not start through [`spawn`];
/// returns how many.
pub fn sweep(me: u32) -> usize {
    // Listed unlocked: a zombie stays one until someone waits for it, and only this waits for
    // unlisted children, so each candidate is still the same process below.
    let zombies = zombie_children(me);
    if zombies.is_empty() {
        return 0;
    }
    let own = own();
    let mut reaped = 0;
    for pid in zombies {
        if own.as_ref().is_some_and(|o| o.contains(&pid)) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(_) => reaped += 1,
        }
    }
    reaped
}

/// The children of `me` that have exited and wait to be reaped, from /proc.
fn zombie_children(me: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(state, ppid)| state == 'Z' && ppid == me))
        .collect()
}

/// State and parent pid from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything, parentheses included.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_reads_this_process_state_and_parent() {
        let (state, ppid) = stat(std::process::id()).unwrap();
        assert!(matches!(state, 'R' | 'S' | 'D'), "{state}");
        assert_eq!(ppid, std::os::unix::process::parent_id());
    }

    // sweep() itself is tested with the binary (tests/reaper.rs): in this test process it would
    // reap other tests' children, which nothing here lists.
}
