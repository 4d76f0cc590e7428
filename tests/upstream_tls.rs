//! proxyd's connections to upstreams: TLS (verified against a CA bundle, a certificate from
//! another CA refused with a 502, insecure_skip_verify, SNI), HTTP/2 in cleartext (h2c) and
//! over TLS (ALPN h2) with many requests on one shared connection, gRPC-style trailers end to
//! end, and the config errors `proxyd check` reports. Certificates are made here with rcgen;
//! backends are real tokio-rustls + hyper servers on 127.0.0.1:0.

mod common;
use common::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Barrier;

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------------------------
// Certificates

type Ca = CertifiedIssuer<'static, KeyPair>;

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for `names` (DNS names or IPs) signed by `ca`.
fn server_cert(ca: &Ca, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

fn self_signed(names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
    (c.cert.der().clone(), key)
}

/// Writes `ca`'s certificate as a PEM file in `dir` and returns its path.
fn write_ca(dir: &tempfile::TempDir, ca: &Ca) -> String {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path.display().to_string()
}

fn tls_config(
    (cert, key): (CertificateDer<'static>, PrivateKeyDer<'static>),
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

// ---------------------------------------------------------------------------------------------
// Backends

/// How a test backend listens and answers.
#[derive(Clone, Default)]
struct Options {
    /// TLS with this config (HTTP/2 when ALPN agrees on h2); else cleartext.
    tls: Option<Arc<ServerConfig>>,
    /// Cleartext HTTP/2 only (prior knowledge), as a gRPC server without TLS.
    h2c: bool,
    /// Each request waits here before it is answered: all of them must be in flight at once.
    gate: Option<Arc<Barrier>>,
    /// Sent after the body.
    trailers: Option<HeaderMap>,
}

/// A hyper backend that echoes bodies, answers `x-echo-version`, and records each request and,
/// under TLS, each handshake's SNI and ALPN.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    alpn: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
    task: tokio::task::JoinHandle<()>,
    /// The tasks serving accepted connections, to cut them.
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(opts: Options) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let sni = Arc::new(Mutex::new(Vec::new()));
        let alpn = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (seen2, conns2, sni2, alpn2, open2) = (
            seen.clone(),
            connections.clone(),
            sni.clone(),
            alpn.clone(),
            open.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let id = conns2.fetch_add(1, Ordering::SeqCst);
                let (opts, seen, sni, alpn) =
                    (opts.clone(), seen2.clone(), sni2.clone(), alpn2.clone());
                let conn = tokio::spawn(async move {
                    let Some(cfg) = opts.tls.clone() else {
                        let h2 = opts.h2c;
                        return serve(tcp, h2, id, seen, opts).await;
                    };
                    // A handshake proxyd refuses ends here, before any request.
                    let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    sni.lock()
                        .unwrap()
                        .push(session.server_name().map(str::to_string));
                    let agreed = session.alpn_protocol().map(<[u8]>::to_vec);
                    let h2 = agreed.as_deref() == Some(b"h2");
                    alpn.lock().unwrap().push(agreed);
                    serve(tls, h2, id, seen, opts).await;
                });
                open2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Backend {
            addr,
            seen,
            connections,
            sni,
            alpn,
            task,
            open,
        }
    }

    /// Closes every connection accepted so far, as a backend restart would.
    fn close_connections(&self) {
        for conn in self.open.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve<I>(io: I, h2: bool, conn: usize, seen: Arc<Mutex<Vec<Seen>>>, opts: Options)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (seen, opts) = (seen.clone(), opts.clone());
        async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.ok();
            let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
            let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
            let version = format!("{:?}", parts.version);
            seen.lock().unwrap().push(Seen {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body: body.clone(),
                trailers,
                conn,
            });
            if let Some(gate) = &opts.gate {
                gate.wait().await;
            }
            let body = match opts.trailers.clone() {
                Some(t) => full(body).with_trailers(async move { Some(Ok(t)) }).boxed(),
                None => full(body),
            };
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert("x-echo-version", version.parse().unwrap());
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A config with one upstream `app` described by `upstream` (indented by four spaces).
fn config(upstream: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nheaders: {{ debug: true }}\nupstreams:\n  app:\n{upstream}"
    )
}

/// Bytes that differ along their length, so a moved or lost chunk shows.
fn pattern(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

/// A body without a known length (sent chunked by an HTTP/1.1 client).
fn chunked(data: Bytes) -> BoxBody {
    let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

fn post(path: &str, body: BoxBody) -> Request<BoxBody> {
    Request::post(path)
        .header("host", "test.local")
        .body(body)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn https_upstream_verified_with_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("proxyd test CA");
    // The backend would take h2: an http1 upstream must not offer it.
    let cfg = tls_config(
        server_cert(&ca, &["localhost", "127.0.0.1"]),
        &[b"h2", b"http/1.1"],
    );
    let backend = Backend::start(Options {
        tls: Some(cfg),
        ..Options::default()
    })
    .await;
    let ca_path = write_ca(&dir, &ca);
    let proxy = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"https://localhost:{}\"]\n    tls: {{ ca: \"{ca_path}\" }}\n",
        backend.addr.port()
    )))
    .await;

    let mut client = H1::connect(proxy.addr).await;
    let got = within("GET", client.get("/hello?x=1")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("x-echo-version"), Some("HTTP/1.1"));
    let label = format!("https://localhost:{}", backend.addr.port());
    assert_eq!(got.header("proxyd-backend"), Some(label.as_str()));

    // Buffered (small) and streamed (past buffer_body, sent chunked) bodies, byte-exact.
    let small = pattern(100_000);
    let got = within("small POST", client.send(post("/up", full(small.clone())))).await;
    assert_eq!(got.status, 200);
    assert!(got.body == small, "small POST body came back changed");
    let large = pattern(3 * 1024 * 1024 + 17);
    let got = within(
        "large POST",
        client.send(post("/up", chunked(large.clone()))),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.body == large, "large POST body came back changed");

    let seen = backend.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].uri, "/hello?x=1");
    assert_eq!(seen[0].headers["host"], "test.local");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
    assert!(seen[1].body == small && seen[2].body == large);
    assert_eq!(
        backend.alpn.lock().unwrap()[0].as_deref(),
        Some(&b"http/1.1"[..]),
        "an http1 upstream offers http/1.1 by ALPN"
    );
    assert_eq!(backend.connections(), 1, "one kept-alive TLS connection");
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_a_502_and_nothing_else_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = new_ca("trusted CA");
    let other = new_ca("some other CA");
    let bad = Backend::start(Options {
        tls: Some(tls_config(server_cert(&other, &["localhost"]), &[])),
        ..Options::default()
    })
    .await;
    let good = Backend::start(Options {
        tls: Some(tls_config(server_cert(&trusted, &["localhost"]), &[])),
        ..Options::default()
    })
    .await;
    let ca_path = write_ca(&dir, &trusted);
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  bad:\n    servers: [\"https://localhost:{}\"]\n    tls: {{ ca: \"{ca_path}\" }}\n  good:\n    servers: [\"https://localhost:{}\"]\n    tls: {{ ca: \"{ca_path}\" }}\nroutes:\n  - {{ path: /bad, upstream: bad }}\n  - {{ path: /, upstream: good }}\n",
        bad.addr.port(),
        good.addr.port()
    );
    let proxy = TestProxy::from_yaml(&yaml).await;

    let mut client = H1::connect(proxy.addr).await;
    for _ in 0..2 {
        let got = within("GET /bad", client.get("/bad")).await;
        assert_eq!(got.status, 502, "{}", got.text());
        assert_eq!(got.header("proxyd-error"), Some("upstream-tls-failed"));
        assert!(got.text().contains("upstream-tls-failed"));
    }
    let got = within("POST /bad", client.send(post("/bad", full("secret")))).await;
    assert_eq!(got.status, 502);
    assert!(
        bad.requests().is_empty(),
        "no request may reach an unverified backend"
    );
    assert!(bad.sni.lock().unwrap().is_empty(), "no handshake completed");
    let stats = proxy.upstream("bad").stats.snapshot();
    assert!(stats.contains(&("tls_failed", 3)), "{stats:?}");

    // The same client connection and the other upstream go on working.
    let got = within("GET /ok", client.get("/ok")).await;
    assert_eq!(got.status, 200);
    assert_eq!(good.requests().len(), 1);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_backend() {
    let backend = Backend::start(Options {
        tls: Some(tls_config(self_signed(&["localhost"]), &[])),
        ..Options::default()
    })
    .await;
    let servers = format!(
        "    servers: [\"https://localhost:{}\"]\n",
        backend.addr.port()
    );
    let proxy = TestProxy::from_yaml(&config(&format!(
        "{servers}    tls: {{ insecure_skip_verify: true }}\n"
    )))
    .await;
    let got = within("GET", get(proxy.addr, "/")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(backend.requests().len(), 1);

    // The real binary warns about it at startup.
    let yaml = config(&format!(
        "{servers}    tls: {{ insecure_skip_verify: true }}\n"
    ));
    let process = ProxydProcess::start(&yaml);
    let lines = process.stderr_lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("NOT verified")),
        "{lines:?}"
    );

    // The same backend with verification on (system roots) is refused.
    let strict = TestProxy::from_yaml(&config(&servers)).await;
    let got = within("GET verified", get(strict.addr, "/")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("proxyd-error"), Some("upstream-tls-failed"));
    assert_eq!(backend.requests().len(), 1);
}

#[tokio::test]
async fn sni_is_the_server_host_or_the_configured_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("proxyd test CA");
    let ca_path = write_ca(&dir, &ca);
    let backend = Backend::start(Options {
        tls: Some(tls_config(
            server_cert(&ca, &["localhost", "api.internal"]),
            &[],
        )),
        ..Options::default()
    })
    .await;
    let port = backend.addr.port();

    // The host of the https URL.
    let by_host = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"https://localhost:{port}\"]\n    tls: {{ ca: \"{ca_path}\" }}\n"
    )))
    .await;
    assert_eq!(within("by host", get(by_host.addr, "/")).await.status, 200);

    // server_name overrides it, for an address given as an IP.
    let by_name = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"https://127.0.0.1:{port}\"]\n    tls: {{ ca: \"{ca_path}\", server_name: api.internal }}\n"
    )))
    .await;
    assert_eq!(within("by name", get(by_name.addr, "/")).await.status, 200);
    assert_eq!(
        *backend.sni.lock().unwrap(),
        vec![
            Some("localhost".to_string()),
            Some("api.internal".to_string())
        ]
    );

    // A name the certificate does not carry is refused.
    let wrong = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"https://localhost:{port}\"]\n    tls: {{ ca: \"{ca_path}\", server_name: other.internal }}\n"
    )))
    .await;
    let got = within("wrong name", get(wrong.addr, "/")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("proxyd-error"), Some("upstream-tls-failed"));
    assert_eq!(backend.requests().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 to upstreams

#[tokio::test]
async fn h2c_upstream_gets_http2_and_concurrent_requests_share_one_connection() {
    const N: usize = 16;
    let backend = Backend::start(Options {
        h2c: true,
        gate: Some(Arc::new(Barrier::new(N))),
        ..Options::default()
    })
    .await;
    let proxy = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"127.0.0.1:{}\"]\n    protocol: h2c\n",
        backend.addr.port()
    )))
    .await;

    // N requests at once, from HTTP/1.1 clients: the backend answers none until all N
    // arrived, so they must all be in flight on the upstream side together.
    let mut tasks = Vec::new();
    for i in 0..N {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            H1::connect(addr).await.get(&format!("/n/{i}")).await
        }));
    }
    for t in tasks {
        let got = within("concurrent GET", t).await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.version,
            Version::HTTP_11,
            "the client keeps its version"
        );
        assert_eq!(got.header("x-echo-version"), Some("HTTP/2.0"));
    }
    assert_eq!(backend.connections(), 1, "one shared h2c connection");
    for s in backend.requests() {
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.uri.scheme_str(), Some("http"));
        assert_eq!(s.uri.authority().map(|a| a.as_str()), Some("test.local"));
        assert!(s.uri.path().starts_with("/n/"));
        for hop in ["connection", "keep-alive", "transfer-encoding", "host"] {
            assert!(!s.headers.contains_key(hop), "{hop} sent over h2");
        }
    }
    drop(backend);

    // Bodies, buffered and streamed, byte-exact over h2c.
    let backend = Backend::start(Options {
        h2c: true,
        ..Options::default()
    })
    .await;
    let proxy = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"127.0.0.1:{}\"]\n    protocol: h2c\n",
        backend.addr.port()
    )))
    .await;
    let mut client = H1::connect(proxy.addr).await;
    let large = pattern(3 * 1024 * 1024 + 5);
    let got = within("h2c POST", client.send(post("/up", chunked(large.clone())))).await;
    assert_eq!(got.status, 200);
    assert!(got.body == large, "streamed body came back changed");
    let small = pattern(1000);
    let got = within("h2c POST", client.send(post("/up", full(small.clone())))).await;
    assert!(got.body == small);
    assert_eq!(got.header("proxyd-reused"), Some("1"));
    assert_eq!(backend.connections(), 1);

    // The backend closes the shared connection: the next request gets a new one.
    backend.close_connections();
    let got = within("after the close", client.get("/again")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("proxyd-reused"), Some("0"));
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn https_upstream_with_protocol_h2_agrees_on_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("proxyd test CA");
    let ca_path = write_ca(&dir, &ca);
    let both: &[&[u8]] = &[b"h2", b"http/1.1"];
    let backend = Backend::start(Options {
        tls: Some(tls_config(server_cert(&ca, &["localhost"]), both)),
        ..Options::default()
    })
    .await;
    let tls = format!("    tls: {{ ca: \"{ca_path}\" }}\n    protocol: h2\n");
    let proxy = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"https://localhost:{}\"]\n{tls}",
        backend.addr.port()
    )))
    .await;

    let client = H2::connect(proxy.addr).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post(format!("http://test.local/p/{i}"))
                .body(full(pattern(10_000 + i)))
                .unwrap();
            (i, c.send(req).await)
        }));
    }
    for t in tasks {
        let (i, got) = within("h2 over TLS", t).await.unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-echo-version"), Some("HTTP/2.0"));
        assert!(got.body == pattern(10_000 + i));
    }
    assert_eq!(
        *backend.alpn.lock().unwrap(),
        vec![Some(b"h2".to_vec())],
        "one TLS connection, h2 by ALPN"
    );
    for s in backend.requests() {
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.uri.scheme_str(), Some("https"));
    }

    // A backend that only speaks HTTP/1.1 cannot agree to h2: a clear 502.
    let h1_only = Backend::start(Options {
        tls: Some(tls_config(server_cert(&ca, &["localhost"]), &[b"http/1.1"])),
        ..Options::default()
    })
    .await;
    let proxy = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"https://localhost:{}\"]\n{tls}",
        h1_only.addr.port()
    )))
    .await;
    let got = within("h2 refused", get(proxy.addr, "/")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("proxyd-error"), Some("upstream-tls-failed"));
    assert!(h1_only.requests().is_empty());
}

#[tokio::test]
async fn grpc_trailers_pass_from_an_h2c_backend_to_an_h2_client() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    let backend = Backend::start(Options {
        h2c: true,
        trailers: Some(trailers),
        ..Options::default()
    })
    .await;
    let proxy = TestProxy::from_yaml(&config(&format!(
        "    servers: [\"127.0.0.1:{}\"]\n    protocol: h2c\n",
        backend.addr.port()
    )))
    .await;

    // One length-prefixed gRPC message: not compressed, 5 bytes.
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let mut client = H2::connect(proxy.addr).await;
    let req = Request::post("http://test.local/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(message.clone()))
        .unwrap();
    let got = within("gRPC call", client.send(req)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.version, Version::HTTP_2);
    assert!(got.body == message);
    let t = got
        .trailers
        .expect("the response trailers reach the client");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    assert_eq!(t.get("grpc-message").unwrap(), "ok");

    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(seen[0].uri.path(), "/echo.Echo/Say");
    assert_eq!(seen[0].headers["content-type"], "application/grpc");
    assert_eq!(seen[0].headers["te"], "trailers");
    assert!(seen[0].body == message);

    // Request trailers go the other way.
    let mut sent = HeaderMap::new();
    sent.insert("x-checksum", HeaderValue::from_static("abc"));
    let body = full(message.clone())
        .with_trailers(async move { Some(Ok(sent)) })
        .boxed();
    let req = Request::post("http://test.local/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap();
    let got = within("gRPC call with trailers", client.send(req)).await;
    assert_eq!(got.status, 200);
    let seen = backend.requests();
    let t = seen[1]
        .trailers
        .as_ref()
        .expect("request trailers reach the backend");
    assert_eq!(t.get("x-checksum").unwrap(), "abc");
    assert!(seen[1].body == message);
    assert_eq!(backend.connections(), 1);
}

// ---------------------------------------------------------------------------------------------
// proxyd check

const HEAD: &str = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n";

#[test]
fn check_names_the_place_of_a_missing_or_invalid_ca_file() {
    let yaml = format!(
        "{HEAD}    servers: [\"https://localhost:8443\"]\n    tls:\n      ca: certs/missing.pem\n"
    );
    let (ok, out) = check(&yaml);
    assert!(!ok, "{out}");
    assert!(out.contains("proxy.yaml:7:11: "), "{out}");
    assert!(
        out.contains("upstreams.app.tls.ca") && out.contains("missing.pem"),
        "{out}"
    );

    // Relative to the config file: found next to it, refused when it holds no certificate.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    let yaml = yaml.replace("certs/missing.pem", "ca.pem");
    std::fs::write(&path, &yaml).unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    let (ok, out) = check_path(&path);
    assert!(!ok, "{out}");
    assert!(out.contains("proxy.yaml:7:11: "), "{out}");
    assert!(out.contains("no PEM certificate"), "{out}");
    let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.path().join("ca.pem"), garbled).unwrap();
    let (ok, out) = check_path(&path);
    assert!(!ok && out.contains("proxy.yaml:7:11: "), "{out}");
    std::fs::write(dir.path().join("ca.pem"), new_ca("good").pem()).unwrap();
    let (ok, out) = check_path(&path);
    assert!(ok, "{out}");
}

#[test]
fn check_names_the_place_of_a_bad_protocol() {
    let (ok, out) = check(&format!(
        "{HEAD}    servers: [\"127.0.0.1:5001\"]\n    protocol: h3\n"
    ));
    assert!(!ok, "{out}");
    assert!(out.contains("proxy.yaml:6:15: "), "{out}");
    assert!(out.contains("h3") && out.contains("h2c"), "{out}");

    // h2 needs TLS (ALPN); h2c is cleartext; both are checked against the servers.
    let (ok, out) = check(&format!(
        "{HEAD}    servers: [\"127.0.0.1:5001\"]\n    protocol: h2\n"
    ));
    assert!(
        !ok && out.contains("proxy.yaml:5:15: ") && out.contains("h2c"),
        "{out}"
    );
    let (ok, out) = check(&format!(
        "{HEAD}    servers: [\"https://localhost:5001\"]\n    protocol: h2c\n"
    ));
    assert!(!ok && out.contains("proxy.yaml:5:15: "), "{out}");
    let (ok, out) = check(&format!(
        "{HEAD}    servers: [\"localhost:5001\"]\n    tls: {{ server_name: a.example }}\n"
    ));
    assert!(!ok && out.contains("only used with https://"), "{out}");
    let (ok, out) = check(&format!(
        "{HEAD}    servers: [\"https://localhost:5001\", \"unix:/run/app.sock\"]\n    protocol: http1\n    tls: {{ server_name: a.example }}\n"
    ));
    assert!(ok, "{out}");
}
