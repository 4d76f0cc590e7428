//! Opening a new connection to a backend: TCP or a unix socket, TLS for `https://` servers,
//! then for HTTP/2 the handshake. `Sender` is either kind of connection.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::body::RequestBody;
use super::h1::H1Conn;
use super::stream::Stream;
use super::tls;
use crate::config::{self, BackendAddr, UpstreamProtocol};
use crate::error::{Cause, ProxyError};

/// A connection to a backend, ready for requests: HTTP/1.1 (proxyd's own, one request at a
/// time) or HTTP/2 (hyper's; a clone per request, all sharing the connection).
pub enum Sender {
    Http1(H1Conn),
    Http2(http2::SendRequest<RequestBody>),
}

impl Sender {
    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }
}

/// How one upstream's backends are reached: its protocol, connect time-out and TLS client.
#[derive(Clone)]
pub struct Connector {
    timeout: Duration,
    protocol: UpstreamProtocol,
    tls: Option<Arc<ClientConfig>>,
    /// `tls.server_name`: SNI and the name verified, instead of each server's host.
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    /// The connector of upstream `name`; `https` says whether any of its servers needs TLS
    /// (the roots are only loaded then). `dir` anchors a relative `tls.ca`.
    pub fn new(
        name: &str,
        cfg: &config::Upstream,
        dir: &Path,
        https: bool,
    ) -> Result<Connector, String> {
        let protocol = cfg.protocol();
        let settings = cfg.tls.clone().unwrap_or_default();
        let tls = match https {
            true => Some(tls::client_config(name, &settings, dir, protocol)?),
            false => None,
        };
        let server_name = match &settings.server_name {
            Some(n) => Some(
                tls::server_name(&n.value)
                    .map_err(|m| format!("upstreams.{name}.tls.server_name: {m}"))?,
            ),
            None => None,
        };
        Ok(Connector {
            timeout: cfg.connect_timeout,
            protocol,
            tls,
            server_name,
        })
    }

    /// Plain HTTP/1.1 within `timeout`.
    pub fn plain(timeout: Duration) -> Connector {
        Connector {
            timeout,
            protocol: UpstreamProtocol::Http1,
            tls: None,
            server_name: None,
        }
    }

    /// HTTP/2: backends share one connection among requests instead of an idle pool.
    pub fn multiplexed(&self) -> bool {
        self.protocol != UpstreamProtocol::Http1
    }

    /// Connects within the connect time-out (TLS handshake included); HTTP/2 also performs
    /// its handshake.
    pub async fn connect(&self, addr: &BackendAddr) -> Result<Sender, ProxyError> {
        let deadline = Instant::now() + self.timeout;
        let stream = match (open(addr, self.timeout).await?, addr) {
            (Stream::Tcp(s), BackendAddr::Tls { host, .. }) => {
                Stream::Tls(Box::new(self.tls_handshake(s, addr, host, deadline).await?))
            }
            (stream, _) => stream,
        };
        if self.multiplexed() {
            return h2_handshake(stream).await;
        }
        Ok(Sender::Http1(H1Conn::new(stream)))
    }

    async fn tls_handshake(
        &self,
        tcp: TcpStream,
        addr: &BackendAddr,
        host: &str,
        deadline: Instant,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let fail = |detail: &dyn std::fmt::Display| {
            ProxyError::new(Cause::UpstreamTls, format_args!("TLS to {addr}: {detail}"))
                .nothing_sent()
        };
        let Some(config) = &self.tls else {
            return Err(fail(&"no TLS settings for this upstream"));
        };
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => tls::server_name(host).map_err(|m| fail(&m))?,
        };
        let connecting = TlsConnector::from(config.clone()).connect(name, tcp);
        let stream = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => {
                return Err(ProxyError::new(
                    Cause::UpstreamConnectTimeout,
                    format_args!(
                        "TLS handshake with {addr} timed out after {:?}",
                        self.timeout
                    ),
                )
                .nothing_sent())
            }
            Ok(Err(e)) => return Err(fail(&e)),
            Ok(Ok(s)) => s,
        };
        if self.protocol == UpstreamProtocol::H2
            && stream.get_ref().1.alpn_protocol() != Some(b"h2")
        {
            return Err(fail(&"the server did not agree to HTTP/2 (ALPN h2)"));
        }
        Ok(stream)
    }
}

/// The transport: a TCP connection (also under TLS) or a unix socket, within `timeout`.
async fn open(addr: &BackendAddr, timeout: Duration) -> Result<Stream, ProxyError> {
    let result = match addr {
        BackendAddr::Tcp(a) | BackendAddr::Tls { addr: a, .. } => {
            tokio::time::timeout(timeout, TcpStream::connect(a))
                .await
                .map(|r| {
                    r.inspect(|s| {
                        // Requests are written whole; Nagle would only add latency.
                        let _ = s.set_nodelay(true);
                    })
                    .map(Stream::Tcp)
                })
        }
        BackendAddr::Unix(p) => tokio::time::timeout(timeout, UnixStream::connect(p))
            .await
            .map(|r| r.map(Stream::Unix)),
    };
    match result {
        Err(_) => Err(ProxyError::new(
            Cause::UpstreamConnectTimeout,
            format_args!("connect to {addr} timed out after {timeout:?}"),
        )
        .nothing_sent()),
        Ok(Err(e)) => Err(connect_error(addr, &e)),
        Ok(Ok(io)) => Ok(io),
    }
}

fn connect_error(addr: &BackendAddr, e: &io::Error) -> ProxyError {
    let cause = match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Cause::UpstreamConnectRefused,
        io::ErrorKind::TimedOut => Cause::UpstreamConnectTimeout,
        _ => Cause::UpstreamConnectFailed,
    };
    ProxyError::new(cause, format_args!("connect to {addr}: {e}")).nothing_sent()
}

async fn h2_handshake(io: Stream) -> Result<Sender, ProxyError> {
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::new(Cause::UpstreamConnectFailed, e).nothing_sent())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(Sender::Http2(sender))
}
