//! Access logs in nginx's `combined`, JSON, and Elastic Beanstalk's `healthd` formats.
//!
//! Logging never blocks a request: each log's observer formats the line and offers it to a
//! bounded channel; a full channel drops the line and counts it. A thread per log writes
//! the lines out (see `writer`). SIGUSR1 calls [`reopen`] after logrotate moved the files.

pub(crate) mod format;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use super::outcome::{Observe, Outcome};
pub use crate::config::access_log::{creatable_dir, destination, Destination, HEALTHD_PATH};
use crate::config::{AccessLogFormat, Loaded};
use writer::{Line, Writer};

pub use writer::hourly;

/// Lines buffered per log before new ones are dropped.
pub const CAPACITY: usize = 8192;

/// Lines lost by every access log of the process (buffer full, or the file unwritable).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The running logs' shared state, for [`reopen`] and [`shutdown`].
static LOGS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Opens every configured access log and starts its writer; each returned observer feeds one.
pub fn open(loaded: &Loaded) -> anyhow::Result<Vec<Arc<dyn Observe>>> {
    let mut observers: Vec<Arc<dyn Observe>> = Vec::new();
    for log in &loaded.config.access_log {
        let dest = destination(log, &loaded.dir)
            .context("access_log: a path is needed for this format")?;
        let logger = AccessLogger::start(log.format.value, dest, CAPACITY)?;
        observers.push(Arc::new(logger));
    }
    Ok(observers)
}

/// Asks every access log to reopen its file (after logrotate moved it).
pub fn reopen() {
    for shared in live() {
        shared.reopen.store(true, Ordering::Release);
    }
}

/// Writes out what is buffered and stops the writers, waiting up to `timeout`.
pub fn shutdown(timeout: Duration) {
    let logs = live();
    for shared in &logs {
        shared.closing.store(true, Ordering::Release);
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !logs.iter().all(|s| s.done.load(Ordering::Acquire)) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lines dropped so far by all access logs (for metrics).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn live() -> Vec<Arc<Shared>> {
    let mut logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    logs.retain(|w| w.strong_count() > 0);
    logs.iter().filter_map(Weak::upgrade).collect()
}

/// Between a log's observer, its writer thread, and the process-wide controls.
#[derive(Default)]
pub struct Shared {
    reopen: AtomicBool,
    closing: AtomicBool,
    done: AtomicBool,
    dropped: AtomicU64,
}

impl Shared {
    fn lost(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The observer of one access log.
pub struct AccessLogger {
    format: AccessLogFormat,
    tx: SyncSender<Line>,
    shared: Arc<Shared>,
}

impl AccessLogger {
    /// Opens `dest` and starts its writer thread.
    pub fn start(
        format: AccessLogFormat,
        dest: Destination,
        capacity: usize,
    ) -> anyhow::Result<AccessLogger> {
        let (logger, rx) = AccessLogger::channel(format, capacity);
        let hour = format::hour_of(SystemTime::now());
        let what = match &dest {
            Destination::Stderr => "the access log on stderr".to_string(),
            Destination::File(p) => format!("access log {}", p.display()),
            Destination::Hourly(p) => format!("access log {}", hourly(p, hour).display()),
        };
        let writer = Writer::open(dest, hour, logger.shared.clone())
            .with_context(|| format!("cannot open {what}"))?;
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))
            .with_context(|| format!("cannot start the writer of {what}"))?;
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&logger.shared));
        Ok(logger)
    }

    fn channel(format: AccessLogFormat, capacity: usize) -> (AccessLogger, Receiver<Line>) {
        let (tx, rx) = sync_channel(capacity);
        let shared = Arc::new(Shared::default());
        (AccessLogger { format, tx, shared }, rx)
    }

    /// Lines this log dropped.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Observe for AccessLogger {
    fn request_done(&self, o: &Outcome) {
        let text = match self.format {
            AccessLogFormat::Combined => format::combined(o),
            AccessLogFormat::Json => format::json(o),
            AccessLogFormat::Healthd => format::healthd(o),
        };
        let hour = format::hour_of(format::logged_at(o));
        match self.tx.try_send(Line { text, hour }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.shared.lost(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::outcome::Trace;
    use http::{HeaderValue, Method, StatusCode, Version};
    use std::path::Path;

    fn outcome(target: &str) -> Outcome {
        Outcome {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_437_609_879_228),
            method: Method::GET,
            target: target.into(),
            path_len: target.find('?').unwrap_or(target.len()),
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("example.com")),
            client: Some([10, 0, 0, 7].into()),
            forwarded_for: Some(HeaderValue::from_static("177.72.242.17")),
            user_agent: Some(HeaderValue::from_static("curl/8 \"x\"")),
            referer: None,
            request_id: HeaderValue::from_static("abc"),
            status: StatusCode::OK,
            body_bytes: 12,
            duration: Duration::from_millis(83),
            trace: Trace {
                upstream_time: Some(Duration::from_millis(81)),
                ..Trace::default()
            },
        }
    }

    #[test]
    fn a_full_buffer_drops_lines_instead_of_blocking() {
        let (logger, rx) = AccessLogger::channel(AccessLogFormat::Healthd, 2);
        let before = dropped();
        for _ in 0..5 {
            logger.request_done(&outcome("/a?b=1"));
        }
        assert_eq!(logger.dropped(), 3);
        assert!(dropped() >= before + 3);
        let lines: Vec<Line> = rx.try_iter().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].text,
            "1437609879.311\"/a\"200\"0.083\"0.081\"177.72.242.17\n"
        );
    }

    #[test]
    fn formats() {
        let o = outcome("/a?b=1");
        assert_eq!(
            format::combined(&o),
            "10.0.0.7 - - [23/Jul/2015:00:04:39 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \"curl/8 \\x22x\\x22\"\n"
        );
        let v: serde_json::Value = serde_json::from_str(&format::json(&o)).unwrap();
        assert_eq!(v["time"], "2015-07-23T00:04:39.311Z");
        assert_eq!(v["upstream_time_ms"], 81.0);
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
        assert!(v["upstream"].is_null() && v["error"].is_null());
        assert!(v.get("encoding").is_none(), "only for a compressed body");
        let mut o = outcome("/a");
        o.trace.compressed = Some(crate::obs::Compressed {
            encoding: "br",
            bytes_in: 5000,
        });
        let v: serde_json::Value = serde_json::from_str(&format::json(&o)).unwrap();
        assert_eq!(v["encoding"], "br");
        assert_eq!(v["bytes_uncompressed"], 5000);
        assert_eq!(v["bytes"], 12);
    }

    #[test]
    fn hourly_names() {
        let base = Path::new("/var/log/nginx/healthd/application.log");
        assert_eq!(
            hourly(base, 1_437_609_879 / 3600),
            Path::new("/var/log/nginx/healthd/application.log.2015-07-23-00")
        );
    }
}
