//! The wiring, in order: bind the listeners (or take those an old proxyd handed over), open
//! the access logs, build the runtime state, start the workers and the lookups of upstream
//! host names, then make what acts on the running proxy from those parts (the listener set,
//! the reload, the upgrade, the admin).
//! Each part gets what it uses when it is made: nothing is wired in after it starts. `main`
//! runs this in its runtime, the tests in theirs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::{addr::parse_listen, Loaded};
use crate::notify::Notifier;
use crate::server::drain::Drain;
use crate::server::reload::{Logging, Reloader};
use crate::server::upgrade::Upgrader;
use crate::server::{
    conn_setup, open_listener_inheriting, take_or_bind, Listener, ListenerSet, Server, Shape,
    Spawner, Stop,
};
use crate::state::Snapshot;
use crate::upgrade::{Inherited, Role};
use crate::workers::Supervisors;

/// What a proxyd is started with besides its config.
#[derive(Default)]
pub struct Start {
    /// Sockets an old proxyd handed over (an upgrade); taken by address.
    pub inherited: Inherited,
    /// systemd's notify socket (passed on to a new binary by an upgrade).
    pub notifier: Notifier,
    /// Where the accept loops run.
    pub shape: Shape,
}

/// A proxyd with its listeners bound and its workers started, not accepting yet.
pub struct App {
    bound: Vec<Listener>,
    /// Metrics, access logs, the tracer: what each must finish goes before the exit.
    observers: crate::obs::Observers,
    admin: Option<std::net::TcpListener>,
    admin_token: Option<String>,
    state: Arc<ArcSwap<Snapshot>>,
    supervisors: Arc<Supervisors>,
    metrics: Arc<crate::obs::metrics::Metrics>,
    listeners: Arc<ListenerSet>,
    reloader: Arc<Reloader>,
    upgrader: Arc<Upgrader>,
    grace: std::time::Duration,
    /// `timeouts.shutdown_delay`.
    delay: std::time::Duration,
    /// `admin.ready`.
    admin_ready: crate::config::Ready,
}

impl App {
    /// Binds every listener of a validated config (port 0 picks a free port; a socket in
    /// `start.inherited` for the same configured address is taken instead, and inherited
    /// sockets the config does not use are closed), opens the access logs and starts the
    /// workers, which join the rotation as they become ready, and the health checks of
    /// servers. Runs in the runtime that will run [`App::run`]: the workers' supervisors and
    /// the checkers are its tasks.
    pub fn start(loaded: &Loaded, start: &mut Start) -> anyhow::Result<App> {
        let cfg = &loaded.config;
        let inherited = &mut start.inherited;
        let snapshot = Snapshot::build(loaded)?;
        let bound = cfg
            .listen
            .iter()
            .map(|l| open_listener_inheriting(l, loaded, inherited))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let admin = match &cfg.admin {
            Some(a) => {
                let addr = parse_listen(&a.addr.value).map_err(anyhow::Error::msg)?;
                Some((addr, take_or_bind(Role::Admin, addr, inherited)?))
            }
            None => None,
        };
        inherited.close_unused();
        // Before the workers start: a log that cannot be opened stops startup.
        let access_logs = crate::obs::access_log::open(loaded)?;
        let supervisors = Arc::new(Supervisors::start(loaded, &snapshot)?);
        // Servers with `health:` join the rotation as their first checks pass.
        snapshot.start_health_checks();
        // Names are looked up from now on; requests for an upstream with none resolved yet
        // wait in its queue.
        snapshot.start_discovery(loaded)?;
        let metrics = Arc::new(crate::obs::metrics::Metrics::new());
        snapshot.prepare_metrics(&metrics);
        // `tracing:`: spans of traced requests to the OTLP exporter, started on this runtime.
        let tracer = cfg.tracing.as_ref().map(crate::obs::otel::observer);
        let logging = Logging::new(metrics.clone(), access_logs, tracer);
        let observers = logging.observers.clone();
        let state = Arc::new(ArcSwap::from_pointee(snapshot));
        let listeners = Arc::new(ListenerSet::new(Spawner {
            state: state.clone(),
            setup: Arc::new(ArcSwap::from_pointee(conn_setup(cfg))),
            graceful: Arc::new(Drain::new()),
            observers: observers.clone(),
            metrics: metrics.clone(),
            closing: Arc::new(AtomicBool::new(false)),
            leaving: Arc::new(AtomicBool::new(false)),
            shape: start.shape.clone(),
        }));
        let reloader = Arc::new(Reloader::new(
            loaded,
            state.clone(),
            supervisors.clone(),
            listeners.clone(),
            logging,
        ));
        let upgrader = Arc::new(
            Upgrader::new(
                reloader.clone(),
                listeners.clone(),
                admin.as_ref().map(|(a, l)| (*a, l)),
                start.notifier.clone(),
            )
            .context("cannot keep the admin listener for upgrades")?,
        );
        Ok(App {
            bound,
            observers,
            admin: admin.map(|(_, l)| l),
            admin_token: cfg
                .admin
                .as_ref()
                .and_then(|a| a.token.as_ref())
                .map(|t| t.value.clone()),
            state,
            supervisors,
            metrics,
            listeners,
            reloader,
            upgrader,
            grace: cfg.timeouts.shutdown_grace,
            delay: cfg.timeouts.shutdown_delay,
            admin_ready: cfg
                .admin
                .as_ref()
                .map_or(crate::config::Ready::Every, |a| a.ready),
        })
    }

    /// The proxy listeners' bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound.iter().map(Listener::local_addr).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The runtime state requests are served from (upstreams, their backends and queues).
    pub fn state(&self) -> Arc<ArcSwap<Snapshot>> {
        self.state.clone()
    }

    /// Reloads the whole config (SIGHUP, `POST /reload`).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// The worker supervisors, for readiness and rolling restarts (SIGHUP, the admin API).
    pub fn supervisors(&self) -> Arc<Supervisors> {
        self.supervisors.clone()
    }

    /// Starts a new binary on the listening sockets (SIGUSR2, `POST /upgrade`).
    pub fn upgrader(&self) -> Arc<Upgrader> {
        self.upgrader.clone()
    }

    /// Serves (the admin listener too) until `shutdown` completes or a new proxyd has taken
    /// over (an upgrade); then drains the connections, stops the workers (the drained
    /// requests needed them) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin = self.admin.map(|socket| {
            tokio::spawn(crate::admin::serve(
                socket,
                Admin {
                    stop: stop_rx,
                    state: self.state.clone(),
                    supervisors: self.supervisors.clone(),
                    reloader: self.reloader.clone(),
                    listeners: self.listeners.clone(),
                    token: self.admin_token,
                    ready: self.admin_ready,
                    started: std::time::SystemTime::now(),
                    metrics: self.metrics.clone(),
                    upgrader: self.upgrader.clone(),
                },
            ))
        });
        // `maintenance.file`: looked for once a second, whatever the snapshot of the moment.
        let maintenance = tokio::spawn(crate::state::pages::watch_file(self.state.clone()));
        let upgrader = self.upgrader.clone();
        let listeners = self.listeners.clone();
        let delay = self.delay;
        let stop = async move {
            let why = tokio::select! {
                _ = shutdown => {
                    // An upgrade under way is called off: its new process is killed.
                    upgrader.stop();
                    Stop::Shutdown
                }
                pid = upgrader.handed_over() => Stop::HandedOver(pid),
            };
            // /readyz says 503 from now on.
            let _ = stop_tx.send(true);
            if why == Stop::Shutdown {
                // So do the listeners' health paths; after a hand-over the new proxyd answers
                // them on the same sockets, and this instance stays in service.
                listeners.leaving();
                if !delay.is_zero() {
                    tracing::info!(
                        ?delay,
                        "shutting down: health checks say 503; accepting for shutdown_delay before draining"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
            why
        };
        let server = Server {
            listeners: self.listeners,
            grace: self.grace,
        };
        let served = server.run(self.bound, stop).await;
        maintenance.abort();
        // The spans of the requests drained above go to the collector before the runtime ends.
        self.observers.close().await;
        // Workers go last: the requests drained above needed them.
        self.supervisors.shutdown().await;
        if let Some(admin) = admin {
            if self.upgrader.is_handed_over() {
                // It stopped accepting at the hand-over and finishes what it was answering
                // (the `POST /upgrade` that asked for it, say).
                let _ = tokio::time::timeout(self.grace, admin).await;
            } else {
                admin.abort();
            }
        }
        served
    }
}
