//! Request bodies held on behalf of one-request-at-a-time workers (nginx's request
//! buffering): in memory up to a limit, the rest in an anonymous temp file, so a slow upload
//! never keeps a worker busy; the temp file also serves `proxy::spool`'s response buffering.
//! File IO runs on tokio's blocking pool, never on a runtime thread.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use tokio::task::JoinHandle;

use super::body::BoxError;

/// File writes are batched to this size; file reads return pieces of it.
pub(crate) const CHUNK: usize = 128 * 1024;

/// An anonymous temp file (in `std::env::temp_dir()`), gone once the last handle closes.
#[derive(Clone)]
pub(crate) struct TempFile(Arc<File>);

impl TempFile {
    pub(crate) async fn create() -> io::Result<TempFile> {
        let file = tokio::task::spawn_blocking(tempfile::tempfile)
            .await
            .map_err(io::Error::other)??;
        Ok(TempFile(Arc::new(file)))
    }

    pub(crate) async fn write_at(&self, data: Bytes, offset: u64) -> io::Result<()> {
        let file = self.0.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(io::Error::other)?
    }

    /// Positional, so every reader keeps its own offset on the one file.
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> JoinHandle<io::Result<Bytes>> {
        let file = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
    }
}

pub(crate) fn joined(r: Result<io::Result<Bytes>, tokio::task::JoinError>) -> io::Result<Bytes> {
    r.map_err(io::Error::other)?
}

/// Writes the part of a request body past `buffer_body` to a temp file while it is read.
pub struct RequestSpooler {
    head: Bytes,
    file: TempFile,
    written: u64,
    pending: BytesMut,
}

impl RequestSpooler {
    /// `head`: what was read into memory before the body outgrew it.
    pub async fn new(head: Bytes) -> io::Result<RequestSpooler> {
        Ok(RequestSpooler {
            head,
            file: TempFile::create().await?,
            written: 0,
            pending: BytesMut::new(),
        })
    }

    /// Batched: a client trickling single bytes must not cost a file write each.
    pub async fn push(&mut self, data: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        let data = self.pending.split().freeze();
        let n = data.len() as u64;
        self.file.write_at(data, self.written).await?;
        self.written += n;
        Ok(())
    }

    pub async fn finish(mut self, trailers: Option<HeaderMap>) -> io::Result<SpooledRequest> {
        self.flush().await?;
        Ok(SpooledRequest::new(Arc::new(Spooled {
            head: self.head,
            file: self.file,
            file_len: self.written,
            trailers,
        })))
    }
}

/// A whole request body: `head` in memory, then `file_len` bytes in the file.
struct Spooled {
    head: Bytes,
    file: TempFile,
    file_len: u64,
    trailers: Option<HeaderMap>,
}

/// One pass over a spooled request body; `replay` starts another from the beginning.
pub struct SpooledRequest {
    body: Arc<Spooled>,
    head_sent: bool,
    pos: u64,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    trailers_sent: bool,
}

impl SpooledRequest {
    fn new(body: Arc<Spooled>) -> SpooledRequest {
        SpooledRequest {
            body,
            head_sent: false,
            pos: 0,
            reading: None,
            trailers_sent: false,
        }
    }

    pub fn replay(&self) -> SpooledRequest {
        SpooledRequest::new(self.body.clone())
    }

    pub fn len(&self) -> u64 {
        self.body.head.len() as u64 + self.body.file_len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn has_trailers(&self) -> bool {
        self.body.trailers.is_some()
    }

    pub(super) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.head_sent {
            self.head_sent = true;
            if !self.body.head.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(self.body.head.clone()))));
            }
        }
        if let Some(reading) = &mut self.reading {
            let read = joined(ready!(Pin::new(reading).poll(cx)));
            self.reading = None;
            return Poll::Ready(Some(match read {
                Ok(data) => {
                    self.pos += data.len() as u64;
                    Ok(Frame::data(data))
                }
                Err(e) => Err(format!("request body temp file: {e}").into()),
            }));
        }
        if self.pos < self.body.file_len {
            let len = (self.body.file_len - self.pos).min(CHUNK as u64) as usize;
            self.reading = Some(self.body.file.read_at(self.pos, len));
            return self.poll_next(cx);
        }
        if !self.trailers_sent {
            self.trailers_sent = true;
            if let Some(t) = &self.body.trailers {
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
        }
        Poll::Ready(None)
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.head_sent && self.pos >= self.body.file_len && self.trailers_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut body: SpooledRequest) -> (Vec<u8>, Option<HeaderMap>) {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_next(cx)).await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(body.is_end_stream());
        (data, trailers)
    }

    #[tokio::test]
    async fn a_spooled_request_replays_byte_exact() {
        let all: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut spooler = RequestSpooler::new(Bytes::copy_from_slice(&all[..1000]))
            .await
            .unwrap();
        for piece in all[1000..].chunks(3333) {
            spooler.push(piece).await.unwrap();
        }
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let body = spooler.finish(Some(t)).await.unwrap();
        assert_eq!(body.len(), all.len() as u64);
        let again = body.replay();
        for b in [body, again] {
            let (data, trailers) = collect(b).await;
            assert!(data == all, "spooled body differs");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
        }
    }
}
