//! Follows an HTTP/1.1 client's byte stream from head to body to the next head, so that every
//! request head is judged by [`check_request`](super::check_request) before hyper's server
//! parses it: pipelined heads too, which otherwise reach hyper unchecked (and hyper quietly
//! accepts a Content-Length beside Transfer-Encoding, or two equal Content-Lengths). It goes
//! when proxyd's own connection driver replaces hyper's HTTP/1.1 server.

use super::{check_request, Chunk, ChunkedDecoder, Framing, Limits};
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
    limits: Limits,
}

#[derive(Debug)]
enum Next {
    Head,
    /// Bytes left of a Content-Length body.
    Body(u64),
    Chunked(ChunkedDecoder),
    /// Nothing left to judge: a head or a chunked body was refused.
    Done,
}

impl RequestStream {
    pub fn new(max_head_bytes: usize, max_headers: usize) -> RequestStream {
        RequestStream {
            next: Next::Head,
            head_buf: Vec::new(),
            heads: 0,
            limits: Limits {
                max_head_bytes,
                max_headers,
            },
        }
    }

    /// Takes the next bytes the client sent; returns the first head among them proxyd refuses.
    /// A malformed chunked body refuses the head after it: proxyd's decoder is stricter than
    /// hyper's in places (bounded trailers, CRLF in trailers, no control bytes in extensions),
    /// and where hyper reads such a body on, the stream's place is lost, so no later head on
    /// the connection may be served.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Refusal> {
        while !bytes.is_empty() {
            match &mut self.next {
                Next::Head => match self.head(bytes) {
                    Ok(rest) => bytes = rest,
                    Err(cause) => return Some(self.refuse(cause)),
                },
                Next::Body(left) => {
                    let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    *left -= n as u64;
                    if *left == 0 {
                        self.next = Next::Head;
                    }
                    bytes = &bytes[n..];
                }
                Next::Chunked(decoder) => match decoder.decode(bytes) {
                    Ok((used, Chunk::End(_))) => {
                        self.next = Next::Head;
                        bytes = &bytes[used..];
                    }
                    Ok((used, _)) => bytes = &bytes[used..],
                    Err(cause) => return Some(self.refuse(cause)),
                },
                Next::Done => return None,
            }
        }
        None
    }

    fn refuse(&mut self, cause: Cause) -> Refusal {
        self.next = Next::Done;
        Refusal {
            cause,
            index: self.heads,
        }
    }

    /// Judges the head that `bytes` start or continue; returns the bytes after it.
    fn head<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], Cause> {
        let before = self.head_buf.len();
        let verdict = if before == 0 {
            check_request(bytes, &self.limits)
        } else {
            self.head_buf.extend_from_slice(bytes);
            check_request(&self.head_buf, &self.limits)
        };
        match verdict? {
            Some((len, framing)) => {
                self.head_buf = Vec::new();
                self.heads += 1;
                self.next = match framing {
                    Framing::None | Framing::Length(0) | Framing::Close => Next::Head,
                    Framing::Length(n) => Next::Body(n),
                    // Trailers are bounded as a head is.
                    Framing::Chunked => {
                        Next::Chunked(ChunkedDecoder::new(self.limits.max_head_bytes))
                    }
                };
                // A head that was partial on `before` bytes ends past them.
                Ok(&bytes[len.saturating_sub(before).min(bytes.len())..])
            }
            None => {
                if before == 0 {
                    self.head_buf.extend_from_slice(bytes);
                }
                Ok(&[])
            }
        }
    }
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
    fn a_malformed_chunked_body_refuses_the_next_head() {
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for bad in [
            "zz\r\n",
            "3\r\nabcX",
            "ffffffffffffffffff\r\n",
            "3;a\nb\r\n",
            "3 4\r\n",
            "3;\0\r\n",
            "0\r\nX: a\n\r\n",
        ] {
            assert_eq!(
                run(&[chunked, bad, SMUGGLE]),
                refused("bad-body", 1),
                "{bad:?}"
            );
        }
    }
}
