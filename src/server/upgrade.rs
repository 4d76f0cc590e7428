//! The old side of a zero-downtime binary upgrade (SIGUSR2, `POST /upgrade`): one upgrade at a
//! time, with the running listeners' sockets and the config in force; `crate::upgrade` starts
//! the new binary and waits for it. Once it is ready, [`Upgrader::handed_over`] completes and
//! this proxyd stops accepting and drains.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::listeners::ListenerSet;
use super::reload::Reloader;
use crate::notify::Notifier;
use crate::upgrade::{launch, Launch, Role};

/// How a hand-over ended well.
#[derive(Debug, Clone, Copy)]
pub struct Handover {
    pub old_pid: u32,
    pub new_pid: u32,
}

/// Why there was no hand-over.
#[derive(Debug, Clone)]
pub enum UpgradeError {
    /// Another upgrade runs, the hand-over is done, or proxyd is stopping.
    Busy(String),
    /// The new binary did not start or did not get ready; the old process keeps serving.
    Failed(String),
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Busy(m) | UpgradeError::Failed(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Starting,
    HandedOver(u32),
    Stopping,
}

/// The old side of an upgrade: starts the new binary on the running listeners' sockets and
/// waits for it.
pub struct Upgrader {
    /// The config in force: which binary, its arguments, the time-out.
    reloader: Arc<Reloader>,
    /// The running listeners, whose sockets are handed over.
    listeners: Arc<ListenerSet>,
    /// The file this proxyd was started from.
    exe: Option<PathBuf>,
    /// The new process gets its socket; the old one tells systemd the new main pid.
    notifier: Notifier,
    /// The admin listener: its configured address and a descriptor of its socket.
    admin: Option<(SocketAddr, OwnedFd)>,
    phase: Mutex<Phase>,
    /// The new proxyd's pid, once it is ready.
    handed_over: watch::Sender<Option<u32>>,
    /// Set when proxyd is stopping: an upgrade under way is called off.
    cancel: watch::Sender<bool>,
}

impl Upgrader {
    /// `admin`: the admin listener's configured address and socket, when there is one.
    pub fn new(
        reloader: Arc<Reloader>,
        listeners: Arc<ListenerSet>,
        admin: Option<(SocketAddr, &std::net::TcpListener)>,
        notifier: Notifier,
    ) -> std::io::Result<Upgrader> {
        let admin = match admin {
            Some((configured, l)) => Some((configured, l.as_fd().try_clone_to_owned()?)),
            None => None,
        };
        Ok(Upgrader {
            reloader,
            listeners,
            exe: crate::upgrade::current_exe(),
            notifier,
            admin,
            phase: Mutex::new(Phase::Idle),
            handed_over: watch::channel(None).0,
            cancel: watch::channel(false).0,
        })
    }

    /// Completes once a new proxyd has taken over; returns its pid.
    pub async fn handed_over(&self) -> u32 {
        let mut rx = self.handed_over.subscribe();
        let pid = match rx.wait_for(Option::is_some).await {
            Ok(pid) => *pid,
            // The sender lives in self: not dropped while we borrow it.
            Err(_) => None,
        };
        match pid {
            Some(pid) => pid,
            None => std::future::pending().await,
        }
    }

    /// Whether a new proxyd has taken over.
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.borrow().is_some()
    }

    /// proxyd is stopping: an upgrade under way is called off (its child killed) and no
    /// new one starts.
    pub fn stop(&self) {
        let mut phase = self.lock();
        if !matches!(*phase, Phase::HandedOver(_)) {
            *phase = Phase::Stopping;
        }
        drop(phase);
        self.cancel.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the new binary and waits until it is ready (then this process drains and exits)
    /// or has failed (then this process keeps serving). Logs the outcome either way.
    pub async fn upgrade(&self) -> Result<Handover, UpgradeError> {
        {
            let mut phase = self.lock();
            let busy = match *phase {
                Phase::Idle => None,
                Phase::Starting => Some("an upgrade is already under way".to_string()),
                Phase::HandedOver(pid) => Some(format!(
                    "already handed over to proxyd pid {pid}; this one is draining"
                )),
                Phase::Stopping => Some("proxyd is stopping".to_string()),
            };
            if let Some(why) = busy {
                tracing::warn!("upgrade refused: {why}");
                return Err(UpgradeError::Busy(why));
            }
            *phase = Phase::Starting;
        }
        let result = self.run_upgrade().await;
        let mut phase = self.lock();
        match &result {
            Ok(h) => {
                *phase = Phase::HandedOver(h.new_pid);
                drop(phase);
                tracing::info!(
                    new_pid = h.new_pid,
                    "upgrade: the new proxyd is ready and serving; this one stops accepting, drains and exits"
                );
                self.handed_over.send_replace(Some(h.new_pid));
            }
            Err(e) => {
                if *phase == Phase::Starting {
                    *phase = Phase::Idle;
                }
                tracing::error!("upgrade failed, this proxyd keeps serving: {e}");
            }
        }
        result
    }

    async fn run_upgrade(&self) -> Result<Handover, UpgradeError> {
        let failed = UpgradeError::Failed;
        let current = self.reloader.current();
        let binary = current
            .config
            .upgrade
            .binary_path(&current.dir)
            .or_else(|| self.exe.clone())
            .ok_or_else(|| {
                failed(
                    "cannot tell which file this proxyd was started from: set upgrade.binary"
                        .into(),
                )
            })?;
        // Held until the child has its own copies (launch returns).
        let sockets = self.listeners.sockets();
        let mut inherit: Vec<(Role, SocketAddr, RawFd)> = sockets
            .iter()
            .map(|(configured, l)| (Role::Listen, *configured, l.as_raw_fd()))
            .collect();
        if let Some((configured, fd)) = &self.admin {
            inherit.push((Role::Admin, *configured, fd.as_raw_fd()));
        }
        let how = Launch {
            binary,
            args: match &current.args {
                Some(args) => args.clone(),
                None => vec!["-c".into(), current.file.clone().into()],
            },
            inherit,
            timeout: current.config.upgrade.timeout,
        };
        let new_pid = launch(how, &self.notifier, self.cancel.subscribe())
            .await
            .map_err(failed)?;
        drop(sockets);
        Ok(Handover {
            old_pid: std::process::id(),
            new_pid,
        })
    }
}
