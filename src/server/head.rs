//! The first look at an HTTP/1.1 request head, before hyper parses it. hyper follows RFC 9112
//! leniently where a proxy must be strict: it drops a Content-Length that comes with
//! Transfer-Encoding and merges duplicate Content-Lengths, so the pipeline never sees them.
//! proxyd refuses such heads outright, and answers malformed or oversized heads with its own
//! error responses (`proxyd-error`) instead of hyper's empty ones.

use crate::error::Cause;

/// What a complete or partial head amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Well-formed; hyper may parse it.
    Good(Head),
    /// More bytes are needed.
    Partial,
    Refuse(Cause),
}

/// A well-formed head: its length and how the body after it is framed.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub body: Framing,
}

/// The request body's framing, as hyper will read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Checks a request head that starts at `buf[0]`.
pub fn check(buf: &[u8], max_bytes: usize, max_headers: usize) -> Verdict {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut heap;
    let headers: &mut [httparse::Header<'_>] = if max_headers <= storage.len() {
        &mut storage[..max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            return Verdict::Refuse(Cause::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Verdict::Partial,
        Err(httparse::Error::TooManyHeaders) => return Verdict::Refuse(Cause::HeadersTooLarge),
        Err(e) => {
            let code = request_line_code(buf).unwrap_or_else(|| parse_code(e));
            return Verdict::Refuse(Cause::BadRequest(code));
        }
    };
    if len > max_bytes {
        return Verdict::Refuse(Cause::HeadersTooLarge);
    }
    if req.path.is_some_and(|p| !target_ok(p)) {
        return Verdict::Refuse(Cause::BadRequest("bad-target"));
    }
    let mut content_lengths = 0;
    let mut length = 0;
    let mut transfer_encodings = 0;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_lengths += 1;
            match content_length(h.value) {
                Some(n) => length = n,
                None => return Verdict::Refuse(Cause::BadRequest("bad-content-length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encodings += 1;
            chunked = h.value.eq_ignore_ascii_case(b"chunked");
        }
    }
    if content_lengths > 1 {
        return Verdict::Refuse(Cause::BadRequest("duplicate-content-length"));
    }
    if transfer_encodings > 0 {
        if content_lengths > 0 {
            return Verdict::Refuse(Cause::BadRequest("content-length-with-transfer-encoding"));
        }
        if transfer_encodings > 1 || !chunked || req.version != Some(1) {
            return Verdict::Refuse(Cause::BadRequest("bad-transfer-encoding"));
        }
    }
    let body = match (chunked, content_lengths) {
        (true, _) => Framing::Chunked,
        (false, 0) => Framing::None,
        (false, _) => Framing::Length(length),
    };
    Verdict::Good(Head { len, body })
}

/// Digits only (no sign, list or spaces), and small enough for every server behind proxyd
/// (nginx keeps lengths in a signed 64-bit off_t); hyper refuses larger ones with an empty 400.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value)
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|n| i64::try_from(*n).is_ok())
}

/// A request target hyper will take as it is: no fragment (`http::Uri` would drop it silently,
/// RFC 9112 has none in a request target), and one `http::Uri` parses (else hyper answers its
/// own empty 400).
fn target_ok(target: &str) -> bool {
    !target.contains('#') && target.parse::<http::Uri>().is_ok()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// httparse only says which kind of token failed; this finds where in the request line a head
/// went wrong, so the `proxyd-error` code names it. None when the request line is fine (the
/// error is in a header line).
fn request_line_code(buf: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    // Empty lines before a request line are skipped (RFC 9112 2.2), as httparse does.
    loop {
        if buf[i..].starts_with(b"\r\n") {
            i += 2;
        } else if buf[i..].starts_with(b"\n") {
            i += 1;
        } else {
            break;
        }
    }
    let start = i;
    while buf.get(i).copied().is_some_and(is_tchar) {
        i += 1;
    }
    if i == start || buf.get(i) != Some(&b' ') {
        return Some("bad-method");
    }
    i += 1;
    let start = i;
    while buf.get(i).is_some_and(|b| *b > b' ' && *b != 0x7f) {
        i += 1;
    }
    match buf.get(i) {
        Some(b' ') if i > start => {}
        // `GET /` and the line ends: HTTP/0.9.
        Some(b'\r' | b'\n') if i > start => return Some("bad-version"),
        _ => return Some("bad-target"),
    }
    i += 1;
    let version = buf.get(i..i + 8);
    if version != Some(b"HTTP/1.1") && version != Some(b"HTTP/1.0") {
        return Some("bad-version");
    }
    i += 8;
    match (buf.get(i), buf.get(i + 1)) {
        (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => None,
        (Some(b'\r'), _) => Some("bad-line-ending"),
        _ => Some("bad-version"),
    }
}

fn parse_code(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "bad-header-name",
        httparse::Error::HeaderValue => "bad-header-value",
        httparse::Error::NewLine | httparse::Error::Status => "bad-line-ending",
        httparse::Error::Token => "bad-method",
        httparse::Error::Version => "bad-version",
        httparse::Error::TooManyHeaders => "too-many-headers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Verdict {
        check(s.as_bytes(), 8192, 100)
    }

    #[test]
    fn verdicts() {
        let good = |len, body| Verdict::Good(Head { len, body });
        assert_eq!(
            v("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            good(27, Framing::None)
        );
        assert_eq!(
            v("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\nbody follows"),
            good(39, Framing::Length(12))
        );
        assert_eq!(
            v("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n"),
            good(47, Framing::Chunked)
        );
        assert_eq!(v("GET / HTTP/1.1\r\nHost: a\r\n"), Verdict::Partial);
        let bad = |code| Verdict::Refuse(Cause::BadRequest(code));
        assert_eq!(
            v("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad("content-length-with-transfer-encoding")
        );
        assert_eq!(
            v("POST / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n"),
            bad("duplicate-content-length")
        );
        assert_eq!(
            v("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
            bad("bad-content-length")
        );
        assert_eq!(
            v("POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n"),
            bad("bad-content-length")
        );
        assert_eq!(
            v("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            bad("bad-transfer-encoding")
        );
        assert_eq!(
            v("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad("bad-transfer-encoding")
        );
        assert_eq!(
            v("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
            bad("bad-header-name")
        );
        assert_eq!(v("GET / HTTP/1.1\r\nA : b\r\n\r\n"), bad("bad-header-name"));
        assert_eq!(v("G(T / HTTP/1.1\r\n\r\n"), bad("bad-method"));
        assert_eq!(v("GET /a\0b HTTP/1.1\r\n\r\n"), bad("bad-target"));
        assert_eq!(v("GET  / HTTP/1.1\r\n\r\n"), bad("bad-target"));
        assert_eq!(v("GET /x#f HTTP/1.1\r\nHost: a\r\n\r\n"), bad("bad-target"));
        assert_eq!(
            v("GET http://a:8080/ HTTP/1.1\r\n\r\n"),
            good(31, Framing::None)
        );
        assert_eq!(v("GET /\r\n\r\n"), bad("bad-version"));
        assert_eq!(v("GET / HTTP/1.10\r\n\r\n"), bad("bad-version"));
        assert_eq!(v("GET / HTTP/1.1 \r\n\r\n"), bad("bad-version"));
        assert_eq!(v("GET / HTTP/1.1\rHost: a\r\n\r\n"), bad("bad-line-ending"));
        assert_eq!(
            v("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"),
            bad("bad-header-value")
        );
        assert_eq!(
            check(&[b'a'; 9000], 8192, 100),
            Verdict::Refuse(Cause::HeadersTooLarge)
        );
    }
}
