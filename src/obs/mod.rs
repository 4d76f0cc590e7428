//! Observability, the leaves of the house: metrics and access logs. They are fed a finished
//! request's [`Outcome`] record (plain data: route, upstream and backend names, cause,
//! timings) and, for a scrape, the live [`figures`] their owners read out; they import
//! nothing of the pipeline (`proxy`) and no internals of `upstream` or `workers`.
//!
//! - [`outcome`]: the record, the [`Observe`] trait, and the set of observers a server feeds.
//! - [`metrics`]: the Prometheus registry, every metric named in one place.
//! - [`figures`]: what a scrape reads from the upstreams and the worker supervisors.
//! - [`access_log`]: access logs (combined, JSON, healthd), written off the request path.
//! - [`otel`]: trace context and spans exported over OTLP/HTTP (`tracing:`).

pub mod access_log;
pub mod figures;
pub mod metrics;
pub mod otel;
pub mod outcome;

pub use outcome::{Compressed, Observe, Observers, Outcome, Trace};

/// The `proxyd-error` of an upstream's error answer replaced by an error page
/// (`routes[].intercept_errors`), and what the JSON access log's `error` says of it.
pub const INTERCEPTED: &str = "upstream-status";
