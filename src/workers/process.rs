//! One worker process: how it is started (its address, environment, process group, parent
//! death signal, user), its output (into proxyd's log, the last lines kept for crash reports),
//! its exit, its memory, and how it is stopped.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use crate::config::{BackendAddr, WorkerListen};

/// How to start the workers of one upstream.
#[derive(Debug, Clone)]
pub struct Spec {
    pub upstream: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub listen: WorkerListen,
    /// Where unix sockets go (`listen: unix`).
    pub socket_dir: PathBuf,
}

/// Lines of a worker's stderr kept for reports.
const TAIL_LINES: usize = 20;

/// How long an exited worker's stderr may take to reach its end.
const OUTPUT_DRAIN: Duration = Duration::from_millis(250);

/// Loopback ports given to live workers, so a new worker never gets one still in use.
#[derive(Debug, Default)]
pub struct Ports(Mutex<HashSet<u16>>);

impl Ports {
    /// A free loopback port no worker of ours holds.
    fn take(&self) -> io::Result<u16> {
        for _ in 0..64 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if self.lock().insert(port) {
                return Ok(port);
            }
        }
        Err(io::Error::other("no free loopback port"))
    }

    fn release(&self, addr: &BackendAddr) {
        if let BackendAddr::Tcp(a) = addr {
            self.lock().remove(&a.port());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A started worker process.
pub struct Process {
    pub id: u64,
    pub pid: u32,
    pub addr: BackendAddr,
    exit: watch::Receiver<Option<ExitStatus>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    /// Starts worker `id` of `spec`.
    pub fn spawn(spec: &Spec, id: u64, ports: &Ports) -> io::Result<Process> {
        let (addr, var, value) = match spec.listen {
            WorkerListen::Tcp => {
                let port = ports.take()?;
                let addr = BackendAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                (addr, "PORT", port.to_string())
            }
            WorkerListen::Unix => {
                let path = spec.socket_dir.join(format!("worker-{id}.sock"));
                let _ = std::fs::remove_file(&path);
                let value = path.display().to_string();
                (BackendAddr::Unix(path), "SOCKET", value)
            }
        };
        let args: Vec<String> = spec
            .command
            .iter()
            .map(|a| a.replace("{port}", &value).replace("{socket}", &value))
            .collect();
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(rest)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(var, &value)
            .env("PROXYD_WORKER_ID", id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: stopping the worker stops whatever it started.
            .process_group(0);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        if let Some(gid) = spec.gid {
            cmd.gid(gid);
        }
        if let Some(uid) = spec.uid {
            cmd.uid(uid);
        }
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                // If proxyd dies, even by SIGKILL, the kernel kills the worker. The signal
                // follows the *thread* that forked: slots run on the runtime's worker threads
                // (the main thread with `threads: 1`), which live as long as proxyd does. Never
                // spawn a worker from `spawn_blocking`, whose threads exit when idle. (The new
                // proxyd of an upgrade gets no such signal: it outlives the old one.)
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::other("proxyd exited while the worker started"));
                }
                Ok(())
            });
        }
        // Through the reaper, which must never wait for one of ours.
        let mut child = match super::reaper::spawn(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                ports.release(&addr);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot run {program:?}: {e}"),
                ));
            }
        };
        let pid = child.id().unwrap_or(0);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(relay(out, spec.upstream.clone(), id, "stdout", None));
        }
        let stderr = child.stderr.take().map(|err| {
            tokio::spawn(relay(
                err,
                spec.upstream.clone(),
                id,
                "stderr",
                Some(tail.clone()),
            ))
        });
        let (tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child
                .wait()
                .await
                .unwrap_or_else(|_| ExitStatus::from_raw(-1));
            super::reaper::forget(pid);
            // A crash's last lines explain it: let the relay read stderr to its end before
            // the exit is known, or the crash report can miss them. Bounded, as something the
            // worker started may hold the pipe open.
            if let Some(relay) = stderr {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, relay).await;
            }
            let _ = tx.send(Some(status));
        });
        tracing::info!(upstream = %spec.upstream, worker = id, pid, addr = %addr, "worker started");
        Ok(Process {
            id,
            pid,
            addr,
            exit,
            tail,
        })
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        // The waiting task is gone only if the runtime is shutting down.
        let status = match rx.wait_for(Option::is_some).await {
            Ok(s) => *s,
            Err(_) => None,
        };
        status.unwrap_or_else(|| ExitStatus::from_raw(-1))
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// The last lines the worker wrote to stderr.
    pub fn last_output(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Resident memory in bytes, from /proc.
    pub fn rss(&self) -> Option<u64> {
        rss(self.pid)
    }

    /// SIGTERM to the process group, SIGKILL after `kill_timeout`; returns once it exited.
    pub async fn stop(&self, kill_timeout: Duration, ports: &Ports) {
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(kill_timeout, self.exited())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = self.id,
                pid = self.pid,
                "worker ignored SIGTERM; SIGKILL"
            );
            self.signal(Signal::SIGKILL);
            self.exited().await;
        }
        // Leftovers of the group (a child the worker started) go too.
        self.signal(Signal::SIGKILL);
        ports.release(&self.addr);
        if let BackendAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Releases what a process that exited on its own held.
    pub fn reap(&self, ports: &Ports) {
        self.signal(Signal::SIGKILL);
        ports.release(&self.addr);
        if let BackendAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }

    fn signal(&self, sig: Signal) {
        if let Ok(pid) = i32::try_from(self.pid) {
            if pid > 0 {
                let _ = killpg(Pid::from_raw(pid), sig);
            }
        }
    }
}

/// The resident memory of process `pid` in bytes, from /proc.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Copies a worker's output into proxyd's log, line by line, with the worker's id.
async fn relay(
    stream: impl AsyncRead + Unpin,
    upstream: String,
    id: u64,
    which: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "proxyd::worker", upstream = %upstream, worker = id, stream = which, "{line}");
        if let Some(tail) = &tail {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// Describes an exit status for logs: "exit code 3" or "signal 9".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}
