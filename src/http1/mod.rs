//! proxyd's own HTTP/1.1, sans-I/O: the one place that parses and checks a request or response
//! head, serializes heads, and frames bodies (RFC 9112). It reads bytes from a buffer and writes
//! bytes to a `Vec`; the server and the upstream client drive the sockets.
//!
//! It is built on httparse's tokenizer and is strict where a proxy must be, since a backend that
//! reads a message differently than proxyd is a smuggling hole. Deliberately stricter than
//! hyper and httparse:
//!
//! - A request with Content-Length and Transfer-Encoding is refused (hyper drops the length,
//!   RFC 9112 6.3 allows either), as are two Content-Length fields even when equal (hyper merges
//!   them), a Content-Length that is not plain digits or does not fit an i64 (nginx's off_t),
//!   and any Transfer-Encoding other than one `chunked` on HTTP/1.1.
//! - A request target with a fragment, or one `http::Uri` does not take, is refused; so are
//!   authority-form targets (CONNECT: proxyd is not a forward proxy), non-http(s) schemes,
//!   `*` on anything but OPTIONS, userinfo, ports out of range, several Host fields, a missing
//!   Host on HTTP/1.1 and an invalid one ([`check_parts`], also used for h2).
//! - A response with a bare LF, obs-fold, a space before a colon, Content-Length beside
//!   Transfer-Encoding, several Content-Length fields, a coding other than `chunked`, or
//!   Transfer-Encoding on HTTP/1.0 is refused (`Cause::UpstreamProtocol`); httparse takes
//!   bare LFs in responses and hyper takes the rest in one way or another.
//! - Chunked bodies: the size is hex digits only (no sign, `0x` or leading space) checked for
//!   overflow, extensions are bounded in total, every line ends in CRLF, and the trailer
//!   section is bounded and parsed as strictly as a head.
//!
//! Where it is as lenient as hyper: a request head may end its lines in a bare LF (RFC 9112 2.2
//! allows it) and may start with empty lines.

mod accept;
mod chunked;
mod fields;
mod request;
mod response;
mod write;

pub use accept::accept_quality;
pub use chunked::{Chunk, ChunkedDecoder};
pub use fields::{connection_has, content_length, has_token, port_ok};
pub use request::{check_parts, check_request, is_upgrade, parse_request, RequestHead};
pub use response::{parse_response, ResponseHead};
pub use write::{
    write_chunk_end, write_chunk_header, write_last_chunk, write_request_head, write_response_head,
};

/// Bounds on one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The head's bytes, request or status line and header lines with their CRLFs.
    pub max_head_bytes: usize,
    /// Header fields in one head.
    pub max_headers: usize,
}

/// How a message body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Responses only: the body runs until the connection closes.
    Close,
}

#[cfg(test)]
mod tests;
