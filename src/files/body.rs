//! A file's bytes as a response body, read when the body is first polled: a small file (or
//! range) at once into one buffer (a page-cache read, as nginx does on its event loop), a
//! larger one in large chunks on tokio's blocking pool. Reads say where (`pread`): the file
//! may be shared with other requests through the site's cache of open files. A plain HTTP/1.1 listener takes a
//! larger file out unread instead (`take_for_sendfile`) and `sendfile(2)`s it.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// Read whole when at most this long.
const AT_ONCE: u64 = 64 * 1024;
/// The chunk of a larger file's reads.
const CHUNK: usize = 256 * 1024;

pub struct FileBody {
    inner: Inner,
    /// Bytes still to send.
    left: u64,
}

enum Inner {
    Done,
    /// The file and where the bytes still to send start.
    Unread(Arc<File>, u64),
    /// A chunk being read on the blocking pool, and where the next one starts.
    Reading(Arc<File>, u64, JoinHandle<io::Result<Bytes>>),
}

/// `len` bytes of `file` from `start`, not read yet.
pub struct Unread {
    pub file: Arc<File>,
    pub start: u64,
    pub len: u64,
}

impl FileBody {
    /// No body (HEAD, 304, 412, 416).
    pub fn empty() -> FileBody {
        FileBody {
            inner: Inner::Done,
            left: 0,
        }
    }

    /// `len` bytes of `file` from `start`.
    pub fn new(file: Arc<File>, start: u64, len: u64) -> FileBody {
        FileBody {
            inner: if len > 0 {
                Inner::Unread(file, start)
            } else {
                Inner::Done
            },
            left: len,
        }
    }

    /// The file and its part, for `sendfile(2)`, when it is larger than `AT_ONCE` and
    /// nothing of it was read yet; the body is empty after. A smaller one is better read
    /// and written with the head in one call (measured: 1 KiB files cost more CPU by
    /// sendfile than by a read and one vectored write).
    pub fn take_for_sendfile(&mut self) -> Option<Unread> {
        if self.left <= AT_ONCE {
            return None;
        }
        match std::mem::replace(&mut self.inner, Inner::Done) {
            Inner::Unread(file, start) => Some(Unread {
                file,
                start,
                len: std::mem::take(&mut self.left),
            }),
            other => {
                self.inner = other;
                None
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match &mut self.inner {
            Inner::Done => Poll::Ready(None),
            Inner::Unread(file, start) if self.left <= AT_ONCE => {
                let read = read_at(file, *start, self.left as usize);
                self.inner = Inner::Done;
                Poll::Ready(Some(read))
            }
            Inner::Unread(file, start) => {
                let (file, at) = (file.clone(), *start);
                let len = CHUNK.min(self.left as usize);
                let f = file.clone();
                let reading = tokio::task::spawn_blocking(move || read_at(&f, at, len));
                self.inner = Inner::Reading(file, at + len as u64, reading);
                self.poll_data(cx)
            }
            Inner::Reading(file, next, reading) => {
                let read = match Pin::new(reading).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(read)) => read,
                    Poll::Ready(Err(e)) => Err(io::Error::other(e)),
                };
                let left = self
                    .left
                    .saturating_sub(read.as_ref().map_or(0, |b| b.len() as u64));
                self.inner = match (&read, left) {
                    (Ok(_), 1..) => Inner::Unread(file.clone(), *next),
                    _ => Inner::Done,
                };
                Poll::Ready(Some(read))
            }
        }
    }
}

/// `len` bytes at `start`; a file shorter than that is an error.
fn read_at(file: &File, start: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], start + got as u64) {
            Ok(0) => return Err(shrank()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.freeze())
}

/// The error of a file that ended before the length its response stated.
pub fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank while it was sent",
    )
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        this.poll_data(cx).map(|next| match next {
            Some(Ok(data)) => {
                this.left = this.left.saturating_sub(data.len() as u64);
                Some(Ok(Frame::data(data)))
            }
            Some(Err(e)) => Some(Err(e)),
            None if this.left > 0 => Some(Err(shrank())),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
