//! Request heads: parse, check, frame.

use bytes::BytesMut;
use http::{request, Method, Uri, Version};

use super::fields::{self, is_tchar, port_ok, Scan};
use super::{Framing, Limits};
use crate::error::Cause;

/// A parsed and checked request head.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: request::Parts,
    pub framing: Framing,
    /// The client may send another request on this connection after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1 (HTTP/1.0's is ignored, RFC 9110 10.1.1).
    pub expect_continue: bool,
    /// An HTTP/1.1 request to switch protocols (`Connection: upgrade` and `Upgrade`), never to
    /// `h2c`: a backend that switched would take HTTP/2 straight from the client, past every
    /// rule proxyd applies per request. Such a request goes on as a plain one.
    pub upgrade: bool,
}

fn bad(code: &'static str) -> Cause {
    Cause::BadRequest(code)
}

/// A head that passed the byte-level rules, still borrowing the buffer.
struct Checked<'b, 'h> {
    len: usize,
    req: httparse::Request<'h, 'b>,
    scan: Scan,
    framing: Framing,
}

/// Runs httparse and the syntax and framing rules on a head at `buf[0]`.
fn check<'b, 'h>(
    buf: &'b [u8],
    limits: &Limits,
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Option<Checked<'b, 'h>>, Cause> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(Cause::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Cause::HeadersTooLarge),
        Err(e) => return Err(bad(request_line_code(buf).unwrap_or_else(|| parse_code(e)))),
    };
    if len > limits.max_head_bytes {
        return Err(Cause::HeadersTooLarge);
    }
    if req.path.is_some_and(|p| !target_ok(p)) {
        return Err(bad("bad-target"));
    }
    let scan = Scan::new(req.headers);
    if scan.content_lengths > 0 && scan.length.is_none() {
        return Err(bad("bad-content-length"));
    }
    if scan.content_lengths > 1 {
        return Err(bad("duplicate-content-length"));
    }
    if scan.transfer_encodings > 0 {
        if scan.content_lengths > 0 {
            return Err(bad("content-length-with-transfer-encoding"));
        }
        if scan.transfer_encodings > 1 || !scan.chunked_only || req.version != Some(1) {
            return Err(bad("bad-transfer-encoding"));
        }
    }
    let framing = match (scan.transfer_encodings, scan.content_lengths, scan.length) {
        (0, 0, _) => Framing::None,
        (0, _, n) => Framing::Length(n.unwrap_or(0)),
        _ => Framing::Chunked,
    };
    Ok(Some(Checked {
        len,
        req,
        scan,
        framing,
    }))
}

/// Runs `f` with httparse's header array sized to the limit: on the stack when it is small.
fn with_headers<'b, R>(max: usize, f: impl FnOnce(&mut [httparse::Header<'b>]) -> R) -> R {
    let mut storage: [httparse::Header<'b>; 128] = [httparse::EMPTY_HEADER; 128];
    if max <= storage.len() {
        f(&mut storage[..max])
    } else {
        f(&mut vec![httparse::EMPTY_HEADER; max])
    }
}

/// The slice-only check the stream walker uses: the head's length and its body's framing, by
/// the same syntax and framing rules as [`parse_request`] (not the target and Host rules,
/// which [`check_parts`] applies to a parsed head). Ok(None): more bytes needed.
pub fn check_request(buf: &[u8], limits: &Limits) -> Result<Option<(usize, Framing)>, Cause> {
    with_headers(limits.max_headers, |headers| {
        Ok(check(buf, limits, headers)?.map(|c| (c.len, c.framing)))
    })
}

/// Parses and checks the request head at the start of `buf`. Ok(None): more bytes are needed.
/// On success the head's bytes are split off `buf`; what follows (body, pipelined requests)
/// stays. The target and the header values are slices of the head's bytes. After an error
/// `buf` still holds the head (for the log line); the connection is not to be read on.
pub fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<RequestHead>, Cause> {
    let found = with_headers(limits.max_headers, |headers| {
        let buf: &[u8] = buf;
        let Some(c) = check(buf, limits, headers)? else {
            return Ok(None);
        };
        let method = c.req.method.unwrap_or_default();
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("bad-method"))?;
        let path = c.req.path.unwrap_or_default();
        let path = fields::spans_of(buf, path.as_bytes());
        let version = c.req.version.unwrap_or(1);
        let spans = fields::spans(buf, c.req.headers);
        let head = RequestHead {
            parts: request::Request::new(()).into_parts().0,
            framing: c.framing,
            keep_alive: c.scan.keep_alive(version),
            expect_continue: version == 1 && c.scan.expect_continue,
            upgrade: false,
        };
        Ok(Some((c.len, method, path, version, spans, head)))
    })?;
    let Some((len, method, path, version, spans, mut head)) = found else {
        return Ok(None);
    };
    let bytes = buf.split_to(len).freeze();
    let built = (|| {
        head.parts.method = method;
        head.parts.uri =
            Uri::from_maybe_shared(bytes.slice(path)).map_err(|_| bad("bad-target"))?;
        head.parts.version = if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        head.parts.headers = fields::header_map(&bytes, spans).ok_or(bad("bad-header-value"))?;
        check_parts(&head.parts)
    })();
    if let Err(cause) = built {
        // The head goes back in front of what followed it: a refusal is logged with the
        // request line it refused (a copy, on the error path only).
        let mut whole = BytesMut::with_capacity(bytes.len() + buf.len());
        whole.extend_from_slice(&bytes);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Err(cause);
    }
    head.upgrade = is_upgrade(&head.parts);
    Ok(Some(head))
}

/// True for an HTTP/1.1 request asking to switch protocols (WebSocket and the like).
/// Never `h2c` (RFC 7540 3.2, gone from RFC 9113): a backend that switched would take HTTP/2
/// straight from the client, past every rule proxyd applies per request; such a request goes
/// on without its Upgrade.
pub fn is_upgrade(parts: &request::Parts) -> bool {
    parts.version == Version::HTTP_11
        && parts.headers.contains_key(http::header::UPGRADE)
        && fields::connection_has(&parts.headers, "upgrade")
        && !parts
            .headers
            .get_all(http::header::UPGRADE)
            .iter()
            .any(|v| fields::has_token(v.as_bytes(), "h2c"))
}

/// The rules on a parsed request head of any version (h2's too): refuses a target or Host a
/// backend could route differently than proxyd, and a Transfer-Encoding other than one
/// `chunked` (which an HTTP/1.1 head cannot carry past [`check_request`]; h2 forbids the
/// field).
pub fn check_parts(parts: &request::Parts) -> Result<(), Cause> {
    use http::header::{HOST, TRANSFER_ENCODING};
    if parts.method == Method::CONNECT {
        return Err(bad("connect-not-supported"));
    }
    check_target(parts)?;
    let h = &parts.headers;
    let mut hosts = h.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("duplicate-host"));
    }
    let authority = parts.uri.authority();
    if parts.version == Version::HTTP_11 && authority.is_none() && host.is_none() {
        return Err(bad("missing-host"));
    }
    if let Some(host) = host {
        let valid = host
            .to_str()
            .ok()
            .and_then(|s| s.parse::<http::uri::Authority>().ok());
        // Beside an absolute-form target the URI's authority wins (RFC 9112 3.2.2); a Host
        // that is not even a valid authority is still refused.
        let ok = match (authority, valid) {
            (_, None) => false,
            (Some(_), Some(_)) => true,
            (None, Some(a)) => !a.as_str().contains('@') && port_ok(&a),
        };
        if !ok {
            return Err(bad("bad-host"));
        }
    }
    if authority.is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("bad-host"));
    }
    let mut te = h.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("bad-transfer-encoding"));
        }
    }
    Ok(())
}

/// The request target: origin-form, absolute-form with an http(s) scheme, or `*` for OPTIONS
/// (CONNECT's authority-form is refused before this). A backend must not be handed a target
/// proxyd did not route by, or one it would turn into an absolute-form request line.
fn check_target(parts: &request::Parts) -> Result<(), Cause> {
    let uri = &parts.uri;
    match (uri.scheme(), uri.authority()) {
        (None, Some(_)) => return Err(bad("bad-target")),
        (Some(s), _) if *s != http::uri::Scheme::HTTP && *s != http::uri::Scheme::HTTPS => {
            return Err(bad("bad-target"))
        }
        _ => {}
    }
    if uri.authority().is_some_and(|a| !port_ok(a)) {
        return Err(bad("bad-target"));
    }
    if uri.path() == "*" && parts.method != Method::OPTIONS {
        return Err(bad("bad-target"));
    }
    Ok(())
}

/// No fragment (`http::Uri` would drop it silently; RFC 9112 has none in a request target),
/// and one `http::Uri` parses.
fn target_ok(target: &str) -> bool {
    !target.contains('#') && target.parse::<Uri>().is_ok()
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
        // httparse hands the target on as text: it refuses one that is not UTF-8 (as a token).
        Some(b' ') if std::str::from_utf8(&buf[start..i]).is_err() => return Some("bad-target"),
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
