//! Serializing heads and chunk framing. The framing fields come from `Framing` alone: any
//! Content-Length or Transfer-Encoding in the parts is left out (but a response's
//! Content-Length where the body is `None`, which tells a HEAD or 304's length).

use std::io::Write;

use http::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{request, response, Method, Version};

use super::Framing;

fn version(v: Version) -> &'static [u8] {
    if v == Version::HTTP_10 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    }
}

fn write_fields(out: &mut Vec<u8>, h: &HeaderMap, keep_length: bool) {
    for (name, value) in h {
        if *name == TRANSFER_ENCODING || (*name == CONTENT_LENGTH && !keep_length) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn write_framing(out: &mut Vec<u8>, framing: &Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            let _ = write!(out, "{n}");
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
}

/// `METHOD target VERSION`, the fields, the framing field, and the empty line. The target is
/// the URI's origin form (path and query; `*` stays), an authority for CONNECT.
pub fn write_request_head(out: &mut Vec<u8>, parts: &request::Parts, framing: &Framing) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = match (parts.uri.authority(), parts.uri.path_and_query()) {
        (Some(a), _) if parts.method == Method::CONNECT => a.as_str(),
        (_, Some(pq)) => pq.as_str(),
        (_, None) => "/",
    };
    out.extend_from_slice(target.as_bytes());
    out.push(b' ');
    out.extend_from_slice(version(parts.version));
    out.extend_from_slice(b"\r\n");
    write_fields(out, &parts.headers, false);
    write_framing(out, framing);
    out.extend_from_slice(b"\r\n");
}

/// The status line (with the status's canonical reason), the fields, the framing field, and
/// the empty line.
pub fn write_response_head(out: &mut Vec<u8>, parts: &response::Parts, framing: &Framing) {
    out.extend_from_slice(version(parts.version));
    out.push(b' ');
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    write_fields(out, &parts.headers, *framing == Framing::None);
    write_framing(out, framing);
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line; its `len` bytes of data follow, then [`write_chunk_end`]. `len` must
/// not be 0 (that is the last chunk).
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// The CRLF after a chunk's data.
pub fn write_chunk_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, the trailer fields, and the empty line that ends the body.
pub fn write_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        write_fields(out, t, false);
    }
    out.extend_from_slice(b"\r\n");
}
