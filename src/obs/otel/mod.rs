//! Distributed tracing (issue 20): W3C trace context, the spans of a request, and their
//! export over OTLP/HTTP. What the phases record goes in the `Outcome`'s trace; spans are
//! made from it here, off the request path, and handed to the exporter.
//!
//! - [`SpanRecord`]: one finished span, plain data: what the exporter encodes.
//! - [`context`]: W3C `traceparent`/`tracestate`: parsed, checked, made.
//! - [`request`]: the sampling decision (`Sampler`, once per request) and what a traced
//!   request records (`RequestSpans`, in the outcome's `Trace`).
//! - [`spans`]: the spans made from a finished `Outcome`.
//! - [`observe`]: the observer that submits them to the exporter (`SpanSink`).
//! - [`export`]: the [`Exporter`](export::Exporter): a bounded queue the request path pushes
//!   to without waiting, and a task that sends batches over OTLP/HTTP.
//! - [`otlp`]: OTLP's protobuf messages, encoded by hand from `SpanRecord`s.
//! - `client`: the exporter's minimal HTTP/1.1 POST (plain http://, keep-alive).

use std::time::SystemTime;

mod client;
pub mod context;
pub mod export;
pub mod observe;
pub mod otlp;
pub mod request;
pub mod spans;

pub use observe::{observer, SpanSink};
pub use request::{RequestSpans, Sampler};

/// A span's kind, as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// None for a trace's root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// The W3C `tracestate` the span was made under (passed on as it came).
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Semantic-convention names (`http.request.method`, `server.address`, ...).
    pub attributes: Vec<(&'static str, Value)>,
    /// The span ended in an error, with its message (OTLP status ERROR); else UNSET.
    pub error: Option<String>,
}
