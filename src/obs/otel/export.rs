//! The OTLP/HTTP exporter: finished spans are queued without waiting and sent by one task in
//! batches (`tracing.batch` spans at most, at least every `tracing.flush`) as protobuf POSTs
//! to the collector, each bounded by `tracing.timeout`.
//!
//! The request path only calls [`Exporter::submit`]: an atomic add against the queue's bound
//! and a push on an unbounded channel (lock-free), never an await. Spans past the bound are
//! dropped and counted; so are the spans of a batch the collector did not take in time (down,
//! slow, or answering non-2xx; a 429 or 503 is tried once more after its Retry-After when that
//! fits in the time-out). Failures are logged at most once a minute.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::client::{Answer, Client, Endpoint};
use super::otlp::{self, Prelude};
use super::SpanRecord;
use crate::config::tracing::Tracing;

/// Export failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// A 429 or 503 without `Retry-After` is tried again after this long (if the time-out allows).
const RETRY_DEFAULT: Duration = Duration::from_secs(1);

/// The results of export requests, as `proxyd_trace_export_requests_total` labels them:
/// ok (2xx), rejected (any other status), failed (no connection, or it broke), timeout.
pub const RESULTS: [&str; 4] = ["ok", "rejected", "failed", "timeout"];

/// Figures of one exporter, or of every exporter of the process ([`totals`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Spans the collector took (a 2xx answer).
    pub exported: u64,
    /// Spans dropped at [`Exporter::submit`]: the queue was full.
    pub dropped_queue_full: u64,
    /// Spans dropped because their batch could not be exported.
    pub dropped_export_failed: u64,
    /// Export requests by result, in [`RESULTS`] order.
    pub requests: [u64; 4],
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    requests: [AtomicU64; 4],
}

impl Counters {
    fn read(&self) -> Stats {
        Stats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: self.dropped_export_failed.load(Ordering::Relaxed),
            requests: std::array::from_fn(|i| self.requests[i].load(Ordering::Relaxed)),
        }
    }
}

/// Every exporter's figures together: the metrics' counters outlive a reload's exporter.
static TOTALS: Counters = Counters {
    exported: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_export_failed: AtomicU64::new(0),
    requests: [const { AtomicU64::new(0) }; 4],
};
static STARTED: AtomicBool = AtomicBool::new(false);
/// The figures of every exporter this process started; None before the first (tracing off:
/// the metrics leave the series out).
pub fn totals() -> Option<Stats> {
    STARTED.load(Ordering::Relaxed).then(|| TOTALS.read())
}

/// Counts in the exporter's own figures and in the process's.
fn add(own: &Counters, n: u64, which: fn(&Counters) -> &AtomicU64) {
    which(own).fetch_add(n, Ordering::Relaxed);
    which(&TOTALS).fetch_add(n, Ordering::Relaxed);
}

enum Msg {
    Spans(Vec<SpanRecord>),
    /// Send what is held, then stop and answer.
    Close(oneshot::Sender<()>),
}

/// Sends spans to the collector; see the module's doc.
pub struct Exporter {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    timeout: Duration,
}

/// Between [`Exporter::submit`] and the sending task.
struct Shared {
    /// Spans submitted and not yet sent (or dropped) by the task.
    queued: AtomicUsize,
    capacity: usize,
    counters: Counters,
}

impl Exporter {
    /// Starts the exporter's task on the current tokio runtime (it must be called inside
    /// one). A `tracing.otlp` that is not a usable http:// URL fails each batch (logged,
    /// counted), like a collector that is down.
    pub fn start(cfg: &Tracing) -> Arc<Exporter> {
        STARTED.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            capacity: cfg.queue.max(1),
            counters: Counters::default(),
        });
        let endpoint = Endpoint::parse(&cfg.otlp.value);
        if let Err(e) = &endpoint {
            tracing::error!("tracing: {e}; no span will be exported");
        }
        let sender = Sender {
            endpoint,
            prelude: Prelude::new(&cfg.service_name),
            client: Client::default(),
            body: Vec::new(),
            timeout: cfg.timeout,
            shared: shared.clone(),
            trouble: Trouble::default(),
        };
        let batch = cfg.batch.max(1);
        tokio::spawn(run(rx, sender, batch, cfg.flush));
        Arc::new(Exporter {
            tx,
            shared,
            timeout: cfg.timeout,
        })
    }

    /// Queues a request's spans for export, kept or dropped together. Never blocks and
    /// never awaits: past `tracing.queue` spans held they are dropped and counted.
    pub fn submit(&self, spans: Vec<SpanRecord>) {
        let n = spans.len();
        if n == 0 {
            return;
        }
        let s = &self.shared;
        let held = s.queued.fetch_add(n, Ordering::AcqRel);
        if held + n > s.capacity {
            s.queued.fetch_sub(n, Ordering::AcqRel);
            add(&s.counters, n as u64, |c| &c.dropped_queue_full);
            return;
        }
        if self.tx.send(Msg::Spans(spans)).is_err() {
            // The task is gone (closed, or its runtime shut down).
            s.queued.fetch_sub(n, Ordering::AcqRel);
            add(&s.counters, n as u64, |c| &c.dropped_export_failed);
        }
    }

    /// This exporter's figures so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.read()
    }

    /// Sends what is held (one last flush, bounded by `tracing.timeout`) and stops the task;
    /// spans submitted afterwards are dropped. For a clean exit: proxyd's runtime may stop
    /// before the task would have sent them.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            // The task bounds its own last flush; this bound is for a task stuck elsewhere.
            let _ = timeout(self.timeout + Duration::from_secs(1), wait).await;
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    mut sender: Sender,
    batch: usize,
    every: Duration,
) {
    let mut held: Vec<SpanRecord> = Vec::new();
    // When the oldest span held must be sent.
    let mut flush_at: Option<Instant> = None;
    loop {
        let msg = match flush_at {
            Some(at) => tokio::select! {
                msg = rx.recv() => msg,
                () = sleep_until(at) => {
                    sender.send_all(&mut held, batch).await;
                    flush_at = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match msg {
            Some(Msg::Spans(spans)) => {
                if held.is_empty() {
                    flush_at = Some(Instant::now() + every);
                }
                held.extend(spans);
                while held.len() >= batch {
                    sender.send_batch(&mut held, batch).await;
                }
                if held.is_empty() {
                    flush_at = None;
                }
            }
            Some(Msg::Close(done)) => {
                while let Ok(Msg::Spans(spans)) = rx.try_recv() {
                    held.extend(spans);
                }
                rx.close();
                let deadline = Instant::now() + sender.timeout;
                sender.last_flush(&mut held, batch, deadline).await;
                let _ = done.send(());
                return;
            }
            None => {
                // Every Exporter handle is gone.
                let deadline = Instant::now() + sender.timeout;
                sender.last_flush(&mut held, batch, deadline).await;
                return;
            }
        }
    }
}

/// The task's side: encodes and posts batches, counts and logs.
struct Sender {
    endpoint: Result<Endpoint, String>,
    prelude: Prelude,
    client: Client,
    /// The request body, reused.
    body: Vec<u8>,
    timeout: Duration,
    shared: Arc<Shared>,
    trouble: Trouble,
}

impl Sender {
    async fn send_all(&mut self, held: &mut Vec<SpanRecord>, batch: usize) {
        while !held.is_empty() {
            self.send_batch(held, batch).await;
        }
    }

    /// Sends everything held before `deadline`; what is left then is dropped and counted.
    async fn last_flush(&mut self, held: &mut Vec<SpanRecord>, batch: usize, deadline: Instant) {
        while !held.is_empty() {
            let n = batch.min(held.len());
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.send(&held[..n], left).await;
            self.release(held, n);
        }
        if !held.is_empty() {
            let n = held.len();
            self.trouble
                .failed("no time left at shutdown", n as u64, &self.endpoint);
            add(&self.shared.counters, n as u64, |c| {
                &c.dropped_export_failed
            });
            self.release(held, n);
        }
    }

    /// Sends the first `batch` spans held.
    async fn send_batch(&mut self, held: &mut Vec<SpanRecord>, batch: usize) {
        let n = batch.min(held.len());
        self.send(&held[..n], self.timeout).await;
        self.release(held, n);
    }

    /// Forgets the first `n` spans held: they no longer count against the queue.
    fn release(&self, held: &mut Vec<SpanRecord>, n: usize) {
        held.drain(..n);
        self.shared.queued.fetch_sub(n, Ordering::AcqRel);
    }

    async fn send(&mut self, spans: &[SpanRecord], within: Duration) {
        let n = spans.len() as u64;
        let counters = &self.shared.counters;
        let endpoint = match &self.endpoint {
            Ok(e) => e.clone(),
            Err(e) => {
                let why = e.clone();
                add(counters, 1, |c| &c.requests[2]);
                add(counters, n, |c| &c.dropped_export_failed);
                self.trouble.failed(&why, n, &self.endpoint);
                return;
            }
        };
        self.body.clear();
        otlp::encode(&self.prelude, spans, &mut self.body);
        let deadline = Instant::now() + within;
        let result = timeout(
            within,
            post(&mut self.client, &endpoint, &self.body, deadline),
        )
        .await;
        let why = match result {
            Ok(Ok(a)) if (200..300).contains(&a.status) => {
                add(counters, 1, |c| &c.requests[0]);
                add(counters, n, |c| &c.exported);
                self.trouble.ok(&endpoint);
                return;
            }
            Ok(Ok(a)) => {
                add(counters, 1, |c| &c.requests[1]);
                format!("the collector answered {}", a.status)
            }
            Ok(Err(e)) => {
                add(counters, 1, |c| &c.requests[2]);
                e.to_string()
            }
            Err(_) => {
                add(counters, 1, |c| &c.requests[3]);
                format!("no answer within {:?}", within)
            }
        };
        add(counters, n, |c| &c.dropped_export_failed);
        self.trouble.failed(&why, n, &self.endpoint);
    }
}

/// One POST, and once more after a 429 or 503's Retry-After when that fits before
/// `deadline`.
async fn post(
    client: &mut Client,
    to: &Endpoint,
    body: &[u8],
    deadline: Instant,
) -> std::io::Result<Answer> {
    let answer = client.post(to, body).await?;
    if matches!(answer.status, 429 | 503) {
        let wait = answer.retry_after.unwrap_or(RETRY_DEFAULT);
        if Instant::now() + wait < deadline {
            sleep(wait).await;
            return client.post(to, body).await;
        }
    }
    Ok(answer)
}

/// Export failures, logged at most once a [`LOG_EVERY`].
#[derive(Default)]
struct Trouble {
    failing: bool,
    last_log: Option<Instant>,
    /// Spans dropped since the last log line.
    dropped: u64,
}

impl Trouble {
    fn failed(&mut self, why: &str, spans: u64, endpoint: &Result<Endpoint, String>) {
        self.failing = true;
        self.dropped += spans;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            let to = endpoint.as_ref().map_or("-", |e| e.authority.as_str());
            tracing::warn!(
                collector = to,
                dropped = self.dropped,
                "tracing: export failed: {why}; spans are dropped (logged at most once a minute)"
            );
            self.last_log = Some(Instant::now());
            self.dropped = 0;
        }
    }

    fn ok(&mut self, endpoint: &Endpoint) {
        if self.failing {
            tracing::info!(collector = %endpoint.authority, "tracing: exporting again");
            self.failing = false;
        }
    }
}
