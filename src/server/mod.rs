//! Listeners and the accept loop: connection limits, the HTTP/1.1 + h2c server, and the
//! graceful drain on shutdown.

mod admit;
pub mod drain;
pub mod h1;
mod h2;
pub mod listeners;
pub mod proxy_protocol;
pub mod reload;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::BytesMut;
use drain::{Drain as GracefulShutdown, Watcher};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::config::{addr::parse_listen, Loaded};
use crate::obs::Observers;
use crate::proxy::{ConnInfo, ListenerSettings};
use crate::state::Snapshot;
use crate::upgrade::{Inherited, Role, Upgrader};
use crate::workers::Supervisors;
use h1::HeadLimits;
pub use listeners::{ConnSetup, Serving};

pub struct Listener {
    socket: TcpListener,
    addr: SocketAddr,
    /// As written in the config (port 0 stays 0): how a reload recognises it.
    configured: SocketAddr,
    serving: Serving,
}

/// Bound listeners and the state they serve. `run` serves until shutdown.
pub struct Server {
    listeners: Vec<Listener>,
    admin: Option<TcpListener>,
    /// `admin.token`: the admin's POSTs need it.
    admin_token: Option<String>,
    state: Arc<ArcSwap<Snapshot>>,
    supervisors: Arc<Supervisors>,
    setup: ConnSetup,
    grace: Duration,
    /// Told about every finished request (metrics, access logs).
    observers: Observers,
    /// Prometheus metrics: an observer, the accept loop's counts, the admin's `/metrics`.
    metrics: Arc<crate::obs::metrics::Metrics>,
    reloader: Arc<reload::Reloader>,
    /// Hands the listening sockets to a new binary (SIGUSR2, `POST /upgrade`).
    upgrader: Arc<Upgrader>,
}

impl Server {
    /// Binds every listener of a validated config (port 0 picks a free port) and starts the
    /// workers of upstreams that have them; they join the rotation as they become ready.
    pub async fn bind(loaded: &Loaded) -> anyhow::Result<Server> {
        Server::bind_inheriting(loaded, &mut Inherited::none()).await
    }

    /// Like `bind`, but a listener whose configured address matches a socket inherited from
    /// an old proxyd (an upgrade) takes that socket instead of binding; inherited sockets
    /// the config does not use are closed.
    pub async fn bind_inheriting(
        loaded: &Loaded,
        inherited: &mut Inherited,
    ) -> anyhow::Result<Server> {
        let cfg = &loaded.config;
        let snapshot = Snapshot::build(loaded)?;
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for l in &cfg.listen {
            listeners.push(open_listener_inheriting(l, loaded, inherited)?);
        }
        let admin = match &cfg.admin {
            Some(a) => {
                let addr = parse_listen(&a.addr.value).map_err(anyhow::Error::msg)?;
                let socket = match inherited.take(Role::Admin, addr) {
                    Some(s) => s.with_context(|| {
                        format!("cannot take over the inherited admin listener {addr}")
                    })?,
                    None => {
                        bind(addr).with_context(|| format!("cannot listen on {addr} (admin)"))?
                    }
                };
                Some((addr, socket))
            }
            None => None,
        };
        inherited.close_unused();
        // Before the workers start: a log that cannot be opened stops startup.
        let access_logs = crate::obs::access_log::open(loaded)?;
        let supervisors = Arc::new(Supervisors::start(loaded, &snapshot)?);
        let metrics = Arc::new(crate::obs::metrics::Metrics::new());
        snapshot.prepare_metrics(&metrics);
        let observers = Observers::new(
            [metrics.clone() as Arc<dyn crate::obs::Observe>]
                .into_iter()
                .chain(access_logs)
                .collect(),
        );
        let state = Arc::new(ArcSwap::from_pointee(snapshot));
        let reloader = Arc::new(reload::Reloader::new(
            loaded,
            state.clone(),
            supervisors.clone(),
            reload::Logging {
                observers: observers.clone(),
                metrics: metrics.clone(),
            },
        ));
        let upgrader = Arc::new(
            Upgrader::new(reloader.clone(), admin.as_ref().map(|(a, l)| (*a, l)))
                .context("cannot keep the admin listener for upgrades")?,
        );
        Ok(Server {
            reloader,
            upgrader,
            listeners,
            admin: admin.map(|(_, l)| l),
            admin_token: cfg
                .admin
                .as_ref()
                .and_then(|a| a.token.as_ref())
                .map(|t| t.value.clone()),
            supervisors,
            state,
            setup: conn_setup(cfg),
            observers,
            metrics,
            grace: cfg.timeouts.shutdown_grace,
        })
    }

    /// The proxy listeners' bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The runtime state requests are served from (upstreams, their backends and queues).
    pub fn state(&self) -> Arc<ArcSwap<Snapshot>> {
        self.state.clone()
    }

    /// Reloads the whole config (SIGHUP, `POST /reload`).
    pub fn reloader(&self) -> Arc<reload::Reloader> {
        self.reloader.clone()
    }

    /// The worker supervisors, for rolling restarts (SIGHUP, the admin API).
    pub fn supervisors(&self) -> Arc<Supervisors> {
        self.supervisors.clone()
    }

    /// Starts a new binary on this server's sockets (SIGUSR2, `POST /upgrade`).
    pub fn upgrader(&self) -> Arc<Upgrader> {
        self.upgrader.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open connections up to
    /// the grace period to finish their requests. Also stops once a new proxyd has taken
    /// over (an upgrade): then idle keep-alive connections get a short while to send one more
    /// request, answered with `Connection: close`, before the drain.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let closing = Arc::new(AtomicBool::new(false));
        let set = Arc::new(listeners::ListenerSet::new(listeners::Spawner {
            state: self.state.clone(),
            setup: Arc::new(ArcSwap::from_pointee(self.setup)),
            graceful,
            observers: self.observers.clone(),
            metrics: self.metrics.clone(),
            closing: closing.clone(),
        }));
        for l in self.listeners {
            set.add(l).map_err(anyhow::Error::msg)?;
        }
        self.reloader.attach_listeners(set.clone());
        self.upgrader.attach_listeners(set.clone());
        let watcher = tokio::spawn(set.clone().watch_certificates());
        let admin = self.admin.map(|admin| {
            tracing::info!(addr = ?admin.local_addr().ok(), "admin listening");
            tokio::spawn(crate::admin::serve(
                admin,
                stop_rx.clone(),
                self.state.clone(),
                self.supervisors.clone(),
                self.reloader.clone(),
                set.clone(),
                self.admin_token.clone(),
                self.metrics.clone(),
                self.upgrader.clone(),
            ))
        });

        let handed_over = tokio::select! {
            _ = shutdown => {
                // An upgrade under way is called off: its new process is killed.
                self.upgrader.stop();
                None
            }
            pid = self.upgrader.handed_over() => Some(pid),
        };
        match handed_over {
            Some(pid) => tracing::info!(
                new_pid = pid, grace = ?self.grace,
                "handed over to the new proxyd: no new connections here, draining"
            ),
            None => {
                tracing::info!(grace = ?self.grace, "shutting down: no new connections, draining")
            }
        }
        let _ = stop_tx.send(true);
        if handed_over.is_some() {
            closing.store(true, Ordering::SeqCst);
        }
        let graceful = set.shutdown().await.unwrap_or_default();
        if handed_over.is_some() {
            // Busy keep-alive clients send their next request within the window, get it
            // answered with `Connection: close` and reconnect (to the new proxyd) instead of
            // racing the close of an idle connection.
            let window = crate::upgrade::CLOSE_WINDOW.min(self.grace);
            let _ = tokio::time::timeout(window, async {
                while graceful.count() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        match tokio::time::timeout(self.grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("grace period over; closing remaining connections"),
        }
        // Workers go last: the requests drained above needed them.
        self.supervisors.shutdown().await;
        if let Some(admin) = admin {
            if handed_over.is_some() {
                // It stopped accepting at the hand-over and finishes what it was answering
                // (the `POST /upgrade` that asked for it, say).
                let _ = tokio::time::timeout(self.grace, admin).await;
            } else {
                admin.abort();
            }
        }
        watcher.abort();
        Ok(())
    }
}

/// What `proxyd check` runs after the config layer's own checks (which read no certificate
/// and build nothing): every part serving builds from the config is built, the listeners'
/// TLS (`tls::check`) first, then the runtime state (`state::check`). An error names the
/// file, line and column of the value at fault, like the config's own.
pub fn check(loaded: &Loaded) -> Result<(), crate::config::ConfigError> {
    tls::check(loaded)?;
    crate::state::check(loaded)
}

/// Binds one configured listener (and loads its certificates).
pub fn open_listener(l: &crate::config::Listen, loaded: &Loaded) -> anyhow::Result<Listener> {
    open_listener_inheriting(l, loaded, &mut Inherited::none())
}

/// Opens one configured listener on the socket inherited for its address, else binds it.
pub fn open_listener_inheriting(
    l: &crate::config::Listen,
    loaded: &Loaded,
    inherited: &mut Inherited,
) -> anyhow::Result<Listener> {
    let configured = parse_listen(&l.addr.value).map_err(anyhow::Error::msg)?;
    let serving = serving(l, loaded)?;
    let socket = match inherited.take(Role::Listen, configured) {
        Some(s) => {
            s.with_context(|| format!("cannot take over the inherited listener {configured}"))?
        }
        None => bind(configured).with_context(|| format!("cannot listen on {configured}"))?,
    };
    Ok(Listener {
        addr: socket.local_addr()?,
        configured,
        socket,
        serving,
    })
}

/// A listener's settings as configured, to tell whether a reload changed them.
pub fn listener_fingerprint(l: &crate::config::Listen, loaded: &Loaded) -> String {
    let max = l
        .max_connections
        .unwrap_or(loaded.config.limits.max_connections);
    let text = format!("{:?} {max} {}", l, loaded.dir.display());
    crate::config::fingerprint::strip_locations(&text)
}

/// What a listener serves with (its certificates are loaded here).
pub fn serving(l: &crate::config::Listen, loaded: &Loaded) -> anyhow::Result<Serving> {
    let tls = match &l.tls {
        Some(t) => Some(Arc::new(
            tls::Terminator::new(t, &loaded.dir).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    Ok(Serving {
        tls,
        settings: Arc::new(ListenerSettings::from_config(l)),
        max_connections: l
            .max_connections
            .unwrap_or(loaded.config.limits.max_connections),
        fingerprint: listener_fingerprint(l, loaded),
        proxy_protocol: l.proxy_protocol,
    })
}

/// How client connections are served under `cfg`'s limits and time-outs.
pub fn conn_setup(cfg: &crate::config::Config) -> ConnSetup {
    let client = HeadLimits {
        header_timeout: cfg.timeouts.client_header,
        idle_timeout: cfg.timeouts.keepalive,
        send_timeout: cfg.timeouts.client_send,
        max_head_bytes: usize::try_from(cfg.limits.max_header_bytes).unwrap_or(usize::MAX),
        max_headers: cfg.limits.max_headers,
    };
    let mut h2 = h2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(cfg.limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(client.max_head_bytes).unwrap_or(u32::MAX));
    ConnSetup {
        h2,
        client,
        clients: Arc::new(crate::limits::ClientPolicy::from_config(cfg)),
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_loop(
    socket: Arc<TcpListener>,
    live: Arc<listeners::Live>,
    state: Arc<ArcSwap<Snapshot>>,
    setup: Arc<ArcSwap<ConnSetup>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    observers: Observers,
    metrics: Arc<crate::obs::metrics::Metrics>,
    closing: Arc<AtomicBool>,
) {
    loop {
        // At the connection cap, stop accepting: new clients wait in the kernel's backlog.
        let permit = tokio::select! {
            p = live.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        // Loaded per connection: a reload changes what new connections get.
        let serving = live.serving.load_full();
        let conn = Conn {
            state: state.clone(),
            setup: setup.load_full(),
            // Taken now: a connection accepted before shutdown is drained by it.
            watcher: graceful.watcher(),
            listener: serving.settings.clone(),
            observers: observers.clone(),
            closing: closing.clone(),
        };
        let tls = serving.tls.clone();
        let proxy_protocol = serving.proxy_protocol;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _open = metrics.connection_opened();
            // The PROXY-protocol and TLS paths are boxed: a task is as large as its largest
            // path, and every plain connection would carry their size for its lifetime.
            if proxy_protocol {
                Box::pin(async {
                    let setup = conn.setup.clone();
                    if let Some((stream, client, _slot)) =
                        admit::proxied(stream, peer, &setup, &metrics).await
                    {
                        conn.start(stream, client, tls, &metrics).await;
                    }
                })
                .await
            } else if let Some(_slot) = admit::direct(peer, &conn.setup, &metrics) {
                conn.start(stream, peer, tls, &metrics).await;
            }
            drop(permit);
        });
    }
}

/// What serving one client connection needs.
struct Conn {
    state: Arc<ArcSwap<Snapshot>>,
    setup: Arc<ConnSetup>,
    watcher: Watcher,
    listener: Arc<ListenerSettings>,
    observers: Observers,
    /// Set once a new proxyd has taken over (an upgrade).
    closing: Arc<AtomicBool>,
}

impl Conn {
    /// Serves `stream` from client `peer`: TLS first when the listener has it.
    async fn start<S>(
        self,
        stream: S,
        peer: SocketAddr,
        tls: Option<Arc<tls::Terminator>>,
        metrics: &crate::obs::metrics::Metrics,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let header_timeout = self.setup.client.header_timeout;
        let trusted = self.setup.clients.trusted.clone();
        match tls {
            None => {
                let mut info = ConnInfo::new(peer, &self.listener, None);
                info.trusted = trusted;
                self.serve(stream, info, false).await
            }
            Some(t) => {
                Box::pin(async move {
                    // The handshake gets the same time as a request head.
                    let accept = tokio::time::timeout(header_timeout, t.acceptor().accept(stream));
                    match accept.await {
                        Ok(Ok(tls_stream)) => {
                            metrics.tls_handshake(true);
                            let subject = tls::peer_subject(tls_stream.get_ref().1);
                            let mut info = ConnInfo::new(peer, &self.listener, subject);
                            info.trusted = trusted;
                            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            self.serve(tls_stream, info, h2).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_handshake(false);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            metrics.tls_handshake(false);
                            tracing::debug!(%peer, "TLS handshake timed out")
                        }
                    }
                })
                .await
            }
        }
    }

    /// Serves HTTP/1.1 or h2 on `stream` until it closes: h2 when TLS negotiated it or the
    /// first bytes are its preface, HTTP/1.1 otherwise.
    async fn serve<T>(self, mut stream: T, info: ConnInfo, alpn_h2: bool)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let started = tokio::time::Instant::now();
        let limits = self.setup.client;
        let mut buf = BytesMut::new();
        let h2 = alpn_h2 || {
            match sniff(&mut stream, &mut buf, started + limits.header_timeout).await {
                Some(h2) => h2,
                None => return,
            }
        };
        if h2 {
            let clocks = h2::Clocks {
                idle: limits.idle_timeout,
                send: limits.send_timeout,
            };
            let stream = proxy_protocol::Prefixed::new(buf.to_vec(), stream);
            Box::pin(h2::serve(
                stream,
                info,
                &self.setup.h2,
                clocks,
                self.state,
                self.observers,
                self.watcher,
            ))
            .await;
            return;
        }
        let ctx = h1::Ctx {
            state: self.state,
            info,
            observers: self.observers,
            closing: self.closing,
            limits,
            watcher: self.watcher,
        };
        h1::serve(stream, buf, started, ctx).await;
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Reads until the first bytes tell h2's preface from anything else (HTTP/1.1); None when
/// the client closed or sent nothing before `deadline`. What was read stays in `buf`.
async fn sniff<T: tokio::io::AsyncRead + Unpin>(
    stream: &mut T,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Option<bool> {
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        let fill = std::future::poll_fn(|cx| h1::read::poll_fill(stream, buf, cx));
        match tokio::time::timeout_at(deadline, fill).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            // Part of a head and then nothing: HTTP/1.1's 408 applies.
            Err(_) if !buf.is_empty() => return Some(false),
            Err(_) => return None,
        }
    }
}
