//! The outcome of a request head proxyd refused (malformed, too large, too slow): answered by
//! the server before any handler runs, it is logged and counted like any other request. What
//! is known of it is what nginx logs for a bad request: the request line as received, when
//! it is in the buffer (`http1::parse_request` leaves a refused head there), else `-`.

use std::net::IpAddr;
use std::time::SystemTime;

use http::{HeaderValue, Method, Version};
use tokio::time::Instant;

use crate::error::Cause;
use crate::obs::{Outcome, Trace};

/// At most this much of a refused request's target is logged (a head can be 64 KiB of one
/// line; nginx's own request line buffer is 8 KiB).
const MAX_LOGGED_TARGET: usize = 8 * 1024;

/// The outcome of a refused head. `seen`: the buffer's bytes, `began`: when the head's clock
/// started; `body_bytes`: of the error response that was sent.
pub fn outcome(
    cause: Cause,
    seen: &[u8],
    began: Instant,
    client: Option<IpAddr>,
    body_bytes: u64,
) -> Outcome {
    let line = RequestLine::of(seen);
    let duration = began.elapsed();
    Outcome {
        at: SystemTime::now()
            .checked_sub(duration)
            .unwrap_or_else(SystemTime::now),
        method: line.method,
        path_len: line.target.find('?').unwrap_or(line.target.len()),
        target: line.target,
        version: line.version,
        host: None,
        client,
        forwarded_for: None,
        user_agent: None,
        referer: None,
        // No id was given to it (the response carries none).
        request_id: HeaderValue::from_static("-"),
        status: cause.status(),
        body_bytes,
        duration,
        trace: Trace {
            compressed: None,
            cause: Some(cause),
            ..Trace::default()
        },
    }
}

/// The length of the body of `msg`, a whole response proxyd wrote.
pub fn body_len(msg: &[u8]) -> u64 {
    let head = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(msg.len(), |at| at + 4);
    (msg.len() - head) as u64
}

/// What a refused head's first line tells, read leniently.
struct RequestLine {
    method: Method,
    target: String,
    version: Version,
}

impl RequestLine {
    fn of(seen: &[u8]) -> RequestLine {
        let line = seen.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let unknown = || Method::from_bytes(b"-").unwrap_or_default();
        let first = words.next();
        let (method, target) = match first.map(Method::from_bytes) {
            Some(Ok(m)) => (m, words.next().unwrap_or(b"-")),
            // Not a method (a TLS hello on a plain port, say): the whole line, as received.
            Some(Err(_)) => (unknown(), line),
            None => (unknown(), &b"-"[..]),
        };
        let target = &target[..target.len().min(MAX_LOGGED_TARGET)];
        let version = match words.next() {
            Some(b"HTTP/1.0") => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        RequestLine {
            method,
            // The access log escapes it.
            target: String::from_utf8_lossy(target).into_owned(),
            version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn the_request_line_as_far_as_it_goes() {
        let l = RequestLine::of(b"CONNECT example.com:443 HTTP/1.0\r\nHost: x\r\n\r\n");
        assert_eq!(l.method, Method::CONNECT);
        assert_eq!(l.target, "example.com:443");
        assert_eq!(l.version, Version::HTTP_10);

        let l = RequestLine::of(b"GET /a?b=1");
        assert_eq!((l.method.as_str(), &*l.target), ("GET", "/a?b=1"));
        assert_eq!(l.version, Version::HTTP_11);

        let l = RequestLine::of(b"\x16\x03\x01 \x02\r\n");
        assert_eq!(l.method.as_str(), "-");
        assert_eq!(l.target, "\u{16}\u{3}\u{1} \u{2}");

        let l = RequestLine::of(b"");
        assert_eq!((l.method.as_str(), &*l.target), ("-", "-"));
    }

    #[test]
    fn a_refused_head_is_an_outcome_with_its_cause() {
        let o = outcome(
            Cause::BadRequest("bad-header-name"),
            b"GET /x?y HTTP/1.1\r\nBad Header: 1\r\n\r\n",
            Instant::now(),
            Some(IpAddr::from([127, 0, 0, 1])),
            12,
        );
        assert_eq!(o.status, StatusCode::BAD_REQUEST);
        assert_eq!(o.path(), "/x");
        assert_eq!(o.body_bytes, 12);
        assert_eq!(o.trace.cause, Some(Cause::BadRequest("bad-header-name")));
        assert!(o.trace.route.is_none() && o.trace.upstream.is_none());
    }

    #[test]
    fn the_body_follows_the_head() {
        assert_eq!(
            body_len(b"HTTP/1.1 400 Bad Request\r\nx: y\r\n\r\nhello"),
            5
        );
        assert_eq!(body_len(b"HTTP/1.1 400 Bad Request\r\n"), 0);
    }
}
