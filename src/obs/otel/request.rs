//! What a traced request records as it goes (`RequestSpans`, in the outcome's `Trace`), and
//! the sampling decision that starts it (`Sampler`), made once per request.
//!
//! Times are offsets from the request's arrival (the outcome's `at`): a monotonic clock read
//! on the request path, turned into wall-clock times only when spans are made.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderMap;

use super::context::{self, Incoming, TraceId, RANDOM, SAMPLED, TRACEPARENT, TRACESTATE};
use crate::error::Cause;

/// `tracing.sample` and `tracing.errors`, as the pipeline uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// A new trace is sampled when its id's low 64 bits are below this (`u64::MAX`: all;
    /// 0: none): the decision OpenTelemetry's `TraceIdRatioBased` makes.
    threshold: u64,
    /// Record unsampled requests too: their spans go out if they end in an error.
    errors: bool,
}

impl Sampler {
    pub fn new(ratio: f64, errors: bool) -> Sampler {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio > 0.0 {
            // Saturating float-to-int: 0.0..1.0 of the u64 range.
            (ratio * u64::MAX as f64) as u64
        } else {
            0
        };
        Sampler { threshold, errors }
    }

    pub fn from_config(t: &crate::config::tracing::Tracing) -> Sampler {
        Sampler::new(t.sample(), t.errors)
    }

    fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        self.threshold == u64::MAX || u64::from_be_bytes(low) < self.threshold
    }

    /// The trace decision for a request with headers `h` (`scheme` as the client used it):
    /// a valid `traceparent` is continued and its sampled flag followed; with none (or an
    /// invalid one) a new trace is sampled at the ratio. A request not recorded leaves a
    /// valid `traceparent` as it came; an invalid one (and a `tracestate` without a valid
    /// `traceparent`) is removed, never passed on. A recorded request's `traceparent` is
    /// set per attempt (`RequestSpans::attempt`).
    pub fn begin(&self, h: &mut HeaderMap, scheme: &'static str) -> Option<Box<RequestSpans>> {
        let incoming = context::incoming(h);
        let (trace_id, parent, sampled, random) = match incoming {
            Incoming::Valid(p) => (p.trace_id, Some(p.span_id), p.sampled(), p.flags & RANDOM),
            Incoming::None | Incoming::Invalid => {
                let id = context::new_trace_id();
                (id, None, self.samples(&id), 0)
            }
        };
        let state = match incoming {
            Incoming::Valid(_) => {
                let state = context::tracestate(h);
                if state.is_none() {
                    h.remove(TRACESTATE);
                }
                state
            }
            _ => {
                h.remove(TRACEPARENT);
                h.remove(TRACESTATE);
                None
            }
        };
        if !sampled && !self.errors {
            return None;
        }
        Some(Box::new(RequestSpans {
            trace_id,
            parent,
            server: context::new_span_id(),
            flags: random | if sampled { SAMPLED } else { 0 },
            sampled,
            state,
            scheme,
            waits: Vec::new(),
            attempts: Vec::new(),
        }))
    }
}

/// A traced request: its trace, and what its spans need.
#[derive(Debug, Clone)]
pub struct RequestSpans {
    pub trace_id: [u8; 16],
    /// The caller's span (an incoming `traceparent`), None when proxyd started the trace.
    pub parent: Option<[u8; 8]>,
    /// proxyd's server span.
    pub server: [u8; 8],
    /// The flags sent upstream.
    pub flags: u8,
    /// Sampled: exported. Unsampled ones are recorded only with `tracing.errors`, and
    /// exported only if they end in an error.
    pub sampled: bool,
    /// `tracestate` as it came, passed on with the trace.
    pub state: Option<String>,
    /// `http` or `https`, as the client used.
    pub scheme: &'static str,
    /// Waits in the admission queue: from, to.
    pub waits: Vec<(Duration, Duration)>,
    pub attempts: Vec<AttemptSpan>,
}

/// One upstream attempt.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    pub span: [u8; 8],
    pub start: Duration,
    /// None: it answered, and lasted as long as the response (the request's end).
    pub end: Option<Duration>,
    /// The backend's label (its address: `127.0.0.1:8001`, `unix:/run/app.sock`,
    /// `https://host:443`).
    pub backend: Arc<str>,
    /// The worker behind the backend: id, pid.
    pub worker: Option<(u64, u32)>,
    /// It went on a connection that served an earlier request (known once it was sent).
    pub reused: Option<bool>,
    /// The response status, when a head came.
    pub status: Option<u16>,
    /// Why it failed.
    pub error: Option<Cause>,
    /// Why it was made: the failure of the attempt before, and whether the request was
    /// replayed (it had reached the backend that failed) or never sent.
    pub retry: Option<(Cause, bool)>,
    /// It failed and its request went again as the spare copy (it had reached the backend).
    pub replayed: bool,
}

impl RequestSpans {
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// A wait in the queue, from `from` to `to` (offsets from the request's arrival).
    pub fn waited(&mut self, from: Duration, to: Duration) {
        self.waits.push((from, to));
    }

    /// A new attempt on `backend` starting `at`: its span id goes upstream as the parent in
    /// `traceparent` (the app's spans are its children).
    pub fn attempt(
        &mut self,
        at: Duration,
        backend: Arc<str>,
        worker: Option<(u64, u32)>,
        h: &mut HeaderMap,
    ) {
        let span = context::new_span_id();
        h.insert(
            TRACEPARENT,
            context::traceparent(&self.trace_id, &span, self.flags),
        );
        let retry = self
            .attempts
            .last()
            .and_then(|a| a.error.map(|c| (c, a.replayed)));
        self.attempts.push(AttemptSpan {
            span,
            start: at,
            end: None,
            backend,
            worker,
            reused: None,
            status: None,
            error: None,
            retry,
            replayed: false,
        });
    }

    /// The attempt's response head came.
    pub fn answered(&mut self, reused: bool, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.reused = Some(reused);
            a.status = Some(status);
        }
    }

    /// The attempt failed at `at`.
    pub fn failed(&mut self, at: Duration, cause: Cause) {
        if let Some(a) = self.attempts.last_mut() {
            a.end = Some(at);
            a.error = Some(cause);
        }
    }

    /// The failed attempt goes again; `replayed`: its spare copy is sent.
    pub fn retrying(&mut self, replayed: bool) {
        if let Some(a) = self.attempts.last_mut() {
            a.replayed = replayed;
        }
    }

    /// Whether the request ended in an error: a failed attempt, or a 5xx proxyd made.
    pub fn errored(&self, status: u16, cause: Option<Cause>) -> bool {
        (status >= 500 && cause.is_some()) || self.attempts.iter().any(|a| a.error.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn headers(tp: Option<&'static str>, ts: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = tp {
            h.insert(TRACEPARENT, HeaderValue::from_static(v));
        }
        if let Some(v) = ts {
            h.insert(TRACESTATE, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn ratios() {
        let all = Sampler::new(1.0, false);
        let none = Sampler::new(0.0, false);
        let half = Sampler::new(0.5, false);
        let mut sampled = 0;
        for _ in 0..2000 {
            let id = context::new_trace_id();
            assert!(all.samples(&id));
            assert!(!none.samples(&id));
            sampled += usize::from(half.samples(&id));
        }
        // Not a timing: a binomial(2000, 0.5) lands here but for 1 in 10^40.
        assert!((600..1400).contains(&sampled), "{sampled}");
    }

    #[test]
    fn a_new_trace_when_sampled() {
        let mut h = headers(None, Some("a=b"));
        let s = Sampler::new(1.0, false).begin(&mut h, "http").unwrap();
        assert!(s.sampled);
        assert_eq!(s.parent, None);
        assert_eq!(s.flags, SAMPLED);
        assert_eq!(s.state, None);
        assert!(
            !h.contains_key(TRACESTATE),
            "not without a valid traceparent"
        );
        assert!(!h.contains_key(TRACEPARENT), "set per attempt");
    }

    #[test]
    fn a_valid_parent_is_followed() {
        // Sampled by the caller: recorded even at ratio 0.
        let mut h = headers(Some(VALID), Some("rojo=1"));
        let s = Sampler::new(0.0, false).begin(&mut h, "https").unwrap();
        assert_eq!(s.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.parent, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
        assert_ne!(s.server, s.parent.unwrap());
        assert_eq!(s.state.as_deref(), Some("rojo=1"));
        assert_eq!(h[TRACESTATE], "rojo=1");
        assert_eq!(s.scheme, "https");

        // Not sampled by the caller: not recorded even at ratio 1; the header stays as it was.
        let mut h = headers(Some(UNSAMPLED), Some("rojo=1"));
        assert!(Sampler::new(1.0, false).begin(&mut h, "http").is_none());
        assert_eq!(h[TRACEPARENT], UNSAMPLED);
        assert_eq!(h[TRACESTATE], "rojo=1");

        // ... unless errors are asked for: recorded, unsampled.
        let s = Sampler::new(1.0, true).begin(&mut h, "http").unwrap();
        assert!(!s.sampled);
        assert_eq!(s.flags & SAMPLED, 0);
    }

    #[test]
    fn an_invalid_parent_is_never_passed_on() {
        let mut h = headers(Some("00-zzz"), Some("rojo=1"));
        assert!(Sampler::new(0.0, false).begin(&mut h, "http").is_none());
        assert!(!h.contains_key(TRACEPARENT));
        assert!(!h.contains_key(TRACESTATE));

        let mut h = headers(Some("00-zzz"), Some("rojo=1"));
        let s = Sampler::new(1.0, false).begin(&mut h, "http").unwrap();
        assert_eq!(s.parent, None, "a new trace");
        assert!(!h.contains_key(TRACEPARENT));
    }

    #[test]
    fn no_header_and_not_sampled_changes_nothing() {
        let mut h = headers(None, None);
        assert!(Sampler::new(0.0, false).begin(&mut h, "http").is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn each_attempt_its_own_span() {
        let mut h = headers(Some(VALID), None);
        let mut s = Sampler::new(1.0, false).begin(&mut h, "http").unwrap();
        s.attempt(Duration::from_millis(1), "a:1".into(), None, &mut h);
        let first = context::parse(h[TRACEPARENT].as_bytes()).unwrap();
        s.failed(Duration::from_millis(2), Cause::UpstreamClosed);
        s.retrying(true);
        s.attempt(
            Duration::from_millis(3),
            "b:1".into(),
            Some((7, 42)),
            &mut h,
        );
        let second = context::parse(h[TRACEPARENT].as_bytes()).unwrap();
        s.answered(true, 200);
        assert_eq!(first.trace_id, s.trace_id);
        assert_eq!(second.trace_id, s.trace_id);
        assert_eq!(first.span_id, s.attempts[0].span);
        assert_eq!(second.span_id, s.attempts[1].span);
        assert_ne!(first.span_id, second.span_id);
        assert!(first.sampled());
        assert_eq!(s.attempts[0].retry, None);
        assert_eq!(s.attempts[1].retry, Some((Cause::UpstreamClosed, true)));
        assert_eq!(s.attempts[1].reused, Some(true));
        assert!(s.errored(200, None), "a failed attempt");
    }
}
