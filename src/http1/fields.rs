//! Field rules shared by requests and responses: the framing fields, Connection tokens, and
//! building a `HeaderMap` whose values are slices of the head.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Digits only (no sign, list or spaces), and small enough for every server behind proxyd
/// (nginx keeps lengths in a signed 64-bit off_t).
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    i64::try_from(n).is_ok().then_some(n)
}

/// True when a comma-separated field value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// True when a `Connection` field of `h` lists `token`.
pub fn connection_has(h: &HeaderMap, token: &str) -> bool {
    h.get_all(http::header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), token))
}

/// An authority's port, when it has one, is a port number (`Authority::port` says None for
/// `host:99999` as for `host`).
pub fn port_ok(a: &http::uri::Authority) -> bool {
    let s = a.as_str();
    let s = s.rsplit_once('@').map_or(s, |(_, hostport)| hostport);
    let port = match s.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(_, rest)| rest),
        None => Some(s.rsplit_once(':').map_or("", |(_, p)| p)),
    };
    match port {
        Some("") => !s.ends_with(':'),
        Some(p) => p.strip_prefix(':').unwrap_or(p).parse::<u16>().is_ok(),
        None => false,
    }
}

pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the framing and connection fields of a head say.
#[derive(Debug, Default)]
pub struct Scan {
    pub content_lengths: usize,
    /// The last Content-Length's value; None when one was not a valid length.
    pub length: Option<u64>,
    pub transfer_encodings: usize,
    /// Transfer-Encoding is exactly `chunked` (one field, one coding).
    pub chunked_only: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub hosts: usize,
}

impl Scan {
    pub fn new(headers: &[httparse::Header<'_>]) -> Scan {
        let mut s = Scan {
            length: Some(0),
            ..Scan::default()
        };
        for h in headers {
            let name = h.name.as_bytes();
            // The first byte sorts out most names without comparing them whole.
            match name.first().map(u8::to_ascii_lowercase) {
                Some(b'c') if name.eq_ignore_ascii_case(b"content-length") => {
                    s.content_lengths += 1;
                    s.length = s.length.and(content_length(h.value));
                }
                Some(b'c') if name.eq_ignore_ascii_case(b"connection") => {
                    for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                        if t.eq_ignore_ascii_case(b"close") {
                            s.close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            s.keep_alive = true;
                        }
                    }
                }
                Some(b't') if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    s.transfer_encodings += 1;
                    s.chunked_only = h.value.eq_ignore_ascii_case(b"chunked");
                }
                Some(b'e') if name.eq_ignore_ascii_case(b"expect") => {
                    s.expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
                }
                Some(b'h') if name.eq_ignore_ascii_case(b"host") => s.hosts += 1,
                _ => {}
            }
        }
        s
    }

    /// Whether the connection may carry another message after this one.
    pub fn keep_alive(&self, version: u8) -> bool {
        !self.close && (version == 1 || self.keep_alive)
    }
}

/// Where each field's name and value lie within the head (offsets from its start).
pub type Spans = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;

/// Where `part`, a slice of `base`, lies within it.
pub fn spans_of(base: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let at = part.as_ptr() as usize - base.as_ptr() as usize;
    at..at + part.len()
}

pub fn spans(base: &[u8], headers: &[httparse::Header<'_>]) -> Spans {
    headers
        .iter()
        .map(|h| (spans_of(base, h.name.as_bytes()), spans_of(base, h.value)))
        .collect()
}

/// Room for the fields a proxy adds to a head it passes on (X-Forwarded-For/-Proto/-Host,
/// X-Request-Id, Via, ...), so that adding them does not grow the map (callgrind showed the
/// grow and its rehash on every request).
const ADDED_FIELDS: usize = 8;

/// The fields as a `HeaderMap`, each value a slice of `head` (no copy). None when a name or a
/// value is not one `http` takes (httparse has checked both; this is a second guard).
pub fn header_map(head: &Bytes, spans: Spans) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(spans.len() + ADDED_FIELDS);
    for (name, value) in spans {
        let name = HeaderName::from_bytes(&head[name]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value)).ok()?;
        map.append(name, value);
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0012"), Some(12));
        assert_eq!(
            content_length(b"9223372036854775807"),
            Some(9223372036854775807)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1,1",
            b"0x1",
            b"9223372036854775808",
            b"18446744073709551616",
            b"99999999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ports() {
        let ok = |s: &str| port_ok(&s.parse().unwrap());
        assert!(ok("a"));
        assert!(ok("a:80"));
        assert!(ok("[::1]:65535"));
        assert!(ok("[::1]"));
        assert!(!ok("a:65536"));
        assert!(!ok("a:"));
        assert!(!ok("[::1]:99999"));
    }

    #[test]
    fn tokens() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b" close ", "close"));
        assert!(!has_token(b"closed", "close"));
    }
}
