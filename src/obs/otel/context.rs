//! W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` parsed strictly,
//! `tracestate` checked and bounded, new ids, and the header proxyd sends upstream.

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` flag.
pub const SAMPLED: u8 = 0x01;
/// The `random` flag (Trace Context level 2): the trace id's right half is random.
pub const RANDOM: u8 = 0x02;

/// `tracestate` kept up to this many characters (the spec's 512) and list members.
const TRACESTATE_MAX: usize = 512;
const TRACESTATE_MEMBERS: usize = 32;

/// A trace id, shown as 32 lowercase hex digits (logs, the JSON access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        hex(&self.0, &mut buf);
        // Only hex digits were written.
        f.write_str(std::str::from_utf8(&buf).unwrap_or_default())
    }
}

/// A valid incoming `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl Parent {
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// What a request's `traceparent` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    None,
    Valid(Parent),
    /// Malformed, or sent more than once: replaced, never passed on.
    Invalid,
}

/// The request's `traceparent`, parsed.
pub fn incoming(h: &HeaderMap) -> Incoming {
    let mut all = h.get_all(TRACEPARENT).iter();
    match (all.next(), all.next()) {
        (None, _) => Incoming::None,
        (Some(v), None) => parse(v.as_bytes()).map_or(Incoming::Invalid, Incoming::Valid),
        (Some(_), Some(_)) => Incoming::Invalid,
    }
}

/// Parses one `traceparent` value: `00` exactly 55 characters; a later version (not `ff`)
/// read as version 00 from its first 55 characters, which must end the value or be followed
/// by `-` (the spec's rule for versions it does not know). Lowercase hex only; an all-zero
/// trace id or parent id is invalid.
pub fn parse(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&v[0..2])?[0];
    match version {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        0x00 => {}
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let span_id = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        // Version 00 knows `sampled` and (level 2) `random`; other bits are not passed on.
        flags: flags & (SAMPLED | RANDOM),
    })
}

/// The `traceparent` proxyd sends: version 00, `span_id` as the parent.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> HeaderValue {
    let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(trace_id, &mut b[3..35]);
    hex(span_id, &mut b[36..52]);
    hex(&[flags], &mut b[53..55]);
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&b).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The request's `tracestate`, its headers joined, if it is well formed and within the
/// spec's bounds (32 members, 512 characters); else None (the spec lets a proxy drop a
/// `tracestate` it cannot pass on whole rather than forward part of it).
pub fn tracestate(h: &HeaderMap) -> Option<String> {
    let mut joined = String::new();
    for v in h.get_all(TRACESTATE) {
        let s = v.to_str().ok()?;
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(s);
    }
    if joined.is_empty() || joined.len() > TRACESTATE_MAX || !valid_tracestate(&joined) {
        return None;
    }
    Some(joined)
}

fn valid_tracestate(s: &str) -> bool {
    let mut members = 0;
    let mut keys: Vec<&str> = Vec::new();
    for m in s.split(',') {
        let m = m.trim_matches([' ', '\t']);
        if m.is_empty() {
            continue;
        }
        members += 1;
        let Some((key, value)) = m.split_once('=') else {
            return false;
        };
        if members > TRACESTATE_MEMBERS || !valid_key(key) || !valid_value(value) {
            return false;
        }
        if keys.contains(&key) {
            return false;
        }
        keys.push(key);
    }
    true
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(k: &str) -> bool {
    let part = |s: &str, max: usize, first_digit: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || (first_digit && b[0].is_ascii_digit()))
            && b.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    match k.split_once('@') {
        None => part(k, 256, false),
        Some((tenant, system)) => part(tenant, 241, true) && part(system, 14, false),
    }
}

fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && b[b.len() - 1] != b' '
}

/// A new trace id: random, never all zeros.
pub fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// A new span id: random, never all zeros.
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Lowercase hex only (the spec refuses uppercase).
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The spec's own example.
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example() {
        let p = parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            TraceId(p.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(p.span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert!(p.sampled());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse(unsampled.as_bytes()).unwrap().sampled());
        // And back.
        assert_eq!(traceparent(&p.trace_id, &p.span_id, p.flags), EXAMPLE);
    }

    #[test]
    fn invalid_ones() {
        let bad = [
            "",
            // one short, one long
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all zeros
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // wrong separators, non-hex
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // a future version: more must follow a dash
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for b in bad {
            assert_eq!(parse(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn a_future_version_is_read_leniently() {
        let p =
            parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever").unwrap();
        assert!(p.sampled());
        assert!(parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
        // Unknown flags are not passed on.
        let p = parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert_eq!(p.flags, SAMPLED | RANDOM);
    }

    #[test]
    fn headers() {
        let mut h = HeaderMap::new();
        assert_eq!(incoming(&h), Incoming::None);
        h.insert(TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert!(matches!(incoming(&h), Incoming::Valid(_)));
        h.append(TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert_eq!(incoming(&h), Incoming::Invalid, "twice");
        h.insert(TRACEPARENT, HeaderValue::from_static("00-xyz"));
        assert_eq!(incoming(&h), Incoming::Invalid);
    }

    #[test]
    fn tracestates() {
        let state = |vals: &[&str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append(TRACESTATE, HeaderValue::from_str(v).unwrap());
            }
            tracestate(&h)
        };
        assert_eq!(state(&[]), None);
        assert_eq!(
            state(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert_eq!(
            state(&["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        assert!(state(&["fw529a3039@dt=aGVsbG8, , a=b"]).is_some());
        assert_eq!(state(&["novalue"]), None);
        assert_eq!(state(&["Upper=x"]), None);
        assert_eq!(state(&["a=b,a=c"]), None, "a key twice");
        assert_eq!(state(&["a=b=c"]), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(state(&[&many.join(",")]), None, "33 members");
        let long = format!("a={}", "x".repeat(250));
        let long = [
            long.as_str(),
            &long.replace("a=", "b="),
            &long.replace("a=", "c="),
        ];
        assert_eq!(state(&long), None, "over 512 characters");
    }

    #[test]
    fn new_ids_are_never_zero_and_format_back() {
        for _ in 0..100 {
            let (t, s) = (new_trace_id(), new_span_id());
            assert_ne!(t, [0; 16]);
            assert_ne!(s, [0; 8]);
            let v = traceparent(&t, &s, SAMPLED);
            assert_eq!(v.len(), 55);
            let p = parse(v.as_bytes()).unwrap();
            assert_eq!((p.trace_id, p.span_id, p.flags), (t, s, SAMPLED));
        }
    }
}
