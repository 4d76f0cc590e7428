//! Transparency: what goes through proxyd arrives as the other side sent it. Bodies byte-exact in
//! every framing, trailers, the header rules (hop-by-hop, X-Forwarded-*, Host, request ids),
//! keepalive reuse, stale pooled connections, pipelining, routing and upstream failures.

mod common;
use common::*;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const DEBUG: &str = "headers: { debug: true }\n";

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Deterministic pseudo-random bytes (xorshift64*): a lost, doubled or reordered byte shows.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// Compares bodies without printing megabytes on failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first_diff:?}",
            got.len(),
            want.len()
        );
    }
}

/// A body without a declared length (so HTTP/1.1 sends it chunked), in `piece`-byte frames,
/// then `trailers`.
fn chunked(data: Bytes, piece: usize, trailers: Option<HeaderMap>) -> BoxBody {
    let mut frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = (0..data
        .len())
        .step_by(piece)
        .map(|i| Ok(Frame::data(data.slice(i..(i + piece).min(data.len())))))
        .collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn request(method: Method, path: &str, host: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
}

/// Echoes the request body; chunked (no length) when the request carries `x-reply-chunked`.
async fn echo_either_framing() -> TestBackend {
    TestBackend::start(|seen| {
        if seen.headers.contains_key("x-reply-chunked") {
            Response::new(chunked(seen.body.clone(), 8192, None))
        } else {
            Response::new(full(seen.body.clone()))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn bodies_are_byte_exact_both_ways_in_every_framing() {
    let backend = echo_either_framing().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    // 10 MiB is above the default buffer_body (1 MiB): the request streams.
    let buffer_body = 1024 * 1024;
    for (seed, size) in [0usize, 1, 64 * 1024, 10 * 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let data = pattern(size, seed as u64 + 1);
        for chunked_request in [false, true] {
            let what = format!("{size} B, chunked request: {chunked_request}");
            let req = if chunked_request {
                request(Method::POST, "/echo", "test.local")
                    .header("x-reply-chunked", "1")
                    .body(chunked(data.clone(), 16 * 1024, None))
            } else {
                request(Method::PUT, "/echo", "test.local")
                    .header("content-length", size)
                    .body(full(data.clone()))
            };
            let got = within(&what, client.send(req.unwrap())).await;
            assert_eq!(got.status, 200, "{what}");
            assert_same(&got.body, &data, &format!("client got back ({what})"));
            let seen = backend.requests().pop().expect("backend saw the request");
            assert_same(&seen.body, &data, &format!("backend received ({what})"));

            // Framing as the backend saw it: buffered bodies get their exact length; a
            // streamed body keeps the client's framing.
            if size > buffer_body && chunked_request {
                assert_eq!(header(&seen.headers, "transfer-encoding"), Some("chunked"));
                assert!(!seen.headers.contains_key("content-length"), "{what}");
            } else {
                let len = size.to_string();
                assert_eq!(
                    header(&seen.headers, "content-length"),
                    Some(len.as_str()),
                    "{what}"
                );
                assert!(!seen.headers.contains_key("transfer-encoding"), "{what}");
            }
            // Framing as the client saw the response: the backend's, end to end.
            if chunked_request {
                assert_eq!(got.header("transfer-encoding"), Some("chunked"), "{what}");
                assert_eq!(got.header("content-length"), None, "{what}");
            } else {
                assert_eq!(
                    got.header("content-length"),
                    Some(size.to_string().as_str()),
                    "{what}"
                );
            }
        }
    }
    assert_eq!(backend.request_count(), 8);
}

#[tokio::test]
async fn head_204_and_304_carry_no_body() {
    let backend = TestBackend::start(|seen| match seen.uri.path() {
        // hyper answers HEAD with this length and no body.
        "/resource" => Response::new(full(pattern(1234, 7))),
        "/no-content" => Response::builder().status(204).body(full("")).unwrap(),
        "/not-modified" => Response::builder()
            .status(304)
            .header("etag", "\"v1\"")
            .body(full(""))
            .unwrap(),
        _ => Response::new(full("after")),
    })
    .await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;

    let head = within(
        "HEAD",
        client.send(
            request(Method::HEAD, "/resource", "test.local")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1234"));
    assert!(head.body.is_empty());

    let no_content = within("204", client.get("/no-content")).await;
    assert_eq!(no_content.status, 204);
    assert!(no_content.body.is_empty());
    assert_eq!(no_content.header("transfer-encoding"), None);

    let not_modified = within("304", client.get("/not-modified")).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    assert!(not_modified.body.is_empty());

    // Had any body byte leaked, this response would be garbled.
    let after = within("after", client.get("/after")).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "after");
    assert_eq!(backend.request_count(), 4);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

/// A backend that declares a length on HEAD and 304 and sends no body must not make proxyd
/// wait for one.
#[tokio::test]
async fn declared_length_without_body_on_head_and_304() {
    let head_backend = RawBackend::start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").await;
    let nm_backend = RawBackend::start(
        b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 10\r\n\r\n",
    )
    .await;
    for (addr, method, status) in [
        (head_backend.addr, Method::HEAD, 200),
        (nm_backend.addr, Method::GET, 304),
    ] {
        let proxy = TestProxy::to(&[addr], DEBUG).await;
        let mut client = H1::connect(proxy.addr).await;
        for i in 0..2 {
            let got = within(
                &format!("{method} #{i}"),
                client.send(request(method.clone(), "/", "t").body(full("")).unwrap()),
            )
            .await;
            assert_eq!(got.status, status);
            assert!(got.body.is_empty());
            if method == Method::HEAD {
                assert_eq!(got.header("content-length"), Some("10"));
            }
            // hyper's server writes no Content-Length on a 304 whatever the backend said;
            // what matters is that no body is awaited or sent.
            if i == 1 {
                assert_eq!(got.header("proxyd-reused"), Some("1"), "{method}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trailers

#[tokio::test]
async fn request_trailers_reach_the_backend() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    // Small (buffered) and 2 MiB (streamed past buffer_body).
    for (seed, size) in [(1, 1000usize), (2, 2 * 1024 * 1024)] {
        let data = pattern(size, seed);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from(seed * 1111));
        let req = request(Method::POST, "/upload", "test.local")
            .header("trailer", "x-checksum")
            .body(chunked(data.clone(), 32 * 1024, Some(trailers)))
            .unwrap();
        let got = within("trailers", client.send(req)).await;
        assert_eq!(got.status, 200);
        assert_same(&got.body, &data, "echoed body");
        let seen = backend.requests().pop().unwrap();
        assert_same(&seen.body, &data, "backend body");
        let t = seen
            .trailers
            .unwrap_or_else(|| panic!("{size} B: backend got no trailers"));
        assert_eq!(
            header(&t, "x-checksum"),
            Some((seed * 1111).to_string().as_str())
        );
        assert_eq!(header(&seen.headers, "transfer-encoding"), Some("chunked"));
    }
}

/// A backend answering in chunks with a `x-sum` trailer (hyper sends it only to a request with
/// `TE: trailers`).
async fn trailer_backend() -> TestBackend {
    TestBackend::start(|_| {
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("42"));
        Response::builder()
            .header("trailer", "x-sum")
            .body(chunked(
                Bytes::from_static(b"data then trailers"),
                5,
                Some(t),
            ))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn response_trailers_reach_an_h1_client_that_asked_for_them() {
    let backend = trailer_backend().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    let got = within(
        "h1 trailers",
        client.send(
            request(Method::GET, "/t", "test.local")
                .header("te", "trailers")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "data then trailers");
    let t = got.trailers.expect("client got no trailers");
    assert_eq!(header(&t, "x-sum"), Some("42"));
    assert_eq!(
        header(&backend.requests()[0].headers, "te"),
        Some("trailers")
    );
}

#[tokio::test]
async fn response_trailers_reach_an_h2_client() {
    let backend = trailer_backend().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H2::connect(proxy.addr).await;
    // An h2 client may always receive trailers; it need not send `te: trailers`.
    let got = within(
        "h2 trailers",
        client.send(Request::get("http://test.local/t").body(full("")).unwrap()),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.text(), "data then trailers");
    let t = got.trailers.expect("h2 client got no trailers");
    assert_eq!(header(&t, "x-sum"), Some("42"));
}

// ---------------------------------------------------------------------------------------------
// Headers

fn is_request_id(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed_and_forwarding_headers_set() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    let req = request(Method::GET, "/h", "test.local")
        .header("connection", "keep-alive, x-hop-custom")
        .header("x-hop-custom", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        // An Upgrade header without `Connection: upgrade` asks for nothing.
        .header("upgrade", "h2c")
        .header("te", "gzip")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-end-to-end", "kept")
        .body(full(""))
        .unwrap();
    let got = within("hop-by-hop", client.send(req)).await;
    assert_eq!(got.status, 200);
    let seen = backend.requests().pop().unwrap();
    let h = &seen.headers;
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "x-hop-custom",
        "expect",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the backend: {h:?}");
    }
    assert_eq!(header(h, "x-end-to-end"), Some("kept"));
    assert_eq!(header(h, "x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(header(h, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(h, "x-forwarded-host"), Some("test.local"));
    assert_eq!(header(h, "host"), Some("test.local"));
    assert!(is_request_id(header(h, "x-request-id")), "{h:?}");
    assert_eq!(seen.version, Version::HTTP_11);

    // `TE: trailers` survives (alone); a client's request id is kept; two X-Forwarded-For
    // fields are joined with the client appended.
    let req = request(Method::GET, "/h2", "test.local:8080")
        .header("te", "trailers, deflate;q=0.5")
        .header("x-request-id", "client-chosen-id")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-for", "198.51.100.2")
        .header("x-forwarded-host", "spoofed.example")
        .body(full(""))
        .unwrap();
    within("second", client.send(req)).await;
    let seen = backend.requests().pop().unwrap();
    let h = &seen.headers;
    assert_eq!(header(h, "te"), Some("trailers"));
    assert_eq!(header(h, "x-request-id"), Some("client-chosen-id"));
    assert_eq!(
        header(h, "x-forwarded-for"),
        Some("198.51.100.1, 198.51.100.2, 127.0.0.1")
    );
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(header(h, "x-forwarded-host"), Some("test.local:8080"));
    assert_eq!(header(h, "host"), Some("test.local:8080"));

    // Each request gets its own id.
    within("third", client.get("/h3")).await;
    within("fourth", client.get("/h4")).await;
    let all = backend.requests();
    let (a, b) = (
        header(&all[2].headers, "x-request-id"),
        header(&all[3].headers, "x-request-id"),
    );
    assert!(is_request_id(a) && is_request_id(b));
    assert_ne!(a, b);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let backend = TestBackend::start(|_| {
        Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("keep-alive", "timeout=5, max=100")
            .header("proxy-connection", "keep-alive")
            .header("upgrade", "foo/1")
            .header("x-end-to-end", "kept")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    for _ in 0..2 {
        let got = within("response hop-by-hop", client.get("/")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "ok");
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "x-resp-hop",
        ] {
            assert!(
                got.headers.get(gone).is_none(),
                "{gone} reached the client: {:?}",
                got.headers
            );
        }
        assert_eq!(got.header("x-end-to-end"), Some("kept"));
    }
}

#[tokio::test]
async fn host_is_replaced_by_the_backend_address_when_not_preserved() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(
        &[backend.addr],
        "headers: { debug: true, preserve_host: false }\n",
    )
    .await;
    let got = within("get", get(proxy.addr, "/x")).await;
    assert_eq!(got.status, 200);
    let seen = backend.requests().pop().unwrap();
    assert_eq!(
        header(&seen.headers, "host"),
        Some(backend.addr.to_string().as_str())
    );
    assert_eq!(
        header(&seen.headers, "x-forwarded-host"),
        Some("test.local")
    );
}

#[tokio::test]
async fn request_id_header_name_is_configurable() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "headers: { request_id: x-trace }\n").await;
    let mut client = H1::connect(proxy.addr).await;
    let first = within("generated", client.get("/a")).await;
    let second = within(
        "kept",
        client.send(
            request(Method::GET, "/b", "test.local")
                .header("x-trace", "abc-123")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await;
    let seen = backend.requests();
    assert!(is_request_id(header(&seen[0].headers, "x-trace")));
    assert_eq!(header(&seen[1].headers, "x-trace"), Some("abc-123"));
    // The client gets the same id back, generated or its own.
    assert_eq!(first.header("x-trace"), header(&seen[0].headers, "x-trace"));
    assert_eq!(second.header("x-trace"), Some("abc-123"));
    for s in &seen {
        assert!(!s.headers.contains_key("x-request-id"));
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream connections

#[tokio::test]
async fn keepalive_connections_to_the_backend_are_reused() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    for i in 0..20 {
        let got = if i % 2 == 0 {
            within("get", client.get(&format!("/r{i}"))).await
        } else {
            let body = pattern(3000, i);
            let got = within(
                "post",
                client.send(
                    request(Method::POST, &format!("/r{i}"), "test.local")
                        .body(full(body.clone()))
                        .unwrap(),
                ),
            )
            .await;
            assert_same(&got.body, &body, "post body");
            got
        };
        assert_eq!(got.status, 200);
        assert_eq!(
            got.header("proxyd-backend"),
            Some(backend.addr.to_string().as_str())
        );
        let want = if i == 0 { "0" } else { "1" };
        assert_eq!(got.header("proxyd-reused"), Some(want), "request {i}");
    }
    assert_eq!(backend.request_count(), 20);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

/// A backend that answers each request on a connection as keep-alive, then closes the socket
/// right after the response (as a worker recycled by its server would) and reports the close.
async fn closing_backend() -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                if read_request(&mut stream).await.is_some() {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                        )
                        .await;
                }
                drop(stream);
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, conns, closed)
}

/// Reads one request head and its Content-Length body; None when the peer closed first.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&got, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + len {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(got)
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_backend_is_replaced_for_any_method() {
    let (addr, conns, mut closed) = closing_backend().await;
    let proxy = TestProxy::to(&[addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    let first = within("first", client.get("/")).await;
    assert_eq!(first.status, 200);
    for method in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::GET,
    ] {
        // The backend has closed the connection proxyd keeps idle.
        within("backend close", closed.recv()).await;
        let got = within(
            method.as_str(),
            client.send(
                request(method.clone(), "/", "test.local")
                    .body(full("payload"))
                    .unwrap(),
            ),
        )
        .await;
        assert_eq!(
            got.status,
            200,
            "{method} after the backend closed an idle connection: {:?} {}",
            got.header("proxyd-error"),
            got.text()
        );
        assert_eq!(got.text(), "ok");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let out = within(
        "pipelined",
        raw(
            proxy.addr,
            b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /p2 HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /p3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    let at = |p: &str| {
        out.find(&format!("x-echo-uri: {p}\r\n"))
            .unwrap_or_else(|| panic!("no answer for {p}: {out}"))
    };
    assert!(at("/p1") < at("/p2") && at("/p2") < at("/p3"), "{out}");
    let order: Vec<String> = backend
        .requests()
        .iter()
        .map(|s| s.uri.to_string())
        .collect();
    assert_eq!(order, ["/p1", "/p2", "/p3"]);
}

// ---------------------------------------------------------------------------------------------
// Routing

fn two_upstreams(a: SocketAddr, b: SocketAddr, routes: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  a:\n    servers: [\"{a}\"]\n  \
         b:\n    servers: [\"{b}\"]\nroutes:\n{routes}headers: {{ debug: true }}\n"
    )
}

async fn get_host(client: &mut H1, host: &str, path: &str) -> Got {
    within(
        &format!("{host}{path}"),
        client.send(request(Method::GET, path, host).body(full("")).unwrap()),
    )
    .await
}

#[tokio::test]
async fn routes_by_exact_and_wildcard_host() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let proxy = TestProxy::from_yaml(&two_upstreams(
        a.addr,
        b.addr,
        "  - { host: \"api.example.com\", upstream: a }\n  \
         - { host: \"*.example.com\", upstream: b }\n",
    ))
    .await;
    let mut client = H1::connect(proxy.addr).await;
    for (host, want) in [
        ("api.example.com", a.addr),
        ("API.example.com:8080", a.addr),
        ("www.example.com", b.addr),
        ("deep.api.example.com", b.addr),
    ] {
        let got = get_host(&mut client, host, "/x").await;
        assert_eq!(got.status, 200, "{host}");
        assert_eq!(
            got.header("proxyd-backend"),
            Some(want.to_string().as_str()),
            "{host}"
        );
    }
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
    for host in ["example.com", "other.org"] {
        let got = get_host(&mut client, host, "/x").await;
        assert_eq!(got.status, 404, "{host}");
        assert_eq!(got.header("proxyd-error"), Some("no-route"), "{host}");
        assert!(
            is_request_id(got.header("x-request-id")),
            "error responses carry the id too"
        );
    }
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
}

#[tokio::test]
async fn routes_by_longest_path_prefix_and_host_before_path() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let proxy = TestProxy::from_yaml(&two_upstreams(
        a.addr,
        b.addr,
        "  - { path: \"/\", upstream: a }\n  \
         - { path: \"/api/\", upstream: b }\n  \
         - { path: \"/api/v2/\", upstream: a }\n  \
         - { host: \"static.example.com\", path: \"/\", upstream: b }\n",
    ))
    .await;
    let mut client = H1::connect(proxy.addr).await;
    for (host, path, want) in [
        ("t", "/", a.addr),
        ("t", "/index.html", a.addr),
        ("t", "/api/users", b.addr),
        ("t", "/api/v2/users", a.addr),
        ("t", "/apix", a.addr),
        ("static.example.com", "/api/v2/x", b.addr),
    ] {
        let got = get_host(&mut client, host, path).await;
        assert_eq!(got.status, 200, "{host}{path}");
        assert_eq!(
            got.header("proxyd-backend"),
            Some(want.to_string().as_str()),
            "{host}{path}"
        );
        assert_eq!(got.header("x-echo-uri"), Some(path));
    }
}

#[tokio::test]
async fn one_upstream_without_routes_takes_everything() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    for (host, path) in [
        ("a.example", "/"),
        ("b.example:81", "/deep/path?q=1"),
        ("10.1.2.3", "/x"),
    ] {
        let got = get_host(&mut client, host, path).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-echo-uri"), Some(path));
    }
    assert_eq!(backend.request_count(), 3);
}

// ---------------------------------------------------------------------------------------------
// Upstream failures

fn app_yaml(server: SocketAddr, upstream_extra: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{server}\"]\n\
         {upstream_extra}headers: {{ debug: true }}\n"
    )
}

#[tokio::test]
async fn refused_connection_is_a_502() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = TestProxy::to(&[closed], DEBUG).await;
    let got = within("refused", get(proxy.addr, "/")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("proxyd-error"), Some("upstream-connect-refused"));
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_504() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_request_tx, mut got_request) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            if read_request(&mut stream).await.is_some() {
                let _ = got_request_tx.send(());
            }
            held.push(stream); // open, silent
        }
    });
    let proxy = TestProxy::from_yaml(&app_yaml(addr, "    response_timeout: 300ms\n")).await;
    let started = tokio::time::Instant::now();
    let got = within("silent backend", get(proxy.addr, "/")).await;
    assert_eq!(got.status, 504);
    assert_eq!(
        got.header("proxyd-error"),
        Some("upstream-response-timeout")
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    within("backend saw it", got_request.recv()).await;
}

#[tokio::test]
async fn a_backend_that_closes_after_reading_the_request_is_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = read_request(&mut stream).await;
            drop(stream);
        }
    });
    let proxy = TestProxy::to(&[addr], DEBUG).await;
    for method in [Method::GET, Method::POST] {
        let got = within(
            "closing backend",
            H1::connect(proxy.addr).await.send(
                request(method.clone(), "/", "test.local")
                    .body(full("x"))
                    .unwrap(),
            ),
        )
        .await;
        assert_eq!(got.status, 502, "{method}");
        assert_eq!(
            got.header("proxyd-error"),
            Some("upstream-closed-early"),
            "{method}"
        );
    }
}

#[tokio::test]
async fn a_backend_error_status_passes_through_unchanged() {
    let backend = TestBackend::start(|_| {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("retry-after", "7")
            .body(full("backend busy"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let got = within("503", get(proxy.addr, "/")).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("7"));
    assert_eq!(got.header("proxyd-error"), None);
    assert_eq!(got.text(), "backend busy");
}
