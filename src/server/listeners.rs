//! The running listeners: started at boot, added, changed and removed by a config reload, and
//! stopped together at shutdown (their open connections then drain).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::drain::Drain as GracefulShutdown;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::h1::HeadLimits;
use super::{accept_loop, tls, AcceptLoop, Listener};
use crate::obs::Observers;
use crate::proxy::ListenerSettings;
use crate::state::Snapshot;

/// How new client connections are served (from `limits` and `timeouts`); a reload replaces it
/// and connections already open keep theirs.
pub struct ConnSetup {
    /// hyper's h2 server, for h2 connections.
    pub h2: super::h2::Builder,
    pub client: HeadLimits,
    /// Trusted proxies and the per-IP connection cap.
    pub clients: Arc<crate::limits::ClientPolicy>,
}

/// A running proxy listener as the admin's /status reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// What a reload may change on a listener that keeps its address.
#[derive(Clone)]
pub struct Serving {
    pub tls: Option<Arc<tls::Terminator>>,
    pub settings: Arc<ListenerSettings>,
    pub max_connections: usize,
    /// The listener's settings as configured, to tell whether a reload changed them.
    pub fingerprint: String,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// One listener's changeable part, shared with its accept loop.
pub struct Live {
    pub serving: ArcSwap<Serving>,
    /// Open connections; sized to `max_connections`.
    pub limit: Arc<Semaphore>,
}

/// Where the accept loops run (`threads`, docs/configuration.md).
#[derive(Clone, Default)]
pub enum Shape {
    /// On the runtime that adds the listener: one accept loop per listener.
    #[default]
    Here,
    /// On each of these runtimes (one current-thread runtime per OS thread, nginx's
    /// shared-nothing shape): every listener's socket is accepted from all of them, and a
    /// connection lives on the thread that accepted it.
    Threads(Vec<tokio::runtime::Handle>),
}

/// What every accept loop shares.
#[derive(Clone)]
pub struct Spawner {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub setup: Arc<ArcSwap<ConnSetup>>,
    pub graceful: Arc<GracefulShutdown>,
    pub observers: Observers,
    pub metrics: Arc<crate::obs::metrics::Metrics>,
    /// Set when a new proxyd has taken over: HTTP/1 responses say `Connection: close`.
    pub closing: Arc<AtomicBool>,
    /// Set when shutdown begins (not at a hand-over): the listeners' health paths say 503.
    pub leaving: Arc<AtomicBool>,
    pub shape: Shape,
}

struct Running {
    /// The address as configured (port 0 stays 0), which is how a reload names it.
    configured: SocketAddr,
    bound: SocketAddr,
    /// Handed to a new proxyd by an upgrade; each accept loop has its own descriptor of it.
    socket: Arc<std::net::TcpListener>,
    live: Arc<Live>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
pub struct ListenerSet {
    spawner: Mutex<Option<Spawner>>,
    running: Mutex<Vec<Running>>,
}

impl ListenerSet {
    pub fn new(spawner: Spawner) -> ListenerSet {
        ListenerSet {
            spawner: Mutex::new(Some(spawner)),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Starts accepting on `l`; Err once shutdown has begun or the socket cannot be shared
    /// with a runtime.
    pub fn add(&self, l: Listener) -> Result<SocketAddr, String> {
        let spawner = self.spawner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = spawner.as_ref() else {
            return Err("shutting down".into());
        };
        let (stop, stopped) = watch::channel(false);
        let (configured, bound) = (l.configured, l.addr);
        let live = Arc::new(Live {
            limit: Arc::new(Semaphore::new(l.serving.max_connections)),
            serving: ArcSwap::from_pointee(l.serving),
        });
        let runtimes = match &s.shape {
            Shape::Here => vec![tokio::runtime::Handle::current()],
            Shape::Threads(handles) => handles.clone(),
        };
        let mut tasks = Vec::with_capacity(runtimes.len());
        for rt in runtimes {
            // Registered with the runtime that accepts on it.
            let socket = l
                .socket
                .try_clone()
                .and_then(|std| {
                    let _in = rt.enter();
                    TcpListener::from_std(std)
                })
                .map_err(|e| format!("cannot accept on {bound}: {e}"))?;
            let accept = AcceptLoop {
                socket,
                live: live.clone(),
                shared: s.clone(),
                stop: stopped.clone(),
            };
            tasks.push(rt.spawn(accept_loop(accept)));
        }
        tracing::info!(addr = %bound, "listening");
        self.lock().push(Running {
            configured,
            bound,
            socket: Arc::new(l.socket),
            live,
            stop,
            tasks,
        });
        Ok(bound)
    }

    /// The settings fingerprint of the listener configured as `configured`.
    pub fn fingerprint(&self, configured: SocketAddr) -> Option<String> {
        self.lock()
            .iter()
            .find(|r| r.configured == configured)
            .map(|r| r.live.serving.load().fingerprint.clone())
    }

    /// Serves new connections of the listener configured as `configured` with `serving`;
    /// open connections keep what they started with. Returns the bound address.
    pub fn update(&self, configured: SocketAddr, serving: Serving) -> Option<SocketAddr> {
        let running = self.lock();
        let r = running.iter().find(|r| r.configured == configured)?;
        let old = r.live.serving.load().max_connections;
        resize(&r.live.limit, old, serving.max_connections);
        r.live.serving.store(Arc::new(serving));
        tracing::info!(addr = %r.bound, "listener settings changed");
        Some(r.bound)
    }

    /// How new connections are served from now on. Connections already open still count
    /// against the per-IP cap.
    pub fn set_conn_setup(&self, mut setup: ConnSetup) {
        if let Some(s) = self
            .spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let open = s.setup.load().clients.open.clone();
            if let Some(clients) = Arc::get_mut(&mut setup.clients) {
                clients.open = open;
            }
            s.setup.store(Arc::new(setup));
        }
    }

    /// Stops accepting on the listener configured as `configured`; its connections drain.
    pub fn remove(&self, configured: SocketAddr) -> Option<SocketAddr> {
        let mut running = self.lock();
        let i = running.iter().position(|r| r.configured == configured)?;
        let r = running.remove(i);
        let _ = r.stop.send(true);
        tracing::info!(addr = %r.bound, "stopped listening");
        Some(r.bound)
    }

    /// A new proxyd has taken over: HTTP/1 responses say `Connection: close` from now on.
    pub fn closing(&self) {
        if let Some(s) = self
            .spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            s.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Shutdown has begun: the listeners' health paths say 503 from now on (while they still
    /// accept, for `timeouts.shutdown_delay`, so load balancers take this instance out first).
    pub fn leaving(&self) {
        if let Some(s) = self
            .spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            s.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The configured addresses of the running listeners.
    pub fn configured(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|r| r.configured).collect()
    }

    /// The running listeners' configured addresses and sockets, in the order they started
    /// (for an upgrade, which hands the sockets to the new proxyd).
    pub fn sockets(&self) -> Vec<(SocketAddr, Arc<std::net::TcpListener>)> {
        self.lock()
            .iter()
            .map(|r| (r.configured, r.socket.clone()))
            .collect()
    }

    /// The running listeners, for /status.
    pub fn info(&self) -> Vec<ListenerInfo> {
        self.lock()
            .iter()
            .map(|r| ListenerInfo {
                addr: r.bound,
                tls: r.live.serving.load().tls.is_some(),
            })
            .collect()
    }

    fn terminators(&self) -> Vec<Arc<tls::Terminator>> {
        self.lock()
            .iter()
            .filter_map(|r| r.live.serving.load().tls.clone())
            .collect()
    }

    /// Loads every TLS listener's certificates again; a listener whose new files are bad
    /// keeps its old ones. Returns what failed.
    pub fn reload_certificates(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for t in self.terminators() {
            match t.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!("TLS certificates not reloaded, the old ones stay: {e}");
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Reloads a listener's certificates when its files change (checked every 2 s).
    pub async fn watch_certificates(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            for t in self.terminators() {
                if t.changed() {
                    match t.reload() {
                        Ok(()) => tracing::info!("TLS certificate files changed; reloaded"),
                        Err(e) => tracing::error!(
                            "TLS certificate files changed but are not usable, the old ones stay: {e}"
                        ),
                    }
                }
            }
        }
    }

    /// Stops every listener, waits for the accept loops, and hands back what drains the
    /// connections they accepted.
    pub async fn shutdown(&self) -> Option<GracefulShutdown> {
        let spawner = self
            .spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let running = std::mem::take(&mut *self.lock());
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            for t in r.tasks {
                let _ = t.await;
            }
        }
        spawner.and_then(|s| Arc::try_unwrap(s.graceful).ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Changes a connection cap of `old` to `new`. Permits held by open connections cannot be
/// taken back, so a lower cap takes them as those connections close.
fn resize(limit: &Arc<Semaphore>, old: usize, new: usize) {
    if new >= old {
        limit.add_permits(new - old);
        return;
    }
    let cut = old - new;
    let rest = cut - limit.forget_permits(cut);
    if rest > 0 {
        let limit = limit.clone();
        let rest = u32::try_from(rest).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(p) = limit.acquire_many_owned(rest).await {
                p.forget();
            }
        });
    }
}
