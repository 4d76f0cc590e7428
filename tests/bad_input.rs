//! Bad input: every request here is malformed, oversized, too slow, ambiguous in its framing or
//! aimed somewhere proxyd must not go. Each test asserts what the client got (status and the
//! `proxyd-error` code where proxyd answers) AND that nothing reached the backend.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// One response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Everything a connection received, and whether the proxy closed it (rather than the read
/// giving up after 10 s).
struct Reply {
    bytes: Vec<u8>,
    closed: bool,
}

impl Reply {
    /// The responses in order; panics on anything that is not a sequence of complete responses
    /// framed by Content-Length.
    fn answers(&self) -> Vec<Answer> {
        let mut out = Vec::new();
        let mut rest = &self.bytes[..];
        while !rest.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(rest) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("not a response ({other:?}): {:?}", self.text()),
            };
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or_else(|| panic!("response without content-length: {:?}", self.text()));
            let status = resp.code.unwrap();
            assert!(rest.len() >= n + len, "truncated body: {:?}", self.text());
            out.push(Answer {
                status,
                headers,
                body: rest[n..n + len].to_vec(),
            });
            rest = &rest[n + len..];
        }
        out
    }

    /// The one response this connection got.
    fn answer(&self) -> Answer {
        let mut all = self.answers();
        assert_eq!(all.len(), 1, "expected one response: {:?}", self.text());
        all.remove(0)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads until the proxy closes the connection, an error, or 10 s.
async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    Reply { bytes, closed }
}

/// Sends `bytes` in one write on a new connection and reads what comes back.
async fn send(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_reply(&mut stream).await
}

/// A proxy in front of a raw backend that records every byte it is sent.
async fn setup(extra: &str) -> (RawBackend, TestProxy) {
    let backend = RawBackend::start(OK).await;
    let proxy = TestProxy::to(&[backend.addr], extra).await;
    (backend, proxy)
}

/// proxyd answered `status` with `code`, asked the client to close, and did close.
#[track_caller]
fn assert_refused(reply: &Reply, status: u16, code: &str, what: &str) {
    let a = reply.answer();
    assert_eq!(a.status, status, "{what}: {:?}", reply.text());
    assert_eq!(
        a.header("proxyd-error"),
        Some(code),
        "{what}: {:?}",
        reply.text()
    );
    assert_eq!(a.header("connection"), Some("close"), "{what}");
    let body = String::from_utf8_lossy(&a.body);
    assert!(body.contains(code), "{what}: body {body:?}");
    assert!(reply.closed, "{what}: connection left open");
}

#[track_caller]
fn assert_backend_untouched(backend: &RawBackend, what: &str) {
    assert_eq!(
        String::from_utf8_lossy(&backend.received()),
        "",
        "{what}: bytes reached the backend"
    );
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{what}: the backend was connected to"
    );
}

/// Sends each request on its own connection and expects `status` + `code` for all of them.
async fn refused_all(extra: &str, cases: &[(&str, &[u8])], status: u16, code: &str) {
    let (backend, proxy) = setup(extra).await;
    for (what, req) in cases {
        let reply = send(proxy.addr, req).await;
        assert_refused(&reply, status, code, what);
        assert_backend_untouched(&backend, what);
    }
    proxy.shutdown().await;
}

// ---- Content-Length and Transfer-Encoding ----

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    refused_all(
        "",
        &[(
            "different values",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        )],
        400,
        "duplicate-content-length",
    )
    .await;
}

#[tokio::test]
async fn duplicate_identical_content_lengths_are_refused() {
    refused_all(
        "",
        &[
            (
                "two lines",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
            ),
            (
                "apart",
                b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            ),
        ],
        400,
        "duplicate-content-length",
    )
    .await;
}

#[tokio::test]
async fn content_length_with_chunked_is_refused_in_either_order() {
    refused_all(
        "",
        &[
            (
                "CL then TE",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\
                  Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ),
            (
                "TE then CL",
                b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                  Content-Length: 4\r\n\r\n0\r\n\r\n",
            ),
            (
                "CL 0 with TE",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\
                  Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ),
        ],
        400,
        "content-length-with-transfer-encoding",
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_other_than_one_final_chunked_is_refused() {
    let body = "\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let reqs: Vec<(&str, String)> = [
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked"),
        ("chunked, gzip", "Transfer-Encoding: chunked, gzip"),
        ("identity", "Transfer-Encoding: identity"),
        (
            "chunked twice in one line",
            "Transfer-Encoding: chunked, chunked",
        ),
        (
            "two TE lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ),
        (
            "gzip line then chunked line",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        ),
    ]
    .into_iter()
    .map(|(what, te)| (what, format!("POST /x HTTP/1.1\r\nHost: a\r\n{te}{body}")))
    .chain([(
        "TE on HTTP/1.0",
        format!("POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked{body}"),
    )])
    .collect();
    let cases: Vec<(&str, &[u8])> = reqs.iter().map(|(w, r)| (*w, r.as_bytes())).collect();
    refused_all("", &cases, 400, "bad-transfer-encoding").await;
}

#[tokio::test]
async fn bad_content_length_values_are_refused() {
    refused_all(
        "",
        &[
            (
                "sign",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            ),
            (
                "list",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            ),
            (
                "hex",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
            ),
            (
                "empty",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            ),
            (
                "overflow",
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            ),
        ],
        400,
        "bad-content-length",
    )
    .await;
}

// ---- chunked bodies ----

#[tokio::test]
async fn bad_chunk_sizes_are_refused_before_a_backend_sees_the_body() {
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies = [
        ("not hex", "zz\r\nabc\r\n0\r\n\r\n"),
        ("negative", "-3\r\nabc\r\n0\r\n\r\n"),
        ("overflowing", "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ("no CRLF after the data", "3\r\nabcde\r\n0\r\n\r\n"),
        ("size without CRLF", "3 abc\r\n0\r\n\r\n"),
        ("good chunk then a bad one", "3\r\nabc\r\nq\r\n\r\n"),
    ];
    let reqs: Vec<(&str, String)> = bodies
        .iter()
        .map(|(what, body)| (*what, format!("{head}{body}")))
        .collect();
    let cases: Vec<(&str, &[u8])> = reqs.iter().map(|(w, r)| (*w, r.as_bytes())).collect();
    refused_all("", &cases, 400, "bad-body").await;
}

// ---- malformed heads ----

#[tokio::test]
async fn obs_fold_is_refused() {
    refused_all(
        "",
        &[
            (
                "space",
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            ),
            ("tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n"),
            (
                "folded Host",
                b"GET / HTTP/1.1\r\nX-A: b\r\nHost: a\r\n other\r\n\r\n",
            ),
        ],
        400,
        "bad-header-name",
    )
    .await;
}

#[tokio::test]
async fn space_before_colon_is_refused() {
    refused_all(
        "",
        &[
            ("space", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            (
                "tab",
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 0\r\n\r\n",
            ),
        ],
        400,
        "bad-header-name",
    )
    .await;
}

#[tokio::test]
async fn non_token_methods_are_refused() {
    refused_all(
        "",
        &[
            ("parenthesis", b"G(ET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("slash", b"GE/T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("at", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ],
        400,
        "bad-method",
    )
    .await;
}

#[tokio::test]
async fn control_characters_in_header_lines_are_refused() {
    refused_all(
        "",
        &[
            (
                "bare CR in a value",
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
            ),
            (
                "NUL in a value",
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
            ),
            (
                "DEL in a value",
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n",
            ),
        ],
        400,
        "bad-header-value",
    )
    .await;
    refused_all(
        "",
        &[
            (
                "bare CR in a name",
                b"GET / HTTP/1.1\r\nHost: a\r\nX\r-A: b\r\n\r\n",
            ),
            // A bare LF ends the line (RFC 9112 2.2), which leaves a line with no colon.
            (
                "LF in a value",
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\nc\r\n\r\n",
            ),
            (
                "CRLF in a value",
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\nc\r\n\r\n",
            ),
        ],
        400,
        "bad-header-name",
    )
    .await;
}

// ---- size limits ----

#[tokio::test]
async fn oversized_request_line_and_headers_get_431() {
    let extra = "limits: { max_header_bytes: 8KiB }\n";
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    let many_lines = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..20)
            .map(|i| format!("X-H{i}: {}\r\n", "c".repeat(500)))
            .collect::<String>()
    );
    // Still no end of head past the limit: refused without waiting for one.
    let endless = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}", "d".repeat(20_000));
    refused_all(
        extra,
        &[
            ("long request line", long_line.as_bytes()),
            ("one long header", long_header.as_bytes()),
            ("many headers", many_lines.as_bytes()),
            ("unfinished head", endless.as_bytes()),
        ],
        431,
        "headers-too-large",
    )
    .await;
}

#[tokio::test]
async fn a_head_just_under_the_limit_is_proxied() {
    let (backend, proxy) = setup("limits: { max_header_bytes: 8KiB }\n").await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(7000)
    );
    let a = send(proxy.addr, req.as_bytes()).await.answer();
    assert_eq!(a.status, 200);
    assert!(find(&backend.received(), "b".repeat(7000).as_bytes()).is_some());
    proxy.shutdown().await;
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let extra = "limits: { max_headers: 10 }\n";
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..10)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    refused_all(
        extra,
        &[("11 headers", req.as_bytes())],
        431,
        "headers-too-large",
    )
    .await;
    // The limit is the limit: exactly ten headers pass.
    let (backend, proxy) = setup(extra).await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{}\r\n",
        (0..8).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
    );
    assert_eq!(send(proxy.addr, req.as_bytes()).await.answer().status, 200);
    assert!(find(&backend.received(), b"x-h7: v").is_some());
    proxy.shutdown().await;
}

#[tokio::test]
async fn declared_body_over_max_body_gets_413_before_the_body_is_read() {
    let (backend, proxy) = setup("limits: { max_body: 1KiB, buffer_body: 1KiB }\n").await;
    // No body bytes follow: an answer at all proves proxyd did not wait for them.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut stream).await;
    assert_refused(&reply, 413, "body-too-large", "Content-Length: 1025");
    assert_backend_untouched(&backend, "Content-Length: 1025");
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_body_growing_past_max_body_gets_413() {
    let extra = "limits: { max_body: 1KiB, buffer_body: 1KiB }\n";
    let chunk = format!("200\r\n{}\r\n", "x".repeat(0x200));
    let over = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(3)
    );
    refused_all(
        extra,
        &[("3 x 512 bytes chunked", over.as_bytes())],
        413,
        "body-too-large",
    )
    .await;
    // Exactly max_body is fine.
    let (backend, proxy) = setup(extra).await;
    let at_limit = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(2)
    );
    assert_eq!(
        send(proxy.addr, at_limit.as_bytes()).await.answer().status,
        200
    );
    assert!(find(&backend.received(), b"content-length: 1024").is_some());
    proxy.shutdown().await;
}

// ---- slow clients ----

#[tokio::test]
async fn slow_header_gets_408_and_a_close() {
    let (backend, proxy) = setup("timeouts: { client_header: 300ms }\n").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-A: ")
        .await
        .unwrap();
    let reply = read_reply(&mut stream).await;
    assert_refused(&reply, 408, "client-header-timeout", "partial head");
    assert_backend_untouched(&backend, "partial head");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_body_gets_408_and_a_close() {
    let (backend, proxy) = setup("timeouts: { client_body: 300ms }\n").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let reply = read_reply(&mut stream).await;
    assert_refused(&reply, 408, "client-body-timeout", "3 of 10 body bytes");
    assert_backend_untouched(&backend, "3 of 10 body bytes");
    proxy.shutdown().await;
}

// ---- targets and Host ----

#[tokio::test]
async fn absolute_form_target_wins_over_host() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    let reply = send(
        proxy.addr,
        b"GET http://other.example/x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.answer().status, 200, "{}", reply.text());
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/x?y=1");
    assert_eq!(seen[0].headers["host"], "other.example");
    assert_eq!(seen[0].headers.get_all("host").iter().count(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn absolute_form_to_an_unrouted_host_gets_404_not_a_forward_proxy() {
    let backend = RawBackend::start(OK).await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n\
         upstreams:\n  app:\n    servers: [\"{}\"]\n\
         routes:\n  - {{ host: app.example, upstream: app }}\n",
        backend.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let cases: [(&str, &[u8]); 3] = [
        (
            "absolute-form, routed Host",
            b"GET http://evil.example/ HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute-form with port",
            b"GET http://evil.example:8080/a HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "origin-form, unrouted Host",
            b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, req) in cases {
        let reply = send(proxy.addr, req).await;
        let a = reply.answer();
        assert_eq!(a.status, 404, "{what}: {}", reply.text());
        assert_eq!(a.header("proxyd-error"), Some("no-route"), "{what}");
        assert!(reply.closed, "{what}");
        assert_backend_untouched(&backend, what);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused() {
    refused_all(
        "",
        &[
            (
                "CONNECT",
                b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
            ),
            (
                "CONNECT to the backend's port",
                b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
            ),
        ],
        400,
        "connect-not-supported",
    )
    .await;
}

#[tokio::test]
async fn missing_host_on_http11_is_refused() {
    refused_all(
        "",
        &[("no Host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n")],
        400,
        "missing-host",
    )
    .await;
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    refused_all(
        "",
        &[
            ("different", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("same", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        ],
        400,
        "duplicate-host",
    )
    .await;
}

// ---- pipelining ----

/// Two requests in one write: the first is proxied, the second is refused and the connection
/// closed; only the first reaches the backend.
async fn pipelined(first: &str, second: &str, refusal: impl Fn(&Answer)) {
    let (backend, proxy) = setup("").await;
    let reply = send(proxy.addr, format!("{first}{second}").as_bytes()).await;
    let answers = reply.answers();
    assert_eq!(answers.len(), 2, "{}", reply.text());
    assert_eq!(answers[0].status, 200, "{}", reply.text());
    refusal(&answers[1]);
    assert!(reply.closed);
    let received = backend.received();
    let text = String::from_utf8_lossy(&received);
    assert_eq!(text.matches("HTTP/1.1\r\n").count(), 1, "{text}");
    assert!(text.starts_with("GET /first HTTP/1.1\r\n"), "{text}");
    assert!(!text.contains("second"), "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn pipelined_malformed_second_request_never_reaches_the_backend() {
    let first = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n";
    // hyper judges the heads after the first; it answers a plain 400.
    for second in [
        "G(ET /second HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /second HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        pipelined(first, second, |a| assert_eq!(a.status, 400)).await;
    }
}

#[tokio::test]
async fn pipelined_smuggling_attempts_are_refused_by_proxyd() {
    let first = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n";
    // hyper would take these (dropping the Content-Length, merging the two); proxyd must not.
    for (second, code) in [
        (
            "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "content-length-with-transfer-encoding",
        ),
        (
            "POST /second HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            "content-length-with-transfer-encoding",
        ),
        (
            "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
            "duplicate-content-length",
        ),
    ] {
        pipelined(first, second, |a| {
            assert_eq!(a.status, 400);
            assert_eq!(a.header("proxyd-error"), Some(code));
        })
        .await;
    }
}

#[tokio::test]
async fn pipelined_bodies_are_skipped_not_judged_as_heads() {
    // Bodies that would be refused if taken for heads, then a good request: all three proxied.
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    let looks_bad = "G(ET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n";
    let reqs = format!(
        "POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{looks_bad}\
         POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{looks_bad}\r\n0\r\nX-Trailer: 1\r\n\r\n\
         GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        looks_bad.len(),
        looks_bad.len()
    );
    let reply = send(proxy.addr, reqs.as_bytes()).await;
    let answers = reply.answers();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200], "{}", reply.text());
    let seen = backend.requests();
    let uris: Vec<String> = seen.iter().map(|s| s.uri.to_string()).collect();
    assert_eq!(uris, ["/one", "/two", "/three"]);
    assert_eq!(seen[0].body, looks_bad.as_bytes());
    assert_eq!(seen[1].body, looks_bad.as_bytes());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_smuggling_head_sent_while_a_request_is_in_flight_is_refused() {
    // A backend that holds its answer until told, so the second head arrives mid-request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while find(&seen, b"\r\n\r\n").is_none() {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        got_tx.send(seen.clone()).unwrap();
        go_rx.await.unwrap();
        s.write_all(OK).await.unwrap();
        // Whatever else arrives on this connection, or on a new one, is recorded.
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let other = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        (seen, other.is_ok())
    });
    let proxy = TestProxy::to(&[backend_addr], "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    got_rx.await.unwrap();
    stream
        .write_all(
            b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    go_tx.send(()).unwrap();
    let reply = read_reply(&mut stream).await;
    let answers = reply.answers();
    assert_eq!(answers.len(), 2, "{}", reply.text());
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[1].status, 400);
    assert_eq!(
        answers[1].header("proxyd-error"),
        Some("content-length-with-transfer-encoding")
    );
    assert!(reply.closed);
    // Closing the proxy closes its pooled connection: the backend reads to the end.
    proxy.shutdown().await;
    let (seen, second_conn) = backend.await.unwrap();
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("GET /first HTTP/1.1\r\n"), "{seen}");
    assert!(!seen.contains("second"), "{seen}");
    assert!(!second_conn, "the backend got a second connection");
}
