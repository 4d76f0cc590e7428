//! The first look at an HTTP/1.1 request head, before hyper parses it. hyper follows RFC 9112
//! leniently where a proxy must be strict: it drops a Content-Length that comes with
//! Transfer-Encoding and merges duplicate Content-Lengths, so the pipeline never sees them.
//! proxyd refuses such heads outright, and answers malformed or oversized heads with its own
//! error responses (`proxyd-error`) instead of hyper's empty ones.

use crate::proxy::error::Cause;

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
        Err(e) => return Verdict::Refuse(Cause::BadRequest(parse_code(e))),
    };
    if len > max_bytes {
        return Verdict::Refuse(Cause::HeadersTooLarge);
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
        assert_eq!(
            check(&[b'a'; 9000], 8192, 100),
            Verdict::Refuse(Cause::HeadersTooLarge)
        );
    }
}
