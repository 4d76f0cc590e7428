//! TLS termination on the listener side, with certificates generated here (rcgen) and real
//! clients (rustls + hyper, curl, openssl s_client): SNI choice by exact and wildcard names and
//! the default, ALPN h2 vs http/1.1, min_version, mTLS required/optional and the subject header,
//! certificate reloads (admin, file watcher, SIGHUP) with bad files refused, redirect_https and
//! HSTS, plaintext on the TLS port, and `proxyd check` errors for bad files.

mod common;
use common::*;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------------------------
// Certificates

#[derive(Clone, Copy, Debug)]
enum Alg {
    P256,
    Ed25519,
}

impl Alg {
    fn sig(self) -> &'static SignatureAlgorithm {
        match self {
            Alg::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Alg::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The OID of the certificate's public key algorithm.
    fn key_oid(self) -> &'static str {
        match self {
            Alg::P256 => "1.2.840.10045.2.1",
            Alg::Ed25519 => "1.3.101.112",
        }
    }
}

#[derive(Clone, Copy)]
enum Usage {
    Server,
    Client,
}

/// A certificate and its key, as PEM and DER.
struct Issued {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl Issued {
    fn client_auth(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.cert_der.clone()],
            PrivateKeyDer::Pkcs8(self.key.serialize_der().into()),
        )
    }
}

/// A CA of this test, and a directory for the PEM files it issues.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, ca_name.to_string());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = CertifiedIssuer::self_signed(params, key).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Pki { dir, ca, ca_path }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn issue_with(&self, cn: &str, sans: &[&str], alg: Alg, usage: Usage, expired: bool) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "proxyd tests");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate_for(alg.sig()).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        }
    }

    fn issue(&self, cn: &str, sans: &[&str], alg: Alg, usage: Usage) -> Issued {
        self.issue_with(cn, sans, alg, usage, false)
    }

    /// Issues a server certificate and writes `stem.pem` and `stem.key`; returns their paths.
    fn server(&self, stem: &str, cn: &str, sans: &[&str], alg: Alg) -> (PathBuf, PathBuf) {
        let issued = self.issue(cn, sans, alg, Usage::Server);
        self.write(stem, &issued)
    }

    fn write(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{stem}.pem"));
        let key = self.path(&format!("{stem}.key"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, issued.key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

/// The flow-style YAML of one cert/key pair.
fn pair(cert: &Path, key: &Path, default: bool) -> String {
    format!(
        "{{ cert: \"{}\", key: \"{}\", default: {default} }}",
        cert.display(),
        key.display()
    )
}

/// A config with one TLS listener (`tls` is its flow-style tls map), an admin listener and one
/// upstream.
fn tls_yaml(backend: SocketAddr, tls: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls: {tls}\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{backend}\"]\n"
    )
}

/// Overwrites a file but keeps its modification time, so that only an explicit reload (admin,
/// SIGHUP), never the file watcher, can notice the change.
fn overwrite_keeping_mtime(path: &Path, contents: &str) {
    let before = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, contents).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(before).unwrap();
    drop(f);
    assert_eq!(
        std::fs::metadata(path).unwrap().modified().unwrap(),
        before,
        "the file system must keep the restored mtime for this test"
    );
}

// ---------------------------------------------------------------------------------------------
// A rustls client

/// Verifies the server's chain against our CA as if it were for `name`, whatever name the
/// client asked for by SNI (to see which certificate an unknown name gets).
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a test client connects.
struct Client {
    roots: RootCertStore,
    alpn: Vec<Vec<u8>>,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    sni: bool,
    verify_as: Option<String>,
}

impl Client {
    fn new(pki: &Pki) -> Client {
        Client {
            roots: pki.roots(),
            alpn: Vec::new(),
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            cert: None,
            sni: true,
            verify_as: None,
        }
    }

    fn alpn(mut self, protos: &[&str]) -> Client {
        self.alpn = protos.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    fn only(mut self, v: &'static rustls::SupportedProtocolVersion) -> Client {
        self.versions = vec![v];
        self
    }

    fn cert(mut self, issued: &Issued) -> Client {
        self.cert = Some(issued.client_auth());
        self
    }

    fn no_sni(mut self) -> Client {
        self.sni = false;
        self
    }

    fn verify_as(mut self, name: &str) -> Client {
        self.verify_as = Some(name.to_string());
        self
    }

    fn config(&self) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions)
            .unwrap();
        let builder = match &self.verify_as {
            None => builder.with_root_certificates(self.roots.clone()),
            Some(name) => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.roots.clone()),
                    provider,
                )
                .build()
                .unwrap();
                let name = ServerName::try_from(name.clone()).unwrap();
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
            }
        };
        let mut config = match &self.cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .unwrap(),
        };
        config.alpn_protocols = self.alpn.clone();
        config.enable_sni = self.sni;
        config
    }

    /// A TLS connection to `addr`, asking for `name` (a DNS name: sent as SNI; an IP address:
    /// no SNI).
    async fn connect(&self, addr: SocketAddr, name: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let connector = TlsConnector::from(Arc::new(self.config()));
        let tcp = TcpStream::connect(addr).await?;
        within("TLS handshake", connector.connect(server_name, tcp)).await
    }
}

/// What the client learnt about the server's certificate.
#[derive(Debug)]
struct PeerCert {
    subject: String,
    cn: String,
    dns_names: Vec<String>,
    key_oid: String,
}

fn peer_cert(tls: &TlsStream<TcpStream>) -> PeerCert {
    let der = &tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0];
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_string());
            }
        }
    }
    PeerCert {
        subject: x509.subject().to_string(),
        cn,
        dns_names,
        key_oid: x509.public_key().algorithm.algorithm.to_id_string(),
    }
}

fn alpn(tls: &TlsStream<TcpStream>) -> Option<String> {
    tls.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

fn version(tls: &TlsStream<TcpStream>) -> Option<ProtocolVersion> {
    tls.get_ref().1.protocol_version()
}

/// An HTTP/1.1 client over a TLS connection.
struct Https1 {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
}

impl Https1 {
    async fn over(tls: TlsStream<TcpStream>) -> Https1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Https1 { sender }
    }

    async fn try_send(&mut self, req: Request<BoxBody>) -> Result<Got, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        Ok(read_whole(resp).await)
    }

    async fn send(&mut self, req: Request<BoxBody>) -> Got {
        within("HTTPS/1.1 request", self.try_send(req))
            .await
            .unwrap()
    }

    async fn get(&mut self, host: &str, path: &str) -> Got {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(full(""))
                .unwrap(),
        )
        .await
    }
}

/// An HTTP/2 client over a TLS connection; clones open more streams on it.
#[derive(Clone)]
struct Https2 {
    sender: hyper::client::conn::http2::SendRequest<BoxBody>,
}

impl Https2 {
    async fn over(tls: TlsStream<TcpStream>) -> Https2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        Https2 { sender }
    }

    async fn try_send(&mut self, req: Request<BoxBody>) -> Result<Got, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        Ok(read_whole(resp).await)
    }

    async fn send(&mut self, req: Request<BoxBody>) -> Got {
        within("HTTPS/2 request", self.try_send(req)).await.unwrap()
    }
}

/// The CN new handshakes for `name` see.
async fn cn_now(client: &Client, addr: SocketAddr, name: &str) -> String {
    let tls = client.connect(addr, name).await.unwrap();
    peer_cert(&tls).cn
}

/// Polls new handshakes (up to `limit`) until they see `cn`.
async fn wait_for_cn(client: &Client, addr: SocketAddr, name: &str, cn: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        last = cn_now(client, addr, name).await;
        if last == cn {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("new handshakes still see {last:?} after {limit:?}, expected {cn:?}");
}

async fn post(admin: SocketAddr, path: &str) -> Got {
    within(
        "admin request",
        H1::connect(admin).await.send(
            Request::post(path)
                .header("host", "admin")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 1. SNI

#[tokio::test]
async fn sni_picks_the_certificate_by_exact_and_wildcard_name_and_falls_back_to_the_default() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (a_cert, a_key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let (d_cert, d_key) = pki.server(
        "default",
        "default-cert",
        &["default.example.test", "127.0.0.1"],
        Alg::P256,
    );
    let (w_cert, w_key) = pki.server("wild", "wild-cert", &["*.wild.example.test"], Alg::Ed25519);
    let (l_cert, l_key) = pki.server("localhost", "localhost-cert", &["localhost"], Alg::Ed25519);
    // The default is not the first pair: `default: true` must win over the order.
    let tls = format!(
        "{{ certs: [{}, {}, {}, {}] }}",
        pair(&a_cert, &a_key, false),
        pair(&d_cert, &d_key, true),
        pair(&w_cert, &w_key, false),
        pair(&l_cert, &l_key, false),
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let client = Client::new(&pki);

    // Exact names, with both key types, and a request through each.
    for (name, cn, alg) in [
        ("a.example.test", "a-cert", Alg::P256),
        ("localhost", "localhost-cert", Alg::Ed25519),
        ("x.wild.example.test", "wild-cert", Alg::Ed25519),
        ("other.wild.example.test", "wild-cert", Alg::Ed25519),
    ] {
        let tls = client.connect(proxy.addr, name).await.unwrap();
        let peer = peer_cert(&tls);
        assert_eq!(peer.cn, cn, "SNI {name}: {peer:?}");
        assert!(peer.subject.contains(&format!("CN={cn}")), "{peer:?}");
        assert!(peer
            .dns_names
            .iter()
            .any(|d| d == name || d.starts_with("*.")));
        assert_eq!(
            peer.key_oid,
            alg.key_oid(),
            "SNI {name}: {alg:?} key expected"
        );
        let got = Https1::over(tls).await.get(name, "/sni").await;
        assert_eq!(got.status, StatusCode::OK, "SNI {name}");
    }

    // No SNI (a client that connects by IP sends none): the default.
    let tls = client.connect(proxy.addr, "127.0.0.1").await.unwrap();
    assert_eq!(peer_cert(&tls).cn, "default-cert");
    let got = Https1::over(tls).await.get("127.0.0.1", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    // The default's own name, by SNI.
    let tls = client
        .connect(proxy.addr, "default.example.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&tls).cn, "default-cert");
    // SNI turned off in the client: the default.
    let no_sni = Client::new(&pki).no_sni();
    let tls = no_sni
        .connect(proxy.addr, "default.example.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&tls).cn, "default-cert");

    // Unknown names get the default (a valid chain from our CA, for the default's name); a
    // wildcard covers one label only, and not the bare parent.
    for unknown in [
        "unknown.example.test",
        "a.b.wild.example.test",
        "wild.example.test",
    ] {
        let c = Client::new(&pki).verify_as("default.example.test");
        let tls = c.connect(proxy.addr, unknown).await.unwrap();
        let peer = peer_cert(&tls);
        assert_eq!(peer.cn, "default-cert", "SNI {unknown}: {peer:?}");
        assert!(peer.dns_names.contains(&"default.example.test".to_string()));
    }
    // And a client that checks the name refuses it, as it should.
    assert!(client
        .connect(proxy.addr, "unknown.example.test")
        .await
        .is_err());
    proxy.shutdown().await;

    // Without a `default: true`, the first pair is the default.
    let tls = format!(
        "{{ certs: [{}, {}] }}",
        pair(&a_cert, &a_key, false),
        pair(&w_cert, &w_key, false),
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let tls = no_sni.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(peer_cert(&tls).cn, "a-cert");
    let c = Client::new(&pki).verify_as("a.example.test");
    let tls = c.connect(proxy.addr, "nothing.example.test").await.unwrap();
    assert_eq!(peer_cert(&tls).cn, "a-cert");
    proxy.shutdown().await;
}

/// A leaf signed by an intermediate CA: served from a PEM chain (leaf, then intermediate), it
/// verifies against the root alone; the leaf alone does not.
#[tokio::test]
async fn a_pem_chain_with_an_intermediate_is_served_whole() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd root CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "proxyd intermediate CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let intermediate = CertifiedIssuer::signed_by(params, key, &pki.ca).unwrap();
    let mut leaf = CertificateParams::new(vec!["chain.example.test".to_string()]).unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "chain-cert");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &intermediate).unwrap();
    let chain = pki.path("chain.pem");
    let alone = pki.path("alone.pem");
    let key_path = pki.path("chain.key");
    std::fs::write(&chain, leaf_cert.pem() + &intermediate.pem()).unwrap();
    std::fs::write(&alone, leaf_cert.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    let client = Client::new(&pki);

    let tls = format!("{{ certs: [{}] }}", pair(&chain, &key_path, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let tls = client
        .connect(proxy.addr, "chain.example.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap().len(), 2);
    assert_eq!(peer_cert(&tls).cn, "chain-cert");
    let got = Https1::over(tls).await.get("chain.example.test", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    proxy.shutdown().await;

    let tls = format!("{{ certs: [{}] }}", pair(&alone, &key_path, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    assert!(client
        .connect(proxy.addr, "chain.example.test")
        .await
        .is_err());
    proxy.shutdown().await;
}

/// Keys as openssl writes them: RSA (PKCS#8 and PKCS#1) and SEC1 EC keys (optional: needs the
/// openssl command).
#[tokio::test]
async fn rsa_and_traditional_key_formats_from_openssl() {
    let Some(openssl) = which("openssl") else {
        let what = "the RSA and SEC1/PKCS#1 key test";
        common::tools::require(false, what, "openssl", "apt-get install openssl");
        return;
    };
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let openssl_out = |args: &[&str]| {
        let out = std::process::Command::new(&openssl)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    // RSA, generated by openssl, certified by our CA with rcgen.
    let rsa8 = pki.path("rsa8.key");
    openssl_out(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa8.to_str().unwrap(),
    ]);
    let rsa_key = KeyPair::from_pem(&std::fs::read_to_string(&rsa8).unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["rsa.example.test".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "rsa-cert");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let rsa_cert = pki.path("rsa.pem");
    std::fs::write(
        &rsa_cert,
        params.signed_by(&rsa_key, &pki.ca).unwrap().pem(),
    )
    .unwrap();
    let rsa1 = pki.path("rsa1.key");
    openssl_out(&[
        "rsa",
        "-in",
        rsa8.to_str().unwrap(),
        "-traditional",
        "-out",
        rsa1.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&rsa1)
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    // A P-256 key rewritten as SEC1 ("EC PRIVATE KEY").
    let (ec_cert, ec_key8) = pki.server("ec", "ec-cert", &["ec.example.test"], Alg::P256);
    let ec1 = pki.path("ec1.key");
    openssl_out(&[
        "ec",
        "-in",
        ec_key8.to_str().unwrap(),
        "-out",
        ec1.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&ec1)
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));

    for (rsa_key_file, name) in [(&rsa8, "PKCS#8"), (&rsa1, "PKCS#1")] {
        let tls = format!(
            "{{ certs: [{}, {}] }}",
            pair(&rsa_cert, rsa_key_file, false),
            pair(&ec_cert, &ec1, false)
        );
        let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
        for (host, cn, version) in [
            ("rsa.example.test", "rsa-cert", &rustls::version::TLS13),
            ("rsa.example.test", "rsa-cert", &rustls::version::TLS12),
            ("ec.example.test", "ec-cert", &rustls::version::TLS13),
        ] {
            let tls = Client::new(&pki)
                .only(version)
                .connect(proxy.addr, host)
                .await
                .unwrap_or_else(|e| panic!("{host} ({name} RSA key): {e}"));
            assert_eq!(peer_cert(&tls).cn, cn);
            let got = Https1::over(tls).await.get(host, "/").await;
            assert_eq!(got.status, StatusCode::OK);
        }
        proxy.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. ALPN

fn random_body(n: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    Bytes::from((0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>())
}

#[tokio::test]
async fn alpn_h2_gets_http2_and_http11_gets_http11_both_proxied_byte_exact() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;

    // h2 offered (with http/1.1 as a fallback): h2 chosen, an HTTP/2 response.
    let client = Client::new(&pki).alpn(&["h2", "http/1.1"]);
    let tls = client.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("h2"));
    let mut h2 = Https2::over(tls).await;
    let body = random_body(200_000, 1);
    let got = h2
        .send(
            Request::post("https://a.example.test/upload?x=1")
                .body(full(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2);
    assert!(got.body == body, "h2 response body differs");
    let seen = backend.requests().pop().unwrap();
    assert!(seen.body == body, "body at the backend differs");
    assert_eq!(seen.uri, "/upload?x=1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "a.example.test");

    // Only http/1.1 offered: HTTP/1.1.
    let client = Client::new(&pki).alpn(&["http/1.1"]);
    let tls = client.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("http/1.1"));
    let mut h1 = Https1::over(tls).await;
    let body = random_body(150_000, 2);
    let got = h1
        .send(
            Request::post("/h1")
                .header("host", "a.example.test")
                .body(full(body.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_11);
    assert!(got.body == body, "h1 response body differs");
    let seen = backend.requests().pop().unwrap();
    assert!(seen.body == body);
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    // The connection keeps alive for a second request.
    let got = h1.get("a.example.test", "/again").await;
    assert_eq!(got.status, StatusCode::OK);

    // No ALPN at all: HTTP/1.1 works.
    let tls = Client::new(&pki)
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    assert_eq!(alpn(&tls), None);
    let got = Https1::over(tls).await.get("a.example.test", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        backend.requests().pop().unwrap().headers["x-forwarded-proto"],
        "https"
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Many h2 streams over one TLS connection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_h2_streams_on_one_tls_connection() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::Ed25519);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let tls = Client::new(&pki)
        .alpn(&["h2"])
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("h2"));
    let h2 = Https2::over(tls).await;
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let body = random_body(10_000 + i as usize * 997, 100 + i);
                let got = h2
                    .send(
                        Request::post(format!("https://a.example.test/stream/{i}"))
                            .body(full(body.clone()))
                            .unwrap(),
                    )
                    .await;
                (i, got, body)
            })
        })
        .collect();
    for t in futures_util::future::join_all(tasks).await {
        let (i, got, body) = t.unwrap();
        assert_eq!(got.status, StatusCode::OK, "stream {i}");
        assert_eq!(got.version, Version::HTTP_2);
        assert!(got.body == body, "stream {i}: body differs");
        assert_eq!(got.header("x-echo-uri"), Some(&*format!("/stream/{i}")));
    }
    assert_eq!(backend.request_count(), 20);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. min_version

#[tokio::test]
async fn min_version_13_refuses_a_tls12_client_and_the_default_accepts_it() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let tls12 = Client::new(&pki).only(&rustls::version::TLS12);
    let tls13 = Client::new(&pki).only(&rustls::version::TLS13);

    let strict = format!(
        "{{ certs: [{}], min_version: \"1.3\" }}",
        pair(&cert, &key, false)
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &strict)).await;
    let refused = tls12.connect(proxy.addr, "a.example.test").await;
    assert!(
        refused.is_err(),
        "a TLS 1.2 client got through min_version 1.3"
    );
    let tls = tls13.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(version(&tls), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(
        Https1::over(tls)
            .await
            .get("a.example.test", "/")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(backend.request_count(), 1);
    proxy.shutdown().await;

    // Default: 1.2 and 1.3.
    let default = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &default)).await;
    let tls = tls12.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(version(&tls), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(peer_cert(&tls).cn, "a-cert");
    assert_eq!(
        Https1::over(tls)
            .await
            .get("a.example.test", "/")
            .await
            .status,
        StatusCode::OK
    );
    let tls = tls13.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(version(&tls), Some(ProtocolVersion::TLSv1_3));
    // An Ed25519 certificate over TLS 1.2 as well.
    let (ed_cert, ed_key) = pki.server("ed", "ed-cert", &["ed.example.test"], Alg::Ed25519);
    proxy.shutdown().await;
    let both = format!(
        "{{ certs: [{}, {}] }}",
        pair(&cert, &key, false),
        pair(&ed_cert, &ed_key, false)
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &both)).await;
    let tls = tls12.connect(proxy.addr, "ed.example.test").await.unwrap();
    assert_eq!(version(&tls), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(peer_cert(&tls).cn, "ed-cert");
    assert_eq!(
        Https1::over(tls)
            .await
            .get("ed.example.test", "/")
            .await
            .status,
        StatusCode::OK
    );
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. mTLS

/// Whether a client gets an answer: Ok(response), or Err when the handshake or the request
/// failed (a refused client certificate shows in TLS 1.3 only after the handshake).
async fn try_get(
    client: &Client,
    addr: SocketAddr,
    extra: Option<(&str, &str)>,
) -> Result<Got, String> {
    let tls = client
        .connect(addr, "a.example.test")
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn);
    let mut h1 = Https1 { sender };
    let mut req = Request::get("/who").header("host", "a.example.test");
    if let Some((k, v)) = extra {
        req = req.header(k, v);
    }
    within("request", h1.try_send(req.body(full("")).unwrap()))
        .await
        .map_err(|e| format!("request: {e}"))
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_good_certificate_and_passes_the_subject() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd server CA");
    let clients = Pki::new("proxyd client CA");
    let rogue = Pki::new("some other CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let tls = format!(
        "{{ certs: [{}], client_auth: {{ ca: \"{}\", mode: required }} }}",
        pair(&cert, &key, false),
        clients.ca_path.display()
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;

    // No certificate: refused.
    let anonymous = Client::new(&pki);
    let r = try_get(&anonymous, proxy.addr, None).await;
    assert!(r.is_err(), "a client without a certificate got {r:?}");
    // A certificate from another CA: refused.
    let stranger = rogue.issue("stranger", &[], Alg::P256, Usage::Client);
    let r = try_get(&Client::new(&pki).cert(&stranger), proxy.addr, None).await;
    assert!(r.is_err(), "a client with a foreign certificate got {r:?}");
    assert_eq!(
        backend.request_count(),
        0,
        "a refused client reached the backend"
    );

    // A certificate from the client CA (ECDSA): served, with its subject upstream, and the
    // client's own x-client-subject replaced.
    let one = clients.issue("client-one", &[], Alg::P256, Usage::Client);
    let got = try_get(
        &Client::new(&pki).cert(&one),
        proxy.addr,
        Some(("x-client-subject", "CN=admin-forged")),
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    let seen = backend.requests().pop().unwrap();
    let subjects: Vec<&str> = seen
        .headers
        .get_all("x-client-subject")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert!(subjects[0].contains("CN=client-one"), "{subjects:?}");
    assert!(!subjects[0].contains("forged"), "{subjects:?}");

    // An Ed25519 client certificate, over h2.
    let two = clients.issue("client-two", &[], Alg::Ed25519, Usage::Client);
    let tls = Client::new(&pki)
        .cert(&two)
        .alpn(&["h2"])
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    let mut h2 = Https2::over(tls).await;
    let got = h2
        .send(
            Request::get("https://a.example.test/h2")
                .header("x-client-subject", "CN=forged")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2);
    let seen = backend.requests().pop().unwrap();
    let subjects: Vec<&str> = seen
        .headers
        .get_all("x-client-subject")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert!(subjects[0].contains("CN=client-two"), "{subjects:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn mtls_optional_serves_clients_without_a_certificate_and_never_trusts_their_header() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd server CA");
    let clients = Pki::new("proxyd client CA");
    let rogue = Pki::new("some other CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let tls = format!(
        "{{ certs: [{}], client_auth: {{ ca: \"{}\", mode: optional }} }}",
        pair(&cert, &key, false),
        clients.ca_path.display()
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;

    // No certificate: served, and the client's claim does not reach the backend.
    let got = try_get(
        &Client::new(&pki),
        proxy.addr,
        Some(("x-client-subject", "CN=admin-forged")),
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    let seen = backend.requests().pop().unwrap();
    assert!(
        seen.headers.get("x-client-subject").is_none(),
        "{:?}",
        seen.headers
    );

    // A good certificate: its subject.
    let one = clients.issue("client-one", &[], Alg::Ed25519, Usage::Client);
    let got = try_get(&Client::new(&pki).cert(&one), proxy.addr, None)
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    let seen = backend.requests().pop().unwrap();
    assert!(seen.headers["x-client-subject"]
        .to_str()
        .unwrap()
        .contains("CN=client-one"));

    // A certificate that does not verify is refused even when certificates are optional.
    let count = backend.request_count();
    let stranger = rogue.issue("stranger", &[], Alg::P256, Usage::Client);
    let r = try_get(&Client::new(&pki).cert(&stranger), proxy.addr, None).await;
    assert!(r.is_err(), "a foreign certificate got {r:?}");
    assert_eq!(backend.request_count(), count);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Reload

#[tokio::test]
async fn admin_reload_serves_the_new_certificate_and_open_connections_keep_working() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "first", &["a.example.test"], Alg::P256);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let admin = proxy.admin.unwrap();
    let client = Client::new(&pki);

    let tls = client.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(peer_cert(&tls).cn, "first");
    let mut open = Https1::over(tls).await;
    assert_eq!(
        open.get("a.example.test", "/1").await.status,
        StatusCode::OK
    );

    // New files, same mtimes: only the reload call can pick them up.
    let second = pki.issue("second", &["a.example.test"], Alg::Ed25519, Usage::Server);
    overwrite_keeping_mtime(&cert, &second.cert_pem);
    overwrite_keeping_mtime(&key, &second.key.serialize_pem());
    assert_eq!(cn_now(&client, proxy.addr, "a.example.test").await, "first");

    let got = post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let tls = client.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(peer_cert(&tls).cn, "second");
    assert_eq!(
        Https1::over(tls)
            .await
            .get("a.example.test", "/new")
            .await
            .status,
        StatusCode::OK
    );
    // The connection opened before the reload goes on, on its own certificate.
    assert_eq!(
        open.get("a.example.test", "/2").await.status,
        StatusCode::OK
    );
    assert_eq!(
        open.get("a.example.test", "/3").await.status,
        StatusCode::OK
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn admin_reload_refuses_a_bad_certificate_with_422_and_keeps_the_old_one() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "first", &["a.example.test"], Alg::P256);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let admin = proxy.admin.unwrap();
    let client = Client::new(&pki);
    let good_cert = std::fs::read_to_string(&cert).unwrap();
    let good_key = std::fs::read_to_string(&key).unwrap();

    // A key that belongs to another certificate.
    let other = pki.issue("other", &["a.example.test"], Alg::P256, Usage::Server);
    overwrite_keeping_mtime(&key, &other.key.serialize_pem());
    let got = post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = got.text();
    assert!(text.contains("does not match"), "{text}");
    assert!(text.contains(&key.display().to_string()), "{text}");
    let tls = client.connect(proxy.addr, "a.example.test").await.unwrap();
    assert_eq!(peer_cert(&tls).cn, "first");
    assert_eq!(
        Https1::over(tls)
            .await
            .get("a.example.test", "/")
            .await
            .status,
        StatusCode::OK
    );

    // A new certificate whose key was not replaced (the new cert with the old key).
    overwrite_keeping_mtime(&key, &good_key);
    overwrite_keeping_mtime(&cert, &other.cert_pem);
    let got = post(admin, "/reload").await;
    assert_eq!(
        got.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        got.text()
    );
    assert_eq!(cn_now(&client, proxy.addr, "a.example.test").await, "first");

    // Garbage instead of a certificate.
    overwrite_keeping_mtime(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    let got = post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        got.text().contains(&cert.display().to_string()),
        "{}",
        got.text()
    );
    assert_eq!(cn_now(&client, proxy.addr, "a.example.test").await, "first");

    // An expired certificate with its own key.
    let expired = pki.issue_with(
        "expired",
        &["a.example.test"],
        Alg::P256,
        Usage::Server,
        true,
    );
    overwrite_keeping_mtime(&cert, &expired.cert_pem);
    overwrite_keeping_mtime(&key, &expired.key.serialize_pem());
    let got = post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(got.text().contains("expired"), "{}", got.text());
    assert_eq!(cn_now(&client, proxy.addr, "a.example.test").await, "first");

    // Good files again: the reload succeeds.
    overwrite_keeping_mtime(&cert, &good_cert);
    overwrite_keeping_mtime(&key, &good_key);
    let got = post(admin, "/reload").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(cn_now(&client, proxy.addr, "a.example.test").await, "first");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_picked_up_by_the_watcher_and_bad_ones_are_ignored() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "first", &["a.example.test"], Alg::P256);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let client = Client::new(&pki);
    assert_eq!(cn_now(&client, proxy.addr, "a.example.test").await, "first");
    let tls = client.connect(proxy.addr, "a.example.test").await.unwrap();
    let mut open = Https1::over(tls).await;

    // No call: the watcher (2 s poll) notices.
    let second = pki.issue("second", &["a.example.test"], Alg::Ed25519, Usage::Server);
    pki.write("a", &second);
    wait_for_cn(
        &client,
        proxy.addr,
        "a.example.test",
        "second",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(open.get("a.example.test", "/").await.status, StatusCode::OK);

    // A key that does not match: over more than two polls, handshakes keep the last good
    // certificate and keep working.
    let stray = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&key, stray.serialize_pem()).unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(4500);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            cn_now(&client, proxy.addr, "a.example.test").await,
            "second"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Fixed files are picked up again.
    let third = pki.issue("third", &["a.example.test"], Alg::P256, Usage::Server);
    pki.write("a", &third);
    wait_for_cn(
        &client,
        proxy.addr,
        "a.example.test",
        "third",
        Duration::from_secs(15),
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_of_the_real_binary() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "first", &["a.example.test"], Alg::P256);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxyd = ProxydProcess::start(&tls_yaml(backend.addr, &tls));
    let client = Client::new(&pki);
    assert_eq!(
        cn_now(&client, proxyd.addr, "a.example.test").await,
        "first"
    );
    let tls = client.connect(proxyd.addr, "a.example.test").await.unwrap();
    let mut open = Https1::over(tls).await;
    assert_eq!(open.get("a.example.test", "/").await.status, StatusCode::OK);

    // Same mtimes, so the file watcher stays out of it: only SIGHUP can load these.
    let second = pki.issue("second", &["a.example.test"], Alg::Ed25519, Usage::Server);
    overwrite_keeping_mtime(&cert, &second.cert_pem);
    overwrite_keeping_mtime(&key, &second.key.serialize_pem());
    proxyd.signal("HUP");
    wait_for_cn(
        &client,
        proxyd.addr,
        "a.example.test",
        "second",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(open.get("a.example.test", "/").await.status, StatusCode::OK);
    let tls = client.connect(proxyd.addr, "a.example.test").await.unwrap();
    assert_eq!(
        Https1::over(tls)
            .await
            .get("a.example.test", "/")
            .await
            .status,
        StatusCode::OK
    );
    let lines = proxyd.stderr_lines.lock().unwrap().join("\n");
    assert!(lines.contains("TLS certificates reloaded"), "{lines}");
}

// ---------------------------------------------------------------------------------------------
// 6. redirect_https and HSTS

#[tokio::test]
async fn redirect_https_answers_308_and_nothing_reaches_the_backend() {
    let backend = TestBackend::echo().await;
    let plain = |extra: &str| {
        format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\n    redirect_https: true\n{extra}upstreams:\n  app:\n    servers: [\"{}\"]\n",
            backend.addr
        )
    };
    let proxy = TestProxy::from_yaml(&plain("")).await;
    let mut h1 = H1::connect(proxy.addr).await;
    let got = h1
        .send(
            Request::get("/path/x?q=1&r=two")
                .header("host", "example.test:8080")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        got.header("location"),
        Some("https://example.test/path/x?q=1&r=two")
    );
    // A POST is redirected too (308 keeps the method), its body not forwarded.
    let got = h1
        .send(
            Request::post("/form")
                .header("host", "example.test")
                .body(full("a=1"))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(got.header("location"), Some("https://example.test/form"));
    // h2c: the host comes from :authority.
    let mut h2 = H2::connect(proxy.addr).await;
    let got = h2
        .send(
            Request::get("http://h2.example.test/two?x")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        got.header("location"),
        Some("https://h2.example.test/two?x")
    );
    proxy.shutdown().await;

    let proxy = TestProxy::from_yaml(&plain("    redirect_https_port: 8443\n")).await;
    let got = H1::connect(proxy.addr)
        .await
        .send(
            Request::get("/p?q")
                .header("host", "example.test")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        got.header("location"),
        Some("https://example.test:8443/p?q")
    );
    proxy.shutdown().await;
    assert_eq!(
        backend.request_count(),
        0,
        "a redirected request reached the backend"
    );

    // Behind a load balancer that terminated TLS (a trusted proxy): what it says came over
    // https goes on; what came over http, or from anyone else, is redirected.
    let proxy = TestProxy::from_yaml(&plain("trusted_proxies: [\"127.0.0.0/8\"]\n")).await;
    let mut h1 = H1::connect(proxy.addr).await;
    for (proto, status) in [
        (Some("https"), StatusCode::OK),
        (Some("http"), StatusCode::PERMANENT_REDIRECT),
        (None, StatusCode::PERMANENT_REDIRECT),
    ] {
        let mut req = Request::get("/lb").header("host", "example.test");
        if let Some(p) = proto {
            req = req.header("x-forwarded-proto", p);
        }
        let got = h1.send(req.body(full("")).unwrap()).await;
        assert_eq!(got.status, status, "X-Forwarded-Proto {proto:?}");
    }
    proxy.shutdown().await;
    let proxy = TestProxy::from_yaml(&plain("trusted_proxies: [\"10.0.0.0/8\"]\n")).await;
    let got = H1::connect(proxy.addr)
        .await
        .send(
            Request::get("/lb")
                .header("host", "example.test")
                .header("x-forwarded-proto", "https")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(
        got.status,
        StatusCode::PERMANENT_REDIRECT,
        "an untrusted peer's X-Forwarded-Proto counts for nothing"
    );
    proxy.shutdown().await;
    assert_eq!(backend.request_count(), 1, "only the trusted https request");
}

#[tokio::test]
async fn hsts_goes_on_every_response_of_the_tls_listener() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let tls = format!(
        "{{ certs: [{}], hsts: \"max-age=63072000\" }}",
        pair(&cert, &key, false)
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let tls = Client::new(&pki)
        .alpn(&["http/1.1"])
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    let got = Https1::over(tls).await.get("a.example.test", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    let tls = Client::new(&pki)
        .alpn(&["h2"])
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    let got = Https2::over(tls)
        .await
        .send(
            Request::get("https://a.example.test/")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(
        got.header("strict-transport-security"),
        Some("max-age=63072000")
    );
    proxy.shutdown().await;

    // Without hsts: no header.
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let tls = Client::new(&pki)
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    let got = Https1::over(tls).await.get("a.example.test", "/").await;
    assert_eq!(got.header("strict-transport-security"), None);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Bad input

#[tokio::test]
async fn plaintext_and_garbage_on_the_tls_port_are_closed_and_tls_still_works() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let yaml = tls_yaml(
        backend.addr,
        &format!("{{ certs: [{}] }}", pair(&cert, &key, false)),
    ) + "timeouts: { client_header: 1s }\n";
    let proxy = TestProxy::from_yaml(&yaml).await;

    let answer = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n",
    )
    .await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer:?}");
    let answer = raw(proxy.addr, &[0xffu8; 600]).await;
    assert!(!answer.contains("HTTP/"), "{answer:?}");
    // Half a ClientHello, then silence: closed when the handshake time runs out.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    read_until_close(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(backend.request_count(), 0);

    // TLS clients are still served.
    let tls = Client::new(&pki)
        .connect(proxy.addr, "a.example.test")
        .await
        .unwrap();
    let got = Https1::over(tls).await.get("a.example.test", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    proxy.shutdown().await;
}

/// Writes `yaml` as proxy.yaml into `dir` and runs `proxyd check`.
fn check_in(dir: &Path, yaml: &str) -> (bool, String, String) {
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (ok, text) = check_path(&path);
    (ok, text, path.display().to_string())
}

/// Two pairs in block style: the first is good, the second's cert is on line 9 and its key on
/// line 10 (column 17 after `- cert: `/`  key: `).
fn two_pairs(good: (&Path, &Path), second: (&Path, &Path), rest: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls:\n      min_version: \"1.2\"\n      certs:\n        - cert: \"{}\"\n          key: \"{}\"\n          default: true\n        - cert: \"{}\"\n          key: \"{}\"\n{rest}upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n",
        good.0.display(),
        good.1.display(),
        second.0.display(),
        second.1.display(),
    )
}

/// The line:column an error should point at, as `file:line:`.
fn located(text: &str, file: &str, line: u32) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("proxyd: ")
            .unwrap_or(l)
            .strip_prefix(&format!("{file}:{line}:"))
            .is_some_and(|rest| {
                rest.split(':')
                    .next()
                    .is_some_and(|col| col.parse::<u32>().is_ok())
            })
    })
}

#[test]
fn check_names_expired_mismatched_and_unreadable_files_and_bad_min_version() {
    let pki = Pki::new("proxyd test CA");
    let (good_cert, good_key) = pki.server("good", "good", &["good.example.test"], Alg::P256);
    let (ed_cert, ed_key) = pki.server("ed", "ed", &["ed.example.test"], Alg::Ed25519);
    let dir = pki.dir.path();

    // Sanity: the good config passes, so each failure below is the one named.
    let (ok, text, _) = check_in(
        dir,
        &two_pairs((&good_cert, &good_key), (&ed_cert, &ed_key), ""),
    );
    assert!(ok, "{text}");

    // Expired.
    let expired = pki.issue_with("old", &["old.example.test"], Alg::P256, Usage::Server, true);
    let (exp_cert, exp_key) = pki.write("expired", &expired);
    let (ok, text, file) = check_in(
        dir,
        &two_pairs((&good_cert, &good_key), (&exp_cert, &exp_key), ""),
    );
    assert!(!ok, "{text}");
    assert!(text.contains(&exp_cert.display().to_string()), "{text}");
    assert!(text.contains("expired"), "{text}");
    assert!(
        located(&text, &file, 9),
        "should point at the expired cert (line 9): {text}"
    );

    // A key that belongs to another certificate.
    let (ok, text, file) = check_in(
        dir,
        &two_pairs((&good_cert, &good_key), (&ed_cert, &good_key), ""),
    );
    assert!(!ok, "{text}");
    assert!(text.contains("does not match"), "{text}");
    assert!(text.contains(&good_key.display().to_string()), "{text}");
    assert!(text.contains(&ed_cert.display().to_string()), "{text}");
    assert!(
        located(&text, &file, 9) || located(&text, &file, 10),
        "{text}"
    );

    // Unreadable: missing, a directory, not PEM.
    let missing = dir.join("missing.pem");
    let notpem = dir.join("notpem.pem");
    std::fs::write(&notpem, "hello\n").unwrap();
    for bad in [&missing, &dir.to_path_buf(), &notpem] {
        let (ok, text, file) =
            check_in(dir, &two_pairs((&good_cert, &good_key), (bad, &ed_key), ""));
        assert!(!ok, "{text}");
        assert!(text.contains(&bad.display().to_string()), "{bad:?}: {text}");
        assert!(
            located(&text, &file, 9),
            "{bad:?}: should point at line 9: {text}"
        );
    }
    // An unreadable key.
    let (ok, text, file) = check_in(
        dir,
        &two_pairs((&good_cert, &good_key), (&ed_cert, &missing), ""),
    );
    assert!(!ok, "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(
        located(&text, &file, 9) || located(&text, &file, 10),
        "{text}"
    );

    // A client CA bundle that cannot be read.
    let (ok, text, file) = check_in(
        dir,
        &two_pairs(
            (&good_cert, &good_key),
            (&ed_cert, &ed_key),
            &format!(
                "      client_auth:\n        ca: \"{}\"\n",
                missing.display()
            ),
        ),
    );
    assert!(!ok, "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(
        located(&text, &file, 12),
        "should point at the ca (line 12): {text}"
    );

    // min_version 1.1: at its own line (4).
    let yaml = two_pairs((&good_cert, &good_key), (&ed_cert, &ed_key), "")
        .replace("min_version: \"1.2\"", "min_version: \"1.1\"");
    let (ok, text, file) = check_in(dir, &yaml);
    assert!(!ok, "{text}");
    assert!(text.contains("min_version"), "{text}");
    assert!(located(&text, &file, 4), "{text}");
}

// ---------------------------------------------------------------------------------------------
// 8. curl and openssl

fn tool(path: &str) -> bool {
    common::tools::require_tool("its part of the TLS test", path, "apt-get install curl")
}

fn which(name: &str) -> Option<PathBuf> {
    common::tools::which(name)
}

async fn run(cmd: &mut tokio::process::Command) -> (bool, String) {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = within("external tool", cmd.output()).await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_http2_and_openssl_sees_the_sni_certificate_and_alpn_h2() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (a_cert, a_key) = pki.server("a", "a-cert", &["a.example.test"], Alg::P256);
    let (w_cert, w_key) = pki.server("wild", "wild-cert", &["*.wild.example.test"], Alg::Ed25519);
    let tls = format!(
        "{{ certs: [{}, {}] }}",
        pair(&a_cert, &a_key, true),
        pair(&w_cert, &w_key, false)
    );
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let port = proxy.addr.port();

    if tool("/usr/bin/curl") {
        for (flag, want) in [("--http2", "200 2"), ("--http1.1", "200 1.1")] {
            let (ok, out) = run(tokio::process::Command::new("/usr/bin/curl")
                .args(["-sS", flag, "--cacert"])
                .arg(&pki.ca_path)
                .arg("--resolve")
                .arg(format!("a.example.test:{port}:127.0.0.1"))
                .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
                .arg(format!("https://a.example.test:{port}/curl")))
            .await;
            assert!(ok, "curl {flag}: {out}");
            assert_eq!(out.trim(), want, "curl {flag}");
        }
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }

    match which("openssl") {
        None => {
            let what = "openssl s_client against proxyd";
            common::tools::require(false, what, "openssl", "apt-get install openssl");
        }
        Some(openssl) => {
            for (sni, cn) in [
                ("a.example.test", "a-cert"),
                ("x.wild.example.test", "wild-cert"),
            ] {
                let (_, out) = run(tokio::process::Command::new(&openssl)
                    .arg("s_client")
                    .arg("-connect")
                    .arg(proxy.addr.to_string())
                    .args(["-servername", sni, "-alpn", "h2", "-CAfile"])
                    .arg(&pki.ca_path))
                .await;
                let subject = out
                    .lines()
                    .find(|l| l.starts_with("subject="))
                    .unwrap_or_else(|| panic!("no subject line: {out}"));
                assert!(subject.contains(cn), "SNI {sni}: {subject}");
                assert!(out.contains("ALPN protocol: h2"), "{out}");
                assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
            }
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let backend = TestBackend::echo().await;
    let pki = Pki::new("proxyd test CA");
    let (cert, key) = pki.server("a", "gen-0", &["a.example.test"], Alg::P256);
    let tls = format!("{{ certs: [{}] }}", pair(&cert, &key, false));
    let proxy = TestProxy::from_yaml(&tls_yaml(backend.addr, &tls)).await;
    let admin = proxy.admin.unwrap();
    let client = Arc::new(Client::new(&pki));

    // Four clients: two on new TLS connections per request, two on keep-alive connections.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in 0..4 {
        let (client, stop, addr) = (client.clone(), stop.clone(), proxy.addr);
        let served = served.clone();
        load.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut kept: Option<Https1> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && done < 2000 {
                let got = if c < 2 {
                    let tls = client
                        .connect(addr, "a.example.test")
                        .await
                        .expect("handshake");
                    Https1::over(tls)
                        .await
                        .get("a.example.test", "/fresh")
                        .await
                } else {
                    if kept.is_none() {
                        let tls = client
                            .connect(addr, "a.example.test")
                            .await
                            .expect("handshake");
                        kept = Some(Https1::over(tls).await);
                    }
                    kept.as_mut().unwrap().get("a.example.test", "/kept").await
                };
                assert_eq!(got.status, StatusCode::OK, "client {c}, request {done}");
                done += 1;
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            done
        }));
    }
    // Reload with a new certificate five times while the load runs.
    for gen in 1..=5 {
        let next = pki.issue(
            &format!("gen-{gen}"),
            &["a.example.test"],
            Alg::P256,
            Usage::Server,
        );
        overwrite_keeping_mtime(&cert, &next.cert_pem);
        overwrite_keeping_mtime(&key, &next.key.serialize_pem());
        let got = post(admin, "/reload").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        assert_eq!(
            cn_now(&client, proxy.addr, "a.example.test").await,
            format!("gen-{gen}")
        );
        // Let the load run across each reload.
        let before = served.load(std::sync::atomic::Ordering::Relaxed);
        within("load between reloads", async {
            while served.load(std::sync::atomic::Ordering::Relaxed) < before + 40 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.unwrap();
    }
    assert!(total > 0);
    proxy.shutdown().await;
}
