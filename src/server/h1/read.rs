//! The read side of a client connection: the socket's read half and the bytes read ahead of
//! what was parsed. The buffer is allocated when bytes arrive and let go when it empties, so
//! an idle keep-alive connection holds no buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// Read from the socket at a time into an existing buffer.
const READ_CHUNK: usize = 8 * 1024;

/// The first read on an empty connection goes to the stack (this much), and only the bytes
/// that came are copied into a new buffer.
const STACK_READ: usize = 4 * 1024;

pub struct Reader<R> {
    pub io: R,
    /// Bytes read and not yet parsed or handed on. Zero capacity when nothing is buffered
    /// and nothing borrows it.
    pub buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, buf: BytesMut) -> Self {
        Reader { io, buf }
    }

    /// Reads more bytes into `buf`; Ok(0) at the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Lets go of the buffer when nothing is left in it.
    pub fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

/// Reads more bytes from `io` into `buf`; Ok(0) at the end of the stream. An empty buffer is
/// allocated only once bytes came.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        // Uninitialised: zeroing 4 KiB on every poll of an idle connection was a fifth of
        // the instructions per request (callgrind).
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut rb = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            let mut fresh = BytesMut::with_capacity(got.len().max(1024));
            fresh.extend_from_slice(got);
            *buf = fresh;
        }
        return Poll::Ready(Ok(got.len()));
    }
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}
