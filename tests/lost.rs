//! Nothing lost: a backend that dies mid-response leaves its client with a visibly truncated
//! response (HTTP/1.1: the connection closes short of the declared length or without the last
//! chunk; h2: the stream is reset), never a complete-looking 200; a POST whose backend died
//! after taking the body is answered 502 and never sent again; request bodies arrive byte-exact
//! under concurrent load, over HTTP/1.1 and h2.
//!
//! (Workers' buffered responses dying mid-body are in tests/buffering.rs; the retry rules with
//! one failing and one good backend in tests/admission.rs.)

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no end after 60 s"))
}

/// Reads one request head and its Content-Length body off `s`; None when the peer closed
/// first. Returns the head and the body.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// A backend dying mid-response

/// A backend that answers every request with `head` and then `body_part`, and closes: a
/// response cut short of what its head promised.
async fn dies_mid_response(head: &'static str, body_part: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body_part = body_part.clone();
            tokio::spawn(async move {
                if read_request(&mut s).await.is_some() {
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body_part).await;
                    let _ = s.flush().await;
                }
                // Dropped: the connection closes mid-body.
            });
        }
    });
    addr
}

/// 100 of the 1000 bytes promised.
const SIZED: &str = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
/// A chunk of 0x64 = 100 bytes, of which 50 come.
const CHUNKED_MID_CHUNK: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\n";
/// Two whole chunks, then no last chunk.
const CHUNKED_NO_END: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";

fn cases() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        (
            "Content-Length 1000, 100 bytes sent",
            SIZED,
            vec![b'x'; 100],
        ),
        (
            "chunked, stops mid-chunk",
            CHUNKED_MID_CHUNK,
            vec![b'y'; 50],
        ),
        (
            "chunked, stops between chunks",
            CHUNKED_NO_END,
            b"5\r\nhello\r\n6\r\n world\r\n".to_vec(),
        ),
    ]
}

#[tokio::test]
async fn a_backend_dying_mid_response_truncates_the_http1_response_visibly() {
    for (what, head, part) in cases() {
        let backend = dies_mid_response(head, part).await;
        let proxy = TestProxy::to(&[backend], "").await;
        let reply = within(
            what,
            raw(
                proxy.addr,
                b"GET /die HTTP/1.1\r\nHost: a\r\nUser-Agent: lost\r\n\r\n",
            ),
        )
        .await;
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no response head: {reply:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{what}: {reply:?}");
        let head = head.to_ascii_lowercase();
        if head.contains("content-length:") {
            // The client is told the real length and gets less: the close says it is cut.
            assert!(head.contains("content-length: 1000"), "{what}: {head}");
            assert!(body.len() < 1000, "{what}: {} body bytes", body.len());
        } else {
            assert!(
                head.contains("transfer-encoding: chunked"),
                "{what}: {head}"
            );
            assert!(
                !body.ends_with("0\r\n\r\n"),
                "{what}: the truncated body was ended as if complete: {body:?}"
            );
        }
        // And a client library says so.
        let result = within(what, h1_body_result(proxy.addr)).await;
        assert!(
            result.is_err(),
            "{what}: hyper's client read a complete body: {result:?}"
        );
        proxy.shutdown().await;
    }
}

/// One GET over hyper's HTTP/1.1 client (asserting a 200 head): Ok(body length), or the
/// body's error.
async fn h1_body_result(addr: SocketAddr) -> Result<usize, String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/die")
        .header("host", "a")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    assert_eq!(resp.status(), StatusCode::OK);
    body_result(resp.into_body()).await
}

async fn body_result(mut body: Incoming) -> Result<usize, String> {
    let mut n = 0;
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .map_err(|_| "the body neither ended nor failed".to_string())?
    {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
            Err(e) => {
                // The whole chain: hyper's own message, then h2's (the reset and its reason).
                let mut msg = format!("after {n} bytes: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                return Err(msg);
            }
        }
    }
    Ok(n)
}

async fn h2_sender(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn a_backend_dying_mid_response_resets_the_h2_stream() {
    for (what, head, part) in cases() {
        let backend = dies_mid_response(head, part).await;
        let proxy = TestProxy::to(&[backend], "").await;
        let mut sender = h2_sender(proxy.addr).await;
        // Twice on one connection: a reset stream leaves the connection in service.
        for attempt in 1..=2 {
            let req = Request::get("http://a/die").body(full("")).unwrap();
            let resp = within(what, sender.send_request(req)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{what} #{attempt}");
            let result = within(what, body_result(resp.into_body())).await;
            let err = result.expect_err(&format!("{what} #{attempt}: the h2 body ended cleanly"));
            assert!(
                err.contains("stream error received"),
                "{what} #{attempt}: not a stream reset: {err}"
            );
        }
        proxy.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Never replayed

/// A request as a raw backend read it: head and body.
type Taken = (String, Vec<u8>);

/// A backend that reads each request whole, records it, and closes without answering.
struct DiesAfterBody {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Taken>>>,
}

impl DiesAfterBody {
    async fn start() -> DiesAfterBody {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    if let Some(req) = read_request(&mut s).await {
                        seen.lock().unwrap().push(req);
                    }
                });
            }
        });
        DiesAfterBody { addr, seen }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut data);
    data
}

/// Every backend takes the request and dies: a POST is sent once in all and answered 502; an
/// idempotent request (PUT, or POST with Idempotency-Key) is replayed exactly once; a body too
/// big to buffer is never replayed. Over HTTP/1.1 and h2.
#[tokio::test]
async fn a_request_whose_backend_died_after_the_body_is_not_replayed_unless_idempotent() {
    let small = pattern(5000, 1);
    let big = pattern(3 * 1024 * 1024, 2);
    // (what, method, idempotency key, body, times the backends should see it)
    let cases: [(&str, &str, bool, &Vec<u8>, usize); 5] = [
        ("POST", "POST", false, &small, 1),
        ("POST, streamed body", "POST", false, &big, 1),
        ("PUT", "PUT", false, &small, 2),
        ("POST with Idempotency-Key", "POST", true, &small, 2),
        ("PUT, streamed body", "PUT", false, &big, 1),
    ];
    for h2 in [false, true] {
        for (what, method, key, body, times) in cases {
            let what = format!("{what} over {}", if h2 { "h2" } else { "HTTP/1.1" });
            let a = DiesAfterBody::start().await;
            let b = DiesAfterBody::start().await;
            let proxy = TestProxy::to(&[a.addr, b.addr], "limits: { buffer_body: 1MiB }\n").await;
            let path = format!("/once/{}", what.replace(' ', "-"));
            let uri = if h2 { format!("http://a{path}") } else { path };
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "a");
            if key {
                req = req.header("idempotency-key", "k1");
            }
            let req = req.body(full(body.clone())).unwrap();
            let got = if h2 {
                within(&what, H2::connect(proxy.addr).await.send(req)).await
            } else {
                within(&what, H1::connect(proxy.addr).await.send(req)).await
            };
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{what}");
            assert_eq!(
                got.header("proxyd-error"),
                Some("upstream-closed-early"),
                "{what}"
            );
            let seen: Vec<Taken> = a
                .seen
                .lock()
                .unwrap()
                .iter()
                .chain(b.seen.lock().unwrap().iter())
                .cloned()
                .collect();
            assert_eq!(
                seen.len(),
                times,
                "{what}: the backends saw it {} times",
                seen.len()
            );
            for (head, got_body) in &seen {
                assert!(head.starts_with(method), "{what}: {head}");
                assert!(
                    got_body == body,
                    "{what}: the backend got {} bytes, not the {} sent",
                    got_body.len(),
                    body.len()
                );
            }
            proxy.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Byte-exact under load

fn checksum(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(data);
    h.finish()
}

/// A hyper backend that hashes each request body as it streams in and answers its length and
/// checksum (`x-len`, `x-sum`); it counts the requests per `x-id`.
struct Summer {
    addr: SocketAddr,
    ids: Arc<Mutex<HashMap<String, usize>>>,
}

impl Summer {
    async fn start() -> Summer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ids = Arc::new(Mutex::new(HashMap::new()));
        let ids2 = ids.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let ids = ids2.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let ids = ids.clone();
                    async move {
                        let id = req
                            .headers()
                            .get("x-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        *ids.lock().unwrap().entry(id).or_insert(0) += 1;
                        let mut body = req.into_body();
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        let mut len = 0usize;
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(f) => {
                                    if let Some(d) = f.data_ref() {
                                        h.write(d);
                                        len += d.len();
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                        let resp = Response::builder()
                            .header("x-len", len)
                            .header("x-sum", h.finish())
                            .body(full(""))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Summer { addr, ids }
    }
}

/// A body without a declared length (sent chunked over HTTP/1.1), in pieces of `piece` bytes.
fn unsized_body(data: Bytes, piece: usize) -> BoxBody {
    let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = (0..data
        .len())
        .step_by(piece.max(1))
        .map(|i| Ok(Frame::data(data.slice(i..(i + piece).min(data.len())))))
        .collect();
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

const LOAD_REQUESTS: usize = 200;
const LOAD_CONNECTIONS: usize = 16;
const MAX_BODY: usize = 1024 * 1024;

/// 200 requests with random bodies of 0 to 1 MiB over 16 connections at once, sized and
/// unsized, half under `buffer_body` and half streamed past it: each arrives once, byte-exact.
async fn bodies_under_load(h2: bool) {
    let seed = fastrand::u64(..);
    let proto = if h2 { "h2" } else { "HTTP/1.1" };
    println!("{proto} load seed: {seed}");
    let backend = Summer::start().await;
    let proxy = TestProxy::to(&[backend.addr], "limits: { buffer_body: 512KiB }\n").await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..LOAD_CONNECTIONS {
        let addr = proxy.addr;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ c as u64);
            let mut h1 = if h2 {
                None
            } else {
                Some(H1::connect(addr).await)
            };
            let mut h2c = if h2 {
                Some(H2::connect(addr).await)
            } else {
                None
            };
            for i in (c..LOAD_REQUESTS).step_by(LOAD_CONNECTIONS) {
                let len = rng.usize(..=MAX_BODY);
                let mut data = vec![0u8; len];
                rng.fill(&mut data);
                let data = Bytes::from(data);
                let sum = checksum(&data);
                let sized = rng.bool();
                let id = format!("{proto}-{i}");
                let uri = if h2 {
                    format!("http://a/load/{i}")
                } else {
                    format!("/load/{i}")
                };
                let req = Request::put(uri).header("host", "a").header("x-id", &id);
                let req = if sized {
                    req.header("content-length", len).body(full(data))
                } else {
                    // Over h2, a long run of DATA frames under 256 bytes is a flood that the
                    // server's h2 answers with GOAWAY (ENHANCE_YOUR_CALM): pieces stay above
                    // it there. HTTP/1.1 chunks may be as small as one byte.
                    let least = if h2 { 1024 } else { 1 };
                    req.body(unsized_body(data, least + rng.usize(..64 * 1024)))
                }
                .unwrap();
                let what = format!("{id} ({len} bytes, sized: {sized}, seed {seed})");
                let got = match (&mut h1, &mut h2c) {
                    (Some(c), _) => within(&what, c.send(req)).await,
                    (_, Some(c)) => within(&what, c.send(req)).await,
                    _ => unreachable!(),
                };
                assert_eq!(got.status, StatusCode::OK, "{what}: {}", got.text());
                assert_eq!(
                    got.header("x-len"),
                    Some(len.to_string().as_str()),
                    "{what}"
                );
                assert_eq!(
                    got.header("x-sum"),
                    Some(sum.to_string().as_str()),
                    "{what}"
                );
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), LOAD_REQUESTS);
    let ids = backend.ids.lock().unwrap().clone();
    assert_eq!(
        ids.len(),
        LOAD_REQUESTS,
        "{proto}: requests lost or unnamed"
    );
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "{proto}: seen more than once: {doubled:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_arrive_byte_exact_under_concurrent_http1_load() {
    bodies_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_arrive_byte_exact_under_concurrent_h2_load() {
    bodies_under_load(true).await;
}
