//! Reloading the whole config without a restart (SIGHUP, `POST /reload`): the new file is
//! parsed and validated first (a bad one is refused with its error and the old config keeps
//! serving); unchanged upstreams are kept as they are (pools, queues, workers); changed or new
//! workers upstreams get new workers, which must be ready before the new config takes
//! traffic, and the servers of those with `health:` their first check; new listeners are bound first (a port that cannot be had calls the reload off);
//! then routes and upstreams are swapped at once, new listeners start, removed ones stop
//! accepting (their connections drain), and the workers of upstreams that left are drained
//! and stopped. Requests in flight finish on the config they started with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::listeners::ListenerSet;
use super::{conn_setup, listener_fingerprint, open_listener, serving};
use crate::config::{addr::parse_listen, load_file, Loaded};
use crate::obs::Observe;
use crate::state::Snapshot;
use crate::workers::Supervisors;

/// What a reload changes when the access-log or `tracing:` settings change: the observers.
pub struct Logging {
    pub observers: crate::obs::Observers,
    pub metrics: Arc<crate::obs::metrics::Metrics>,
    /// The access logs and the tracer in force, to keep the one a reload does not change.
    parts: Mutex<(Logs, Option<Arc<dyn Observe>>)>,
}

type Logs = Vec<Arc<dyn Observe>>;

impl Logging {
    pub fn new(
        metrics: Arc<crate::obs::metrics::Metrics>,
        logs: Vec<Arc<dyn Observe>>,
        tracer: Option<Arc<dyn Observe>>,
    ) -> Logging {
        let observers = crate::obs::Observers::new(Logging::list(&metrics, &logs, &tracer));
        Logging {
            observers,
            metrics,
            parts: Mutex::new((logs, tracer)),
        }
    }

    fn list(
        metrics: &Arc<crate::obs::metrics::Metrics>,
        logs: &[Arc<dyn Observe>],
        tracer: &Option<Arc<dyn Observe>>,
    ) -> Vec<Arc<dyn Observe>> {
        std::iter::once(metrics.clone() as Arc<dyn Observe>)
            .chain(logs.iter().cloned())
            .chain(tracer.iter().cloned())
            .collect()
    }

    /// Swaps in new access logs and/or a new tracer (`Some(None)`: tracing now off).
    fn replace(
        &self,
        logs: Option<Vec<Arc<dyn Observe>>>,
        tracer: Option<Option<Arc<dyn Observe>>>,
    ) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(logs) = logs {
            parts.0 = logs;
        }
        if let Some(tracer) = tracer {
            parts.1 = tracer;
        }
        self.observers
            .replace(Logging::list(&self.metrics, &parts.0, &parts.1));
    }
}

pub struct Reloader {
    logging: Logging,
    path: PathBuf,
    current: Mutex<Loaded>,
    state: Arc<ArcSwap<Snapshot>>,
    supervisors: Arc<Supervisors>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
    /// The running listeners: a reload adds, changes and removes them.
    listeners: Arc<ListenerSet>,
}

impl Reloader {
    pub fn new(
        loaded: &Loaded,
        state: Arc<ArcSwap<Snapshot>>,
        supervisors: Arc<Supervisors>,
        listeners: Arc<ListenerSet>,
        logging: Logging,
    ) -> Reloader {
        Reloader {
            logging,
            path: PathBuf::from(&loaded.file),
            current: Mutex::new(loaded.clone()),
            state,
            supervisors,
            running: tokio::sync::Mutex::new(()),
            listeners,
        }
    }

    /// The config in force (the last one loaded).
    pub fn current(&self) -> Loaded {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the config file; Err carries why nothing changed.
    pub async fn reload(&self) -> Result<String, String> {
        let _one = self.running.lock().await;
        if self.current().args.is_some() {
            let e = "this proxyd was started from flags (proxyd run or proxy): it has no config \
                     file to reload; start it with a file (proxyd -c FILE) to reload one";
            tracing::warn!("config not reloaded: {e}");
            return Err(e.into());
        }
        let new = load_file(&self.path).and_then(|new| super::check(&new).map(|()| new));
        let new = new.map_err(|e| {
            tracing::error!("config not reloaded, the old one keeps serving: {e}");
            e.to_string()
        })?;
        let old = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Listeners to open are bound first: a port that cannot be had calls the reload off.
        let running = self.listeners.configured();
        let wanted = listen_addrs(&new);
        // Kept listeners whose settings changed get theirs ready here too (certificates that
        // do not load call the reload off).
        let mut opened = Vec::new();
        let mut changed = Vec::new();
        for (l, addr) in new.config.listen.iter().zip(&wanted) {
            let Some(addr) = *addr else { continue };
            let result = if !running.contains(&addr) {
                open_listener(l, &new).map(|x| opened.push(x))
            } else if self.listeners.fingerprint(addr) != Some(listener_fingerprint(l, &new)) {
                serving(l, &new).map(|x| changed.push((addr, x)))
            } else {
                Ok(())
            };
            if let Err(e) = result {
                let e = format!("{e:#}");
                tracing::error!("config not reloaded: {e}");
                return Err(e);
            }
        }
        // New access logs are opened before the swap too: a file that cannot be opened calls
        // the reload off.
        let settings = |l: &Loaded| {
            crate::config::fingerprint::strip_locations(&format!("{:?}", l.config.access_log))
        };
        let logs_changed = settings(&old) != settings(&new) || old.dir != new.dir;
        let new_logs = if logs_changed {
            match crate::obs::access_log::open(&new) {
                Ok(logs) => Some(logs),
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::error!("config not reloaded: {e}");
                    return Err(e);
                }
            }
        } else {
            None
        };
        let closing: Vec<std::net::SocketAddr> = running
            .iter()
            .filter(|a| !wanted.contains(&Some(**a)))
            .copied()
            .collect();
        let snap = self.state.load_full();
        let next = Snapshot::build_reusing(&new, Some((&snap, &old))).map_err(|e| e.to_string())?;
        // New or changed upstreams' names: looked up from now (a reload called off below
        // drops those upstreams, and their lookups end with them).
        next.start_discovery(&new).map_err(|e| {
            tracing::error!("config not reloaded: {e}");
            e.to_string()
        })?;

        // Workers: keep the groups of kept upstreams, start groups for new ones.
        let mut groups = Vec::new();
        let mut started = Vec::new();
        for u in &next.upstreams {
            match self.supervisors.group_of(u) {
                Some(g) => groups.push(g),
                None => {
                    let g = match self.supervisors.start_group(&new, u) {
                        Ok(g) => g,
                        Err(e) => {
                            self.supervisors.stop_unused(&started).await;
                            return Err(e.to_string());
                        }
                    };
                    if let Some(g) = g {
                        started.push(g.clone());
                        groups.push(g);
                    }
                }
            }
        }
        // New workers take traffic only once all are ready, so the swap loses no capacity;
        // new workers that do not get ready call the reload off.
        for g in &started {
            // A range starts at its `min`: the workers the new group starts with.
            let want = g.group.cfg.bounds().0;
            let deadline = Instant::now() + g.group.cfg.start_timeout + Duration::from_secs(1);
            while g.group.upstream.ready_count() < want && Instant::now() < deadline {
                if g.group.failure().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if g.group.upstream.ready_count() < want {
                let why = g
                    .group
                    .failure()
                    .unwrap_or_else(|| "not ready in time".into());
                let e = format!(
                    "config not reloaded: the new workers of {} did not get ready ({why}); the old config keeps serving",
                    g.group.upstream.name
                );
                tracing::error!("{e}");
                self.supervisors.stop_unused(&started).await;
                return Err(e);
            }
        }
        // Servers of new or changed upstreams with `health:` get their first verdicts before
        // the swap (within their health.timeout), so the new config does not start out with
        // backends it cannot use yet. A server that fails them is out of the rotation, not a
        // reason to call the reload off. If the reload is called off after all, dropping
        // `next` stops these checks.
        next.start_health_checks();
        next.health_settled().await;
        let kept = next
            .upstreams
            .iter()
            .filter(|u| snap.upstreams.iter().any(|o| Arc::ptr_eq(o, u)))
            .count();
        let mut summary = format!(
            "reloaded {}: {} upstreams kept, {} new or changed",
            self.path.display(),
            kept,
            next.upstreams.len() - kept
        );
        // New routes and upstreams show zeroed histograms from now on, as at start.
        next.prepare_metrics(&self.logging.metrics);
        self.state.store(Arc::new(next));
        // `tracing:` changed: a new exporter (and its observer); the old one goes with the
        // last request that holds it.
        let traced = |l: &Loaded| {
            crate::config::fingerprint::strip_locations(&format!("{:?}", l.config.tracing))
        };
        let tracing_changed = traced(&old) != traced(&new);
        let new_tracer =
            tracing_changed.then(|| new.config.tracing.as_ref().map(crate::obs::otel::observer));
        if new_logs.is_some() {
            summary.push_str("; access logs reopened with the new settings");
        }
        if let Some(t) = &new_tracer {
            summary.push_str(match t {
                Some(_) => "; tracing: new settings",
                None => "; tracing off",
            });
        }
        if new_logs.is_some() || new_tracer.is_some() {
            self.logging.replace(new_logs, new_tracer);
        }
        {
            let set = &self.listeners;
            for l in opened {
                match set.add(l) {
                    Ok(bound) => summary.push_str(&format!("; listening on {bound}")),
                    Err(e) => tracing::warn!("listener not started: {e}"),
                }
            }
            for (addr, serving) in changed {
                if let Some(bound) = set.update(addr, serving) {
                    summary.push_str(&format!("; new settings on {bound}"));
                }
            }
            for addr in closing {
                if let Some(bound) = set.remove(addr) {
                    summary.push_str(&format!("; stopped listening on {bound}"));
                }
            }
            set.set_conn_setup(conn_setup(&new.config));
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = new;
        self.supervisors.replace_groups(groups).await;
        let cert_errors = self.listeners.reload_certificates();
        tracing::info!("{summary}");
        if cert_errors.is_empty() {
            Ok(summary)
        } else {
            Err(format!(
                "{summary}; certificates not reloaded: {}",
                cert_errors.join("; ")
            ))
        }
    }
}

fn listen_addrs(l: &Loaded) -> Vec<Option<std::net::SocketAddr>> {
    l.config
        .listen
        .iter()
        .map(|x| parse_listen(&x.addr.value).ok())
        .collect()
}
