//! Response bodies held on behalf of one-request-at-a-time workers (nginx's response
//! buffering): in memory up to a limit, the rest in an anonymous temp file, so a slow client
//! never keeps a worker busy. File IO runs on tokio's blocking pool, never on a runtime thread.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::body::BoxError;
use super::error::{Cause, ProxyError};
use crate::upstream::spool::{joined, TempFile, CHUNK};

/// What the pump (reading the worker) and the client's body (reading the buffer) share.
/// Order: every byte in `mem` comes before every unread byte of the file, so the pump only
/// puts a piece in memory when the client has read all of the file.
#[derive(Default)]
struct State {
    mem: VecDeque<Bytes>,
    mem_len: u64,
    file: Option<TempFile>,
    file_written: u64,
    file_read: u64,
    trailers: Option<HeaderMap>,
    /// Set when the worker's body ended: Ok, or how it failed.
    end: Option<Result<(), String>>,
    waker: Option<Waker>,
}

impl State {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Nothing panics while holding it; if something did, the state is still consistent.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a worker's body may take.
#[derive(Debug, Clone, Copy)]
pub enum BodyTimer {
    /// All of it by then (`request_timeout` from sending the request).
    Deadline(tokio::time::Instant),
    /// A stream (server-sent events, `X-Accel-Buffering: no`): no longer than this between
    /// two pieces.
    Silence(std::time::Duration),
}

impl BodyTimer {
    fn bound<F: Future>(self, f: F) -> tokio::time::Timeout<F> {
        match self {
            BodyTimer::Deadline(at) => tokio::time::timeout_at(at, f),
            BodyTimer::Silence(d) => tokio::time::timeout(d, f),
        }
    }

    fn what(self) -> &'static str {
        match self {
            BodyTimer::Deadline(_) => "did not finish its response within request_timeout",
            BodyTimer::Silence(_) => "sent nothing of its stream for request_timeout",
        }
    }
}

/// Called once when a worker's body runs out of time (the worker is hung: replace it).
pub type OnTimeout = Box<dyn FnOnce() + Send>;

/// A worker's response body read ahead into a buffer, by its own task once the client has
/// the head; it releases the worker's connection and in-flight slot as soon as the worker's
/// body has ended. The client reads from the buffer at its own pace; a worker body that failed
/// ends in an error here too.
pub struct SpooledResponse {
    shared: Shared,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    size_hint: SizeHint,
    done: bool,
    /// Dropped with this body: tells the pump the client left, so it stops reading the worker.
    _client: oneshot::Sender<()>,
}

impl SpooledResponse {
    /// Reads `body` into memory before anything goes to the client, until it ends or fills
    /// `mem_limit` (then a task reads the rest, to a file past the limit, by `deadline`). A body
    /// that fails or runs past `deadline` first is an error, and the client has seen nothing:
    /// the request may still go to another worker.
    pub async fn read_ahead<B>(
        mut body: B,
        mem_limit: u64,
        deadline: tokio::time::Instant,
        on_timeout: OnTimeout,
    ) -> Result<SpooledResponse, ProxyError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let shared = Shared::default();
        let size_hint = body.size_hint();
        while lock(&shared).mem_len < mem_limit {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ProxyError::new(
                        Cause::UpstreamResponseTimeout,
                        "the worker did not finish its response within request_timeout",
                    ))
                }
                Ok(None) => {
                    lock(&shared).end = Some(Ok(()));
                    return Ok(SpooledResponse::new(shared, size_hint).0);
                }
                Ok(Some(Err(e))) => {
                    return Err(ProxyError::new(
                        Cause::UpstreamClosed,
                        format_args!("the worker's response body ended early: {e}"),
                    ))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let mut s = lock(&shared);
            match frame.into_data() {
                Ok(data) => {
                    s.mem_len += data.len() as u64;
                    s.mem.push_back(data);
                }
                Err(frame) => s.trailers = frame.into_trailers().ok(),
            }
        }
        let (spooled, gone) = SpooledResponse::new(shared.clone(), size_hint);
        let timer = BodyTimer::Deadline(deadline);
        tokio::spawn(pump(body, shared, gone, mem_limit, timer, on_timeout));
        Ok(spooled)
    }

    /// Starts reading `body` into memory up to `mem_limit` unread bytes, the rest to a file,
    /// passing each piece on as it comes (for streams).
    pub fn start<B>(
        body: B,
        mem_limit: u64,
        timer: BodyTimer,
        on_timeout: OnTimeout,
    ) -> SpooledResponse
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let shared = Shared::default();
        let size_hint = body.size_hint();
        let mut body = body;
        let (spooled, gone) = SpooledResponse::new(shared.clone(), size_hint);
        // What is ready is taken without a task; the pump is spawned only for what is still
        // to come.
        if !take_ready(&mut body, &shared, mem_limit) {
            tokio::spawn(pump(body, shared, gone, mem_limit, timer, on_timeout));
        }
        spooled
    }

    fn new(shared: Shared, size_hint: SizeHint) -> (SpooledResponse, oneshot::Receiver<()>) {
        let (client, gone) = oneshot::channel();
        let spooled = SpooledResponse {
            shared,
            reading: None,
            size_hint,
            done: false,
            _client: client,
        };
        (spooled, gone)
    }
}

/// Moves the frames `body` has ready into memory (up to `mem_limit`); true when that was the
/// whole body (it is then dropped, which frees the worker's connection and slot).
fn take_ready<B>(body: &mut B, shared: &Shared, mem_limit: u64) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut s = lock(shared);
    while s.mem_len < mem_limit {
        let end = match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Pending => return false,
            Poll::Ready(None) => Ok(()),
            Poll::Ready(Some(Err(e))) => Err(format!("upstream response body: {e}")),
            Poll::Ready(Some(Ok(frame))) => {
                match frame.into_data() {
                    Ok(data) => {
                        s.mem_len += data.len() as u64;
                        s.mem.push_back(data);
                    }
                    Err(frame) => s.trailers = frame.into_trailers().ok(),
                }
                continue;
            }
        };
        s.end = Some(end);
        return true;
    }
    false
}

/// `body` is an `UpstreamBody` in proxyd (generic for the tests).
async fn pump<B>(
    mut body: B,
    shared: Shared,
    mut client_gone: oneshot::Receiver<()>,
    mem_limit: u64,
    timer: BodyTimer,
    on_timeout: OnTimeout,
) where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let end = loop {
        let frame = tokio::select! {
            biased;
            // Dropping the worker's body early closes its connection, as without buffering.
            _ = &mut client_gone => return,
            frame = timer.bound(body.frame()) => frame,
        };
        let data = match frame {
            Err(_) => {
                on_timeout();
                break Err(format!("the worker {}", timer.what()));
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(format!("upstream response body: {e}")),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        lock(&shared).trailers = Some(t);
                    }
                    continue;
                }
            },
        };
        if let Err(e) = store(&shared, data, mem_limit).await {
            tracing::warn!(error = %e, "cannot buffer a response body");
            break Err(format!("response body temp file: {e}"));
        }
    };
    // The worker is done: its connection went back to the pool at the body's end; this drop
    // ends the request's in-flight slot.
    drop(body);
    let mut s = lock(&shared);
    s.end = Some(end);
    s.wake();
}

async fn store(shared: &Shared, data: Bytes, mem_limit: u64) -> io::Result<()> {
    let n = data.len() as u64;
    let (file, offset) = {
        let mut s = lock(shared);
        if s.file_read == s.file_written && s.mem_len + n <= mem_limit {
            s.mem_len += n;
            s.mem.push_back(data);
            s.wake();
            return Ok(());
        }
        (s.file.clone(), s.file_written)
    };
    let file = match file {
        Some(f) => f,
        None => {
            let f = TempFile::create().await?;
            lock(shared).file = Some(f.clone());
            f
        }
    };
    file.write_at(data, offset).await?;
    let mut s = lock(shared);
    s.file_written += n;
    s.wake();
    Ok(())
}

impl Body for SpooledResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(reading) = &mut this.reading {
            let read = joined(ready!(Pin::new(reading).poll(cx)));
            this.reading = None;
            return Poll::Ready(Some(match read {
                Ok(data) => {
                    lock(&this.shared).file_read += data.len() as u64;
                    Ok(Frame::data(data))
                }
                Err(e) => {
                    this.done = true;
                    Err(format!("response body temp file: {e}").into())
                }
            }));
        }
        let mut s = lock(&this.shared);
        if let Some(data) = s.mem.pop_front() {
            s.mem_len -= data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if s.file_read < s.file_written {
            if let Some(file) = &s.file {
                let len = (s.file_written - s.file_read).min(CHUNK as u64) as usize;
                this.reading = Some(file.read_at(s.file_read, len));
                drop(s);
                return Pin::new(this).poll_frame(cx);
            }
        }
        match &s.end {
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(Ok(())) => {
                this.done = true;
                Poll::Ready(s.trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Some(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(e.clone().into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker body fed by the test; records when the pump dropped it.
    struct Fed {
        rx: tokio::sync::mpsc::UnboundedReceiver<Result<Frame<Bytes>, String>>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Body for Fed {
        type Data = Bytes;
        type Error = String;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
            self.rx.poll_recv(cx)
        }
    }

    impl Drop for Fed {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    type Feed = tokio::sync::mpsc::UnboundedSender<Result<Frame<Bytes>, String>>;

    fn fed(mem_limit: u64) -> (Feed, Arc<std::sync::atomic::AtomicBool>, SpooledResponse) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = Fed {
            rx,
            dropped: dropped.clone(),
        };
        let forever = BodyTimer::Silence(std::time::Duration::from_secs(3600));
        let spooled = SpooledResponse::start(body, mem_limit, forever, Box::new(|| {}));
        (tx, dropped, spooled)
    }

    fn fed_body() -> (Feed, Arc<std::sync::atomic::AtomicBool>, Fed) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = Fed {
            rx,
            dropped: dropped.clone(),
        };
        (tx, dropped, body)
    }

    fn in_a_minute() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_whole_body_is_read_before_the_client_gets_anything() {
        let (tx, dropped, body) = fed_body();
        tx.send(data(b"all ")).unwrap();
        tx.send(data(b"of it")).unwrap();
        drop(tx);
        let mut client = SpooledResponse::read_ahead(body, 1 << 20, in_a_minute(), Box::new(|| {}))
            .await
            .unwrap();
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "worker released"
        );
        let got = (&mut client).collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"all of it");
    }

    #[tokio::test]
    async fn a_body_that_fails_before_the_head_is_committed_is_an_error() {
        let (tx, _dropped, body) = fed_body();
        tx.send(data(b"half")).unwrap();
        tx.send(Err("connection reset".into())).unwrap();
        let err = SpooledResponse::read_ahead(body, 1 << 20, in_a_minute(), Box::new(|| {}))
            .await
            .err()
            .expect("an error, not a response");
        assert_eq!(err.cause, Cause::UpstreamClosed);
        assert!(err.detail.contains("connection reset"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_its_deadline_is_an_error_or_a_cut_response() {
        // Before the memory limit: an error, nothing committed.
        let (tx, _dropped, body) = fed_body();
        tx.send(data(b"slow")).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let err = SpooledResponse::read_ahead(body, 1 << 20, deadline, Box::new(|| {}))
            .await
            .err()
            .expect("timed out");
        assert_eq!(err.cause, Cause::UpstreamResponseTimeout);
        drop(tx);

        // Past the memory limit: committed; the rest must still come by the deadline, or
        // the client's body ends in an error and the worker is reported.
        let (tx, dropped, body) = fed_body();
        tx.send(data(b"more than four")).unwrap();
        let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = hung.clone();
        let report = Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut client = SpooledResponse::read_ahead(body, 4, deadline, report)
            .await
            .unwrap();
        let first = client.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"more than four");
        let err = client.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("request_timeout"), "{err}");
        assert!(
            hung.load(std::sync::atomic::Ordering::SeqCst),
            "reported hung"
        );
        wait_dropped(&dropped).await;
        drop(tx);
    }

    fn data(s: &'static [u8]) -> Result<Frame<Bytes>, String> {
        Ok(Frame::data(Bytes::from_static(s)))
    }

    async fn wait_dropped(flag: &std::sync::atomic::AtomicBool) {
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_response_is_read_ahead_through_memory_and_file_in_order() {
        let (tx, dropped, mut client) = fed(10);
        tx.send(data(b"aaaa")).unwrap(); // memory
        tx.send(data(b"bbbbbbbbbbbb")).unwrap(); // past the limit: file
        tx.send(data(b"cc")).unwrap(); // file: unread file data comes first
        let mut t = HeaderMap::new();
        t.insert("x-sum", "18".parse().unwrap());
        tx.send(Ok(Frame::trailers(t))).unwrap();
        drop(tx);
        // The worker's body ended: released before the client read a byte.
        wait_dropped(&dropped).await;
        let got = (&mut client).collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-sum"], "18");
        assert_eq!(&got.to_bytes()[..], b"aaaabbbbbbbbbbbbcc");
        assert!(client.is_end_stream());
    }

    #[tokio::test]
    async fn memory_is_used_again_once_the_client_caught_up() {
        let (tx, _dropped, mut client) = fed(4);
        tx.send(data(b"123456")).unwrap();
        let first = client.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"123456");
        tx.send(data(b"ab")).unwrap();
        tx.send(data(b"cdef")).unwrap();
        drop(tx);
        let rest = (&mut client).collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_failed_worker_body_is_an_error_after_what_arrived() {
        let (tx, _dropped, mut client) = fed(1 << 20);
        tx.send(data(b"part")).unwrap();
        tx.send(Err("connection reset".into())).unwrap();
        let first = client.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"part");
        let err = client.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(client.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_client_that_leaves_stops_the_pump() {
        let (tx, dropped, client) = fed(1 << 20);
        tx.send(data(b"part")).unwrap();
        drop(client);
        wait_dropped(&dropped).await;
        assert!(tx.send(data(b"more")).is_err());
    }
}
