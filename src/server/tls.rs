//! TLS termination with rustls: certificates chosen by SNI from their own names (exact and
//! wildcard), a default for clients without SNI, ALPN h2 and http/1.1, a minimum version,
//! optional client certificates (mTLS), and reloading certificates without a restart (a bad
//! new certificate is refused and the old one stays).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientAuthMode, ConfigError, Tls};

/// A certificate with the names it serves.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Reads a PEM chain and key, checks they belong together and that the certificate is
/// valid now; errors name the file.
fn load_pair(cert: &Path, key: &Path) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: no certificate in the file", cert.display()))?;
    let names = names_and_validity(leaf).map_err(|e| format!("{}: {e}", cert.display()))?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        format!(
            "{} does not match the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names of a certificate (SANs, else its CN), lowercase; an error when it is expired
/// or not yet valid.
fn names_and_validity(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let validity = x509.validity();
    let now = x509_parser::time::ASN1Time::from_timestamp(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    )
    .map_err(|e| e.to_string())?;
    if validity.not_after < now {
        return Err(format!("the certificate expired on {}", validity.not_after));
    }
    if validity.not_before > now {
        return Err(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// Chooses a certificate by SNI: an exact name, else a wildcard one level up, else the
/// default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        let parent = name.split_once('.').map(|(_, rest)| rest);
        Some(
            parent
                .and_then(|p| self.wildcard.get(p))
                .unwrap_or(&self.default)
                .clone(),
        )
    }
}

/// Everything one listener's TLS needs, read from disk: builds a rustls config.
pub fn build(tls: &Tls, dir: &Path) -> Result<ServerConfig, String> {
    build_located(tls, dir).map_err(|(_, message)| message)
}

/// What `proxyd check` adds to the config's own checks for listeners: every certificate, key
/// and client CA is loaded as serving would load it, so unreadable, mismatched or expired files
/// are reported by name, at the pair (or listener) at fault.
pub fn check(loaded: &crate::config::Loaded) -> Result<(), ConfigError> {
    for l in &loaded.config.listen {
        let Some(tls) = &l.tls else { continue };
        let first = tls.certs.first().map(|c| &c.cert).unwrap_or(&l.addr);
        build_located(tls, &loaded.dir).map_err(|(at, m)| {
            let at = at.unwrap_or(first.referenced);
            let msg = format!("listen: tls: {m}");
            loaded.locate(ConfigError::at(&loaded.file, &at, msg))
        })?;
    }
    Ok(())
}

/// `build`, with the place in the config of the file at fault (a pair's cert, the client CA),
/// so that `proxyd check` points at that pair rather than the listener's first one.
pub fn build_located(
    tls: &Tls,
    dir: &Path,
) -> Result<ServerConfig, (Option<serde_saphyr::Location>, String)> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let default_index = tls.certs.iter().position(|p| p.default).unwrap_or(0);
    for (i, pair) in tls.certs.iter().enumerate() {
        let loaded = load_pair(&dir.join(&pair.cert.value), &dir.join(&pair.key.value))
            .map_err(|m| (Some(pair.cert.referenced), m))?;
        for name in &loaded.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(name.clone()),
            }
            .or_insert_with(|| loaded.key.clone());
        }
        if i == default_index {
            default = Some(loaded.key.clone());
        }
    }
    let default = default.ok_or((None, "tls.certs needs at least one cert/key pair".into()))?;
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version.value.trim() {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        other => {
            return Err((
                Some(tls.min_version.referenced),
                format!("min_version {other:?}: expected \"1.2\" or \"1.3\""),
            ))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| (None, e.to_string()))?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let path = dir.join(&auth.ca.value);
            let at = |m: String| (Some(auth.ca.referenced), m);
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&path)
                .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
            for ca in cas {
                let ca =
                    ca.map_err(|e| at(format!("{}: not a PEM bundle: {e}", path.display())))?;
                roots
                    .add(ca)
                    .map_err(|e| at(format!("{}: not a CA certificate: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match auth.mode {
                ClientAuthMode::Required => verifier.build(),
                ClientAuthMode::Optional => verifier.allow_unauthenticated().build(),
            }
            .map_err(|e| at(format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener's TLS config as it is now, and what to reload it from.
pub struct Terminator {
    config: ArcSwap<ServerConfig>,
    tls: Tls,
    dir: PathBuf,
    /// The files' modification times when last loaded.
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl Terminator {
    pub fn new(tls: &Tls, dir: &Path) -> Result<Terminator, String> {
        let config = build(tls, dir)?;
        let t = Terminator {
            config: ArcSwap::from_pointee(config),
            tls: tls.clone(),
            dir: dir.to_path_buf(),
            stamps: std::sync::Mutex::new(Vec::new()),
        };
        *t.stamps.lock().unwrap_or_else(|p| p.into_inner()) = t.file_stamps();
        Ok(t)
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Loads the certificates again; new handshakes use them, open connections keep theirs.
    /// On error the old ones stay in service.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = self.file_stamps();
        let config = build(&self.tls, &self.dir)?;
        self.config.store(Arc::new(config));
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        Ok(())
    }

    /// True when a certificate, key or CA file changed since the last (attempted) load.
    pub fn changed(&self) -> bool {
        let now = self.file_stamps();
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *stamps == now {
            return false;
        }
        // Remember the new times: a bad file is reported once, not on every poll.
        *stamps = now;
        true
    }

    fn file_stamps(&self) -> Vec<Option<SystemTime>> {
        let mut files: Vec<&str> = Vec::new();
        for p in &self.tls.certs {
            files.push(&p.cert.value);
            files.push(&p.key.value);
        }
        if let Some(a) = &self.tls.client_auth {
            files.push(&a.ca.value);
        }
        files
            .iter()
            .map(|f| {
                std::fs::metadata(self.dir.join(f))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    }
}

/// The subject of a verified client certificate, as text ("CN=client,O=Example").
pub fn peer_subject(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(x509.subject().to_string())
}
