//! The worker supervisor: for each upstream with a `workers:` block, N slots that each keep one
//! app process running (`slot`), the processes themselves (`process`) and their readiness and
//! health probes (`probe`). Rolling restarts and shutdown go through here.

pub mod probe;
pub mod process;
pub mod slot;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, Loaded};
use crate::proxy::Snapshot;
use process::Spec;
use slot::{Command, Group};

/// The supervised workers of every upstream that has them.
pub struct Supervisors {
    groups: Vec<GroupHandle>,
    /// Unix sockets of `listen: unix` workers live here; removed when proxyd stops.
    _socket_dir: Option<tempfile::TempDir>,
}

struct GroupHandle {
    name: String,
    group: Arc<Group>,
    slots: Vec<mpsc::Sender<Command>>,
}

impl Supervisors {
    /// Starts `count` slots for each workers upstream of `snapshot`. Workers join their
    /// upstream's rotation as they become ready.
    pub fn start(loaded: &Loaded, snapshot: &Snapshot) -> Result<Supervisors, ConfigError> {
        let cfg = &loaded.config;
        let fail = |m: String| ConfigError::new(&loaded.file, None, m);
        let needs_sockets = cfg.upstreams.values().any(|u| {
            u.workers
                .as_ref()
                .is_some_and(|w| w.listen == crate::config::WorkerListen::Unix)
        });
        let socket_dir = if needs_sockets {
            Some(
                tempfile::Builder::new()
                    .prefix("proxyd-workers-")
                    .tempdir()
                    .map_err(|e| {
                        fail(format!("cannot create a directory for worker sockets: {e}"))
                    })?,
            )
        } else {
            None
        };
        let mut groups = Vec::new();
        for upstream in &snapshot.upstreams {
            let Some(w) = cfg
                .upstreams
                .get(&upstream.name)
                .and_then(|u| u.workers.as_ref())
            else {
                continue;
            };
            let (uid, gid) = user_and_group(w).map_err(fail)?;
            let spec = Spec {
                upstream: upstream.name.clone(),
                command: w.command.value.clone(),
                env: w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                cwd: w.cwd.as_ref().map(|c| loaded.dir.join(&c.value)),
                uid,
                gid,
                listen: w.listen,
                socket_dir: socket_dir
                    .as_ref()
                    .map_or_else(PathBuf::new, |d| d.path().to_path_buf()),
            };
            let group = Arc::new(Group::new(upstream.clone(), spec, w.clone()));
            let slots = (0..w.count())
                .map(|i| {
                    let (tx, rx) = mpsc::channel(4);
                    tokio::spawn(slot::run(group.clone(), i, rx));
                    tx
                })
                .collect();
            tracing::info!(upstream = %upstream.name, count = w.count(), "starting workers");
            groups.push(GroupHandle {
                name: upstream.name.clone(),
                group,
                slots,
            });
        }
        Ok(Supervisors {
            groups,
            _socket_dir: socket_dir,
        })
    }

    /// Replaces the workers of `upstream` (all upstreams when None) one at a time, each
    /// replacement ready before its predecessor drains. Err names an unknown upstream.
    pub async fn rolling_restart(&self, upstream: Option<&str>) -> Result<(), String> {
        let groups: Vec<&GroupHandle> = self
            .groups
            .iter()
            .filter(|g| upstream.is_none_or(|u| u == g.name))
            .collect();
        if let (Some(name), true) = (upstream, groups.is_empty()) {
            return Err(format!("no upstream with workers named {name:?}"));
        }
        for g in groups {
            tracing::info!(upstream = %g.name, "rolling restart");
            for slot in &g.slots {
                let (done, wait) = oneshot::channel();
                if slot.send(Command::Replace { done }).await.is_ok() {
                    let _ = wait.await;
                }
            }
        }
        Ok(())
    }

    /// Every supervised upstream: its name and its group (workers now, restarts by reason,
    /// failure).
    pub fn groups(&self) -> impl Iterator<Item = (&str, &Group)> {
        self.groups.iter().map(|g| (g.name.as_str(), &*g.group))
    }

    /// Upstreams whose workers keep failing, with why.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.groups
            .iter()
            .filter_map(|g| g.group.failure().map(|f| (g.name.clone(), f)))
            .collect()
    }

    /// Drains and stops every worker (TERM, kill_timeout, KILL).
    pub async fn shutdown(&self) {
        let mut waits = Vec::new();
        for g in &self.groups {
            g.group.set_stopping();
            for slot in &g.slots {
                let (done, wait) = oneshot::channel();
                if slot.send(Command::Shutdown { done }).await.is_ok() {
                    waits.push(wait);
                }
            }
        }
        for w in waits {
            let _ = w.await;
        }
        for g in &self.groups {
            g.group.wait_leaving().await;
        }
    }
}

fn user_and_group(w: &crate::config::Workers) -> Result<(Option<u32>, Option<u32>), String> {
    use nix::unistd::{Group, User};
    let user = match &w.user {
        Some(name) => Some(
            User::from_name(&name.value)
                .ok()
                .flatten()
                .ok_or_else(|| format!("no user {:?}", name.value))?,
        ),
        None => None,
    };
    let gid = match &w.group {
        Some(name) => Some(
            Group::from_name(&name.value)
                .ok()
                .flatten()
                .ok_or_else(|| format!("no group {:?}", name.value))?
                .gid
                .as_raw(),
        ),
        None => user.as_ref().map(|u| u.gid.as_raw()),
    };
    Ok((user.map(|u| u.uid.as_raw()), gid))
}
