//! TLS to `https://` upstreams: the trusted roots (the upstream's CA bundle, else the
//! system's), one client config per upstream (its ALPN follows `protocol`), and the verifier
//! that `insecure_skip_verify` puts in place.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ConfigError, Loaded, UpstreamProtocol, UpstreamTls};

/// Reads a PEM bundle of CA certificates. Every certificate in it must parse and be within
/// its validity period: a bundle that can never verify anything is a config error.
pub fn load_ca(path: &Path) -> Result<RootCertStore, String> {
    let file = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {file}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let n = i + 1;
        let cert = cert.map_err(|e| format!("{file}: certificate {n} is not valid PEM: {e}"))?;
        check_validity(&cert).map_err(|m| format!("{file}: certificate {n} {m}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{file}: certificate {n} cannot be a trusted root: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{file}: no PEM certificate in it"));
    }
    Ok(roots)
}

fn check_validity(cert: &CertificateDer<'_>) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("is not an X.509 certificate: {e}"))?;
    let validity = parsed.validity();
    if validity.is_valid() {
        return Ok(());
    }
    Err(format!(
        "({}) is only valid from {} to {}",
        parsed.subject(),
        validity.not_before,
        validity.not_after
    ))
}

/// The system's trusted roots (what curl and most clients on this machine trust).
fn system_roots(upstream: &str) -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(upstream, error = %e, "reading the system's CA certificates");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        tracing::warn!(
            upstream,
            "no system CA certificates found: https servers cannot be verified (set tls.ca)"
        );
    }
    roots
}

/// The client config for one upstream's `https://` servers; `dir` anchors a relative `ca`.
pub fn client_config(
    upstream: &str,
    tls: &UpstreamTls,
    dir: &Path,
    protocol: UpstreamProtocol,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstreams.{upstream}.tls: {e}"))?;
    let mut config = if tls.insecure_skip_verify {
        tracing::warn!(
            upstream,
            "tls.insecure_skip_verify: certificates of this upstream's servers are NOT verified (for tests only)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let roots = match &tls.ca {
            Some(ca) => load_ca(&dir.join(&ca.value))
                .map_err(|m| format!("upstreams.{upstream}.tls.ca: {m}"))?,
            None => system_roots(upstream),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // ALPN states the protocol: an h2 upstream must agree to "h2" or the connection fails.
    config.alpn_protocols = match protocol {
        UpstreamProtocol::H2 => vec![b"h2".to_vec()],
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// `tls.server_name`, checked: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    crate::config::upstream_tls::server_name(name)
}

/// What `proxyd check` adds to the config's own checks for upstreams: every `tls.ca` bundle
/// is read as the upstream's TLS config will read it; an error points at the `ca:` value.
pub fn check(loaded: &Loaded) -> Result<(), ConfigError> {
    for (name, up) in &loaded.config.upstreams {
        let Some(ca) = up.tls.as_ref().and_then(|t| t.ca.as_ref()) else {
            continue;
        };
        load_ca(&loaded.dir.join(&ca.value)).map_err(|m| {
            let msg = format!("upstreams.{name}.tls.ca: {m}");
            loaded.locate(ConfigError::at(&loaded.file, &ca.referenced, msg))
        })?;
    }
    Ok(())
}

/// Accepts any certificate (`insecure_skip_verify`), but still checks the handshake
/// signatures against the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
