//! Follows an HTTP/1.1 client's byte stream from head to body to the next head, the way hyper
//! reads it, so that every request head is checked by `server::head` before hyper parses it:
//! pipelined heads too, which otherwise reach hyper unchecked (and hyper quietly accepts a
//! Content-Length beside Transfer-Encoding, or two equal Content-Lengths).

use super::head::{self, Framing, Verdict};
use crate::error::Cause;

/// A refused request head: why, and which request of the connection it is (0 = the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub cause: Cause,
    pub index: usize,
}

/// Where the client's stream stands.
#[derive(Debug)]
pub struct RequestStream {
    next: Next,
    /// The start of a head that arrived in pieces.
    head_buf: Vec<u8>,
    /// Heads seen so far: the index of the next one. (pub for the fuzz targets only.)
    pub heads: usize,
    max_head_bytes: usize,
    max_headers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Head,
    /// Bytes left of a Content-Length body.
    Body(u64),
    Chunked(Chunk),
    /// Nothing left to judge: a head was refused, or a chunked body was malformed (hyper fails
    /// that body too, and proxyd's 400 closes the connection).
    Done,
}

impl RequestStream {
    pub fn new(max_head_bytes: usize, max_headers: usize) -> RequestStream {
        RequestStream {
            next: Next::Head,
            head_buf: Vec::new(),
            heads: 0,
            max_head_bytes,
            max_headers,
        }
    }

    /// Takes the next bytes the client sent; returns the first head among them proxyd refuses.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Refusal> {
        while !bytes.is_empty() {
            match self.next {
                Next::Head => match self.head(bytes) {
                    Ok(rest) => bytes = rest,
                    Err(cause) => {
                        self.next = Next::Done;
                        return Some(Refusal {
                            cause,
                            index: self.heads,
                        });
                    }
                },
                Next::Body(left) => {
                    let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    self.next = match left - n as u64 {
                        0 => Next::Head,
                        left => Next::Body(left),
                    };
                    bytes = &bytes[n..];
                }
                Next::Chunked(mut state) => match chunked(&mut state, bytes) {
                    Ok((used, true)) => {
                        self.next = Next::Head;
                        bytes = &bytes[used..];
                    }
                    Ok((_, false)) => {
                        self.next = Next::Chunked(state);
                        return None;
                    }
                    Err(()) => {
                        self.next = Next::Done;
                        return None;
                    }
                },
                Next::Done => return None,
            }
        }
        None
    }

    /// Judges the head that `bytes` start or continue; returns the bytes after it.
    fn head<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], Cause> {
        let before = self.head_buf.len();
        let verdict = if before == 0 {
            head::check(bytes, self.max_head_bytes, self.max_headers)
        } else {
            self.head_buf.extend_from_slice(bytes);
            head::check(&self.head_buf, self.max_head_bytes, self.max_headers)
        };
        match verdict {
            Verdict::Good(h) => {
                self.head_buf = Vec::new();
                self.heads += 1;
                self.next = match h.body {
                    Framing::None | Framing::Length(0) => Next::Head,
                    Framing::Length(n) => Next::Body(n),
                    Framing::Chunked => Next::Chunked(Chunk::Start),
                };
                // A head that was Partial on `before` bytes ends past them.
                Ok(&bytes[h.len.saturating_sub(before).min(bytes.len())..])
            }
            Verdict::Partial => {
                if before == 0 {
                    self.head_buf.extend_from_slice(bytes);
                }
                Ok(&[])
            }
            Verdict::Refuse(cause) => Err(cause),
        }
    }
}

/// A point in a chunked body, in the grammar of hyper's decoder (hyper 1.x, h1/decode.rs):
/// `hex-size [ws] [;ext] CRLF data CRLF ... 0 CRLF [trailer CRLF]... CRLF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    Lws(u64),
    Ext(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

/// Runs `bytes` through a chunked body from `state`: how many bytes it used and whether the
/// body ended; `Err` where hyper's decoder fails too.
fn chunked(state: &mut Chunk, bytes: &[u8]) -> Result<(usize, bool), ()> {
    let mut i = 0;
    while i < bytes.len() {
        if let Chunk::Data(left) = *state {
            let n = usize::try_from(left).map_or(bytes.len() - i, |l| l.min(bytes.len() - i));
            i += n;
            *state = match left - n as u64 {
                0 => Chunk::DataCr,
                left => Chunk::Data(left),
            };
            continue;
        }
        let b = bytes[i];
        i += 1;
        *state = match (*state, b) {
            (Chunk::Start, b) => Chunk::Size(hex(b).ok_or(())?),
            (Chunk::Size(n), b'\t' | b' ') | (Chunk::Lws(n), b'\t' | b' ') => Chunk::Lws(n),
            (Chunk::Size(n) | Chunk::Lws(n), b';') => Chunk::Ext(n),
            (Chunk::Size(n) | Chunk::Lws(n) | Chunk::Ext(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Size(n), b) => {
                let digit = hex(b).ok_or(())?;
                Chunk::Size(
                    n.checked_mul(16)
                        .and_then(|n| n.checked_add(digit))
                        .ok_or(())?,
                )
            }
            (Chunk::Ext(_), b'\n') => return Err(()),
            (Chunk::Ext(n), _) => Chunk::Ext(n),
            (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Start,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
            (Chunk::EndCr, b'\r') => Chunk::EndLf,
            (Chunk::EndCr, _) => Chunk::Trailer,
            (Chunk::EndLf, b'\n') => return Ok((i, true)),
            _ => return Err(()),
        };
    }
    Ok((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `parts` one after the other; returns the refusal, if any.
    fn run(parts: &[&str]) -> Option<Refusal> {
        let mut s = RequestStream::new(8192, 100);
        parts.iter().find_map(|p| s.feed(p.as_bytes()))
    }

    fn refused(cause: &'static str, index: usize) -> Option<Refusal> {
        Some(Refusal {
            cause: Cause::BadRequest(cause),
            index,
        })
    }

    const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const SMUGGLE: &str =
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    const CLTE: &str = "content-length-with-transfer-encoding";

    #[test]
    fn finds_pipelined_heads_after_each_kind_of_body() {
        assert_eq!(run(&[GET, GET, GET]), None);
        assert_eq!(run(&[&format!("{GET}{SMUGGLE}")]), refused(CLTE, 1));
        let sized = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
        // The body looks like a head; it is not judged as one.
        assert_eq!(run(&[sized, "G(ET ", SMUGGLE]), refused(CLTE, 1));
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = "5;ext=1\r\nG(ET \r\n3 \r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            run(&[&format!("{chunked}{body}{GET}{SMUGGLE}")]),
            refused(CLTE, 2)
        );
        // The same, a byte at a time.
        let all = format!("{chunked}{body}{GET}{SMUGGLE}");
        let mut s = RequestStream::new(8192, 100);
        let found = all.as_bytes().chunks(1).find_map(|b| s.feed(b));
        assert_eq!(found, refused(CLTE, 2));
    }

    #[test]
    fn a_malformed_chunked_body_ends_the_judging() {
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for bad in [
            "zz\r\n",
            "3\r\nabcX",
            "ffffffffffffffffff\r\n",
            "3;a\nb\r\n",
            "3 4\r\n",
        ] {
            assert_eq!(run(&[chunked, bad, SMUGGLE]), None, "{bad:?}");
        }
    }
}
