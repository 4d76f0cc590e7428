//! What happened to one request, gathered as it moves through the pipeline (`Trace`) and
//! completed when its response has been sent (`Outcome`), then handed to whoever observes
//! requests: metrics and access logs. Plain data: names and labels, not the live objects.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, StatusCode, Version};

use crate::error::Cause;

/// Filled by the pipeline's phases.
#[derive(Default)]
pub struct Trace {
    /// The route that matched, by its name (metrics label).
    pub route: Option<Arc<str>>,
    /// The upstream the route chose, by its name.
    pub upstream: Option<Arc<str>>,
    /// The backend that answered (or failed last), by its label (its address).
    pub backend: Option<Arc<str>>,
    /// Time spent waiting in the admission queue.
    pub queued: Duration,
    /// From sending to the backend to its response head (the last attempt).
    pub upstream_time: Option<Duration>,
    pub retries: u32,
    /// Set when proxyd answered with an error.
    pub cause: Option<Cause>,
    /// The upstream's error answer was replaced by an error page (`intercept_errors`).
    pub intercepted: bool,
    /// Set when the response body was compressed on the fly.
    pub compressed: Option<Compressed>,
    /// Set when the route's basic auth refused credentials: why (`malformed`,
    /// `unknown_user`, `wrong_password`).
    pub auth_failure: Option<&'static str>,
    /// Set when the request is traced (`tracing:`, sampled or recorded for errors): its
    /// trace context and what its spans need. Boxed: one word when tracing is off.
    pub spans: Option<Box<crate::obs::otel::RequestSpans>>,
}

/// A body compressed on the fly: its coding and the bytes that went in (the bytes that came
/// out are the outcome's `body_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Compressed {
    /// The `Content-Encoding` token: `gzip`, `br`, `zstd`.
    pub encoding: &'static str,
    pub bytes_in: u64,
}

/// One finished request.
pub struct Outcome {
    /// Wall-clock time the request arrived (for logs).
    pub at: SystemTime,
    pub method: Method,
    /// Path and query as the client sent them.
    pub target: String,
    pub path_len: usize,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub client: Option<IpAddr>,
    pub forwarded_for: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub status: StatusCode,
    /// Response body bytes sent to the client.
    pub body_bytes: u64,
    /// From the request's arrival to the end of its response.
    pub duration: Duration,
    pub trace: Trace,
}

impl Trace {
    /// The trace id, when the request is traced (for log lines).
    pub fn trace_id(&self) -> Option<crate::obs::otel::context::TraceId> {
        self.spans.as_deref().map(|s| s.trace_id())
    }
}

impl Outcome {
    /// The path without its query (`target` up to `?`).
    pub fn path(&self) -> &str {
        &self.target[..self.path_len]
    }
}

/// Something that wants to know about every finished request.
pub trait Observe: Send + Sync {
    fn request_done(&self, outcome: &Outcome);

    /// What it must finish before proxyd exits (the tracer's last export); most have none.
    fn close(&self) -> Option<Closing<'_>> {
        None
    }
}

/// An observer's last work at exit.
pub type Closing<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The observers of a server; cheap to clone. A config reload can replace the set (new
/// access logs), and every clone sees the new one.
#[derive(Clone, Default)]
pub struct Observers(Arc<arc_swap::ArcSwap<Vec<Arc<dyn Observe>>>>);

impl Observers {
    pub fn new(list: Vec<Arc<dyn Observe>>) -> Observers {
        Observers(Arc::new(arc_swap::ArcSwap::from_pointee(list)))
    }

    pub fn done(&self, outcome: &Outcome) {
        for o in self.0.load().iter() {
            o.request_done(outcome);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    /// Lets each observer finish its last work (`Observe::close`), one after the other.
    pub async fn close(&self) {
        let list = self.0.load_full();
        for o in list.iter() {
            if let Some(closing) = o.close() {
                closing.await;
            }
        }
    }

    /// Swaps in a new set; the old observers go when the last request using them is done.
    pub fn replace(&self, list: Vec<Arc<dyn Observe>>) {
        self.0.store(Arc::new(list));
    }
}
