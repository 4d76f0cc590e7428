//! The writer thread: takes lines off the channel, writes them through a buffer, flushes when
//! idle, moves healthd logs to a new file each UTC hour, and reopens files on request
//! (SIGUSR1, after logrotate moved them).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::hour_suffix;
use super::{Destination, Shared};

/// Flush after this long without a line.
const IDLE: Duration = Duration::from_millis(100);
/// Under steady traffic, flush at least this often.
const MAX_UNFLUSHED: Duration = Duration::from_secs(1);
/// After a failed open or write, wait this long before trying the file again.
const RETRY: Duration = Duration::from_secs(1);

/// One formatted line and the UTC hour it was logged in (healthd picks its file by it).
pub struct Line {
    pub text: String,
    pub hour: u64,
}

pub struct Writer {
    dest: Destination,
    out: Option<BufWriter<Box<dyn Write + Send>>>,
    /// The hour of the open healthd file.
    hour: u64,
    last_flush: Instant,
    retry_at: Option<Instant>,
    failing: bool,
    shared: Arc<Shared>,
}

impl Writer {
    /// Opens the destination now, so a file that cannot be written stops startup.
    pub fn open(dest: Destination, hour: u64, shared: Arc<Shared>) -> io::Result<Writer> {
        let out = open(&dest, hour)?;
        Ok(Writer {
            dest,
            out: Some(out),
            hour,
            last_flush: Instant::now(),
            retry_at: None,
            failing: false,
            shared,
        })
    }

    /// Writes until every sender is gone or shutdown is asked for, then flushes.
    pub fn run(mut self, rx: Receiver<Line>) {
        loop {
            if self.shared.closing.load(Ordering::Acquire) {
                while let Ok(line) = rx.try_recv() {
                    self.write(line);
                }
                break;
            }
            if self.shared.reopen.swap(false, Ordering::AcqRel) {
                self.reopen();
            }
            match rx.recv_timeout(IDLE) {
                Ok(line) => {
                    self.write(line);
                    if self.last_flush.elapsed() >= MAX_UNFLUSHED {
                        self.flush();
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.flush(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.flush();
        self.shared.done.store(true, Ordering::Release);
    }

    fn write(&mut self, line: Line) {
        // Only forward: a line that finished just before the hour turned, queued behind one
        // after it, goes to the newer file rather than reopening the old one.
        if matches!(self.dest, Destination::Hourly(_)) && line.hour > self.hour {
            self.flush();
            self.out = None;
            self.hour = line.hour;
            self.retry_at = None;
        }
        if self.out.is_none() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
            self.try_open();
        }
        let Some(out) = self.out.as_mut() else {
            self.shared.lost();
            return;
        };
        if let Err(e) = out.write_all(line.text.as_bytes()) {
            self.shared.lost();
            self.failed(&e);
        }
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.failed(&e);
            }
        }
    }

    fn reopen(&mut self) {
        if matches!(self.dest, Destination::Stderr) {
            return;
        }
        self.flush();
        self.out = None;
        self.try_open();
    }

    fn try_open(&mut self) {
        match open(&self.dest, self.hour) {
            Ok(out) => {
                self.out = Some(out);
                self.retry_at = None;
                if self.failing {
                    tracing::info!(path = %self.path().display(), "access log: writing again");
                }
                self.failing = false;
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Drops the file (its buffered lines are lost) and tries again later; warns once.
    fn failed(&mut self, e: &io::Error) {
        if !self.failing {
            tracing::warn!(path = %self.path().display(), "access log: {e}; lines are dropped until it can be written");
        }
        self.failing = true;
        self.out = None;
        self.retry_at = Some(Instant::now() + RETRY);
    }

    fn path(&self) -> PathBuf {
        match &self.dest {
            Destination::Stderr => PathBuf::from("stderr"),
            Destination::File(p) => p.clone(),
            Destination::Hourly(p) => hourly(p, self.hour),
        }
    }
}

/// `application.log` → `application.log.2026-11-27-04`.
pub fn hourly(base: &Path, hour: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(".");
    name.push(hour_suffix(hour));
    PathBuf::from(name)
}

fn open(dest: &Destination, hour: u64) -> io::Result<BufWriter<Box<dyn Write + Send>>> {
    let out: Box<dyn Write + Send> = match dest {
        Destination::Stderr => Box::new(io::stderr()),
        Destination::File(p) => Box::new(append(p)?),
        Destination::Hourly(p) => Box::new(append(&hourly(p, hour))?),
    };
    Ok(BufWriter::with_capacity(64 * 1024, out))
}

fn append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}
