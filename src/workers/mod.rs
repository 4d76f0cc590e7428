//! The worker supervisor: for each upstream with a `workers:` block, N slots that each keep one
//! app process running (`slot`; its readiness and health probes are `upstream::health`'s),
//! the processes themselves (`process`), and — when `count` is a range — the scaler that adds and retires
//! slots by load (`scale`). Rolling restarts and shutdown go through here. `reaper` reaps the
//! orphans workers leave behind (proxyd as PID 1 or a child subreaper).

pub mod process;
pub mod reaper;
pub mod scale;
pub mod slot;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ConfigError, Loaded};
use crate::state::Snapshot;
use process::Spec;
use slot::{Command, Group, SlotHandle};

/// The supervised workers of every upstream that has them.
pub struct Supervisors {
    /// Replaced as a whole by a config reload; a clone is taken to work on.
    groups: std::sync::Mutex<Vec<Arc<GroupHandle>>>,
    /// Unix sockets of `listen: unix` workers live here; removed when proxyd stops.
    _socket_dir: Option<tempfile::TempDir>,
}

pub struct GroupHandle {
    name: String,
    pub group: Arc<Group>,
    slots: std::sync::Mutex<Slots>,
    /// One change to the set of workers at a time: a scaling decision or a rolling restart.
    changing: tokio::sync::Mutex<()>,
}

/// The slots that make up a group's worker count now.
struct Slots {
    active: Vec<SlotHandle>,
    /// Stopping: no slot may be added any more.
    closed: bool,
}

impl GroupHandle {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The senders of the slots now.
    fn senders(&self) -> Vec<mpsc::Sender<Command>> {
        self.slots().active.iter().map(|s| s.tx.clone()).collect()
    }

    /// Adds a slot (None once the group is stopping); `first` hears whether its worker got
    /// ready.
    fn add_slot(&self, first: Option<oneshot::Sender<bool>>) -> Option<usize> {
        let mut slots = self.slots();
        if slots.closed {
            return None;
        }
        let slot = self.group.spawn_slot(first);
        let index = slot.index;
        slots.active.push(slot);
        self.group
            .desired
            .store(slots.active.len(), std::sync::atomic::Ordering::Release);
        Some(index)
    }

    /// Takes slot `index` out of the group: its worker leaves the rotation at once, finishes
    /// its in-flight requests (up to graceful_timeout) and is stopped, in the background
    /// (shutdown waits for it).
    fn retire_slot(&self, index: usize) -> bool {
        let slot = {
            let mut slots = self.slots();
            let Some(i) = slots.active.iter().position(|s| s.index == index) else {
                return false;
            };
            let slot = slots.active.remove(i);
            self.group
                .desired
                .store(slots.active.len(), std::sync::atomic::Ordering::Release);
            slot
        };
        let (done, wait) = oneshot::channel();
        self.group.in_background(async move {
            if slot.tx.send(Command::Shutdown { done }).await.is_ok() {
                let _ = wait.await;
            }
        });
        true
    }

    /// The slot numbers in the group now.
    fn slot_indices(&self) -> Vec<usize> {
        self.slots().active.iter().map(|s| s.index).collect()
    }

    /// Closes the group to new slots and returns the senders of the slots it has.
    fn close(&self) -> Vec<mpsc::Sender<Command>> {
        let mut slots = self.slots();
        slots.closed = true;
        slots.active.iter().map(|s| s.tx.clone()).collect()
    }
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
        let supervisors = Supervisors {
            groups: std::sync::Mutex::new(Vec::new()),
            _socket_dir: socket_dir,
        };
        let mut groups = Vec::new();
        for upstream in &snapshot.upstreams {
            if let Some(g) = supervisors.start_group(loaded, upstream)? {
                groups.push(g);
            }
        }
        *supervisors.lock() = groups;
        Ok(supervisors)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<GroupHandle>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all(&self) -> Vec<Arc<GroupHandle>> {
        self.lock().clone()
    }

    /// Starts the workers of `upstream` if its config has a `workers:` block (None if not).
    /// They join the upstream's rotation as they become ready.
    pub fn start_group(
        &self,
        loaded: &Loaded,
        upstream: &Arc<crate::upstream::Upstream>,
    ) -> Result<Option<Arc<GroupHandle>>, ConfigError> {
        let fail = |m: String| ConfigError::new(&loaded.file, None, m);
        let Some(w) = loaded
            .config
            .upstreams
            .get(&*upstream.name)
            .and_then(|u| u.workers.as_ref())
        else {
            return Ok(None);
        };
        if w.listen == crate::config::WorkerListen::Unix && self._socket_dir.is_none() {
            return Err(fail(format!(
                "upstreams.{}: unix-socket workers added by a reload need a restart",
                upstream.name
            )));
        }
        let (uid, gid) = user_and_group(w).map_err(fail)?;
        let spec = Spec {
            upstream: upstream.name.to_string(),
            command: w.command.value.clone(),
            env: w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: w.cwd.as_ref().map(|c| loaded.dir.join(&c.value)),
            uid,
            gid,
            listen: w.listen,
            socket_dir: self
                ._socket_dir
                .as_ref()
                .map_or_else(PathBuf::new, |d| d.path().to_path_buf()),
        };
        let group = Arc::new(Group::new(upstream.clone(), spec, w.clone()));
        let handle = Arc::new(GroupHandle {
            name: upstream.name.to_string(),
            group,
            slots: std::sync::Mutex::new(Slots {
                active: Vec::new(),
                closed: false,
            }),
            changing: tokio::sync::Mutex::new(()),
        });
        for _ in 0..w.count() {
            handle.add_slot(None);
        }
        match w.scaling() {
            Some(s) => {
                tracing::info!(upstream = %upstream.name, min = s.min, max = s.max,
                    "starting workers: {} now, scaling between {} and {} by load", s.min, s.min, s.max);
                tokio::spawn(scale::run(handle.clone()));
            }
            None => {
                tracing::info!(upstream = %upstream.name, count = w.count(), "starting workers")
            }
        }
        Ok(Some(handle))
    }

    /// Makes `groups` the supervised set (after a reload) and stops the groups that left it,
    /// draining their workers.
    pub async fn replace_groups(&self, groups: Vec<Arc<GroupHandle>>) {
        let old = std::mem::replace(&mut *self.lock(), groups.clone());
        let leaving: Vec<Arc<GroupHandle>> = old
            .into_iter()
            .filter(|o| !groups.iter().any(|g| Arc::ptr_eq(g, o)))
            .collect();
        stop_groups(&leaving).await;
    }

    /// Stops groups that were started for a reload that was called off.
    pub async fn stop_unused(&self, groups: &[Arc<GroupHandle>]) {
        stop_groups(groups).await;
    }

    /// The group serving `upstream` now, if any.
    pub fn group_of(&self, upstream: &Arc<crate::upstream::Upstream>) -> Option<Arc<GroupHandle>> {
        self.all()
            .into_iter()
            .find(|g| Arc::ptr_eq(&g.group.upstream, upstream))
    }

    /// Replaces the workers of `upstream` (all upstreams when None) one at a time, each
    /// replacement ready before its predecessor drains. Err names an unknown upstream.
    pub async fn rolling_restart(&self, upstream: Option<&str>) -> Result<(), String> {
        let groups: Vec<Arc<GroupHandle>> = self
            .all()
            .into_iter()
            .filter(|g| upstream.is_none_or(|u| u == g.name))
            .collect();
        if let (Some(name), true) = (upstream, groups.is_empty()) {
            return Err(format!("no upstream with workers named {name:?}"));
        }
        for g in groups {
            // No scaling decision while the workers are replaced (the scaler waits).
            let _changing = g.changing.lock().await;
            tracing::info!(upstream = %g.name, "rolling restart");
            for slot in &g.senders() {
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
    pub fn groups(&self) -> Vec<(String, Arc<Group>)> {
        self.all()
            .iter()
            .map(|g| (g.name.clone(), g.group.clone()))
            .collect()
    }

    /// Every workers upstream's live figures for a metrics scrape, as plain data.
    pub fn figures(&self) -> Vec<crate::obs::figures::WorkerGroupFigures> {
        use crate::obs::figures::{WorkerFigures, WorkerGroupFigures};
        use std::sync::atomic::Ordering::Relaxed;
        self.groups()
            .into_iter()
            .map(|(name, group)| WorkerGroupFigures {
                upstream: name,
                desired: group.desired.load(Relaxed),
                scaled_up: group.scaling.ups.load(Relaxed),
                scaled_down: group.scaling.downs.load(Relaxed),
                restarts: group
                    .restarts_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(reason, n)| (*reason, *n))
                    .collect(),
                workers: group
                    .workers()
                    .iter()
                    .map(|w| WorkerFigures {
                        slot: w.slot,
                        state: w.backend.state().as_str(),
                        rss: process::rss(w.pid),
                        served: w.backend.served.load(Relaxed),
                        started: w.started,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Upstreams whose workers keep failing, with why.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.all()
            .iter()
            .filter_map(|g| g.group.failure().map(|f| (g.name.clone(), f)))
            .collect()
    }

    /// Waits until every worker of every group is ready (a new proxyd of an upgrade does,
    /// before it accepts). Err names a group whose workers keep failing or did not all get
    /// ready within their `start_timeout`.
    pub async fn wait_ready(&self) -> Result<(), String> {
        for g in self.all() {
            // With a range, the workers a group starts with: its min.
            let want = g.group.cfg.bounds().0;
            let deadline = tokio::time::Instant::now()
                + g.group.cfg.start_timeout
                + std::time::Duration::from_secs(1);
            loop {
                let ready = g.group.upstream.ready_count();
                if ready >= want {
                    break;
                }
                let why = match g.group.failure() {
                    Some(f) => f,
                    None if tokio::time::Instant::now() >= deadline => format!(
                        "{ready} of {want} ready after start_timeout ({})",
                        humantime::format_duration(g.group.cfg.start_timeout)
                    ),
                    None => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                return Err(format!(
                    "the workers of {} did not get ready: {why}",
                    g.name
                ));
            }
        }
        Ok(())
    }

    /// Drains and stops every worker (TERM, kill_timeout, KILL).
    pub async fn shutdown(&self) {
        stop_groups(&self.all()).await;
    }
}

/// Drains and stops the workers of `groups`, all at once.
async fn stop_groups(groups: &[Arc<GroupHandle>]) {
    let mut waits = Vec::new();
    for g in groups {
        g.group.set_stopping();
        for slot in &g.close() {
            let (done, wait) = oneshot::channel();
            if slot.send(Command::Shutdown { done }).await.is_ok() {
                waits.push(wait);
            }
        }
    }
    for w in waits {
        let _ = w.await;
    }
    for g in groups {
        g.group.wait_leaving().await;
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
