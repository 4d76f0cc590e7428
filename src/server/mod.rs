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
pub mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::BytesMut;
use drain::Watcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{addr::parse_listen, Loaded};
use crate::obs::Observers;
use crate::proxy::{ConnInfo, ListenerSettings};
use crate::state::Snapshot;
use crate::upgrade::{Inherited, Role};
use h1::HeadLimits;
pub use listeners::{ConnSetup, ListenerSet, Serving, Shape, Spawner};

/// A bound proxy listener, not accepting yet: [`Server::run`] or a reload starts it.
pub struct Listener {
    /// Not registered with any runtime: each accept loop registers a descriptor of its own.
    socket: std::net::TcpListener,
    addr: SocketAddr,
    /// As written in the config (port 0 stays 0): how a reload recognises it.
    configured: SocketAddr,
    serving: Serving,
}

impl Listener {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why serving stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, SIGINT, or whatever the caller's shutdown was.
    Shutdown,
    /// A new proxyd (an upgrade, this pid) has taken over the sockets.
    HandedOver(u32),
}

/// The proxy listeners' accept loops and the drain that ends them. It starts no processes
/// and opens nothing: it serves what it is given.
pub struct Server {
    /// The running listeners, shared with the reload (which adds and removes some), the
    /// upgrade (which hands their sockets over) and the admin (which lists them).
    pub listeners: Arc<ListenerSet>,
    /// `timeouts.shutdown_grace`.
    pub grace: Duration,
}

impl Server {
    /// Accepts on `bound` until `stop` completes, then stops accepting and gives open
    /// connections up to the grace period to finish their requests. After a hand-over to a
    /// new proxyd, idle keep-alive connections first get a short while to send one more
    /// request, answered with `Connection: close`.
    pub async fn run(
        self,
        bound: Vec<Listener>,
        stop: impl Future<Output = Stop>,
    ) -> anyhow::Result<()> {
        for l in bound {
            self.listeners.add(l).map_err(anyhow::Error::msg)?;
        }
        let watcher = tokio::spawn(self.listeners.clone().watch_certificates());
        let stop = stop.await;
        let handed_over = stop != Stop::Shutdown;
        match stop {
            Stop::HandedOver(pid) => tracing::info!(
                new_pid = pid, grace = ?self.grace,
                "handed over to the new proxyd: no new connections here, draining"
            ),
            Stop::Shutdown => {
                tracing::info!(grace = ?self.grace, "shutting down: no new connections, draining")
            }
        }
        if handed_over {
            self.listeners.closing();
        }
        let graceful = self.listeners.shutdown().await.unwrap_or_default();
        watcher.abort();
        if handed_over {
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
    let socket = take_or_bind(Role::Listen, configured, inherited)?;
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

/// The socket inherited for `role` at `configured` (an upgrade), else a new one bound there.
pub fn take_or_bind(
    role: Role,
    configured: SocketAddr,
    inherited: &mut Inherited,
) -> anyhow::Result<std::net::TcpListener> {
    let what = match role {
        Role::Listen => "",
        Role::Admin => " (admin)",
    };
    match inherited.take(role, configured) {
        Some(s) => {
            s.with_context(|| format!("cannot take over the inherited listener {configured}{what}"))
        }
        None => bind(configured).with_context(|| format!("cannot listen on {configured}{what}")),
    }
}

/// A non-blocking listening socket on `addr`, registered with no runtime yet.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One accept loop: a listener's socket on one runtime, and what its connections share.
pub(crate) struct AcceptLoop {
    socket: TcpListener,
    live: Arc<listeners::Live>,
    shared: listeners::Spawner,
    stop: watch::Receiver<bool>,
}

pub(crate) async fn accept_loop(accept: AcceptLoop) {
    let AcceptLoop {
        socket,
        live,
        shared,
        mut stop,
    } = accept;
    let listeners::Spawner {
        state,
        setup,
        graceful,
        observers,
        metrics,
        closing,
        leaving,
        ..
    } = shared;
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
            leaving: leaving.clone(),
        };
        tokio::spawn(connection(Accepted {
            stream,
            peer,
            conn,
            tls: serving.tls.clone(),
            proxy_protocol: serving.proxy_protocol,
            metrics: metrics.clone(),
            _permit: permit,
        }));
    }
}

/// A connection just accepted, and what serving it takes.
struct Accepted {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: Conn,
    tls: Option<Arc<tls::Terminator>>,
    proxy_protocol: bool,
    metrics: Arc<crate::obs::metrics::Metrics>,
    /// The listener's connection cap: released when the connection ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Serves one accepted connection to its end. Its task lives as long as the connection, idle
/// or not, and is as large as its largest state; so plain HTTP/1.1 (the common case) is
/// served straight from here, and the PROXY-protocol, TLS and h2 paths are boxed. An
/// `async` block, not an `async fn`: the latter keeps its arguments beside the locals made
/// from them, for the connection's whole life.
fn connection(a: Accepted) -> impl Future<Output = ()> + Send {
    let Accepted {
        mut stream,
        peer,
        conn,
        tls,
        proxy_protocol,
        metrics,
        _permit,
    } = a;
    async move {
        let _permit = _permit;
        let _open = metrics.connection_opened();
        if proxy_protocol || tls.is_some() {
            let other = other(stream, peer, conn, tls, proxy_protocol, &metrics);
            Box::pin(other).await;
            return;
        }
        let Some(_slot) = admit::direct(peer, &conn.setup, &metrics) else {
            return;
        };
        let started = tokio::time::Instant::now();
        let mut buf = BytesMut::new();
        let deadline = started + conn.setup.client.header_timeout;
        match sniff(&mut stream, &mut buf, deadline).await {
            None => {}
            Some(true) => {
                let info = conn.info(peer, None);
                let h2 = Box::pin(conn.serve_h2(stream, buf, info));
                h2.await
            }
            Some(false) => {
                let info = conn.info(peer, None);
                h1::serve(stream, buf, started, conn.h1(info)).await
            }
        }
    }
}

/// A connection on a PROXY-protocol or TLS listener: the header, the handshake, then HTTP/1.1
/// or h2.
async fn other(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    conn: Conn,
    tls: Option<Arc<tls::Terminator>>,
    proxy_protocol: bool,
    metrics: &crate::obs::metrics::Metrics,
) {
    if proxy_protocol {
        let setup = conn.setup.clone();
        if let Some((stream, client, _slot)) = admit::proxied(stream, peer, &setup, metrics).await {
            conn.start(stream, client, tls, metrics).await;
        }
    } else if let Some(_slot) = admit::direct(peer, &conn.setup, metrics) {
        conn.start(stream, peer, tls, metrics).await;
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
    /// Set once shutdown has begun (the health path says 503).
    leaving: Arc<AtomicBool>,
}

impl Conn {
    /// The connection as the pipeline knows it.
    fn info(&self, peer: SocketAddr, subject: Option<String>) -> ConnInfo {
        let mut info = ConnInfo::new(peer, &self.listener, subject);
        info.trusted = self.setup.clients.trusted.clone();
        info
    }

    /// What serving HTTP/1.1 on this connection takes.
    fn h1(self, info: ConnInfo) -> h1::Ctx<h1::Pipeline> {
        h1::Ctx {
            handler: h1::Pipeline {
                state: self.state,
                leaving: self.leaving,
            },
            info,
            observers: self.observers,
            closing: self.closing,
            limits: self.setup.client,
            watcher: self.watcher,
        }
    }

    /// Serves h2 on `stream`; `buf` holds what was read of it already.
    async fn serve_h2<T>(self, stream: T, buf: BytesMut, info: ConnInfo)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let limits = self.setup.client;
        let clocks = h2::Clocks {
            idle: limits.idle_timeout,
            send: limits.send_timeout,
        };
        let stream = proxy_protocol::Prefixed::new(buf.to_vec(), stream);
        h2::serve(
            stream,
            info,
            &self.setup.h2,
            clocks,
            h1::Pipeline {
                state: self.state,
                leaving: self.leaving,
            },
            self.observers,
            self.watcher,
        )
        .await
    }

    /// Serves `stream` from client `peer` (after a PROXY header): TLS first when the listener
    /// has it.
    async fn start<S>(
        self,
        stream: S,
        peer: SocketAddr,
        tls: Option<Arc<tls::Terminator>>,
        metrics: &crate::obs::metrics::Metrics,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let Some(t) = tls else {
            let info = self.info(peer, None);
            return self.serve(stream, info, false).await;
        };
        // The handshake gets the same time as a request head.
        let accept = tokio::time::timeout(
            self.setup.client.header_timeout,
            t.acceptor().accept(stream),
        );
        match accept.await {
            Ok(Ok(tls_stream)) => {
                metrics.tls_handshake(true);
                let subject = tls::peer_subject(tls_stream.get_ref().1);
                let info = self.info(peer, subject);
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
    }

    /// Serves HTTP/1.1 or h2 on `stream` until it closes: h2 when TLS negotiated it or the
    /// first bytes are its preface, HTTP/1.1 otherwise.
    async fn serve<T>(self, mut stream: T, info: ConnInfo, alpn_h2: bool)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let started = tokio::time::Instant::now();
        let mut buf = BytesMut::new();
        let h2 = alpn_h2 || {
            let deadline = started + self.setup.client.header_timeout;
            match sniff(&mut stream, &mut buf, deadline).await {
                Some(h2) => h2,
                None => return,
            }
        };
        if h2 {
            Box::pin(self.serve_h2(stream, buf, info)).await
        } else {
            h1::serve(stream, buf, started, self.h1(info)).await
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A plain connection's task holds the future of `connection` for as long as it lives:
    /// `h1::serve`'s (its own test bounds that) and what the connection holds besides.
    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(connection);
        println!("connection future: {size} bytes");
        assert!(size <= 1024, "{size}");
    }
}
