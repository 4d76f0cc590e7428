//! How proxyd talks to an upstream's servers: the protocol (`protocol:`) and, for
//! `https://` servers, the TLS settings (`tls:`).

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// The HTTP version spoken to an upstream's servers.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// One request at a time per connection, kept alive in the pool.
    #[default]
    Http1,
    /// HTTP/2 over TLS (`https://` servers), agreed by ALPN "h2"; one shared connection.
    H2,
    /// HTTP/2 over cleartext with prior knowledge (gRPC servers without TLS).
    H2c,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// `tls:` of an upstream: how its `https://` servers are verified.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of the CAs trusted for these servers (relative to the config file);
    /// without it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<Spanned<String>>,
    /// The name sent as SNI and checked against the certificate, instead of the host of
    /// each `https://` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<Spanned<String>>,
    /// Accept any certificate. For tests only: it gives up all protection TLS offers
    /// against a man in the middle (a warning is logged at startup).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `tls.server_name` as rustls takes it: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))
}
