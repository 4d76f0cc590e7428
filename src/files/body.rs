//! A file's bytes as a response body, read when the body is first polled: a small file (or
//! range) at once into one buffer (a page-cache read, as nginx does on its event loop), a
//! larger one in large chunks by tokio's blocking pool. A plain HTTP/1.1 listener takes a
//! larger file out unread instead (`take_for_sendfile`) and `sendfile(2)`s it.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, Take};
use tokio_util::io::poll_read_buf;

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
    Unread(File, u64),
    // Boxed: tokio's File is large, and only files past `AT_ONCE` over TLS or h2 need it.
    Chunks(Box<Take<tokio::fs::File>>),
}

/// `len` bytes of `file` from `start`, not read yet.
pub struct Unread {
    pub file: File,
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
    pub fn new(file: File, start: u64, len: u64) -> FileBody {
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
        loop {
            match &mut self.inner {
                Inner::Done => return Poll::Ready(None),
                Inner::Unread(file, start) if self.left <= AT_ONCE => {
                    let read = read_at(file, *start, self.left as usize);
                    self.inner = Inner::Done;
                    return Poll::Ready(Some(read));
                }
                Inner::Unread(..) => {
                    if let Inner::Unread(mut file, start) =
                        std::mem::replace(&mut self.inner, Inner::Done)
                    {
                        if let Err(e) = file.seek(SeekFrom::Start(start)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        let reader = tokio::fs::File::from_std(file).take(self.left);
                        self.inner = Inner::Chunks(Box::new(reader));
                    }
                }
                Inner::Chunks(reader) => {
                    if self.left == 0 {
                        return Poll::Ready(None);
                    }
                    let mut buf = BytesMut::with_capacity(CHUNK.min(self.left as usize));
                    return match poll_read_buf(Pin::new(&mut **reader), cx, &mut buf) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                        Poll::Ready(Ok(0)) => Poll::Ready(None),
                        Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(buf.freeze()))),
                    };
                }
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
