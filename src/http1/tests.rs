//! The rules, one by one, and the framing edge cases.

use bytes::BytesMut;
use http::{HeaderMap, Method, StatusCode, Version};

use super::*;
use crate::error::Cause;

const LIMITS: Limits = Limits {
    max_head_bytes: 8192,
    max_headers: 100,
};

fn req(s: &str) -> Result<Option<RequestHead>, Cause> {
    let mut buf = BytesMut::from(s.as_bytes());
    parse_request(&mut buf, &LIMITS)
}

fn ok(s: &str) -> RequestHead {
    match req(s) {
        Ok(Some(h)) => h,
        other => panic!("{s:?}: {other:?}"),
    }
}

fn refused(s: &str) -> Cause {
    match req(s) {
        Err(c) => c,
        other => panic!("{s:?} was not refused: {other:?}"),
    }
}

fn bad(code: &'static str) -> Cause {
    Cause::BadRequest(code)
}

#[test]
fn a_request_head_is_split_off_and_its_values_are_slices() {
    let mut buf =
        BytesMut::from(&b"POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
    let start = buf.as_ptr() as usize;
    let h = parse_request(&mut buf, &LIMITS).unwrap().unwrap();
    assert_eq!(&buf[..], b"abcGET");
    assert_eq!(h.parts.method, Method::POST);
    assert_eq!(h.parts.uri, "/a?b");
    assert_eq!(h.parts.version, Version::HTTP_11);
    assert_eq!(h.framing, Framing::Length(3));
    assert!(h.keep_alive);
    let host = h.parts.headers["host"].as_bytes().as_ptr() as usize;
    assert!(
        host > start && host < start + 60,
        "the value is a slice of the head"
    );
    // check_request agrees on the length and the framing.
    let s = b"POST /a?b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET";
    assert_eq!(
        check_request(s, &LIMITS),
        Ok(Some((s.len() - 6, Framing::Length(3))))
    );
}

#[test]
fn a_refused_head_stays_in_the_buffer() {
    // Refused by the byte rules (before the split) and by the Host rules (after it): either
    // way the buffer still holds the head and what followed, for the log line.
    for (head, code) in [
        ("GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n", "bad-header-name"),
        ("DELETE /x HTTP/1.1\r\n\r\n", "missing-host"),
        ("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", "bad-host"),
    ] {
        let text = format!("{head}NEXT");
        let mut buf = BytesMut::from(text.as_bytes());
        assert_eq!(
            parse_request(&mut buf, &LIMITS).unwrap_err(),
            bad(code),
            "{head:?}"
        );
        assert_eq!(&buf[..], text.as_bytes());
    }
}

#[test]
fn partial_heads_need_more() {
    assert!(matches!(req("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
    assert!(matches!(req("GET / HT"), Ok(None)));
    assert!(matches!(req(""), Ok(None)));
    let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
    assert_eq!(refused(&big), Cause::HeadersTooLarge);
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(refused(&long), Cause::HeadersTooLarge);
    let many: String = (0..101).map(|i| format!("X-{i}: a\r\n")).collect();
    assert_eq!(
        refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
        Cause::HeadersTooLarge
    );
}

#[test]
fn framing_fields() {
    assert_eq!(
        ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").framing,
        Framing::None
    );
    assert_eq!(
        ok("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").framing,
        Framing::Length(0)
    );
    assert_eq!(
        ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
        Framing::Chunked
    );
    let cases = [
        (
            "Content-Length: 1\r\nTransfer-Encoding: chunked",
            "content-length-with-transfer-encoding",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 1",
            "content-length-with-transfer-encoding",
        ),
        (
            "Content-Length: 1\r\ncontent-length: 1",
            "duplicate-content-length",
        ),
        (
            "Content-Length: 1\r\nContent-Length: 2",
            "duplicate-content-length",
        ),
        ("Content-Length: 1, 1", "bad-content-length"),
        ("Content-Length: +1", "bad-content-length"),
        ("Content-Length: 9223372036854775808", "bad-content-length"),
        ("Content-Length:", "bad-content-length"),
        ("Transfer-Encoding: gzip, chunked", "bad-transfer-encoding"),
        (
            "Transfer-Encoding: chunked, chunked",
            "bad-transfer-encoding",
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "bad-transfer-encoding",
        ),
        ("Transfer-Encoding: identity", "bad-transfer-encoding"),
    ];
    for (fields, code) in cases {
        let s = format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\n");
        assert_eq!(refused(&s), bad(code), "{fields}");
        assert_eq!(
            check_request(s.as_bytes(), &LIMITS),
            Err(bad(code)),
            "{fields}"
        );
    }
    assert_eq!(
        refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        bad("bad-transfer-encoding")
    );
}

#[test]
fn syntax_rules() {
    let cases = [
        ("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", "bad-header-name"), // obs-fold
        ("GET / HTTP/1.1\r\nA : b\r\n\r\n", "bad-header-name"),      // space before colon
        ("GET / HTTP/1.1\r\nA(b: c\r\n\r\n", "bad-header-name"),     // not a tchar
        ("GET / HTTP/1.1\r\n: c\r\n\r\n", "bad-header-name"),
        ("G(T / HTTP/1.1\r\n\r\n", "bad-method"),
        ("GET /a\0b HTTP/1.1\r\n\r\n", "bad-target"),
        ("GET  / HTTP/1.1\r\n\r\n", "bad-target"),
        ("GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target"),
        ("GET /\r\n\r\n", "bad-version"),
        ("GET / HTTP/1.10\r\n\r\n", "bad-version"),
        ("GET / HTTP/2.0\r\n\r\n", "bad-version"),
        ("GET / HTTP/1.1 \r\n\r\n", "bad-version"),
        ("GET / HTTP/1.1\rHost: a\r\n\r\n", "bad-line-ending"),
        ("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", "bad-line-ending"),
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n", "bad-line-ending"),
        ("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bad-header-value"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: b\0c\r\n\r\n",
            "bad-header-value",
        ),
    ];
    for (s, code) in cases {
        assert_eq!(refused(s), bad(code), "{s:?}");
    }
    // Bare LF line endings are taken (RFC 9112 2.2), as are empty lines before the head.
    let h = ok("GET /lf HTTP/1.1\nHost: a\n\n");
    assert_eq!(h.parts.uri, "/lf");
    assert_eq!(h.parts.headers["host"], "a");
    assert_eq!(ok("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").parts.uri, "/");
    assert_eq!(
        refused("POST / HTTP/1.1\r\nContent-Length: 3\nTransfer-Encoding: chunked\r\n\r\n"),
        bad("content-length-with-transfer-encoding")
    );
}

#[test]
fn targets_and_host() {
    let h = ok("GET http://a:8080/x?y HTTP/1.1\r\nHost: b\r\n\r\n");
    assert_eq!(h.parts.uri.authority().unwrap(), "a:8080");
    ok("GET http://a/ HTTP/1.1\r\n\r\n");
    ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    ok("GET / HTTP/1.0\r\n\r\n");
    ok("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
    let cases = [
        (
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "connect-not-supported",
        ),
        ("GET a:443 HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target"),
        ("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target"),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target"),
        ("GET http://a:99999/ HTTP/1.1\r\n\r\n", "bad-target"),
        ("GET http://u@a/ HTTP/1.1\r\n\r\n", "bad-host"),
        ("GET / HTTP/1.1\r\n\r\n", "missing-host"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "duplicate-host",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "bad-host"),
        ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "bad-host"),
        ("GET / HTTP/1.1\r\nHost: a:70000\r\n\r\n", "bad-host"),
        ("GET http://a/ HTTP/1.1\r\nHost: a/b\r\n\r\n", "bad-host"),
    ];
    for (s, code) in cases {
        assert_eq!(refused(s), bad(code), "{s:?}");
    }
}

#[test]
fn connection_expect_and_upgrade() {
    let h = ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
    assert!(!h.keep_alive);
    assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!ok("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    let e = "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
    assert!(ok(e).expect_continue);
    assert!(!ok("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    let up = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(ok(up).upgrade);
    assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").upgrade);
    let h2c = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    assert!(!ok(h2c).upgrade);
    let ws10 = "GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(!ok(ws10).upgrade);
}

fn res(s: &str, method: &Method) -> Result<Option<ResponseHead>, Cause> {
    let mut buf = BytesMut::from(s.as_bytes());
    parse_response(&mut buf, &LIMITS, method)
}

fn res_framing(s: &str, method: &Method) -> Framing {
    match res(s, method) {
        Ok(Some(h)) => h.framing,
        other => panic!("{s:?}: {other:?}"),
    }
}

#[test]
fn response_framing() {
    let get = &Method::GET;
    assert_eq!(
        res_framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", get),
        Framing::Length(5)
    );
    assert_eq!(
        res_framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", get),
        Framing::Chunked
    );
    assert_eq!(res_framing("HTTP/1.1 200 OK\r\n\r\n", get), Framing::Close);
    assert_eq!(res_framing("HTTP/1.0 200 OK\r\n\r\n", get), Framing::Close);
    assert_eq!(
        res_framing(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Method::HEAD
        ),
        Framing::None
    );
    for status in [
        "100 Continue",
        "101 Switching Protocols",
        "103 Early Hints",
        "204 No Content",
        "304 Not Modified",
    ] {
        let s = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(res_framing(&s, get), Framing::None, "{status}");
    }
    assert_eq!(
        res_framing("HTTP/1.1 200 OK\r\n\r\n", &Method::CONNECT),
        Framing::None
    );
    assert_eq!(
        res_framing(
            "HTTP/1.1 407 No\r\nContent-Length: 2\r\n\r\n",
            &Method::CONNECT
        ),
        Framing::Length(2)
    );
    let close = res("HTTP/1.1 200 OK\r\n\r\n", get).unwrap().unwrap();
    assert!(!close.keep_alive);
    let sized = res("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", get)
        .unwrap()
        .unwrap();
    assert!(sized.keep_alive);
    assert_eq!(sized.parts.status, StatusCode::OK);
    let ten = res("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", get)
        .unwrap()
        .unwrap();
    assert!(!ten.keep_alive);
    let ten = res(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        get,
    )
    .unwrap()
    .unwrap();
    assert!(ten.keep_alive);
    assert!(matches!(res("HTTP/1.1 200 OK\r\nA: b\r\n", get), Ok(None)));
}

#[test]
fn response_strictness() {
    for s in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\0c\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
    ] {
        assert_eq!(
            res(s, &Method::GET).err(),
            Some(Cause::UpstreamProtocol),
            "{s:?}"
        );
    }
}

/// Decodes `body` fed in pieces of `step` bytes: the data, and the trailers.
fn dechunk(body: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Cause> {
    let mut d = ChunkedDecoder::new(1024);
    let mut data = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in body.chunks(step) {
        pending.extend_from_slice(piece);
        loop {
            let (used, chunk) = d.decode(&pending)?;
            match chunk {
                Chunk::Data(r) => data.extend_from_slice(&pending[r]),
                Chunk::NeedMore => {
                    assert_eq!(used, pending.len());
                    pending.clear();
                    break;
                }
                Chunk::End(t) => {
                    assert!(d.is_done());
                    return Ok((data, t));
                }
            }
            pending.drain(..used);
        }
    }
    Err(Cause::BadRequest("eof"))
}

#[test]
fn chunked_bodies() {
    let good: &[(&str, &str)] = &[
        ("3\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3;name=value\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3;n=\"a;b\"\r\nabc\r\n0\r\n\r\n", "abc"),
        ("3 ;a\r\nabc\r\n0\r\n\r\n", "abc"),
        ("A\r\n0123456789\r\n00\r\n\r\n", "0123456789"),
        ("0\r\n\r\n", ""),
    ];
    for (body, data) in good {
        for step in [1, 2, 5, 100] {
            let (got, t) = dechunk(body.as_bytes(), step).unwrap();
            assert_eq!(got, data.as_bytes(), "{body:?}");
            assert!(t.is_none());
        }
    }
    let (data, t) = dechunk(b"1\r\na\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", 1).unwrap();
    assert_eq!(data, b"a");
    let t = t.unwrap();
    assert_eq!(t["x-t"], "1");
    assert_eq!(t["y"], "2");
    let huge_ext = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(20_000));
    let many_ext = format!("{}0\r\n\r\n", "1;aaaaaaaa=b\r\nx\r\n".repeat(3000));
    let big_trailer = format!("0\r\nX: {}\r\n\r\n", "a".repeat(2000));
    let bad: &[&str] = &[
        "\r\nabc\r\n0\r\n\r\n",
        "  \r\nabc\r\n0\r\n\r\n",
        " 3\r\nabc\r\n0\r\n\r\n",
        "0x3\r\nabc\r\n0\r\n\r\n",
        "-3\r\nabc\r\n0\r\n\r\n",
        "+3\r\nabc\r\n0\r\n\r\n",
        "10000000000000000\r\nabc\r\n0\r\n\r\n",
        "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "3\nabc\r\n0\r\n\r\n",
        "3\r\nabc\n0\r\n\r\n",
        "3\rabc\r\n0\r\n\r\n",
        "3;a\nb\r\nabc\r\n0\r\n\r\n",
        "3;a\0b\r\nabc\r\n0\r\n\r\n",
        "3 4\r\nabc\r\n0\r\n\r\n",
        "3\r\nabcdef\r\n0\r\n\r\n",
        "5\r\nabc\r\n0\r\n\r\n",
        "0\r\nX: a\n\r\n",
        "0\r\nX: a\r\n\n",
        "0\r\nX : a\r\n\r\n",
        "0\r\nX: a\r\n b\r\n\r\n",
        "0\r\n\n",
        "0\r\n\r\r\n",
        &huge_ext,
        &many_ext,
        &big_trailer,
    ];
    for body in bad {
        for step in [1, 7, 100_000] {
            assert_eq!(
                dechunk(body.as_bytes(), step).err(),
                Some(Cause::BadRequest("bad-body")),
                "{body:?}"
            );
        }
    }
    // What follows the body is left alone.
    let mut d = ChunkedDecoder::new(64);
    let input = b"0\r\n\r\nGET";
    assert_eq!(d.decode(input), Ok((5, Chunk::End(None))));
}

#[test]
fn writes_heads_and_chunks() {
    let mut out = Vec::new();
    let h =
        ok("POST http://a/x?y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n");
    write_request_head(&mut out, &h.parts, &Framing::Length(3));
    assert_eq!(
        out,
        b"POST /x?y HTTP/1.1\r\nhost: a\r\nx: 1\r\ncontent-length: 3\r\n\r\n"
    );
    // What is written parses back to the same head.
    let back = ok(std::str::from_utf8(&out).unwrap());
    assert_eq!(back.framing, Framing::Length(3));

    let mut out = Vec::new();
    let r = res(
        "HTTP/1.1 404 Whatever\r\nContent-Length: 7\r\nA: b\r\n\r\n",
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    write_response_head(&mut out, &r.parts, &r.framing);
    assert_eq!(
        out,
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\na: b\r\n\r\n"
    );
    let mut out = Vec::new();
    write_response_head(&mut out, &r.parts, &Framing::Chunked);
    assert_eq!(
        out,
        b"HTTP/1.1 404 Not Found\r\na: b\r\ntransfer-encoding: chunked\r\n\r\n"
    );

    let mut out = Vec::new();
    write_chunk_header(&mut out, 26);
    out.extend_from_slice(b"abcdefghijklmnopqrstuvwxyz");
    write_chunk_end(&mut out);
    let mut t = HeaderMap::new();
    t.insert("x-t", "1".parse().unwrap());
    write_last_chunk(&mut out, Some(&t));
    let (data, trailers) = dechunk(&out, 3).unwrap();
    assert_eq!(data, b"abcdefghijklmnopqrstuvwxyz");
    assert_eq!(trailers.unwrap()["x-t"], "1");
    let mut out = Vec::new();
    write_last_chunk(&mut out, None);
    assert_eq!(out, b"0\r\n\r\n");
}

#[test]
fn the_same_code_however_the_head_is_cut() {
    let heads: &[&[u8]] = &[
        b"POST /\xffx HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"GET / HTTP/1.1x\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
    ];
    for head in heads {
        let whole = check_request(head, &LIMITS);
        assert!(whole.is_err(), "{head:?}");
        for step in 1..head.len() {
            let mut verdict = Ok(None);
            for end in (step..head.len() + step).step_by(step) {
                verdict = check_request(&head[..end.min(head.len())], &LIMITS);
                if verdict != Ok(None) {
                    break;
                }
            }
            assert_eq!(verdict, whole, "{head:?} in reads of {step}");
        }
    }
    assert_eq!(
        check_request(b"GET /\xff HTTP/1.1\r\n\r\n", &LIMITS),
        Err(bad("bad-target"))
    );
}
