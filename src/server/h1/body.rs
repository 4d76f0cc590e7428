//! A request body read straight off the client connection (Content-Length or chunked, with
//! trailers). The body owns the connection's read side while the pipeline reads it and hands
//! it back when the body ends (or is dropped unfinished), so the connection can read the next
//! request; `Expect: 100-continue` is answered when the body is first read.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio::sync::Notify;

use super::read::Reader;
use crate::http1::{Chunk, ChunkedDecoder, Framing};
use crate::proxy::body::BoxError;

/// What is left of a body.
#[derive(Debug)]
pub enum Left {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// The read side, back from a body.
pub struct Back<R> {
    pub reader: Reader<R>,
    /// None: the body was read to its end. Some: dropped before it.
    pub left: Option<Left>,
}

/// Shared by a body and its connection.
pub struct Shared<R> {
    pub back: Mutex<Option<Back<R>>>,
    /// The body wants its `100 Continue` sent.
    pub continue_wanted: Notify,
}

impl<R> Shared<R> {
    pub fn new() -> Arc<Self> {
        Arc::new(Shared {
            back: Mutex::new(None),
            continue_wanted: Notify::new(),
        })
    }

    fn give_back(&self, back: Back<R>) {
        if let Ok(mut slot) = self.back.lock() {
            *slot = Some(back);
        }
    }

    pub fn take_back(&self) -> Option<Back<R>> {
        self.back.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A request body from an HTTP/1.1 client.
pub struct RequestBody<R> {
    reading: Option<Box<Reading<R>>>,
}

struct Reading<R> {
    reader: Reader<R>,
    left: Left,
    shared: Arc<Shared<R>>,
    /// `100 Continue` is still owed on the first read.
    expect_continue: bool,
}

/// Trailer section bound of a chunked request body.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

impl<R> RequestBody<R> {
    pub fn empty() -> Self {
        RequestBody { reading: None }
    }

    /// A body framed by `framing` (not `None`) that starts in `reader`'s buffer.
    pub fn new(
        reader: Reader<R>,
        framing: Framing,
        shared: Arc<Shared<R>>,
        expect_continue: bool,
    ) -> Self {
        let left = match framing {
            Framing::Chunked => Left::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES)),
            Framing::Length(n) => Left::Length(n),
            Framing::None | Framing::Close => Left::Length(0),
        };
        RequestBody {
            reading: Some(Box::new(Reading {
                reader,
                left,
                shared,
                expect_continue,
            })),
        }
    }

    /// Read to its end: the read side goes back to the connection.
    fn finish(&mut self) {
        if let Some(r) = self.reading.take() {
            r.shared.give_back(Back {
                reader: r.reader,
                left: None,
            });
        }
    }
}

impl<R> Drop for RequestBody<R> {
    fn drop(&mut self) {
        if let Some(r) = self.reading.take() {
            r.shared.give_back(Back {
                reader: r.reader,
                left: Some(r.left),
            });
        }
    }
}

fn err(msg: &'static str) -> BoxError {
    msg.into()
}

impl<R: AsyncRead + Unpin> Body for RequestBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(r) = this.reading.as_mut() else {
                return Poll::Ready(None);
            };
            if r.expect_continue {
                r.expect_continue = false;
                r.shared.continue_wanted.notify_one();
            }
            let buf = &mut r.reader.buf;
            if !buf.is_empty() {
                match &mut r.left {
                    Left::Length(n) => {
                        let take = usize::try_from(*n).map_or(buf.len(), |n| n.min(buf.len()));
                        let data = buf.split_to(take).freeze();
                        *n -= take as u64;
                        if *n == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Left::Chunked(dec) => match dec.decode(buf) {
                        Err(_) => {
                            // Malformed: the connection cannot be read any further.
                            this.reading = None;
                            return Poll::Ready(Some(Err(err("malformed chunked body"))));
                        }
                        Ok((used, Chunk::Data(range))) => {
                            let chunk = buf.split_to(used).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(chunk.slice(range)))));
                        }
                        Ok((used, Chunk::NeedMore)) => buf.advance(used),
                        Ok((used, Chunk::End(trailers))) => {
                            buf.advance(used);
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                    },
                }
                continue;
            }
            if matches!(r.left, Left::Length(0)) {
                this.finish();
                return Poll::Ready(None);
            }
            match ready!(r.reader.poll_fill(cx)) {
                Ok(0) => {
                    this.reading = None;
                    return Poll::Ready(Some(Err(err("client closed before the body ended"))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.reading = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.reading {
            None => true,
            Some(r) => matches!(r.left, Left::Length(0)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            None => SizeHint::with_exact(0),
            Some(r) => match r.left {
                Left::Length(n) => SizeHint::with_exact(n),
                Left::Chunked(_) => SizeHint::default(),
            },
        }
    }
}

/// Skips what is left of an unread body when it is all in the buffer already; false when
/// more would have to be read (the connection then closes rather than wait for it).
pub fn skip_buffered(back: &mut Back<impl Sized>) -> bool {
    let buf = &mut back.reader.buf;
    match &mut back.left {
        None => true,
        Some(Left::Length(n)) => {
            let have = buf.len() as u64;
            if have < *n {
                return false;
            }
            buf.advance(*n as usize);
            back.left = None;
            true
        }
        Some(Left::Chunked(dec)) => loop {
            match dec.decode(buf) {
                Ok((used, Chunk::Data(_))) => buf.advance(used),
                Ok((used, Chunk::End(_))) => {
                    buf.advance(used);
                    back.left = None;
                    return true;
                }
                Ok((_, Chunk::NeedMore)) | Err(_) => return false,
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    /// A body read to its end hands the read side back with what follows it (a pipelined
    /// head); once that is consumed too, the connection lets go of its buffer.
    #[tokio::test]
    async fn the_read_side_comes_back_and_its_buffer_is_released_when_empty() {
        let (client, server) = tokio::io::duplex(1024);
        let (read, _write) = tokio::io::split(server);
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"3\r\nabc\r\n");
        let reader = Reader::new(read, buf);
        let shared = Shared::new();
        let body = RequestBody::new(reader, Framing::Chunked, shared.clone(), false);
        let mut client = client;
        client.write_all(b"0\r\nx-t: 1\r\n\r\nGET /").await.unwrap();
        let got = body.collect().await.unwrap();
        assert_eq!(got.trailers().and_then(|t| t.get("x-t")).unwrap(), "1");
        assert_eq!(got.to_bytes(), "abc");
        let mut back = shared.take_back().expect("the read side");
        assert!(back.left.is_none());
        assert_eq!(&back.reader.buf[..], b"GET /");
        back.reader.release();
        assert!(back.reader.buf.capacity() > 0, "pipelined bytes are kept");
        back.reader.buf.clear();
        back.reader.release();
        assert_eq!(back.reader.buf.capacity(), 0);
    }

    /// Dropped unread: what is left is skipped when it is all buffered, else the connection
    /// cannot go on.
    #[test]
    fn an_unread_body_is_skipped_only_when_buffered() {
        let (_client, server) = tokio::io::duplex(64);
        let (read, _write) = tokio::io::split(server);
        let shared = Shared::new();
        let reader = Reader::new(read, BytesMut::from(&b"helloGET"[..]));
        drop(RequestBody::new(
            reader,
            Framing::Length(5),
            shared.clone(),
            false,
        ));
        let mut back = shared.take_back().expect("the read side");
        assert!(skip_buffered(&mut back));
        assert_eq!(&back.reader.buf[..], b"GET");
        back.left = Some(Left::Length(10));
        assert!(!skip_buffered(&mut back));
    }
}
