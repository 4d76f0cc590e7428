//! The chunked transfer coding, decoded incrementally (RFC 9112 7.1):
//! `hex-size [BWS] [; ext] CRLF data CRLF ... 0 [; ext] CRLF [trailer-field CRLF]... CRLF`.

use std::ops::Range;

use http::HeaderMap;

use super::fields;
use crate::error::Cause;

/// Chunk extensions are bounded over a whole body (their bytes after each `;`), as hyper
/// bounds them: they cost a scan and carry nothing proxyd passes on.
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;

/// Fields in a trailer section.
const MAX_TRAILERS: usize = 100;

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes: this range of the input given.
    Data(Range<usize>),
    /// All the input was used; more is needed.
    NeedMore,
    /// The body ended, with its trailer fields if it had any.
    End(Option<HeaderMap>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the size; `digits` read so far.
    Size {
        n: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    Ws(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section (after the last chunk's line), kept in `trailer`.
    Trailer,
    Done,
}

/// An incremental, strict chunked decoder. Errors are `Cause::BadRequest("bad-body")`, the
/// request side's; the upstream side reads any error as `Cause::UpstreamProtocol`.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    extension_bytes: u64,
    trailer: Vec<u8>,
    max_trailer_bytes: usize,
}

const BAD: Cause = Cause::BadRequest("bad-body");

impl ChunkedDecoder {
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: State::Size { n: 0, digits: 0 },
            extension_bytes: 0,
            trailer: Vec::new(),
            max_trailer_bytes,
        }
    }

    /// True once the last chunk and the trailer section are read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`: how many of its bytes were used, and what they were. Call again
    /// with the rest of the input (or more of it) until `End`.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Chunk), Cause> {
        let mut i = 0;
        loop {
            if let State::Data(left) = self.state {
                let n = usize::try_from(left).map_or(input.len() - i, |l| l.min(input.len() - i));
                if n == 0 {
                    return Ok((i, Chunk::NeedMore));
                }
                self.state = match left - n as u64 {
                    0 => State::DataCr,
                    left => State::Data(left),
                };
                return Ok((i + n, Chunk::Data(i..i + n)));
            }
            if self.state == State::Done {
                return Ok((i, Chunk::End(None)));
            }
            let Some(&b) = input.get(i) else {
                return Ok((i, Chunk::NeedMore));
            };
            i += 1;
            if self.state == State::Trailer {
                if let Some(end) = self.trailer_byte(b)? {
                    return Ok((i, Chunk::End(end)));
                }
                continue;
            }
            self.state = self.step(b)?;
        }
    }

    fn step(&mut self, b: u8) -> Result<State, Cause> {
        Ok(match (self.state, b) {
            (State::Size { n, digits }, b) if b.is_ascii_hexdigit() => {
                let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                let n = n.checked_mul(16).and_then(|n| n.checked_add(digit));
                State::Size {
                    n: n.ok_or(BAD)?,
                    digits: digits.saturating_add(1),
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(BAD),
            (State::Size { n, .. } | State::Ws(n), b' ' | b'\t') => State::Ws(n),
            (State::Size { n, .. } | State::Ws(n), b';') => State::Ext(n),
            (State::Size { n, .. } | State::Ws(n), b'\r') => State::SizeLf(n),
            (State::Ext(n), b'\r') => State::SizeLf(n),
            // A bare LF or a control byte in an extension.
            (State::Ext(_), b) if b != b'\t' && (b < b' ' || b == 0x7f) => return Err(BAD),
            (State::Ext(n), _) => self.extension(n)?,
            (State::SizeLf(0), b'\n') => State::Trailer,
            (State::SizeLf(n), b'\n') => State::Data(n),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { n: 0, digits: 0 },
            _ => return Err(BAD),
        })
    }

    fn extension(&mut self, n: u64) -> Result<State, Cause> {
        self.extension_bytes += 1;
        if self.extension_bytes >= MAX_EXTENSION_BYTES {
            return Err(BAD);
        }
        Ok(State::Ext(n))
    }

    /// Takes one byte of the trailer section; at its end, the fields (None when there were
    /// none). Every line must end in CRLF.
    fn trailer_byte(&mut self, b: u8) -> Result<Option<Option<HeaderMap>>, Cause> {
        let last = self.trailer.last().copied();
        if (b == b'\n') != (last == Some(b'\r')) {
            return Err(BAD);
        }
        if self.trailer.len() >= self.max_trailer_bytes.max(2) {
            return Err(BAD);
        }
        self.trailer.push(b);
        let t = &self.trailer;
        if t.as_slice() == b"\r\n" {
            self.state = State::Done;
            self.trailer = Vec::new();
            return Ok(Some(None));
        }
        if !t.ends_with(b"\r\n\r\n") {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        let map = match httparse::parse_headers(t, &mut headers) {
            Ok(httparse::Status::Complete((n, fields))) if n == t.len() => {
                let spans = fields::spans(t, fields);
                fields::header_map(&bytes::Bytes::copy_from_slice(t), spans).ok_or(BAD)?
            }
            _ => return Err(BAD),
        };
        self.state = State::Done;
        self.trailer = Vec::new();
        Ok(Some(Some(map)))
    }
}
