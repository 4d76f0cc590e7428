//! What a client connection passes between accept and its first request: on a
//! `proxy_protocol` listener, a trusted peer and a valid PROXY header (whose source address
//! becomes the client's); then `limits.max_connections_per_ip`. A connection that fails is
//! closed at once, counted in `proxyd_client_connections_rejected_total`, and logged.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::proxy_protocol::{self, Header, Prefixed};
use super::ConnSetup;
use crate::limits::ConnSlot;
use crate::obs::metrics::{Metrics, Rejected};

/// A connection on a plain listener: the per-IP cap.
pub fn direct(peer: SocketAddr, setup: &ConnSetup, metrics: &Metrics) -> Option<ConnSlot> {
    let slot = setup.clients.admit_connection(peer.ip(), false);
    if slot.is_none() {
        metrics.connection_rejected(Rejected::PerIp);
        tracing::debug!(%peer, "connection closed: limits.max_connections_per_ip reached");
    }
    slot
}

/// A connection on a `proxy_protocol` listener: its peer must be a trusted proxy (when
/// `trusted_proxies` is set) and send a valid header within `timeouts.client_header`. Returns
/// the stream (bytes after the header kept), the client's address, and its per-IP slot.
pub async fn proxied(
    stream: TcpStream,
    peer: SocketAddr,
    setup: &ConnSetup,
    metrics: &Metrics,
) -> Option<(Prefixed<TcpStream>, SocketAddr, ConnSlot)> {
    let clients = &setup.clients;
    if clients.trusted.is_some() && !clients.is_trusted(peer.ip()) {
        metrics.connection_rejected(Rejected::Untrusted);
        tracing::warn!(%peer, "connection closed: PROXY protocol from a peer not in trusted_proxies");
        return None;
    }
    let (header, stream) = match proxy_protocol::read(stream, setup.client.header_timeout).await {
        Ok(read) => read,
        Err(e) => {
            metrics.connection_rejected(Rejected::ProxyProtocol);
            tracing::warn!(%peer, error = %e, "connection closed: bad PROXY protocol header");
            return None;
        }
    };
    let (client, carried) = match header {
        Header::Proxied { source, .. } => (source, true),
        Header::Local | Header::Unknown => (peer, false),
    };
    let slot = clients.admit_connection(client.ip(), carried);
    if slot.is_none() {
        metrics.connection_rejected(Rejected::PerIp);
        tracing::debug!(%peer, %client, "connection closed: limits.max_connections_per_ip reached");
    }
    Some((stream, client, slot?))
}
