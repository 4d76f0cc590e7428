//! The three line formats. Text fields are escaped as nginx does (`"`, `\`, control and
//! non-ASCII bytes as `\xHH`) so a client cannot forge a line or break a field.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Version};
use serde::Serialize;

use crate::obs::outcome::Outcome;

/// When the line is logged: the end of the response (nginx's `$msec` and `$time_local`).
pub fn logged_at(o: &Outcome) -> SystemTime {
    o.at + o.duration
}

/// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent"`.
pub fn combined(o: &Outcome) -> String {
    let mut s = String::with_capacity(160 + o.target.len());
    match o.client {
        Some(ip) => {
            let _ = write!(s, "{ip}");
        }
        None => s.push('-'),
    }
    s.push_str(" - - [");
    time_local(&mut s, logged_at(o));
    s.push_str("] \"");
    escape(&mut s, o.method.as_str().as_bytes());
    s.push(' ');
    escape(&mut s, o.target.as_bytes());
    s.push(' ');
    s.push_str(protocol(o.version));
    let _ = write!(s, "\" {} {} \"", o.status.as_u16(), o.body_bytes);
    header_or_dash(&mut s, o.referer.as_ref());
    s.push_str("\" \"");
    header_or_dash(&mut s, o.user_agent.as_ref());
    s.push_str("\"\n");
    s
}

/// `$msec"$uri"$status"$request_time"$upstream_response_time"$http_x_forwarded_for`, with `-`
/// for an absent upstream time or X-Forwarded-For (the healthd agent skips 5-field lines).
pub fn healthd(o: &Outcome) -> String {
    let mut s = String::with_capacity(64 + o.path().len());
    let t = since_epoch(logged_at(o));
    let _ = write!(s, "{}.{:03}\"", t.as_secs(), t.subsec_millis());
    escape(&mut s, o.path().as_bytes());
    let _ = write!(s, "\"{}\"", o.status.as_u16());
    seconds(&mut s, o.duration);
    s.push('"');
    match o.trace.upstream_time {
        Some(d) => seconds(&mut s, d),
        None => s.push('-'),
    }
    s.push('"');
    header_or_dash(&mut s, o.forwarded_for.as_ref());
    s.push('\n');
    s
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: Option<std::net::IpAddr>,
    method: &'a str,
    target: Cow<'a, str>,
    protocol: &'static str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    upstream: Option<&'a str>,
    upstream_addr: Option<&'a str>,
    upstream_time_ms: Option<f64>,
    queue_ms: f64,
    retries: u32,
    /// The `proxyd-error` code when proxyd answered itself.
    error: Option<&'static str>,
    /// The coding of a body compressed on the fly, and its size before (`bytes` is after).
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_uncompressed: Option<u64>,
    request_id: Cow<'a, str>,
    /// The W3C trace id, when the request was traced (`tracing:`): logs and traces join.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    host: Option<Cow<'a, str>>,
    user_agent: Option<Cow<'a, str>>,
    referer: Option<Cow<'a, str>>,
    forwarded_for: Option<Cow<'a, str>>,
}

/// One JSON object per line; serde_json does the escaping.
pub fn json(o: &Outcome) -> String {
    let line = JsonLine {
        time: humantime::format_rfc3339_millis(logged_at(o)).to_string(),
        client: o.client,
        method: o.method.as_str(),
        target: Cow::Borrowed(&o.target),
        protocol: protocol(o.version),
        status: o.status.as_u16(),
        bytes: o.body_bytes,
        duration_ms: millis(o.duration),
        upstream: o.trace.upstream.as_deref(),
        upstream_addr: o.trace.backend.as_deref(),
        upstream_time_ms: o.trace.upstream_time.map(millis),
        queue_ms: millis(o.trace.queued),
        retries: o.trace.retries,
        error: o
            .trace
            .cause
            .map(|c| c.code())
            .or(o.trace.intercepted.then_some(crate::obs::INTERCEPTED)),
        encoding: o.trace.compressed.map(|c| c.encoding),
        bytes_uncompressed: o.trace.compressed.map(|c| c.bytes_in),
        request_id: String::from_utf8_lossy(o.request_id.as_bytes()),
        trace_id: o.trace.trace_id().map(|t| t.to_string()),
        host: text(o.host.as_ref()),
        user_agent: text(o.user_agent.as_ref()),
        referer: text(o.referer.as_ref()),
        forwarded_for: text(o.forwarded_for.as_ref()),
    };
    // Serializing plain fields cannot fail; an empty object beats a panic if it ever did.
    let mut s = serde_json::to_string(&line).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// `YYYY-MM-DD-HH` of the UTC hour, the healthd file suffix.
pub fn hour_suffix(hour: u64) -> String {
    let (y, m, d) = civil_from_days(hour / 24);
    format!("{y:04}-{m:02}-{d:02}-{:02}", hour % 24)
}

/// Hours since the epoch (UTC).
pub fn hour_of(t: SystemTime) -> u64 {
    since_epoch(t).as_secs() / 3600
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Milliseconds rounded to the microsecond, so the JSON number stays short.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Seconds with 3 decimals, as nginx's `$request_time`.
fn seconds(s: &mut String, d: Duration) {
    let _ = write!(s, "{}.{:03}", d.as_secs(), d.subsec_millis());
}

/// `27/Nov/2026:04:14:11 +0000` (UTC).
fn time_local(s: &mut String, t: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = since_epoch(t).as_secs();
    let (y, m, d) = civil_from_days(secs / 86400);
    let day = secs % 86400;
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    let _ = write!(
        s,
        "{d:02}/{month}/{y:04}:{:02}:{:02}:{:02} +0000",
        day / 3600,
        day % 3600 / 60,
        day % 60
    );
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01 (Howard Hinnant's
/// civil_from_days, for days after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

fn text(h: Option<&HeaderValue>) -> Option<Cow<'_, str>> {
    h.map(|v| String::from_utf8_lossy(v.as_bytes()))
}

fn header_or_dash(s: &mut String, h: Option<&HeaderValue>) {
    match h {
        Some(v) if !v.is_empty() => escape(s, v.as_bytes()),
        _ => s.push('-'),
    }
}

/// nginx's default log escaping.
fn escape(s: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(s, "\\x{b:02X}");
        } else {
            s.push(char::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_rfc3339() {
        for secs in [
            0u64,
            951_782_400,
            1_437_609_879,
            1_795_752_851,
            4_102_444_800,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let rfc = humantime::format_rfc3339_seconds(t).to_string();
            let mut local = String::new();
            time_local(&mut local, t);
            let (y, m, d) = civil_from_days(secs / 86400);
            assert_eq!(rfc[..10], format!("{y:04}-{m:02}-{d:02}"));
            assert_eq!(&local[12..20], &rfc[11..19], "{local} vs {rfc}");
            assert_eq!(
                hour_suffix(secs / 3600),
                format!("{}-{}", &rfc[..10], &rfc[11..13])
            );
        }
        let mut s = String::new();
        time_local(&mut s, UNIX_EPOCH + Duration::from_secs(1_795_752_851));
        assert_eq!(s, "27/Nov/2026:04:14:11 +0000");
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        escape(&mut s, b"a\"b\\c\n\xff d");
        assert_eq!(s, "a\\x22b\\x5Cc\\x0A\\xFF d");
    }
}
