//! Compression of upstream responses on the fly (the respond phase): the coding the client
//! accepts best among the route's `compression.algorithms`, whether a response may be
//! compressed at all, its head made to say so, and the body that compresses as it streams.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{response, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, ResponseBody};
use crate::config::{Compression, Encoding};
use crate::http1;

/// Levels as nginx and Caddy compress on the fly: cheap, not maximal. gzip 2 on zlib-rs:
/// its level 1 is zlib-ng's "quick" strategy (37 % of a 100 KiB JSON body, where nginx's
/// zlib level 1 sends 31 %); level 2 sends 28 % for about the CPU miniz_oxide's level 1
/// took (benches/compare.sh's gzip variant).
const GZIP_LEVEL: u32 = 2;
const BROTLI_QUALITY: u32 = 4;
/// 512 KiB windows (nginx's `brotli_window` default), so a response in flight holds little.
const BROTLI_WINDOW_LOG: u32 = 19;
const ZSTD_LEVEL: i32 = 3;
const ZSTD_WINDOW_LOG: u32 = 19;
/// Output held before it goes out even while the upstream has more ready.
const MAX_HELD: usize = 64 * 1024;
/// Input taken in one poll at most, so a long body that is all ready cannot hold the thread.
const MAX_TAKEN: usize = 256 * 1024;

/// What the request asked for: the coding to use if its response turns out compressible
/// (None: the client takes none of them; the response still says it varies).
pub struct Asked<'a> {
    pub encoding: Option<Encoding>,
    pub policy: &'a Compression,
}

/// The coding for a request on a route with `policy`: the client's most preferred (by
/// q-value, then the `algorithms` order) of those it accepts; None for HEAD and on a route
/// without compression.
pub fn asked<'a>(
    policy: Option<&'a Compression>,
    method: &Method,
    h: &HeaderMap,
) -> Option<Asked<'a>> {
    let policy = policy?;
    if *method == Method::HEAD {
        return None;
    }
    let encoding = negotiate(h, policy.algorithms.iter().map(|a| a.value));
    Some(Asked { encoding, policy })
}

/// The coding of `offered` (in server preference order) with the highest q-value in the
/// `Accept-Encoding` fields of `h`; `*` stands for any coding not named; q=0 refuses.
pub fn negotiate(h: &HeaderMap, offered: impl Iterator<Item = Encoding>) -> Option<Encoding> {
    let mut best: Option<(u16, Encoding)> = None;
    for e in offered {
        let q = http1::accept_quality(h, e.token());
        if q > 0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, e));
        }
    }
    best.map(|(_, e)| e)
}

/// Whether a response with this head (to a request that was not HEAD) may be compressed
/// under `policy`: a status with a whole body, not encoded already, no `no-transform`, a
/// listed type, and not known to be shorter than `min_length`.
pub fn compressible(head: &response::Parts, body: &ResponseBody, policy: &Compression) -> bool {
    let s = head.status;
    if s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::PARTIAL_CONTENT
        || s == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    let h = &head.headers;
    if h.get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        || h.contains_key(header::CONTENT_RANGE)
    {
        return false;
    }
    let no_transform = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
    if no_transform {
        return false;
    }
    let Some(ty) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if !type_listed(ty, policy) {
        return false;
    }
    let length = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(body.size_hint().exact());
    length.is_none_or(|n| n >= policy.min_length && n > 0)
}

/// `text/html; charset=utf-8` against `text/html` or `text/*`.
fn type_listed(content_type: &str, policy: &Compression) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((ty, _)) = essence.split_once('/') else {
        return false;
    };
    policy.types.iter().any(|t| match t.value.split_once('/') {
        Some((pty, "*")) => pty.eq_ignore_ascii_case(ty),
        _ => t.value.eq_ignore_ascii_case(essence),
    })
}

/// Makes the head say the body is `encoding`: Content-Encoding set, Content-Length and
/// Accept-Ranges gone, `Vary: Accept-Encoding` added to what is there, a strong ETag weak.
pub fn mark(head: &mut response::Parts, encoding: Encoding) {
    let h = &mut head.headers;
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.token()),
    );
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::ACCEPT_RANGES);
    vary(head);
    let h = &mut head.headers;
    if let Some(etag) = h.get(header::ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
    }
}

/// Adds `Vary: Accept-Encoding` to what the head says varies, unless it is there (or `*`):
/// on every response that could have been compressed, so that a cache keeps one per coding
/// (nginx's `gzip_vary on`).
pub fn vary(head: &mut response::Parts) {
    let h = &mut head.headers;
    let varies = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.trim();
            v == "*" || v.eq_ignore_ascii_case("accept-encoding")
        });
    if !varies {
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// How many bytes went into a compressed body, read for the request's outcome.
#[derive(Clone, Default)]
pub struct Tally(Arc<AtomicU64>);

impl Tally {
    pub fn bytes_in(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(e: Encoding) -> io::Result<Encoder> {
        Ok(match e {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW_LOG,
            ))),
            Encoding::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
                z.window_log(ZSTD_WINDOW_LOG)?;
                Encoder::Zstd(z)
            }
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(w) => w.write_all(data),
            Encoder::Br(w) => w.write_all(data),
            Encoder::Zstd(w) => w.write_all(data),
        }
    }

    /// Everything written so far, made decodable by the client now (a sync flush).
    fn flush(&mut self) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(w) => {
                w.flush()?;
                w.get_mut()
            }
            Encoder::Br(w) => {
                w.flush()?;
                w.get_mut()
            }
            Encoder::Zstd(w) => {
                w.flush()?;
                w.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(out)))
    }

    /// Output produced so far without a flush.
    fn held(&self) -> usize {
        match self {
            Encoder::Gzip(w) => w.get_ref().len(),
            Encoder::Br(w) => w.get_ref().len(),
            Encoder::Zstd(w) => w.get_ref().len(),
        }
    }

    /// The rest of the output and the end of the stream.
    fn finish(self) -> io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Br(w) => (*w).into_inner(),
            Encoder::Zstd(w) => w.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// A response body compressed as it streams: the upstream's frames that are ready go into
/// the encoder, which is flushed whenever the upstream has nothing more at once (so each
/// event of a stream reaches the client when it comes) or `MAX_HELD` is out.
pub struct Compressed {
    inner: ResponseBody,
    encoder: Option<Encoder>,
    /// Written to the encoder since its last flush.
    unflushed: bool,
    trailers: Option<HeaderMap>,
    tally: Tally,
}

impl Compressed {
    /// `inner` compressed with `encoding`, and the tally of what goes in; `inner` back as it
    /// was if the encoder could not be made.
    pub fn start(
        inner: ResponseBody,
        encoding: Encoding,
    ) -> Result<(ResponseBody, Tally), ResponseBody> {
        let encoder = match Encoder::new(encoding) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "compression: no encoder; sent as it is");
                return Err(inner);
            }
        };
        let tally = Tally::default();
        let body = Compressed {
            inner,
            encoder: Some(encoder),
            unflushed: false,
            trailers: None,
            tally: tally.clone(),
        };
        Ok((ResponseBody::Compressed(Box::new(body)), tally))
    }

    fn data(out: io::Result<Bytes>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(out.map(Frame::data).map_err(Into::into)))
    }

    /// Ends the stream: the encoder's last bytes.
    fn finish(&mut self) -> Option<io::Result<Bytes>> {
        self.encoder.take().map(Encoder::finish)
    }
}

impl Body for Compressed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut taken = 0;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            let frame = match polled {
                Poll::Pending if this.unflushed => {
                    this.unflushed = false;
                    return Self::data(encoder.flush());
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            match frame {
                None => match this.finish() {
                    Some(out) => return Self::data(out),
                    None => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        this.tally.0.fetch_add(data.len() as u64, Ordering::Relaxed);
                        if let Err(e) = encoder.write(&data) {
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        this.unflushed = true;
                        taken += data.len();
                        if encoder.held() >= MAX_HELD || taken >= MAX_TAKEN {
                            this.unflushed = false;
                            return Self::data(encoder.flush());
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                            if let Some(out) = this.finish() {
                                return Self::data(out);
                            }
                        }
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

    #[test]
    fn negotiation_by_q_then_server_order() {
        let pick = |v: &str| negotiate(&accept(v), ALL.into_iter());
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Encoding::Zstd));
        assert_eq!(pick("gzip, br"), Some(Encoding::Br));
        assert_eq!(pick("gzip;q=1, br;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(pick("zstd;q=0, br;q=0, gzip"), Some(Encoding::Gzip));
        assert_eq!(pick("*"), Some(Encoding::Zstd));
        assert_eq!(pick("*;q=0.1, gzip;q=0.5"), Some(Encoding::Gzip));
        assert_eq!(pick("*;q=0"), None);
        assert_eq!(pick("gzip;q=0"), None);
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("x-gzip"), Some(Encoding::Gzip));
        assert_eq!(pick("GZIP; Q=0.3"), Some(Encoding::Gzip));
        assert_eq!(
            pick("gzip;q=2, br;q=abc"),
            None,
            "malformed entries are ignored"
        );
        assert_eq!(negotiate(&HeaderMap::new(), ALL.into_iter()), None);
        let only_gzip = [Encoding::Gzip];
        assert_eq!(negotiate(&accept("br, zstd"), only_gzip.into_iter()), None);
    }

    #[test]
    fn the_head_says_so() {
        let mut head = http::Response::builder()
            .header("content-length", "5000")
            .header("vary", "Origin")
            .header("etag", "\"abc\"")
            .header("accept-ranges", "bytes")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        mark(&mut head, Encoding::Br);
        let h = &head.headers;
        assert_eq!(h["content-encoding"], "br");
        assert!(!h.contains_key("content-length"));
        assert!(!h.contains_key("accept-ranges"));
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        assert_eq!(h["etag"], "W/\"abc\"");
        // Once is enough; a weak ETag stays as it is.
        mark(&mut head, Encoding::Br);
        assert_eq!(head.headers.get_all("vary").iter().count(), 2);
        assert_eq!(head.headers["etag"], "W/\"abc\"");
    }

    #[test]
    fn types_and_wildcards() {
        let policy = Compression::default();
        assert!(type_listed("text/html; charset=utf-8", &policy));
        assert!(type_listed("TEXT/CSS", &policy));
        assert!(type_listed("application/json", &policy));
        assert!(type_listed("image/svg+xml", &policy));
        assert!(!type_listed("image/png", &policy));
        assert!(!type_listed("application/octet-stream", &policy));
        assert!(!type_listed("nonsense", &policy));
    }
}
