//! Differential fuzzing of `proxyd::http1` against httparse and hyper's HTTP/1.1 server on the
//! same bytes. The first byte chooses what the rest is:
//!
//! - `knobs & 3 == 0`: a client's stream. Its first request head goes through
//!   `http1::parse_request`, httparse and hyper's server; when http1 takes it, its body (any
//!   framing) is read by http1 and by hyper and must come out the same.
//! - `1`: a chunked request body, after a fixed head: `http1::ChunkedDecoder` (fed whole and in
//!   pieces) against hyper's decoder.
//! - `2`: a response head, the answer to the method `knobs >> 4` picks: `http1::parse_response`
//!   against httparse.
//! - `3`: a client's stream cut into reads of `(knobs >> 2) + 1` bytes: `parse_request` on a
//!   growing buffer must reach the verdict it reaches on the whole.
//!
//! Where http1 takes what the others take, it must read it as they do (the same method,
//! target, version, fields, status, head length, body and trailers). Where the others refuse,
//! http1 must refuse too. Where http1 refuses what they take, it must be one of its deliberate
//! differences, each listed here:
//!
//! - Requests: Content-Length beside Transfer-Encoding, two Content-Length fields, a length
//!   that is not plain digits or does not fit an i64, a Transfer-Encoding other than one
//!   `chunked` (hyper takes `gzip, chunked`, merges equal lengths, drops the length beside
//!   chunked); a target with a fragment, an authority-form or `*` target off OPTIONS, a non-http
//!   scheme, userinfo, a port out of range; CONNECT; a missing, doubled or invalid Host. None of
//!   this is httparse's business (it tokenizes), and hyper leaves it to the service.
//! - Heads over `max_head_bytes` (hyper's buffer is 8 KiB larger, as proxyd configures it).
//! - Responses: a bare LF as a line end (httparse takes it), several or listed Content-Length
//!   values, Content-Length with Transfer-Encoding, a coding other than one `chunked`,
//!   Transfer-Encoding on HTTP/1.0, a status under 100.
//! - Chunked bodies: a control byte other than HTAB in an extension (hyper skips any byte but
//!   LF), a bare LF in the trailer section (hyper's framing takes it inside a line), and a
//!   trailer section over 8 KiB (hyper allows 16 KiB).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use proxyd::error::Cause;
use proxyd::http1::{self, Chunk, ChunkedDecoder, Framing, Limits};

const LIMITS: Limits = Limits {
    max_head_bytes: 8192,
    max_headers: 100,
};

/// Trailer bytes the decoder is given here (hyper's own limit is 16 KiB).
const MAX_TRAILER_BYTES: usize = 8192;

pub fn http1_diff(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    match knobs & 3 {
        0 => request(rest),
        1 => chunked(rest),
        2 => response(rest, knobs >> 4),
        _ => request_in_reads(rest, usize::from(knobs >> 2) + 1),
    }
}

/// Request codes http1 may refuse where hyper parses the head.
fn deliberate(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::HeadersTooLarge
            | Cause::BadRequest(
                "content-length-with-transfer-encoding"
                    | "duplicate-content-length"
                    | "bad-content-length"
                    | "bad-transfer-encoding"
                    | "bad-target"
                    | "connect-not-supported"
                    | "missing-host"
                    | "duplicate-host"
                    | "bad-host"
            )
    )
}

/// What a parser made of a request head.
#[derive(Debug, PartialEq)]
struct Head {
    method: Method,
    target: String,
    version: http::Version,
    headers: HeaderMap,
}

/// A body as read whole: its data and trailers, or None when it was malformed or cut short.
type Body = Option<(Vec<u8>, Option<HeaderMap>)>;

fn request(stream: &[u8]) {
    let mut buf = BytesMut::from(stream);
    let ours = http1::parse_request(&mut buf, &LIMITS);
    let head_len = stream.len() - buf.len();

    // httparse: the same tokens, so never more lenient, and the same head when both take it.
    let mut fields = vec![httparse::EMPTY_HEADER; LIMITS.max_headers];
    let mut req = httparse::Request::new(&mut fields);
    let theirs = req.parse(stream);
    match (&ours, &theirs) {
        (Ok(Some(h)), Ok(httparse::Status::Complete(n))) => {
            assert_eq!(head_len, *n, "head length");
            assert_eq!(Some(h.parts.method.as_str()), req.method);
            assert_eq!(
                req.path.map(|p| p.parse::<http::Uri>().ok()),
                Some(Some(h.parts.uri.clone()))
            );
            let pairs: Vec<(String, &[u8])> = req
                .headers
                .iter()
                .map(|f| (f.name.to_ascii_lowercase(), f.value))
                .collect();
            let ours_pairs: Vec<(String, &[u8])> = h
                .parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes()))
                .collect();
            assert_eq!(sorted(ours_pairs), sorted(pairs), "fields");
        }
        (Ok(Some(h)), theirs) => panic!("http1 took {h:?}, httparse: {theirs:?}"),
        (Ok(None), Ok(httparse::Status::Partial)) => {}
        (Ok(None), theirs) => panic!("http1 wants more, httparse: {theirs:?}"),
        (Err(_), _) => {}
    }

    // hyper's server, configured as proxyd configures it.
    let Some(served) = super::runtime().block_on(hyper_first(stream)) else {
        return;
    };
    match (ours, served) {
        (Ok(Some(h)), Some((seen, body))) => {
            let mine = Head {
                method: h.parts.method.clone(),
                target: h.parts.uri.to_string(),
                version: h.parts.version,
                headers: h.parts.headers.clone(),
            };
            assert_eq!(mine, seen, "the head as hyper read it");
            let ours = read_body(&buf, h.framing);
            if ours.is_some()
                || h.framing != Framing::Chunked
                || !deliberately_stricter_chunked(&buf)
            {
                assert_eq!(ours, body, "the body as hyper read it");
            }
        }
        (Ok(Some(h)), None) => panic!("http1 took {h:?}, hyper refused it"),
        (Ok(None), Some((seen, _))) => panic!("http1 wants more, hyper parsed {seen:?}"),
        (Err(cause), Some((seen, _))) => {
            assert!(
                deliberate(cause),
                "http1 refused ({cause:?}) what hyper parsed: {seen:?}"
            );
        }
        (Ok(None) | Err(_), None) => {}
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// The body after a head, read by http1 from what `rest` holds.
fn read_body(rest: &[u8], framing: Framing) -> Body {
    match framing {
        Framing::None => Some((Vec::new(), None)),
        Framing::Length(n) => {
            let n = usize::try_from(n).ok()?;
            rest.get(..n).map(|b| (b.to_vec(), None))
        }
        Framing::Chunked => dechunk(rest, rest.len().max(1)),
        Framing::Close => Some((rest.to_vec(), None)),
    }
}

/// Decodes a chunked body fed in reads of `step` bytes; None when it is malformed or cut
/// short.
fn dechunk(body: &[u8], step: usize) -> Body {
    let mut d = ChunkedDecoder::new(MAX_TRAILER_BYTES);
    let mut data = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in body.chunks(step) {
        pending.extend_from_slice(piece);
        loop {
            let (used, chunk) = d.decode(&pending).ok()?;
            assert!(used <= pending.len());
            match chunk {
                Chunk::Data(r) => {
                    assert!(!r.is_empty() && r.end == used, "{r:?} {used}");
                    data.extend_from_slice(&pending[r]);
                }
                Chunk::NeedMore => {
                    assert_eq!(used, pending.len(), "NeedMore uses all it is given");
                    pending.clear();
                    break;
                }
                Chunk::End(t) => return Some((data, t)),
            }
            pending.drain(..used);
        }
    }
    None
}

fn chunked(body: &[u8]) {
    let whole = dechunk(body, body.len().max(1));
    for step in [1, 2, 7] {
        assert_eq!(dechunk(body, step), whole, "in reads of {step}");
    }
    let mut stream = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    stream.extend_from_slice(body);
    let Some(served) = super::runtime().block_on(hyper_first(&stream)) else {
        return;
    };
    let theirs = served.and_then(|(_, body)| body);
    match (&whole, &theirs) {
        (Some(_), _) => assert_eq!(whole, theirs, "the body as hyper read it"),
        (None, Some(_)) => assert!(
            deliberately_stricter_chunked(body),
            "http1 refused a body hyper read: {theirs:?}"
        ),
        (None, None) => {}
    }
}

/// The chunked bodies http1 refuses and hyper takes (see the module doc).
fn deliberately_stricter_chunked(body: &[u8]) -> bool {
    // Where the last chunk's line ends, the trailer section starts; before it, extensions.
    let control_in_extension = body.split(|b| *b == b'\n').any(|line| {
        line.iter().position(|b| *b == b';').is_some_and(|at| {
            line[at..]
                .iter()
                .any(|b| (*b < b' ' && !b"\t\r".contains(b)) || *b == 0x7f)
        })
    });
    let bare_lf = body
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || body[i - 1] != b'\r'));
    // The trailer limit, loosely: only a body this long can have a trailer section this long.
    control_in_extension || bare_lf || body.len() > MAX_TRAILER_BYTES
}

fn response(head: &[u8], method: u8) {
    let method =
        [Method::GET, Method::HEAD, Method::CONNECT, Method::POST][usize::from(method & 3)].clone();
    let mut buf = BytesMut::from(head);
    let ours = http1::parse_response(&mut buf, &LIMITS, &method);
    let mut fields = vec![httparse::EMPTY_HEADER; LIMITS.max_headers];
    let mut res = httparse::Response::new(&mut fields);
    let theirs = res.parse(head);
    match (&ours, &theirs) {
        (Ok(Some(h)), Ok(httparse::Status::Complete(n))) => {
            assert_eq!(head.len() - buf.len(), *n, "head length");
            assert_eq!(Some(h.parts.status.as_u16()), res.code);
            let pairs: Vec<(String, &[u8])> = res
                .headers
                .iter()
                .map(|f| (f.name.to_ascii_lowercase(), f.value))
                .collect();
            let ours_pairs: Vec<(String, &[u8])> = h
                .parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes()))
                .collect();
            assert_eq!(sorted(ours_pairs), sorted(pairs), "fields");
            let no_body = h.parts.status.is_informational()
                || h.parts.status == 204
                || h.parts.status == 304
                || method == Method::HEAD
                || (method == Method::CONNECT && h.parts.status.is_success());
            assert_eq!(no_body, h.framing == Framing::None, "{h:?}");
            if h.framing == Framing::Close {
                assert!(!h.keep_alive);
            }
        }
        (Ok(Some(h)), theirs) => panic!("http1 took {h:?}, httparse: {theirs:?}"),
        (Ok(None), Ok(httparse::Status::Partial)) => {}
        (Ok(None), theirs) => panic!("http1 wants more, httparse: {theirs:?}"),
        (Err(Cause::HeadersTooLarge), _) => {}
        (Err(e), Ok(httparse::Status::Complete(_))) => assert_eq!(*e, Cause::UpstreamProtocol),
        (Err(e), Ok(httparse::Status::Partial)) => panic!("http1 refused ({e:?}) a partial head"),
        (Err(_), Err(_)) => {}
    }
}

fn request_in_reads(stream: &[u8], step: usize) {
    let mut whole = BytesMut::from(stream);
    let verdict = http1::parse_request(&mut whole, &LIMITS).map(|h| h.map(|h| h.framing));
    let mut buf = BytesMut::new();
    let mut cut = Ok(None);
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        cut = http1::parse_request(&mut buf, &LIMITS).map(|h| h.map(|h| h.framing));
        if !matches!(cut, Ok(None)) {
            break;
        }
    }
    if stream.is_empty() {
        return;
    }
    // A head refused early for its size may be refused as a complete head later, and the
    // reverse; otherwise the verdicts agree.
    match (&verdict, &cut) {
        (Err(Cause::HeadersTooLarge), _) | (_, Err(Cause::HeadersTooLarge)) => {}
        _ => assert_eq!(verdict, cut, "whole vs in reads of {step}"),
    }
}

/// The first request hyper's server parses from `stream`, with its body read whole (None
/// when hyper failed it); Some(None) when hyper parsed no request; None when the connection
/// did not end within a few seconds.
async fn hyper_first(stream: &[u8]) -> Option<Option<(Head, Body)>> {
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let seen: Arc<Mutex<Option<(Head, Body)>>> = Arc::new(Mutex::new(None));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let log = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let head = Head {
                method: parts.method,
                target: parts.uri.to_string(),
                version: parts.version,
                headers: parts.headers,
            };
            let body = body.collect().await.ok().map(|c| {
                let trailers = c.trailers().cloned();
                (c.to_bytes().to_vec(), trailers)
            });
            if let Ok(mut seen) = log.lock() {
                seen.get_or_insert((head, body));
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<Bytes>::new(),
            ))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(LIMITS.max_head_bytes.saturating_add(8192))
        .max_headers(LIMITS.max_headers)
        .keep_alive(false)
        // The stream ends after what is written: hyper must still serve the request it holds.
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async {
        let _ = wr.write_all(stream).await;
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
    };
    let all = async { tokio::join!(conn, write, read) };
    // The connection's own error (a head hyper refused, the stream ending mid-body) is fine.
    let _ = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .ok()?;
    let seen = seen.lock().ok()?.take();
    Some(seen)
}
