//! Slow clients never hold a worker (nginx's request and response buffering): for a `workers:`
//! upstream, proxyd reads a request body whole (past `buffer_body` into a temp file) before it
//! takes a worker, and reads the worker's response ahead of a slow client, freeing the worker
//! as soon as it has answered. The workers are real one-request-at-a-time processes
//! (examples/app.py, or a raw-socket Python script for trailers and mid-body deaths), one each,
//! so "the worker was free" shows as a second request being served.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::procs::*;
use common::*;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app.py");
/// The bound on every wait for something to happen.
const PATIENCE: Duration = Duration::from_secs(30);

/// A worker speaking raw HTTP/1.1, one connection at a time, for what app.py cannot send:
/// chunked trailers, and a body cut short by the process dying.
const RAW_WORKER: &str = r#"
import os, socket
srv = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            got = conn.recv(65536)
            if not got:
                break
            head += got
        parts = head.split(b" ", 2)
        path = parts[1].decode() if len(parts) > 2 else ""
        if path == "/trailers":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n"
                         b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"
                         b"0\r\nx-sum: 11\r\n\r\n")
        elif path == "/die":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100000)
            os._exit(1)
        elif path == "/die-chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n186a0\r\n"
                         + b"x" * 100000 + b"\r\n")
            os._exit(1)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
"#;

// ---------------------------------------------------------------------------------------------
// Processes

/// A proxy over one upstream `app` of one worker running `command`, plus `extra` top-level
/// YAML; returns once the worker answers. Health checks are patient: a busy single-threaded
/// worker cannot answer them, and must not be taken for a hung one here.
async fn one_worker(marker: &Marker, command: &[&str], extra: &str) -> TestProxy {
    let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nheaders:\n  debug: true\ntimeouts:\n  shutdown_grace: 5s\n\
         {extra}upstreams:\n  app:\n    workers:\n      command: [{}]\n      count: 1\n      \
         env: {{{MARKER_VAR}: \"{}\"}}\n      health: {{path: /healthz, interval: 200ms, timeout: 5s}}\n      \
         start_timeout: 20s\n      kill_timeout: 2s\n      graceful_timeout: 5s\n",
        command.join(", "),
        marker.0
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    wait_serving(proxy.addr, "/healthz").await;
    proxy
}

async fn app_worker(marker: &Marker, extra: &str) -> TestProxy {
    one_worker(marker, &[python(), APP], extra).await
}

/// A proxy over one RAW_WORKER, plus `extra` top-level YAML; the returned directory holds
/// its script.
async fn raw_worker(marker: &Marker, extra: &str) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("raw_worker.py");
    std::fs::write(&script, RAW_WORKER).unwrap();
    let proxy = one_worker(marker, &[python(), script.to_str().unwrap()], extra).await;
    (proxy, dir)
}

/// Polls GET `path` until it answers 200.
async fn wait_serving(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = get(addr, path).await;
        if got.status == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still {} after {PATIENCE:?}",
            got.status
        );
        sleep(Duration::from_millis(20)).await;
    }
}

async fn pid_of_next(addr: SocketAddr) -> u32 {
    let got = get(addr, "/pid").await;
    assert_eq!(got.status, StatusCode::OK, "GET /pid: {got:?}");
    got.text().trim().parse().expect("/pid answers a number")
}

/// `n` bytes that are not a repeating pattern a short or shifted copy could match.
fn pattern(n: usize) -> Bytes {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn post(path: &str, body: BoxBody) -> Request<BoxBody> {
    Request::post(path)
        .header("host", "test.local")
        .body(body)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Request side

/// A client trickling its body holds no worker: with `buffer_body: 4`, the 10-byte upload
/// would stream (and the single wsgiref worker would sit reading it), but for a workers
/// upstream proxyd reads it whole first. The trickle sends its last byte only once another
/// client's GET on the same worker has completed (bounded by PATIENCE, which fails the test).
#[tokio::test]
async fn a_trickled_upload_does_not_take_the_worker() {
    let marker = Marker::new("trickle");
    let proxy = app_worker(&marker, "limits:\n  buffer_body: 4\n").await;
    let pid = pid_of_next(proxy.addr).await;

    let (started_tx, started) = oneshot::channel::<()>();
    let (get_done, get_done_rx) = oneshot::channel::<()>();
    let addr = proxy.addr;
    let trickle = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut started_tx = Some(started_tx);
        let mut get_done_rx = Some(get_done_rx);
        let mut get_done_first = false;
        for (i, b) in b"0123456789".iter().enumerate() {
            if i == 9 {
                // The last byte: the other client must have been served by now.
                let rx = get_done_rx.take().unwrap();
                get_done_first = timeout(PATIENCE, rx).await.is_ok_and(|r| r.is_ok());
            }
            s.write_all(&[*b]).await.unwrap();
            if i == 4 {
                // More than buffer_body has gone out: unbuffered, the upload is at the worker.
                let _ = started_tx.take().unwrap().send(());
            }
            sleep(Duration::from_millis(50)).await;
        }
        (get_done_first, read_until_close(&mut s).await)
    });

    started.await.unwrap();
    let other = timeout(PATIENCE, get(proxy.addr, "/pid"))
        .await
        .expect("GET /pid was served while the upload trickled");
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(
        other.text().trim(),
        pid.to_string(),
        "the same single worker"
    );
    get_done.send(()).unwrap();

    let (get_done_first, answer) = trickle.await.unwrap();
    assert!(
        get_done_first,
        "the GET completed only after the upload ended: the upload held the worker"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n0123456789"), "{answer}");
    proxy.shutdown().await;
}

/// A body past buffer_body is spooled through a temp file and reaches the worker byte-exact
/// with a Content-Length (app.py's /echo reads exactly CONTENT_LENGTH bytes), whether the
/// client sent a length or chunks.
#[tokio::test]
async fn a_large_upload_is_spooled_and_arrives_byte_exact() {
    let marker = Marker::new("large-upload");
    let proxy = app_worker(&marker, "").await;
    let data = pattern(5 * 1024 * 1024);
    let mut client = H1::connect(proxy.addr).await;

    let got = client.send(post("/echo", full(data.clone()))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), data.len());
    assert!(got.body == data, "echoed body differs");

    let pieces: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = data
        .chunks(100_000)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let chunked = StreamBody::new(futures_util::stream::iter(pieces)).boxed();
    let got = client.send(post("/echo", chunked)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body == data, "echoed chunked body differs");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Response side

/// A slow reader of a large response holds no worker: the worker's 64 MiB answer is read
/// ahead (1 MiB in memory, the rest in a temp file) and the single worker serves another
/// request while the first client has not read a byte of its body. Unbuffered, the socket
/// buffers in between (a small client receive buffer, at most 4 MiB send and 32 MiB receive
/// buffers per socket here) hold far less, so the worker would still be writing.
#[tokio::test]
async fn a_slow_reader_does_not_hold_the_worker() {
    let marker = Marker::new("slow-reader");
    let proxy = app_worker(&marker, "").await;
    let pid = pid_of_next(proxy.addr).await;
    let data = pattern(64 * 1024 * 1024);

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap();
    let (mut slow, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = timeout(
        PATIENCE,
        slow.send_request(post("/echo", full(data.clone()))),
    )
    .await
    .expect("the response head came")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The first client reads nothing yet; the one worker is free for another request.
    let other = timeout(PATIENCE, get(proxy.addr, "/pid"))
        .await
        .expect("GET /pid was served while the first client had not read its body");
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(
        other.text().trim(),
        pid.to_string(),
        "the same single worker"
    );

    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), data.len());
    assert!(body == data, "buffered response body differs");
    proxy.shutdown().await;
}

#[tokio::test]
async fn trailers_survive_response_buffering() {
    let marker = Marker::new("trailers");
    let (proxy, _dir) = raw_worker(&marker, "").await;
    let got = H1::connect(proxy.addr)
        .await
        .send(
            Request::get("/trailers")
                .header("host", "test.local")
                .header("te", "trailers")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "hello world");
    let trailers = got.trailers.expect("the client got the worker's trailers");
    assert_eq!(trailers["x-sum"], "11");
    proxy.shutdown().await;
}

/// A worker that dies mid-body after its head went to the client (the body outgrew
/// `buffer_response`) leaves its client with an error, never a short body that looks
/// complete, whether the worker declared a length or sent chunks.
#[tokio::test]
async fn a_worker_dying_mid_body_is_an_error_for_the_client() {
    for path in ["/die", "/die-chunked"] {
        let marker = Marker::new("dies-mid-body");
        let small = "limits:\n  buffer_response: 64KiB\n";
        let (proxy, _dir) = raw_worker(&marker, small).await;
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "test.local")
            .body(full(""))
            .unwrap();
        let resp = timeout(PATIENCE, client.send_request(req))
            .await
            .expect("the response head came")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let mut body = resp.into_body();
        let mut received = 0;
        let failed = loop {
            match timeout(PATIENCE, body.frame())
                .await
                .expect("the body ends")
            {
                Some(Ok(frame)) => received += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        assert!(
            failed,
            "{path}: the body ended cleanly after {received} bytes"
        );
        assert!(received <= 100_000, "{path}: {received} bytes");
        proxy.shutdown().await;
    }
}

/// Before its head went out (the body still fits `buffer_response`), a worker's death is a
/// failed attempt: the GET goes once to the replacement worker, which dies the same way, and
/// the client gets a clean 502, not a cut 200.
#[tokio::test]
async fn a_worker_dying_before_the_head_is_committed_is_a_502() {
    for path in ["/die", "/die-chunked"] {
        let marker = Marker::new("dies-before-commit");
        let (proxy, _dir) = raw_worker(&marker, "").await;
        let got = timeout(PATIENCE, get(proxy.addr, path))
            .await
            .expect("an answer");
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{path}: {got:?}");
        assert_eq!(got.header("proxyd-error"), Some("upstream-closed-early"));
        let stats = &proxy.upstream("app").stats;
        assert_eq!(
            stats
                .retried_replayed
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{path}: replayed once, on the replacement"
        );
        proxy.shutdown().await;
        marker.wait_none_left().await;
    }
}
