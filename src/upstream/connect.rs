//! Opening a new HTTP/1.1 connection to a backend.

use std::io;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::config::BackendAddr;
use crate::proxy::body::RequestBody;
use crate::proxy::error::{Cause, ProxyError};

/// Connects within `timeout` and performs the (free) HTTP/1.1 handshake.
pub async fn connect(
    addr: &BackendAddr,
    timeout: Duration,
) -> Result<SendRequest<RequestBody>, ProxyError> {
    let result = match addr {
        BackendAddr::Tcp(a) => tokio::time::timeout(timeout, TcpStream::connect(a))
            .await
            .map(|r| {
                r.inspect(|s| {
                    // Requests are written whole; Nagle would only add latency.
                    let _ = s.set_nodelay(true);
                })
                .map(Io::Tcp)
            }),
        BackendAddr::Unix(p) => tokio::time::timeout(timeout, UnixStream::connect(p))
            .await
            .map(|r| r.map(Io::Unix)),
    };
    let io = match result {
        Err(_) => {
            return Err(ProxyError::new(
                Cause::UpstreamConnectTimeout,
                format_args!("connect to {addr} timed out after {timeout:?}"),
            )
            .nothing_sent())
        }
        Ok(Err(e)) => return Err(connect_error(addr, &e)),
        Ok(Ok(io)) => io,
    };
    match io {
        Io::Tcp(s) => handshake(s).await,
        Io::Unix(s) => handshake(s).await,
    }
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

fn connect_error(addr: &BackendAddr, e: &io::Error) -> ProxyError {
    let cause = match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Cause::UpstreamConnectRefused,
        io::ErrorKind::TimedOut => Cause::UpstreamConnectTimeout,
        _ => Cause::UpstreamConnectFailed,
    };
    ProxyError::new(cause, format_args!("connect to {addr}: {e}")).nothing_sent()
}

async fn handshake<T>(io: T) -> Result<SendRequest<RequestBody>, ProxyError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::new(Cause::UpstreamConnectFailed, e).nothing_sent())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
