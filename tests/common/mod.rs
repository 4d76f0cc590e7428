//! The integration-test harness: real backends on port 0 (hyper and raw TCP), proxyd started
//! in-process on port 0 or as the real binary, and real clients (HTTP/1.1, h2c, raw bytes).
#![allow(dead_code)]

pub mod dns;
pub mod otlp;
pub mod procs;
pub mod tools;
pub mod workers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub type BoxBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A request as a test backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// Which accepted connection (0, 1, ...) it came on.
    pub conn: usize,
}

type Handler = Arc<dyn Fn(&Seen) -> Response<BoxBody> + Send + Sync>;

/// A real hyper HTTP/1.1 server on 127.0.0.1:0 that records what it receives.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl TestBackend {
    /// Answers 200 with the request body echoed and `x-echo-*` headers for method and URI.
    pub async fn echo() -> TestBackend {
        TestBackend::start(|seen| {
            let mut resp = Response::new(full(seen.body.clone()));
            let h = resp.headers_mut();
            h.insert("x-echo-method", seen.method.as_str().parse().unwrap());
            h.insert("x-echo-uri", seen.uri.to_string().parse().unwrap());
            resp
        })
        .await
    }

    pub async fn start(
        handler: impl Fn(&Seen) -> Response<BoxBody> + Send + Sync + 'static,
    ) -> TestBackend {
        TestBackend::start_on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Arc::new(handler),
        )
        .await
    }

    /// Like `start`, on a listener the test bound (127.0.0.2:PORT, say).
    pub async fn start_with(
        listener: TcpListener,
        handler: impl Fn(&Seen) -> Response<BoxBody> + Send + Sync + 'static,
    ) -> TestBackend {
        TestBackend::start_on(listener, Arc::new(handler)).await
    }

    async fn start_on(listener: TcpListener, handler: Handler) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (seen2, conns2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = &mut stopped => return,
                };
                let conn_id = conns2.fetch_add(1, Ordering::SeqCst);
                let (seen, handler) = (seen2.clone(), handler.clone());
                tokio::spawn(serve_backend_conn(stream, conn_id, seen, handler));
            }
        });
        TestBackend {
            addr,
            seen,
            connections,
            _stop: stop,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn serve_backend_conn(
    stream: TcpStream,
    conn_id: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let (seen, handler) = (seen.clone(), handler.clone());
        async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await;
            let (body, trailers) = match collected {
                Ok(c) => {
                    let trailers = c.trailers().cloned();
                    (c.to_bytes(), trailers)
                }
                Err(_) => (Bytes::new(), None),
            };
            let s = Seen {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body,
                trailers,
                conn: conn_id,
            };
            let resp = handler(&s);
            seen.lock().unwrap().push(s);
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A raw TCP backend: records every byte it receives and answers each request head with
/// `reply` (then keeps the connection open for more).
pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<u8>>>,
    pub connections: Arc<AtomicUsize>,
}

impl RawBackend {
    pub async fn start(reply: &'static [u8]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (rec, conns) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut pending = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(i) = find(&pending, b"\r\n\r\n") {
                            pending.drain(..i + 4);
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            received,
            connections,
        }
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

/// A raw TCP backend scripted per request: `answer` gets each request's head (its body, by
/// Content-Length, is read and dropped) and returns the bytes to send back and whether to
/// close the connection after them. Each close is announced to `wait_closed`.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
}

type Script = Arc<dyn Fn(&str) -> (Vec<u8>, bool) + Send + Sync>;

impl ScriptedBackend {
    pub async fn start(
        answer: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static,
    ) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (tell, closed) = tokio::sync::mpsc::unbounded_channel();
        let answer: Script = Arc::new(answer);
        let conns = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (answer, tell) = (answer.clone(), tell.clone());
                tokio::spawn(async move {
                    scripted_connection(stream, answer).await;
                    let _ = tell.send(());
                });
            }
        });
        ScriptedBackend {
            addr,
            connections,
            closed,
        }
    }

    /// Waits until the backend closed one more connection.
    pub async fn wait_closed(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.closed.recv())
            .await
            .expect("the backend closed no connection within 10 s");
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves one connection of a `ScriptedBackend`; returns once it is closed (dropped).
async fn scripted_connection(mut stream: TcpStream, answer: Script) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Some(end) = find(&pending, b"\r\n\r\n") else {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while pending.len() < end + 4 + length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        pending.drain(..end + 4 + length);
        let (reply, close) = answer(&head);
        if stream.write_all(&reply).await.is_err() || close {
            return;
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// proxyd running in this test's runtime, on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// proxyd's runtime state, to watch its upstreams (queue length, backends).
    pub state: Arc<arc_swap::ArcSwap<proxyd::state::Snapshot>>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Holds the config file.
    pub config_dir: tempfile::TempDir,
}

impl TestProxy {
    /// The config file proxyd was started from (rewrite it, then POST /reload).
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("test.yaml")
    }

    /// Starts proxyd on a full YAML config (its listeners should use port 0).
    pub async fn from_yaml(yaml: &str) -> TestProxy {
        // A real file, so that a reload (POST /reload) has something to read again.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.yaml");
        std::fs::write(&path, yaml).unwrap();
        let loaded = proxyd::config::load_file(&path)
            .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{yaml}"));
        let app = proxyd::app::App::start(&loaded, &mut Default::default()).unwrap();
        let addr = app.local_addrs()[0];
        let admin = app.admin_addr();
        let state = app.state();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        TestProxy {
            addr,
            admin,
            state,
            stop: Some(stop),
            done: Some(done),
            config_dir: dir,
        }
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Arc<proxyd::upstream::Upstream> {
        let snap = self.state.load();
        snap.upstreams
            .iter()
            .find(|u| &*u.name == name)
            .unwrap_or_else(|| panic!("no upstream {name}"))
            .clone()
    }

    /// Polls until `name`'s queue holds `n` requests (panics after 10 s).
    pub async fn wait_queued(&self, name: &str, n: usize) {
        let up = self.upstream(name);
        for _ in 0..1000 {
            if up.queued() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "upstream {name}: queue never held {n} (holds {})",
            up.queued()
        );
    }

    /// One upstream `app` over `servers`, debug headers on, plus `extra` top-level YAML.
    pub async fn to(servers: &[SocketAddr], extra: &str) -> TestProxy {
        TestProxy::from_yaml(&yaml_to(servers, extra)).await
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn yaml_to(servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [{}]\n{}",
        list.join(", "),
        extra
    )
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP/1.1 client connection (keeps the connection for several requests).
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1 { sender }
    }

    pub async fn send(&mut self, req: Request<BoxBody>) -> Got {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        read_whole(resp).await
    }

    pub async fn get(&mut self, path: &str) -> Got {
        self.send(
            Request::get(path)
                .header("host", "test.local")
                .body(full(""))
                .unwrap(),
        )
        .await
    }
}

pub async fn read_whole(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Got {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Got {
    H1::connect(addr).await.get(path).await
}

/// One POST of `body` on a fresh HTTP/1.1 connection.
pub async fn post(addr: SocketAddr, path: &str, body: &'static str) -> Got {
    H1::connect(addr)
        .await
        .send(
            Request::post(path)
                .header("host", "test.local")
                .body(full(body))
                .unwrap(),
        )
        .await
}

/// An h2c (prior knowledge) client connection; clones open more streams on it.
#[derive(Clone)]
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<BoxBody>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        H2 { sender }
    }

    pub async fn send(&mut self, req: Request<BoxBody>) -> Got {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        read_whole(resp).await
    }

    /// Like `send`, but a refused or reset stream is an error instead of a panic.
    pub async fn try_send(&mut self, req: Request<BoxBody>) -> Result<Got, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        Ok(read_whole(resp).await)
    }
}

/// A POST of no body to the admin listener at `admin` (no token).
pub async fn admin_post(admin: SocketAddr, path: &str) -> Got {
    H1::connect(admin)
        .await
        .send(
            Request::post(path)
                .header("host", "admin")
                .body(full(""))
                .unwrap(),
        )
        .await
}

/// The /status report of the admin listener at `admin`.
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    let got = tokio::time::timeout(Duration::from_secs(30), get(admin, "/status"))
        .await
        .expect("GET /status timed out");
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("application/json"));
    serde_json::from_slice(&got.body).expect("/status is JSON")
}

/// Polls /status until `cond` holds on it (30 s at most); returns that report.
pub async fn status_until(
    admin: SocketAddr,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(admin).await;
        if cond(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends raw bytes on a new connection and returns everything read until the proxy closes
/// the connection. Panics when the connection is still open after 10 s.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_close(&mut stream).await
}

pub async fn read_until_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after 10 s; read so far: {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The proxyd binary, started with a config file, killed on drop.
pub struct ProxydProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr_lines: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

pub fn proxyd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_proxyd")
}

/// `proxyd check` on `yaml` (written as proxy.yaml in a temp dir): success, and its output.
pub fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    check_path(&path)
}

/// `proxyd check -c path`: success, and stdout plus stderr.
pub fn check_path(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(proxyd_bin())
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

impl ProxydProcess {
    /// Writes `yaml` to a temp dir, starts `proxyd -c`, and waits for its "listening" line.
    pub fn start(yaml: &str) -> ProxydProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut p = ProxydProcess::start_file(&path);
        p._dir = Some(dir);
        p
    }

    /// Starts `proxyd -c path` and waits for its "listening" line.
    pub fn start_file(path: &std::path::Path) -> ProxydProcess {
        let mut cmd = Command::new(proxyd_bin());
        cmd.arg("-c").arg(path);
        ProxydProcess::spawn(cmd)
    }

    /// Starts `cmd` (proxyd with its arguments and environment) and waits for its
    /// "listening" line.
    pub fn spawn(mut cmd: Command) -> ProxydProcess {
        use std::io::BufRead;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening") && line.contains("addr=") && !line.contains("admin") {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .unwrap()
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .to_string();
                    let _ = tx.send(addr);
                }
                lines2.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("proxyd did not start: {:?}", lines.lock().unwrap()))
            .parse()
            .unwrap();
        ProxydProcess {
            child,
            addr,
            stderr_lines: lines,
            _dir: None,
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit (up to 60 s) and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for ProxydProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two servers; the first request either gets is read and its connection closed (the
/// backend "died"), the rest are answered. Returns the request heads in arrival order.
pub async fn dies_once() -> (Vec<SocketAddr>, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let died = Arc::new(AtomicBool::new(false));
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let (heads, died) = (heads.clone(), died.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (heads, died) = (heads.clone(), died.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while find(&buf, b"\r\n\r\n").is_none() {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    if died.swap(true, Ordering::SeqCst) {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                            )
                            .await;
                    }
                });
            }
        });
    }
    (addrs, heads)
}

pub fn traceparent_in(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("traceparent")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no traceparent in {head}"))
}
