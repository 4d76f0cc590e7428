//! A file's bytes as a response body: a small file (or range) read at once into one buffer
//! (a page-cache read, as nginx does on its event loop); a larger one read in large chunks
//! by tokio's blocking pool. (Plain listeners could `sendfile(2)` instead: not built yet.)

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
    Whole(Option<Bytes>),
    Chunks(Take<tokio::fs::File>),
}

impl FileBody {
    /// No body (HEAD, 304, 412, 416).
    pub fn empty() -> FileBody {
        FileBody {
            inner: Inner::Whole(None),
            left: 0,
        }
    }

    /// `len` bytes of `file` from `start`.
    pub fn read(mut file: File, start: u64, len: u64) -> io::Result<FileBody> {
        if len <= AT_ONCE {
            let mut buf = BytesMut::zeroed(len as usize);
            let mut got = 0;
            while got < buf.len() {
                match file.read_at(&mut buf[got..], start + got as u64) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(FileBody {
                inner: Inner::Whole((len > 0).then(|| buf.freeze())),
                left: len,
            });
        }
        file.seek(SeekFrom::Start(start))?;
        let reader = tokio::fs::File::from_std(file).take(len);
        Ok(FileBody {
            inner: Inner::Chunks(reader),
            left: len,
        })
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Whole(data) => Poll::Ready(data.take().map(Ok)),
            Inner::Chunks(reader) => {
                if this.left == 0 {
                    return Poll::Ready(None);
                }
                let mut buf = BytesMut::with_capacity(CHUNK.min(this.left as usize));
                match poll_read_buf(Pin::new(reader), cx, &mut buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(0)) => Poll::Ready(None),
                    Poll::Ready(Ok(_)) => Poll::Ready(Some(Ok(buf.freeze()))),
                }
            }
        };
        polled.map(|next| match next {
            Some(Ok(data)) => {
                this.left = this.left.saturating_sub(data.len() as u64);
                Some(Ok(Frame::data(data)))
            }
            Some(Err(e)) => Some(Err(e)),
            None if this.left > 0 => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was sent",
            ))),
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
