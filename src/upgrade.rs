//! Zero-downtime binary upgrade, nginx-style: SIGUSR2, `POST /upgrade` on the admin listener
//! or `proxyd upgrade -c FILE` makes the running proxyd start a new proxyd binary as its
//! child, handing it the listening sockets.
//!
//! The old process (`server::upgrade::Upgrader`, which calls [`launch`]):
//!
//! 1. runs the binary (`upgrade.binary`, else the file it was started from, as that path is
//!    on disk now: the build installed over it) with `-c <its config file>`, in a session of
//!    its own (`setsid`: it is not in the old process group, so nothing sent to that group
//!    reaches it, and it gets no parent-death signal: it outlives the old process). Each
//!    listening socket (proxy listeners and the admin listener) is kept open across `exec`
//!    in the child only (FD_CLOEXEC cleared between fork and exec, so no worker started in
//!    the meantime inherits one) and named in [`INHERIT_FDS`]: `listen/127.0.0.1:8080=5,
//!    admin/127.0.0.1:9901=6`, the address as configured (port 0 stays 0) and the fd. The
//!    write end of a pipe goes in [`READY_FD`]; `NOTIFY_SOCKET` is passed on too;
//! 2. keeps serving meanwhile, and waits for `ready <pid>` on that pipe;
//! 3. if the child exits first (the pipe closes), is not ready within `upgrade.timeout`, or
//!    proxyd is stopped meanwhile, kills the child by its pid (SIGKILL: it has accepted no
//!    connection yet; its workers die with it) and logs why; nothing else changes;
//! 4. once the child is ready, tells systemd `MAINPID=<child>`, stops accepting, answers the
//!    requests of its open connections with `Connection: close` for a short while (so busy
//!    keep-alive clients move over without racing a close), closes the idle ones, drains the
//!    rest (`timeouts.shutdown_grace`), stops its own workers and exits 0.
//!
//! The new process ([`Inherited`], read first thing in `main`): takes each configured
//! listener from the inherited socket with the same role and configured address (new
//! addresses are bound afresh; inherited sockets the new config does not have are closed),
//! starts its own workers and waits until all of them are ready, and only then accepts
//! (so a new process that fails serves nobody), sends systemd `MAINPID=<its pid>` and
//! `READY=1`, writes the `pid_file`, and writes `ready <pid>` to the pipe.
//!
//! Until the old process stops accepting, both accept on the same sockets (the kernel hands
//! each connection to one of them); connections waiting in a socket's queue are not lost
//! when the old process closes its descriptor, since the socket stays open in the new one.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::notify::Notifier;

/// The listening sockets a new proxyd inherits: `role/configured-address=fd`, comma-separated.
pub const INHERIT_FDS: &str = "PROXYD_INHERIT_FDS";
/// The write end of the pipe on which a new proxyd says `ready <pid>`.
pub const READY_FD: &str = "PROXYD_UPGRADE_READY_FD";

/// How long an old process answers its open connections' requests with `Connection: close`
/// after the hand-over before closing the idle ones (capped by `timeouts.shutdown_grace`).
/// Keep-alive clients that send within it move to the new process without racing a close.
pub const CLOSE_WINDOW: Duration = Duration::from_secs(1);

/// What an inherited socket was in the old process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A proxy listener (`listen:`).
    Listen,
    /// The admin listener.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Listen => "listen",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "listen" => Some(Role::Listen),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

struct InheritedSocket {
    role: Role,
    configured: SocketAddr,
    fd: Option<OwnedFd>,
}

/// What a proxyd started by an upgrade got from the old one: listening sockets and the pipe
/// to say it is ready on. Empty for a proxyd started any other way.
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<InheritedSocket>,
    ready: Option<OwnedFd>,
    /// The old proxyd (this one's parent at start).
    parent: u32,
}

impl Inherited {
    /// Nothing inherited.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// Takes the sockets and the ready pipe named in [`INHERIT_FDS`] and [`READY_FD`] and
    /// removes both from the environment (the workers must not see them). Each descriptor is
    /// marked close-on-exec again, so no worker inherits it. Call it first thing in `main`,
    /// while proxyd is one thread.
    pub fn from_env() -> Result<Inherited, String> {
        let sockets = std::env::var_os(INHERIT_FDS);
        let ready = std::env::var_os(READY_FD);
        std::env::remove_var(INHERIT_FDS);
        std::env::remove_var(READY_FD);
        let mut out = Inherited::none();
        let mut seen: Vec<RawFd> = Vec::new();
        if let Some(spec) = sockets {
            let spec = spec
                .into_string()
                .map_err(|v| format!("{INHERIT_FDS}: not UTF-8: {v:?}"))?;
            for (role, configured, fd) in parse_spec(&spec)? {
                out.sockets.push(InheritedSocket {
                    role,
                    configured,
                    fd: Some(claim(fd, &mut seen)?),
                });
            }
        }
        if let Some(fd) = ready {
            let fd = fd
                .to_str()
                .and_then(|s| s.parse::<RawFd>().ok())
                .ok_or_else(|| format!("{READY_FD}: expected a file descriptor, got {fd:?}"))?;
            out.ready = Some(claim(fd, &mut seen)?);
            out.parent = std::os::unix::process::parent_id();
        }
        Ok(out)
    }

    /// Started by an upgrade: an old proxyd waits to hear that this one is ready.
    pub fn is_upgrade(&self) -> bool {
        self.ready.is_some()
    }

    /// The old proxyd's pid (0 when this is not an upgrade).
    pub fn parent(&self) -> u32 {
        self.parent
    }

    /// The inherited listening socket with this role and configured address (the first one
    /// not taken yet), non-blocking. None when there is none.
    pub fn take(
        &mut self,
        role: Role,
        configured: SocketAddr,
    ) -> Option<io::Result<std::net::TcpListener>> {
        let s = self
            .sockets
            .iter_mut()
            .find(|s| s.role == role && s.configured == configured && s.fd.is_some())?;
        let fd = s.fd.take()?;
        Some(listener_from(fd).inspect(|l| {
            tracing::info!(
                addr = ?l.local_addr().ok(),
                configured = %configured,
                role = role.name(),
                "took over a socket of the old proxyd"
            )
        }))
    }

    /// Closes the inherited sockets the config does not use.
    pub fn close_unused(&mut self) {
        for s in &mut self.sockets {
            if let Some(fd) = s.fd.take() {
                tracing::info!(
                    configured = %s.configured,
                    role = s.role.name(),
                    "inherited socket not in the config; closed"
                );
                drop(fd);
            }
        }
    }

    /// Tells the old proxyd this one is ready (it then stops accepting and drains).
    pub fn announce_ready(&mut self) -> io::Result<()> {
        let Some(fd) = self.ready.take() else {
            return Ok(());
        };
        let mut pipe = std::fs::File::from(fd);
        pipe.write_all(format!("ready {}\n", std::process::id()).as_bytes())
    }
}

/// `listen/127.0.0.1:0=5,admin/[::1]:9901=6` as (role, configured address, fd).
fn parse_spec(spec: &str) -> Result<Vec<(Role, SocketAddr, RawFd)>, String> {
    let bad = |item: &str, why: &str| format!("{INHERIT_FDS}: {item:?}: {why}");
    let mut out = Vec::new();
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (key, fd) = item
            .rsplit_once('=')
            .ok_or_else(|| bad(item, "expected role/address=fd"))?;
        let (role, addr) = key
            .split_once('/')
            .ok_or_else(|| bad(item, "expected role/address=fd"))?;
        let role = Role::parse(role).ok_or_else(|| bad(item, "role is not listen or admin"))?;
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|e| bad(item, &format!("address: {e}")))?;
        let fd = fd
            .parse::<RawFd>()
            .map_err(|e| bad(item, &format!("fd: {e}")))?;
        out.push((role, addr, fd));
    }
    Ok(out)
}

/// Takes ownership of inherited descriptor `fd` after checking that it is open, above
/// stdio and not claimed twice, and marks it close-on-exec.
fn claim(fd: RawFd, seen: &mut Vec<RawFd>) -> Result<OwnedFd, String> {
    if fd <= 2 || seen.contains(&fd) {
        return Err(format!(
            "inherited file descriptor {fd} is stdio or named twice"
        ));
    }
    // SAFETY: `fd` is only borrowed for these two calls, and fcntl on a number that is not
    // an open descriptor fails with EBADF instead of touching anything.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)
        .map_err(|e| format!("inherited file descriptor {fd} is not open: {e}"))?;
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("inherited file descriptor {fd}: {e}"))?;
    seen.push(fd);
    // SAFETY: the old proxyd opened this descriptor for this process alone (it was named in
    // the environment it gave us, which we removed), it is open (checked above), and it is
    // claimed once (`seen`): nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening TCP socket from an inherited descriptor.
fn listener_from(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::from(fd);
    if socket.r#type()? != socket2::Type::STREAM || socket.local_addr()?.as_socket().is_none() {
        return Err(io::Error::other("not a TCP socket"));
    }
    // Already listening: this only sets the backlog again (and fails on anything else).
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How the new proxyd is started: its binary and arguments, the sockets it inherits and how
/// long it has to get ready.
pub struct Launch {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// (role, configured address, descriptor): held open by the caller until `launch` returns.
    pub inherit: Vec<(Role, SocketAddr, RawFd)>,
    pub timeout: Duration,
}

/// Runs the new proxyd and waits until it says it is ready: Ok(its pid), after telling
/// systemd it is the main process now. Err with why when it exits first, is not ready within
/// `timeout`, or `cancel` turns true meanwhile; the child is then killed and reaped.
pub async fn launch(
    how: Launch,
    notifier: &Notifier,
    mut cancel: watch::Receiver<bool>,
) -> Result<u32, String> {
    let Launch {
        binary,
        args,
        inherit,
        timeout,
    } = how;
    let (ready_rx, ready_tx) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))?;
    tracing::info!(binary = %binary.display(), "upgrade: starting the new proxyd");
    let spawned = spawn(
        &binary,
        &args,
        &inherit,
        ready_tx.as_raw_fd(),
        notifier.socket_env(),
    );
    // Our copy of the write end: the pipe reads as closed once the child's copy is gone.
    drop(ready_tx);
    let mut child = spawned.map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(
        pid,
        "upgrade: the new proxyd started; waiting until it is ready"
    );
    let outcome = tokio::select! {
        r = read_ready(ready_rx) => match r {
            Ok(Some(new_pid)) => Ok(new_pid),
            Ok(None) => Err(None),
            Err(e) => Err(Some(format!("reading its ready pipe: {e}"))),
        },
        _ = tokio::time::sleep(timeout) => Err(Some(format!(
            "it was not ready within upgrade.timeout ({})",
            humantime::format_duration(timeout)
        ))),
        _ = cancel.wait_for(|c| *c) => Err(Some("proxyd is stopping".to_string())),
    };
    let who = format!("the new proxyd (pid {pid}, {})", binary.display());
    match outcome {
        Ok(new_pid) if !*cancel.borrow() => {
            // Before this process exits: systemd follows the new main process (NotifyAccess=
            // main accepts this from us; the new process has said the same itself).
            notifier.notify(&format!("MAINPID={new_pid}"));
            Ok(new_pid)
        }
        Ok(new_pid) => {
            // Ready as proxyd began to stop: it serves already, so it drains too.
            tracing::warn!(
                new_pid,
                "{who} got ready as proxyd was stopping; SIGTERM to it"
            );
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            reap(&mut child, Duration::from_secs(5)).await;
            Err(format!("{who}: called off, proxyd is stopping"))
        }
        Err(None) => {
            // The pipe closed: the child exited (or closed it) without saying it was ready.
            let status = reap(&mut child, Duration::from_secs(5)).await;
            Err(format!(
                "{who} exited before it was ready ({}); its log lines above say why",
                status.map_or(
                    "still running; killed".into(),
                    crate::workers::process::describe
                )
            ))
        }
        Err(Some(why)) => {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            let status = reap(&mut child, Duration::from_secs(5)).await;
            Err(format!(
                "{who}: {why}; killed it ({})",
                status.map_or("not reaped".into(), crate::workers::process::describe)
            ))
        }
    }
}

/// Starts `binary args` (`-c FILE`, or the flags that made the config) with `inherit` and the
/// ready pipe's write end kept open across exec, in a session of its own.
fn spawn(
    binary: &Path,
    args: &[OsString],
    inherit: &[(Role, SocketAddr, RawFd)],
    ready: RawFd,
    notify_socket: Option<OsString>,
) -> io::Result<tokio::process::Child> {
    let spec: Vec<String> = inherit
        .iter()
        .map(|(role, addr, fd)| format!("{}/{addr}={fd}", role.name()))
        .collect();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(args)
        .env(INHERIT_FDS, spec.join(","))
        .env(READY_FD, ready.to_string())
        .stdin(Stdio::null());
    if let Some(socket) = notify_socket {
        cmd.env(crate::notify::NOTIFY_SOCKET, socket);
    }
    let keep: Vec<RawFd> = inherit
        .iter()
        .map(|(_, _, fd)| *fd)
        .chain([ready])
        .collect();
    // SAFETY: the closure runs in the child between fork and exec, so it must only make
    // async-signal-safe system calls and not allocate: it iterates a Vec made before the
    // fork and calls fcntl and setsid. The descriptors are open: the caller holds them
    // until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &keep {
                let borrowed = std::os::fd::BorrowedFd::borrow_raw(*fd);
                // Kept across exec in this child only; the parent's copies stay
                // close-on-exec, so workers started meanwhile do not get them.
                fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
            }
            // A session (and process group) of its own: a signal to the old proxyd's group
            // or a hang-up of its terminal does not reach the new proxyd.
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    // Through the reaper, which leaves this child's exit status to us.
    crate::workers::reaper::spawn(&mut cmd)
}

/// Reads `ready <pid>` from the pipe: Some(pid), or None when it closed without it.
async fn read_ready(fd: OwnedFd) -> io::Result<Option<u32>> {
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&got[..end]);
            return match line.strip_prefix("ready ").map(|p| p.trim().parse::<u32>()) {
                Some(Ok(pid)) => Ok(Some(pid)),
                _ => Err(io::Error::other(format!("unexpected message {line:?}"))),
            };
        }
        if got.len() > 256 {
            return Err(io::Error::other("unexpected message"));
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }
}

/// Waits for the child to exit (up to `patience`, then SIGKILL and wait again).
async fn reap(child: &mut tokio::process::Child, patience: Duration) -> Option<ExitStatus> {
    let pid = child.id();
    let status = match tokio::time::timeout(patience, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    };
    if let (Some(pid), Some(_)) = (pid, status) {
        crate::workers::reaper::forget(pid);
    }
    status
}

/// The file this process was started from, by the path it had then.
pub fn current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // Linux names a replaced (unlinked) file "PATH (deleted)".
    let text = exe.to_str()?;
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

/// Writes this process's pid to `path` (via a temporary file and a rename, so a reader never
/// sees half of it).
pub fn write_pid_file(path: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("pid_file names no file"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{pid}.tmp"));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes `path` if it still names this process (after an upgrade it names the new one).
pub fn remove_pid_file(path: &Path) {
    if read_pid_file(path).ok() == Some(std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid in `path`.
pub fn read_pid_file(path: &Path) -> Result<u32, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| format!("cannot read the pid file {}: {e}", path.display()))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("{} holds no pid: {:?}", path.display(), text.trim()))
}

/// Sends `sig` to the proxyd whose pid is in `pid_file`; its pid.
pub fn signal_pid_file(pid_file: &Path, sig: nix::sys::signal::Signal) -> Result<u32, String> {
    let pid = read_pid_file(pid_file)?;
    let raw = i32::try_from(pid).map_err(|e| e.to_string())?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig).map_err(|e| {
        format!(
            "cannot signal proxyd pid {pid} (from {}): {e}",
            pid_file.display()
        )
    })?;
    Ok(pid)
}

/// `proxyd upgrade` without an admin API: SIGUSR2 to the pid in `pid_file`, then waits
/// (up to `patience`) until the file names a new live process.
pub fn signal_by_pid_file(pid_file: &Path, patience: Duration) -> Result<String, String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let old = signal_pid_file(pid_file, Signal::SIGUSR2)?;
    let old_pid = Pid::from_raw(i32::try_from(old).map_err(|e| e.to_string())?);
    let deadline = std::time::Instant::now() + patience;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(new) = read_pid_file(pid_file) {
            let alive = i32::try_from(new).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok());
            if new != old && alive {
                return Ok(format!(
                    "upgraded: proxyd pid {new} serves now; pid {old} drains its connections and exits\n"
                ));
            }
        }
        if kill(old_pid, None).is_err() {
            return Err(format!(
                "proxyd pid {old} exited and no new proxyd wrote {}",
                pid_file.display()
            ));
        }
    }
    Err(format!(
        "no new proxyd took over from pid {old} within {}: see its log (it keeps serving when the new binary fails)",
        humantime::format_duration(patience)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parses_the_inherited_sockets() {
        let got = parse_spec("listen/127.0.0.1:0=5,admin/[::1]:9901=6").unwrap();
        assert_eq!(
            got,
            vec![
                (Role::Listen, "127.0.0.1:0".parse().unwrap(), 5),
                (Role::Admin, "[::1]:9901".parse().unwrap(), 6)
            ]
        );
        assert!(parse_spec("").unwrap().is_empty());
        for bad in [
            "listen/127.0.0.1:0",
            "x/127.0.0.1:0=5",
            "listen/nope=5",
            "listen/127.0.0.1:1=x",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_stdio_closed_and_repeated_descriptors() {
        let mut seen = Vec::new();
        assert!(claim(1, &mut seen).is_err());
        assert!(claim(987_654, &mut seen).is_err());
        // A pipe made without O_CLOEXEC, as an inherited descriptor arrives.
        let (r, w) = nix::unistd::pipe().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(r);
        let owned = claim(fd, &mut seen).unwrap();
        assert!(claim(fd, &mut seen).is_err());
        let flags = fcntl(owned.as_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        drop(w);
    }

    #[test]
    fn pid_files_are_written_and_removed_only_by_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxyd.pid");
        write_pid_file(&path).unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), std::process::id());
        std::fs::write(&path, "1234567\n").unwrap();
        remove_pid_file(&path);
        assert!(path.exists(), "removed another process's pid file");
        write_pid_file(&path).unwrap();
        remove_pid_file(&path);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
