//! Response heads: parse, check, frame (RFC 9112 6.3).

use bytes::BytesMut;
use http::{response, Method, StatusCode, Version};

use super::fields::{self, Scan};
use super::{Framing, Limits};
use crate::error::Cause;

/// A parsed and checked response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub parts: response::Parts,
    /// `None` for 1xx (another head follows; 101 switches protocols), 204, 304, a response to
    /// HEAD, and a 2xx to CONNECT (a tunnel follows).
    pub framing: Framing,
    /// The connection may carry another request after this response's body.
    pub keep_alive: bool,
}

const BAD: Cause = Cause::UpstreamProtocol;

/// Parses and checks the response head at the start of `buf`, the answer to a `method`
/// request. Ok(None): more bytes are needed. On success the head's bytes are split off `buf`.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
    method: &Method,
) -> Result<Option<ResponseHead>, Cause> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut heap;
    let headers: &mut [httparse::Header<'_>] = if limits.max_headers <= storage.len() {
        &mut storage[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    let mut res = httparse::Response::new(headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(Cause::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Cause::HeadersTooLarge),
        Err(_) => return Err(BAD),
    };
    if len > limits.max_head_bytes {
        return Err(Cause::HeadersTooLarge);
    }
    if bare_lf(&buf[..len]) {
        return Err(BAD);
    }
    let status = StatusCode::from_u16(res.code.unwrap_or(0)).map_err(|_| BAD)?;
    let version = res.version.unwrap_or(1);
    let scan = Scan::new(res.headers);
    let framing = framing(&scan, status, method, version)?;
    let keep_alive = scan.keep_alive(version) && framing != Framing::Close;
    let spans = fields::spans(buf, res.headers);
    let bytes = buf.split_to(len).freeze();
    let mut parts = response::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    parts.headers = fields::header_map(&bytes, spans).ok_or(BAD)?;
    Ok(Some(ResponseHead {
        parts,
        framing,
        keep_alive,
    }))
}

/// The body's framing (RFC 9112 6.3), refusing what a strict proxy cannot pass on as it is.
fn framing(
    scan: &Scan,
    status: StatusCode,
    method: &Method,
    version: u8,
) -> Result<Framing, Cause> {
    if scan.content_lengths > 1 || (scan.content_lengths == 1 && scan.length.is_none()) {
        return Err(BAD);
    }
    if scan.transfer_encodings > 0 {
        // Both framings at once, a coding proxyd would drop with the field (the body would go
        // on still coded), or chunked from an HTTP/1.0 server (RFC 9112 6.1: faulty framing).
        if scan.content_lengths > 0 || scan.transfer_encodings > 1 || !scan.chunked_only {
            return Err(BAD);
        }
        if version == 0 {
            return Err(BAD);
        }
    }
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *method == Method::HEAD
        || (*method == Method::CONNECT && status.is_success());
    Ok(if no_body {
        Framing::None
    } else if scan.transfer_encodings > 0 {
        Framing::Chunked
    } else if scan.content_lengths == 1 {
        Framing::Length(scan.length.unwrap_or(0))
    } else {
        Framing::Close
    })
}

/// A LF not preceded by CR: httparse takes it as a line end in a response.
fn bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}
