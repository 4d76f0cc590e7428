//! `tracing:`: spans of proxyd's requests exported over OTLP/HTTP to a collector (off when
//! absent). The exporter is `obs::otel`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/HTTP endpoint (`http://127.0.0.1:4318`; `/v1/traces` is added
    /// when it names no path).
    pub otlp: Spanned<String>,
    /// The share of new traces proxyd starts (0.0 to 1.0); a request with a `traceparent`
    /// follows its sampled flag (parent-based). Default 1.0, OpenTelemetry's own default
    /// (parent-based, always on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Spanned<f64>>,
    /// `service.name` of proxyd's spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Export the spans of a request that ended in an error (5xx made by proxyd or a failed
    /// attempt) even when it was not sampled.
    #[serde(default)]
    pub errors: bool,
    /// Spans held for export at most; past it they are dropped (and counted), never waited for.
    #[serde(
        default = "default_queue",
        deserialize_with = "units::count::<_, _, 1, 1000000>"
    )]
    pub queue: usize,
    /// Spans per export request at most.
    #[serde(
        default = "default_batch",
        deserialize_with = "units::count::<_, _, 1, 100000>"
    )]
    pub batch: usize,
    /// Held spans are sent at least this often.
    #[serde(default = "default_flush", with = "units::nonzero_duration")]
    pub flush: Duration,
    /// One export request's time-out.
    #[serde(default = "default_timeout", with = "units::nonzero_duration")]
    pub timeout: Duration,
}

impl Tracing {
    /// The ratio of new traces sampled.
    pub fn sample(&self) -> f64 {
        self.sample.as_ref().map_or(1.0, |s| s.value)
    }
}

fn default_service_name() -> String {
    "proxyd".into()
}
fn default_queue() -> usize {
    2048
}
fn default_batch() -> usize {
    512
}
fn default_flush() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
