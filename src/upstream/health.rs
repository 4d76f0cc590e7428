//! Active health checks: the probe (an HTTP GET of the health path over the upstream's own
//! protocol and TLS, 2xx is a pass; a connection when no path is set), which the worker
//! supervisor uses too, and the checks of a `servers:` upstream with `health:`.
//!
//! Each backend of such an upstream carries a [`Record`] and gets its own checker task. It
//! starts unready, "checking": its first pass puts it in the rotation (a backend added at run
//! time ramps up over `slow_start` from then); `unhealthy` failures in a row take it out,
//! `healthy` passes in a row put it back (ramping again). The task holds only weak references
//! and ends when its backend leaves the group (`Upstream::remove`) or the group is dropped (a
//! reload that changed it): a cancellation ends it at once, a dead reference at its next
//! round. Passive ejection (`eject:`) is separate: a backend gets requests only while its
//! checks pass and it is not ejected.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use http::{header, Request, Uri, Version};
use http_body_util::BodyExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::body::RequestBody;
use super::connect::{Connector, Sender};
use super::{h1, Backend, Upstream};
use crate::config::{self, BackendAddr};

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection, a refused handshake, a broken or non-2xx answer.
    Failed(String),
    /// No answer within the time-out.
    TimedOut(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Failed(why) => f.write_str(why),
            Failure::TimedOut(t) => write!(f, "no answer within {t:?}"),
        }
    }
}

/// One probe of `addr` through `connector`, bounded by `timeout`: a GET of `path` with
/// `host` as its Host (2xx passes), or without a path the connection alone (TCP, and TLS or
/// the HTTP/2 handshake when the upstream speaks them). A fresh connection each time, never
/// the pool's: the check is also that the backend still accepts.
pub async fn probe(
    connector: &Connector,
    addr: &BackendAddr,
    host: &str,
    path: Option<&str>,
    timeout: Duration,
) -> Result<(), Failure> {
    match tokio::time::timeout(timeout, run(connector, addr, host, path)).await {
        Ok(r) => r.map_err(Failure::Failed),
        Err(_) => Err(Failure::TimedOut(timeout)),
    }
}

async fn run(
    connector: &Connector,
    addr: &BackendAddr,
    host: &str,
    path: Option<&str>,
) -> Result<(), String> {
    let sender = connector.connect(addr).await.map_err(|e| e.to_string())?;
    let Some(path) = path else {
        return Ok(());
    };
    let status = match sender {
        Sender::Http1(conn) => {
            let req = Request::get(path)
                .header(header::HOST, host)
                .header(header::USER_AGENT, "proxyd-health")
                .body(RequestBody::Empty)
                .map_err(|e| e.to_string())?;
            let (head, body) = match h1::send(conn, req).await {
                Ok(r) => r,
                Err(h1::SendError::Unsent(e, _) | h1::SendError::Failed(e)) => {
                    return Err(e.to_string())
                }
            };
            drain(body).await;
            head.status
        }
        Sender::Http2(mut sender) => {
            // Host becomes :authority (RFC 9113 8.3.1).
            let scheme = match addr {
                BackendAddr::Tls { .. } => "https",
                _ => "http",
            };
            let uri: Uri = format!("{scheme}://{host}{path}")
                .parse()
                .map_err(|e| format!("{host}{path}: {e}"))?;
            let req = Request::get(uri)
                .version(Version::HTTP_2)
                .header(header::USER_AGENT, "proxyd-health")
                .body(RequestBody::Empty)
                .map_err(|e| e.to_string())?;
            sender.ready().await.map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let (head, body) = resp.into_parts();
            drain(body).await;
            head.status
        }
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{path} answered {status}"))
    }
}

/// Reads a body to its end without keeping it (so the backend is not left writing to a
/// closed socket), within the probe's time-out.
async fn drain<B: http_body::Body + Unpin>(mut body: B) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// The health checks of one upstream: its `health:` settings and how its backends are
/// reached.
pub(super) struct Checks {
    pub cfg: config::Health,
    pub connector: Connector,
    /// Where the checker tasks run: the runtime they were started on (None until then).
    pub runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// What the checks say of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// No check has finished yet: not in the rotation.
    Checking = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Verdict {
    fn from_u8(v: u8) -> Verdict {
        match v {
            0 => Verdict::Checking,
            1 => Verdict::Healthy,
            _ => Verdict::Unhealthy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Checking => "checking",
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
        }
    }
}

/// How one check ended (the `result` label of `proxyd_health_checks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass = 0,
    Fail = 1,
    Timeout = 2,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Pass, Outcome::Fail, Outcome::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The last check of a backend.
#[derive(Debug, Clone)]
pub struct LastCheck {
    pub outcome: Outcome,
    /// Why it failed.
    pub detail: Option<String>,
    pub at: SystemTime,
    pub took: Duration,
}

/// One backend's checks: the verdict, the runs of passes and failures, counts by outcome and
/// the last check. Written by its checker task only; read by status pages and metrics.
pub struct Record {
    /// The Host of the checks: the server as written in the config (`app.internal:8000`).
    pub host: Arc<str>,
    verdict: AtomicU8,
    passes: AtomicU32,
    failures: AtomicU32,
    counts: [AtomicU64; 3],
    last: Mutex<Option<LastCheck>>,
    /// Its first pass ramps up over `slow_start` (a backend that joins at run time); a
    /// backend the group started with joins at full weight, as without checks.
    ramp_first: bool,
    spawned: AtomicBool,
    stop: CancellationToken,
}

impl Record {
    pub(super) fn new(host: &str, ramp_first: bool) -> Record {
        Record {
            host: host.into(),
            verdict: AtomicU8::new(Verdict::Checking as u8),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            counts: Default::default(),
            last: Mutex::new(None),
            ramp_first,
            spawned: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict.load(Ordering::Acquire))
    }

    /// Passes in a row now (0 after a failure).
    pub fn passes(&self) -> u32 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Failures in a row now (0 after a pass).
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Checks so far by outcome, in [`Outcome::ALL`] order.
    pub fn counts(&self) -> [u64; 3] {
        self.counts.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn last(&self) -> Option<LastCheck> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ends the checker task (the backend left its group, or the group is gone).
    pub(super) fn stop(&self) {
        self.stop.cancel();
    }

    /// Counts one check; returns the verdict it changes from and to, if it changes.
    fn note(
        &self,
        result: &Result<(), Failure>,
        took: Duration,
        cfg: &config::Health,
    ) -> Option<(Verdict, Verdict)> {
        let outcome = match result {
            Ok(()) => Outcome::Pass,
            Err(Failure::Failed(_)) => Outcome::Fail,
            Err(Failure::TimedOut(_)) => Outcome::Timeout,
        };
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastCheck {
            outcome,
            detail: result.as_ref().err().map(ToString::to_string),
            at: SystemTime::now(),
            took,
        });
        let (passes, failures) = match outcome {
            Outcome::Pass => (self.passes.load(Ordering::Relaxed).saturating_add(1), 0),
            _ => (0, self.failures.load(Ordering::Relaxed).saturating_add(1)),
        };
        self.passes.store(passes, Ordering::Relaxed);
        self.failures.store(failures, Ordering::Relaxed);
        let before = self.verdict();
        let next = next_verdict(before, passes, failures, cfg)?;
        self.verdict.store(next as u8, Ordering::Release);
        Some((before, next))
    }
}

/// The verdict after a check, given the runs it leaves: a new backend's first result decides
/// at once (Envoy and nginx's `mandatory` do the same); later, `healthy` passes or
/// `unhealthy` failures in a row change it. None: no change.
fn next_verdict(now: Verdict, passes: u32, failures: u32, cfg: &config::Health) -> Option<Verdict> {
    match now {
        Verdict::Checking if passes > 0 => Some(Verdict::Healthy),
        Verdict::Checking => Some(Verdict::Unhealthy),
        Verdict::Unhealthy if passes >= cfg.healthy => Some(Verdict::Healthy),
        Verdict::Healthy if failures >= cfg.unhealthy => Some(Verdict::Unhealthy),
        _ => None,
    }
}

/// Starts `b`'s checker on the group's runtime, once; nothing before the group's checks are
/// started (`Upstream::start_health_checks`), which then starts every backend's.
pub(super) fn spawn(checks: &Arc<Checks>, up: Weak<Upstream>, b: &Arc<Backend>) {
    let (Some(runtime), Some(record)) = (checks.runtime.get(), b.health.clone()) else {
        return;
    };
    if record.spawned.swap(true, Ordering::AcqRel) {
        return;
    }
    let checker = Checker {
        checks: checks.clone(),
        upstream: up,
        backend: Arc::downgrade(b),
        addr: b.addr.clone(),
        record,
    };
    runtime.spawn(checker.run());
}

struct Checker {
    checks: Arc<Checks>,
    upstream: Weak<Upstream>,
    backend: Weak<Backend>,
    addr: BackendAddr,
    record: Arc<Record>,
}

impl Checker {
    async fn run(self) {
        let cfg = &self.checks.cfg;
        let path = cfg.path.as_ref().map(|p| p.value.as_str());
        let stop = self.record.stop.clone();
        // The first check at once: a new backend waits for it.
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let started = Instant::now();
            let probing = probe(
                &self.checks.connector,
                &self.addr,
                &self.record.host,
                path,
                cfg.timeout,
            );
            let result = tokio::select! {
                r = probing => r,
                _ = stop.cancelled() => return,
            };
            let (Some(up), Some(b)) = (self.upstream.upgrade(), self.backend.upgrade()) else {
                return;
            };
            if let Some((before, now)) = self.record.note(&result, started.elapsed(), cfg) {
                self.apply(&up, &b, before, now, &result);
            }
        }
    }

    /// Puts the backend in or out of the rotation for a changed verdict, and says so once.
    fn apply(
        &self,
        up: &Upstream,
        b: &Backend,
        before: Verdict,
        now: Verdict,
        result: &Result<(), Failure>,
    ) {
        let first = before == Verdict::Checking;
        let (name, label) = (&up.name, &b.label);
        match (now, result) {
            (Verdict::Healthy, _) => {
                // Slow start, except for a backend the group started with joining at first.
                b.set_healthy(true, !first || self.record.ramp_first);
                let passes = self.record.passes();
                match first {
                    true => tracing::info!(upstream = %name, backend = %label,
                        "backend passed its first health check: in the rotation"),
                    false => tracing::info!(upstream = %name, backend = %label, passes,
                        "backend healthy: back in the rotation"),
                }
            }
            (Verdict::Unhealthy, Err(why)) => {
                b.set_healthy(false, false);
                let failures = self.record.failures();
                match first {
                    true => tracing::warn!(upstream = %name, backend = %label,
                        "backend failed its first health check, not in the rotation: {why}"),
                    false => tracing::warn!(upstream = %name, backend = %label, failures,
                        "backend unhealthy, out of the rotation: {why}"),
                }
            }
            _ => {}
        }
        // Waiting requests: a slot may have appeared, or failing open may now be the answer.
        up.kick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(healthy: u32, unhealthy: u32) -> config::Health {
        config::Health {
            healthy,
            unhealthy,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts() {
        let c = cfg(3, 2);
        use Verdict::*;
        assert_eq!(
            next_verdict(Checking, 1, 0, &c),
            Some(Healthy),
            "one pass to join"
        );
        assert_eq!(next_verdict(Checking, 0, 1, &c), Some(Unhealthy));
        assert_eq!(next_verdict(Healthy, 0, 1, &c), None);
        assert_eq!(next_verdict(Healthy, 0, 2, &c), Some(Unhealthy));
        assert_eq!(next_verdict(Unhealthy, 2, 0, &c), None);
        assert_eq!(next_verdict(Unhealthy, 3, 0, &c), Some(Healthy));
        assert_eq!(next_verdict(Healthy, 5, 0, &c), None);
    }

    #[test]
    fn a_record_counts_and_changes_once() {
        let c = cfg(2, 2);
        let r = Record::new("app:80", false);
        let fail = Err(Failure::Failed("503".into()));
        let late = Err(Failure::TimedOut(Duration::from_secs(1)));
        let t = Duration::from_millis(1);
        use Verdict::*;
        assert_eq!(r.note(&Ok(()), t, &c), Some((Checking, Healthy)));
        assert_eq!(r.note(&Ok(()), t, &c), None);
        assert_eq!(r.note(&fail, t, &c), None);
        assert_eq!(r.note(&late, t, &c), Some((Healthy, Unhealthy)));
        assert_eq!(r.failures(), 2);
        assert_eq!(r.note(&fail, t, &c), None);
        assert_eq!(r.note(&Ok(()), t, &c), None);
        assert_eq!(r.note(&Ok(()), t, &c), Some((Unhealthy, Healthy)));
        assert_eq!((r.passes(), r.failures()), (2, 0));
        assert_eq!(r.counts(), [4, 2, 1]);
        let last = r.last().unwrap();
        assert_eq!((last.outcome, last.detail), (Outcome::Pass, None));
    }
}
