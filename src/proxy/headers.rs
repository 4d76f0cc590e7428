//! Header rules: request framing checks, hop-by-hop removal, X-Forwarded-*, request ids,
//! Host, and turning any request into an origin-form HTTP/1.1 request for the backend.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, response, Uri, Version};

use super::error::ProxyError;
use crate::config::HashKey;
use crate::http1;
use crate::upstream::backend::hash_str;
use crate::upstream::body::RequestBody;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Refuses requests whose target or Host a backend could read differently than proxyd: the
/// rules of `http1::check_parts`, which an HTTP/1.1 head has passed already in `http1`'s
/// parse (with the framing rules) and an h2 request meets here.
pub fn check_request(parts: &request::Parts) -> Result<(), ProxyError> {
    http1::check_parts(parts).map_err(|cause| {
        ProxyError::new(
            cause,
            format_args!("{} {} refused: {}", parts.method, parts.uri, cause.code()),
        )
    })
}

/// True for an HTTP/1.1 request asking to switch protocols (see `http1::is_upgrade`).
pub fn is_upgrade(parts: &request::Parts) -> bool {
    http1::is_upgrade(parts)
}

/// Removes hop-by-hop headers: the fixed set and every header named in `Connection`.
/// `te: trailers` survives (it asks for trailers end to end); so does `upgrade` when kept.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One look over the names first: most messages carry none of these, and every removal
    // hashes its name.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) && name != header::TE {
                h.remove(&name);
            }
        }
        h.remove(header::CONNECTION);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
    if h.contains_key(header::TE) {
        let te_trailers = h
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        h.remove(header::TE);
        if te_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// The fixed hop-by-hop names (those named in `Connection` need `Connection` itself).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::TE
}

/// An address as text; IPv4 (the common case) without the formatting machinery.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// What the request rewrite needs to know about the client side.
pub struct ClientSide {
    pub client_ip: Option<IpAddr>,
    /// "http" or "https".
    pub proto: &'static str,
    pub preserve_host: bool,
}

/// The request's id under `name`: the client's own when it sent one, else a new one (set on
/// the request, so the backend sees it too).
pub fn ensure_request_id(h: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    match h.get(name) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => {
            let id = new_request_id();
            h.insert(name.clone(), id.clone());
            id
        }
    }
}

/// Rewrites a client request head into the one sent to a backend. Returns true when the
/// backend's own address must go in `Host` (not preserving it, or the client sent none).
pub fn prepare_request(
    parts: &mut request::Parts,
    body: &RequestBody,
    upgrade: bool,
    side: &ClientSide,
) -> bool {
    let had_body_framing = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    // The authority of an absolute-form or h2 request wins over Host.
    let host: Option<HeaderValue> = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    // proxyd already answered (or skipped) any 100-continue while reading the body.
    h.remove(header::EXPECT);

    if let Some(ip) = side.client_ip {
        let ip = ip_text(ip);
        let mut all = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .peekable();
        let value = if all.peek().is_some() {
            let mut joined = all.collect::<Vec<_>>().join(", ");
            joined.push_str(", ");
            joined.push_str(&ip);
            joined
        } else {
            ip
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(&X_FORWARDED_FOR, v);
        }
    }
    h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(side.proto));
    match &host {
        Some(v) => {
            h.insert(&X_FORWARDED_HOST, v.clone());
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
    let backend_host = match (side.preserve_host, host) {
        (true, Some(v)) => {
            h.insert(header::HOST, v);
            false
        }
        _ => true,
    };

    if parts.version == Version::HTTP_2 || parts.version == Version::HTTP_3 {
        join_cookies(h);
        // An h2/h3 client always accepts trailers (RFC 9113, 8.1) and needs not send `TE`; an
        // HTTP/1.1 backend only sends them when asked (gRPC's status lives in trailers).
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }

    // Framing: the buffered length, chunked when trailers follow or the length is unknown.
    match body {
        RequestBody::Buffered { .. } | RequestBody::Spooled(_) if body.has_trailers() => {
            h.remove(header::CONTENT_LENGTH);
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        RequestBody::Buffered { data, .. } => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
        }
        RequestBody::Spooled(s) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(s.len()));
        }
        RequestBody::Empty if had_body_framing => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        RequestBody::Empty => {}
        RequestBody::Streaming(_) => {
            if !h.contains_key(header::CONTENT_LENGTH) {
                h.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    drop_underscore_lookalikes(h);

    // Absolute-form becomes origin-form; an empty path is "/" (`http://a?q` is `/?q`).
    let origin_form = if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
        let path = match parts.uri.path() {
            "" => "/",
            p => p,
        };
        match parts.uri.query() {
            Some(q) => Uri::try_from(format!("{path}?{q}")).ok(),
            None => Uri::try_from(path).ok(),
        }
    } else {
        None
    };
    if let Some(uri) = origin_form {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_11;
    backend_host
}

/// Headers a backend must be able to trust came from proxyd (or were checked by it).
const VOUCHED: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-client-subject",
];

/// Removes a header spelled with underscores that stands for one proxyd sets or checks
/// (`X_Forwarded_For`, `Content_Length`), or for one the request carries: CGI and WSGI servers
/// map `-` and `_` alike to `HTTP_X_FORWARDED_FOR`, so the lookalike could override what proxyd
/// vouches for. (nginx drops every name with an underscore by default.)
fn drop_underscore_lookalikes(h: &mut HeaderMap) {
    let lookalikes: Vec<HeaderName> = h
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            let dashed = n.as_str().replace('_', "-");
            VOUCHED.contains(&dashed.as_str()) || h.contains_key(dashed.as_str())
        })
        .cloned()
        .collect();
    for name in lookalikes {
        h.remove(&name);
    }
}

/// The request's key for `balance: hash`; None when it has none (it is then balanced by
/// load).
pub fn hash_key(key: &HashKey, h: &HeaderMap, client: Option<IpAddr>) -> Option<u64> {
    match key {
        HashKey::ClientIp => client.map(|ip| hash_str(&ip.to_string())),
        HashKey::Header(name) => h.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(name) => h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, v)| hash_str(v)),
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one, joined by "; ".
fn join_cookies(h: &mut HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
    }
}

/// Removes hop-by-hop headers from a backend's response (kept for a 101 switch).
pub fn prepare_response(parts: &mut response::Parts) {
    let switching = parts.status == http::StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, switching);
    parts.headers.remove(header::TE);
    // Meant for the proxy, as with nginx.
    parts.headers.remove(X_ACCEL_BUFFERING);
    if switching {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

const X_ACCEL_BUFFERING: &str = "x-accel-buffering";

/// True when a response asks to go out as it comes rather than be read ahead: server-sent
/// events, or `X-Accel-Buffering: no` (nginx's header, which is taken out here).
pub fn take_stream_hint(h: &mut HeaderMap) -> bool {
    let unbuffered = h
        .remove(X_ACCEL_BUFFERING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no"));
    let events = h.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"text/event-stream"))
    });
    unbuffered || events
}

/// 16 hex digits, random: unique enough to find one request in the logs.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u64(..);
    let mut buf = [0u8; 16];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Cause;
    use http::Request;

    fn parts(req: Request<()>) -> request::Parts {
        req.into_parts().0
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn framing_checks() {
        let ok = parts(
            Request::post("/")
                .header("host", "a")
                .header("content-length", "3")
                .body(())
                .unwrap(),
        );
        assert!(check_request(&ok).is_ok());
        let gz = parts(
            Request::post("/")
                .header("host", "a")
                .header("transfer-encoding", "gzip, chunked")
                .body(())
                .unwrap(),
        );
        assert!(check_request(&gz).is_err());
        let no_host = parts(Request::get("/").body(()).unwrap());
        assert_eq!(
            check_request(&no_host).unwrap_err().cause,
            Cause::BadRequest("missing-host")
        );
    }

    #[test]
    fn rewrite_strips_and_forwards() {
        let mut p = parts(
            Request::get("http://example.com:8080/a?b=1")
                .header("host", "other")
                .header("connection", "keep-alive, x-secret")
                .header("x-secret", "1")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers, deflate")
                .header("x-forwarded-for", "1.1.1.1")
                .header("x_forwarded_for", "6.6.6.6")
                .header("x_client_subject", "CN=forged")
                .header("x_request_id", "spoofed")
                .header("x_other", "kept")
                .body(())
                .unwrap(),
        );
        let rid = HeaderName::from_static("x-request-id");
        let id = ensure_request_id(&mut p.headers, &rid);
        assert_eq!(ensure_request_id(&mut p.headers, &rid), id, "kept once set");
        let side = ClientSide {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            proto: "http",
            preserve_host: true,
        };
        assert!(!prepare_request(&mut p, &RequestBody::Empty, false, &side));
        let h = &p.headers;
        assert_eq!(p.uri, "/a?b=1");
        assert_eq!(h["host"], "example.com:8080");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-request-id"], id);
        assert_eq!(id.len(), 16);
        assert_eq!(h["x_other"], "kept");
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "x_forwarded_for",
            "x_client_subject",
            "x_request_id",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }
}
