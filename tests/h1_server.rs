//! proxyd's own HTTP/1.1 server (server/h1), byte by byte: pipelined requests answered in
//! order, `Expect: 100-continue`, 408 for a slow head (first or later request), HTTP/1.0
//! keep-alive and close-delimited responses, chunked responses of unknown length, and
//! responses without a body.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off `s`: (head, body), framed by its Content-Length or chunked (the
/// chunked body returned decoded). None when the connection closed first.
async fn read_one(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let lower = head.to_ascii_lowercase();
            let status_1xx = head.starts_with("HTTP/1.1 1") || head.starts_with("HTTP/1.0 1");
            if status_1xx {
                pending.drain(..end + 4);
                return Some((head, Vec::new()));
            }
            let rest = &pending[end + 4..];
            if lower.contains("transfer-encoding: chunked") {
                if let Some(body) = dechunk(rest) {
                    let (body, used) = body;
                    pending.drain(..end + 4 + used);
                    return Some((head, body));
                }
            } else {
                let len = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if rest.len() >= len {
                    let body = rest[..len].to_vec();
                    pending.drain(..end + 4 + len);
                    return Some((head, body));
                }
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no response within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A whole chunked body at the start of `b` (no trailers): the data and the bytes it took.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let line_end = find(&b[at..], b"\r\n")? + at;
        let size = usize::from_str_radix(std::str::from_utf8(&b[at..line_end]).ok()?, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            if b.len() < at + 2 {
                return None;
            }
            return Some((out, at + 2));
        }
        if b.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&b[at..at + size]);
        at += size + 2;
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut all = Vec::new();
    for i in 0..8 {
        if i == 3 {
            all.extend_from_slice(
                b"POST /p3 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            );
        } else if i == 5 {
            all.extend_from_slice(
                b"POST /p5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            );
        } else {
            all.extend_from_slice(format!("GET /g{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        }
    }
    s.write_all(&all).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..8 {
        let (head, body) = read_one(&mut s, &mut pending).await.expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        let want = match i {
            3 => "/p3",
            5 => "/p5",
            _ => "",
        };
        let uri = header(&head, "x-echo-uri").unwrap().to_string();
        if want.is_empty() {
            assert_eq!(uri, format!("/g{i}"));
        } else {
            assert_eq!(uri, want);
        }
        match i {
            3 => assert_eq!(body, b"hello"),
            5 => assert_eq!(body, b"abc"),
            _ => assert!(body.is_empty()),
        }
    }
    // Still open for more.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_one(&mut s, &mut pending).await.expect("a response");
    assert_eq!(header(&head, "x-echo-uri"), Some("/after"));
    assert_eq!(backend.request_count(), 9);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_read() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let (head, _) = read_one(&mut s, &mut pending).await.expect("100 Continue");
    assert!(head.starts_with("HTTP/1.1 100 Continue\r\n"), "{head}");
    s.write_all(b"hello world").await.unwrap();
    let (head, body) = read_one(&mut s, &mut pending).await.expect("the response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello world");
    assert_eq!(
        backend.requests()[0].body,
        Bytes::from_static(b"hello world")
    );
}

#[tokio::test]
async fn a_slow_head_gets_408_on_the_first_and_on_a_later_request() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "timeouts: { client_header: 300ms }\n").await;

    // First request of a connection.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost:").await.unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(
        header(&reply, "proxyd-error"),
        Some("client-header-timeout")
    );

    // A later one, after a served request.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (head, _) = read_one(&mut s, &mut pending).await.expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"GET /two HTTP/1.1\r\n").await.unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert_eq!(
        header(&reply, "proxyd-error"),
        Some("client-header-timeout")
    );
    assert_eq!(backend.request_count(), 1);
}

/// A backend whose body has no stated length (hyper sends it chunked to proxyd).
async fn unsized_backend() -> TestBackend {
    TestBackend::start(|_| {
        let frames = ["stream", "ed ", "body"].into_iter().map(|p| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(Bytes::from(
                p,
            )))
        });
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        Response::new(body.boxed())
    })
    .await
}

#[tokio::test]
async fn http_10_keep_alive_and_close_delimited_responses() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    // Keep-alive asked: the response says so, and the connection takes another request.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut pending = Vec::new();
    for path in ["/a", "/b"] {
        s.write_all(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_one(&mut s, &mut pending).await.expect("a response");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert_eq!(header(&head, "connection"), Some("keep-alive"), "{head}");
        assert_eq!(header(&head, "x-echo-uri"), Some(path));
    }
    // Not asked: the connection closes after the response.
    s.write_all(b"GET /c HTTP/1.0\r\n\r\n").await.unwrap();
    let reply = read_until_close(&mut s).await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    assert_eq!(header(&reply, "connection"), None, "{reply}");

    // A body of unknown length goes to an HTTP/1.0 client delimited by the close, even
    // when it asked for keep-alive; an HTTP/1.1 client gets it chunked.
    let streaming = unsized_backend().await;
    let proxy = TestProxy::to(&[streaming.addr], "").await;
    let reply = raw(
        proxy.addr,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
    let lower = reply.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{reply}");
    assert!(!lower.contains("content-length"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nstreamed body"), "{reply}");

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (head, body) = read_one(&mut s, &mut pending).await.expect("a response");
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(body, b"streamed body");
}

#[tokio::test]
async fn head_204_and_304_responses_have_no_body_and_a_date() {
    let backend = TestBackend::start(|seen| {
        let status = match seen.uri.path() {
            "/204" => 204,
            "/304" => 304,
            _ => 200,
        };
        let mut resp = Response::new(full("twelve bytes"));
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        resp
    })
    .await;
    let proxy = TestProxy::to(&[backend.addr], "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET /304 HTTP/1.1\r\nHost: a\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    // Read everything the four answers make, then check that no body bytes slipped in.
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&pending, b"twelve bytes").is_none() {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&pending));
        pending.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&pending).into_owned();
    let heads: Vec<&str> = text.split("\r\n\r\n").collect();
    assert_eq!(heads.len(), 5, "{text}");
    assert!(heads[0].starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(header(heads[0], "content-length"), Some("12"), "{text}");
    assert!(heads[1].starts_with("HTTP/1.1 204"), "{text}");
    assert!(heads[2].starts_with("HTTP/1.1 304"), "{text}");
    assert!(heads[3].starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(heads[4], "twelve bytes");
    for h in &heads[..4] {
        assert!(
            header(h, "date").is_some_and(|d| d.ends_with(" GMT")),
            "{h}"
        );
    }
}
