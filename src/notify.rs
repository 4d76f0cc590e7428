//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units.
//!
//! systemd passes the address of a unix datagram socket in `NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`); the service sends newline-separated `KEY=VALUE`
//! states to it. proxyd sends:
//!
//! - `READY=1` once its listeners are bound (connections queue in the kernel from then on);
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a SIGHUP reload starts, then `READY=1` (and a
//!   `STATUS=` line saying how it went) when it is over;
//! - `STOPPING=1` when SIGTERM or SIGINT starts the drain.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or not `Type=notify`) every call does nothing.
//! A failed send is logged and otherwise ignored: the protocol is advisory, and proxyd keeps
//! serving whatever systemd makes of it.
//!
//! [`Notifier::from_env`] also removes `NOTIFY_SOCKET` from proxyd's environment, so that
//! the workers it launches do not inherit it and talk to systemd in its name (what
//! `sd_notify(unset_environment=1, ...)` does).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where the states go: a socket file, or a name in the abstract namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Sends states to systemd's notification socket, when there is one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Target>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and removes it from the environment. Call it first thing in
    /// `main`, before any thread starts (changing the environment is not thread-safe).
    pub fn from_env() -> Notifier {
        let value = std::env::var_os(NOTIFY_SOCKET);
        if value.is_some() {
            std::env::remove_var(NOTIFY_SOCKET);
        }
        match value {
            Some(v) => Notifier::from_socket(&v).unwrap_or_else(|e| {
                // Logging is not set up yet this early in main.
                eprintln!("proxyd: ignoring {NOTIFY_SOCKET}: {e}");
                Notifier::disabled()
            }),
            None => Notifier::disabled(),
        }
    }

    /// A notifier for `value` as systemd writes it: an absolute path, or `@name` for an
    /// abstract socket. Anything else is refused.
    pub fn from_socket(value: &OsStr) -> Result<Notifier, String> {
        let bytes = value.as_bytes();
        let target = match bytes.first() {
            Some(b'/') => Target::Path(PathBuf::from(OsString::from(value))),
            Some(b'@') if bytes.len() > 1 => Target::Abstract(bytes[1..].to_vec()),
            _ => {
                return Err(format!(
                    "{value:?} is neither an absolute path nor an @abstract socket name"
                ))
            }
        };
        Ok(Notifier {
            target: Some(target),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// The socket as `NOTIFY_SOCKET` names it, to hand to a process that may notify in
    /// proxyd's stead (the new proxyd of an upgrade).
    pub fn socket_env(&self) -> Option<OsString> {
        match self.target.as_ref()? {
            Target::Path(p) => Some(p.clone().into_os_string()),
            Target::Abstract(name) => {
                let mut v = b"@".to_vec();
                v.extend_from_slice(name);
                Some(OsString::from(OsStr::from_bytes(&v)))
            }
        }
    }

    /// Whether there is a socket to notify.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (one or more `KEY=VALUE` lines) as one datagram. `Ok(false)` when
    /// there is no socket to send to.
    pub fn send(&self, state: &str) -> io::Result<bool> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let sock = UnixDatagram::unbound()?;
        let sent = match target {
            Target::Path(path) => sock.send_to(state.as_bytes(), path)?,
            Target::Abstract(name) => send_abstract(&sock, name, state.as_bytes())?,
        };
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", state.len()),
            ));
        }
        Ok(true)
    }

    /// Sends `state`, logging (not returning) a failure.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!("cannot notify systemd ({NOTIFY_SOCKET}) of {state:?}: {e}");
        }
    }

    /// `READY=1`: the listeners are up.
    pub fn ready(&self) {
        self.notify("READY=1");
    }

    /// `READY=1` with a status line (after a reload).
    pub fn ready_with_status(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` and the monotonic clock, as `Type=notify-reload` requires.
    pub fn reloading(&self) {
        let state = match monotonic_usec() {
            Some(usec) => format!("RELOADING=1\nMONOTONIC_USEC={usec}"),
            None => "RELOADING=1".to_string(),
        };
        self.notify(&state);
    }

    /// `STOPPING=1`: the drain has begun.
    pub fn stopping(&self) {
        self.notify("STOPPING=1");
    }
}

/// A status line must not break the `KEY=VALUE` framing.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], data: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(data, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_sock: &UnixDatagram, _name: &[u8], _data: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist on Linux only",
    ))
}

/// CLOCK_MONOTONIC in microseconds (what systemd compares `MONOTONIC_USEC` against).
pub fn monotonic_usec() -> Option<u64> {
    use nix::libc;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    secs.checked_mul(1_000_000)?.checked_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_socket(path.as_os_str()).unwrap();
        assert!(n.enabled());
        n.ready();
        assert_eq!(recv(&server), "READY=1");
        n.stopping();
        assert_eq!(recv(&server), "STOPPING=1");
        n.ready_with_status("reloaded\nfine");
        assert_eq!(recv(&server), "READY=1\nSTATUS=reloaded fine");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let before = monotonic_usec().unwrap();
        Notifier::from_socket(path.as_os_str()).unwrap().reloading();
        let got = recv(&server);
        let after = monotonic_usec().unwrap();
        let mut lines = got.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {got:?}"))
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "proxyd-notify-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_socket(OsStr::new(&format!("@{name}"))).unwrap();
        n.ready();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn hands_on_the_socket_as_systemd_wrote_it() {
        for value in ["/run/systemd/notify", "@abstract-name"] {
            let n = Notifier::from_socket(OsStr::new(value)).unwrap();
            assert_eq!(n.socket_env().as_deref(), Some(OsStr::new(value)));
        }
        assert_eq!(Notifier::disabled().socket_env(), None);
    }

    #[test]
    fn refuses_what_systemd_would_not_write() {
        for bad in ["", "@", "relative/notify.sock"] {
            assert!(Notifier::from_socket(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        assert!(!n.send("READY=1").unwrap());
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::from_socket(dir.path().join("gone.sock").as_os_str()).unwrap();
        assert!(n.send("READY=1").is_err());
        n.ready(); // logged, not fatal
    }
}
