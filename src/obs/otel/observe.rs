//! The observer that turns each traced request's outcome into spans and hands them to the
//! exporter (`tracing:` set): sampled requests, and with `tracing.errors` unsampled ones
//! that ended in an error.

use std::sync::Arc;

use super::SpanRecord;
use crate::config::tracing::Tracing;
use crate::obs::{Observe, Outcome};

/// Where finished spans go: the OTLP exporter (`export::Exporter`), or a test's capture.
/// `submit` must never block (the exporter drops, and counts, what its queue cannot hold).
pub trait SpanSink: Send + Sync {
    fn submit(&self, spans: Vec<SpanRecord>);

    /// Sends what it holds, for proxyd's exit.
    fn close(&self) -> Option<crate::obs::outcome::Closing<'_>> {
        None
    }
}

/// Makes the spans of each traced outcome and submits them.
pub struct Tracer {
    sink: Arc<dyn SpanSink>,
}

impl Tracer {
    pub fn new(sink: Arc<dyn SpanSink>) -> Tracer {
        Tracer { sink }
    }
}

impl Observe for Tracer {
    fn request_done(&self, o: &Outcome) {
        let Some(s) = o.trace.spans.as_deref() else {
            return;
        };
        // Unsampled requests are recorded only with `tracing.errors`.
        if s.sampled || s.errored(o.status.as_u16(), o.trace.cause) {
            self.sink.submit(super::spans::spans(o));
        }
    }

    fn close(&self) -> Option<crate::obs::outcome::Closing<'_>> {
        self.sink.close()
    }
}

/// The observer of `tracing:`, its exporter started on the current runtime. The app builds
/// it at start and again when a reload changes `tracing:`.
pub fn observer(cfg: &Tracing) -> Arc<dyn Observe> {
    Arc::new(Tracer::new(start_exporter(cfg)))
}

/// The OTLP exporter for `cfg`, started on the current runtime.
fn start_exporter(cfg: &Tracing) -> Arc<dyn SpanSink> {
    super::export::Exporter::start(cfg)
}

impl SpanSink for super::export::Exporter {
    fn submit(&self, spans: Vec<SpanRecord>) {
        super::export::Exporter::submit(self, spans)
    }

    fn close(&self) -> Option<crate::obs::outcome::Closing<'_>> {
        Some(Box::pin(self.shutdown()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

    use super::super::request::Sampler;
    use super::*;
    use crate::error::Cause;
    use crate::obs::Trace;

    #[derive(Default)]
    struct Capture(Mutex<Vec<SpanRecord>>);

    impl SpanSink for Capture {
        fn submit(&self, spans: Vec<SpanRecord>) {
            self.0.lock().unwrap().extend(spans);
        }
    }

    fn outcome(sampler: Sampler, status: u16, attempt_failed: bool) -> Outcome {
        let mut h = HeaderMap::new();
        let mut spans = sampler.begin(&mut h, "http");
        if let Some(s) = spans.as_deref_mut() {
            s.attempt(Duration::ZERO, "127.0.0.1:9".into(), None, &mut h);
            if attempt_failed {
                s.failed(Duration::from_millis(1), Cause::UpstreamConnectRefused);
            }
        }
        Outcome {
            at: SystemTime::now(),
            method: Method::GET,
            target: "/".into(),
            path_len: 1,
            version: Version::HTTP_11,
            host: None,
            client: None,
            forwarded_for: None,
            user_agent: None,
            referer: None,
            request_id: HeaderValue::from_static("r"),
            status: StatusCode::from_u16(status).unwrap(),
            body_bytes: 0,
            duration: Duration::from_millis(2),
            trace: Trace {
                spans,
                cause: attempt_failed.then_some(Cause::UpstreamConnectRefused),
                ..Default::default()
            },
        }
    }

    #[test]
    fn sampled_and_errors_are_submitted() {
        let capture = Arc::new(Capture::default());
        let tracer = Tracer::new(capture.clone());
        let count = || capture.0.lock().unwrap().len();

        tracer.request_done(&outcome(Sampler::new(1.0, false), 200, false));
        assert_eq!(count(), 2, "server + attempt");
        tracer.request_done(&outcome(Sampler::new(0.0, false), 502, true));
        assert_eq!(count(), 2, "not sampled, errors not asked for");
        tracer.request_done(&outcome(Sampler::new(0.0, true), 200, false));
        assert_eq!(count(), 2, "not sampled, no error");
        tracer.request_done(&outcome(Sampler::new(0.0, true), 502, true));
        assert_eq!(count(), 4, "not sampled, but an error");
    }
}
