//! The spans of a finished request, made from its `Outcome` off the request path: one SERVER
//! span (the request as the client saw it), an INTERNAL `queue wait` span per wait in the
//! admission queue, and a CLIENT span per upstream attempt, all children of the server span.
//! Attribute names are OpenTelemetry's HTTP semantic conventions; proxyd's own are
//! `proxyd.*`.

use std::time::SystemTime;

use http::Version;

use super::request::{AttemptSpan, RequestSpans};
use super::{SpanKind, SpanRecord, Value};
use crate::obs::Outcome;

/// The spans of `o`, if it was traced (else none).
pub fn spans(o: &Outcome) -> Vec<SpanRecord> {
    let Some(s) = o.trace.spans.as_deref() else {
        return Vec::new();
    };
    let end = o.at + o.duration;
    let mut out = Vec::with_capacity(1 + s.waits.len() + s.attempts.len());
    out.push(server(o, s, end));
    for &(from, to) in &s.waits {
        let mut attributes = Vec::new();
        if let Some(u) = &o.trace.upstream {
            attributes.push(("proxyd.upstream", Value::Str(u.to_string())));
        }
        out.push(child(
            s,
            super::context::new_span_id(),
            "queue wait".into(),
            SpanKind::Internal,
            (o.at + from, o.at + to),
            attributes,
            None,
        ));
    }
    for (i, a) in s.attempts.iter().enumerate() {
        out.push(attempt(o, s, a, i, end));
    }
    out
}

fn server(o: &Outcome, s: &RequestSpans, end: SystemTime) -> SpanRecord {
    let method = o.method.as_str();
    let name = match &o.trace.route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(16);
    a.push(("http.request.method", Value::Str(method.into())));
    a.push(("url.path", Value::Str(o.path().into())));
    if let Some(q) = o.target[o.path_len..].strip_prefix('?') {
        a.push(("url.query", Value::Str(q.into())));
    }
    a.push(("url.scheme", Value::Str(s.scheme.into())));
    if let Some((host, port)) = o.host.as_ref().and_then(|h| h.to_str().ok()).map(host_port) {
        a.push(("server.address", Value::Str(host.into())));
        if let Some(p) = port {
            a.push(("server.port", Value::Int(p.into())));
        }
    }
    if let Some(r) = &o.trace.route {
        a.push(("http.route", Value::Str(r.to_string())));
    }
    a.push((
        "http.response.status_code",
        Value::Int(o.status.as_u16().into()),
    ));
    if let Some(ip) = o.client {
        a.push(("client.address", Value::Str(ip.to_string())));
    }
    a.push((
        "network.protocol.version",
        Value::Str(protocol(o.version).into()),
    ));
    if let Some(ua) = o.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
        a.push(("user_agent.original", Value::Str(ua.into())));
    }
    a.push((
        "http.response.body.size",
        Value::Int(i64::try_from(o.body_bytes).unwrap_or(i64::MAX)),
    ));
    if let Some(u) = &o.trace.upstream {
        a.push(("proxyd.upstream", Value::Str(u.to_string())));
    }
    a.push((
        "proxyd.request_id",
        Value::Str(String::from_utf8_lossy(o.request_id.as_bytes()).into()),
    ));
    // Semantic conventions: a server span is an error on 5xx (4xx are the client's).
    let error = if o.status.is_server_error() {
        let kind = o
            .trace
            .cause
            .map_or_else(|| o.status.as_u16().to_string(), |c| c.code().to_string());
        a.push(("error.type", Value::Str(kind.clone())));
        Some(kind)
    } else {
        None
    };
    SpanRecord {
        trace_id: s.trace_id,
        span_id: s.server,
        parent_span_id: s.parent,
        trace_state: s.state.clone(),
        name,
        kind: SpanKind::Server,
        start: o.at,
        end,
        attributes: a,
        error,
    }
}

fn attempt(
    o: &Outcome,
    s: &RequestSpans,
    at: &AttemptSpan,
    i: usize,
    end: SystemTime,
) -> SpanRecord {
    let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    a.push(("http.request.method", Value::Str(o.method.as_str().into())));
    let (host, port) = backend_host_port(&at.backend);
    a.push(("server.address", Value::Str(host.into())));
    if let Some(p) = port {
        a.push(("server.port", Value::Int(p.into())));
    }
    a.push(("proxyd.backend", Value::Str(at.backend.to_string())));
    a.push((
        "proxyd.attempt",
        Value::Int(i64::try_from(i + 1).unwrap_or(i64::MAX)),
    ));
    if let Some(u) = &o.trace.upstream {
        a.push(("proxyd.upstream", Value::Str(u.to_string())));
    }
    if let Some((id, pid)) = at.worker {
        a.push((
            "proxyd.worker.id",
            Value::Int(i64::try_from(id).unwrap_or(i64::MAX)),
        ));
        a.push(("proxyd.worker.pid", Value::Int(pid.into())));
    }
    if let Some(reused) = at.reused {
        a.push(("proxyd.connection.reused", Value::Bool(reused)));
    }
    if let Some((cause, replayed)) = at.retry {
        a.push(("proxyd.retry.reason", Value::Str(cause.code().into())));
        a.push(("proxyd.retry.replayed", Value::Bool(replayed)));
    }
    if let Some(status) = at.status {
        a.push(("http.response.status_code", Value::Int(status.into())));
    }
    // Semantic conventions: a client span is an error on a failure, 4xx or 5xx.
    let error = match (at.error, at.status) {
        (Some(cause), _) => Some(cause.code().to_string()),
        (None, Some(status)) if status >= 400 => Some(status.to_string()),
        _ => None,
    };
    if let Some(kind) = &error {
        a.push(("error.type", Value::Str(kind.clone())));
    }
    SpanRecord {
        trace_id: s.trace_id,
        span_id: at.span,
        parent_span_id: Some(s.server),
        trace_state: s.state.clone(),
        name: o.method.as_str().to_string(),
        kind: SpanKind::Client,
        start: o.at + at.start,
        end: at.end.map_or(end, |e| o.at + e),
        attributes: a,
        error,
    }
}

fn child(
    s: &RequestSpans,
    span_id: [u8; 8],
    name: String,
    kind: SpanKind,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<(&'static str, Value)>,
    error: Option<String>,
) -> SpanRecord {
    SpanRecord {
        trace_id: s.trace_id,
        span_id,
        parent_span_id: Some(s.server),
        trace_state: s.state.clone(),
        name,
        kind,
        start,
        end,
        attributes,
        error,
    }
}

/// `host[:port]` (`[v6]:port` too) split; the port only when it is a number.
fn host_port(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    }
}

/// A backend's label as `server.address` and `server.port`: `https://` dropped, a Unix
/// socket as its path.
fn backend_host_port(label: &str) -> (&str, Option<u16>) {
    if let Some(path) = label.strip_prefix("unix:") {
        return (path, None);
    }
    host_port(label.strip_prefix("https://").unwrap_or(label))
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    use super::super::request::Sampler;
    use super::*;
    use crate::error::Cause;
    use crate::obs::Trace;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn outcome(spans: Box<RequestSpans>, status: u16, cause: Option<Cause>) -> Outcome {
        Outcome {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            method: Method::GET,
            target: "/users/7?full=1".into(),
            path_len: 8,
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("example.test:8080")),
            client: Some("192.0.2.9".parse().unwrap()),
            forwarded_for: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
            referer: None,
            request_id: HeaderValue::from_static("req-1"),
            status: StatusCode::from_u16(status).unwrap(),
            body_bytes: 42,
            duration: Duration::from_millis(50),
            trace: Trace {
                route: Some("users".into()),
                upstream: Some("app".into()),
                cause,
                spans: Some(spans),
                ..Default::default()
            },
        }
    }

    fn attr<'a>(s: &'a SpanRecord, name: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    fn str(v: &str) -> Option<Value> {
        Some(Value::Str(v.into()))
    }

    #[test]
    fn a_retried_request_that_waited() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(VALID));
        let mut s = Sampler::new(1.0, false).begin(&mut h, "https").unwrap();
        let ms = Duration::from_millis;
        s.waited(ms(1), ms(5));
        s.attempt(ms(5), "127.0.0.1:8001".into(), Some((3, 4242)), &mut h);
        s.failed(ms(7), Cause::UpstreamClosed);
        s.retrying(true);
        s.attempt(ms(8), "unix:/run/app.sock".into(), None, &mut h);
        s.answered(false, 200);
        let o = outcome(s, 200, None);
        let spans = spans(&o);
        assert_eq!(spans.len(), 4);
        let (server, wait, first, second) = (&spans[0], &spans[1], &spans[2], &spans[3]);

        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.name, "GET users");
        assert_eq!(
            server.parent_span_id,
            Some(0x00f067aa0ba902b7u64.to_be_bytes())
        );
        assert_eq!((server.start, server.end), (o.at, o.at + ms(50)));
        for (name, want) in [
            ("http.request.method", str("GET")),
            ("url.path", str("/users/7")),
            ("url.query", str("full=1")),
            ("url.scheme", str("https")),
            ("server.address", str("example.test")),
            ("server.port", Some(Value::Int(8080))),
            ("http.route", str("users")),
            ("http.response.status_code", Some(Value::Int(200))),
            ("client.address", str("192.0.2.9")),
            ("network.protocol.version", str("1.1")),
            ("user_agent.original", str("curl/8")),
            ("http.response.body.size", Some(Value::Int(42))),
            ("proxyd.upstream", str("app")),
            ("proxyd.request_id", str("req-1")),
            ("error.type", None),
        ] {
            assert_eq!(attr(server, name), want.as_ref(), "{name}");
        }
        assert_eq!(server.error, None);

        assert_eq!(wait.kind, SpanKind::Internal);
        assert_eq!(wait.name, "queue wait");
        assert_eq!(wait.parent_span_id, Some(server.span_id));
        assert_eq!((wait.start, wait.end), (o.at + ms(1), o.at + ms(5)));

        for a in [first, second] {
            assert_eq!(a.kind, SpanKind::Client);
            assert_eq!(a.parent_span_id, Some(server.span_id));
            assert_eq!(a.trace_id, server.trace_id);
            assert_eq!(a.name, "GET");
        }
        assert_ne!(first.span_id, second.span_id);
        assert_eq!(attr(first, "server.address"), str("127.0.0.1").as_ref());
        assert_eq!(attr(first, "server.port"), Some(&Value::Int(8001)));
        assert_eq!(attr(first, "proxyd.worker.id"), Some(&Value::Int(3)));
        assert_eq!(attr(first, "proxyd.worker.pid"), Some(&Value::Int(4242)));
        assert_eq!(
            attr(first, "error.type"),
            str("upstream-closed-early").as_ref()
        );
        assert_eq!(first.error.as_deref(), Some("upstream-closed-early"));
        assert_eq!((first.start, first.end), (o.at + ms(5), o.at + ms(7)));
        assert_eq!(attr(first, "proxyd.retry.reason"), None);

        assert_eq!(
            attr(second, "server.address"),
            str("/run/app.sock").as_ref()
        );
        assert_eq!(attr(second, "server.port"), None);
        assert_eq!(attr(second, "proxyd.attempt"), Some(&Value::Int(2)));
        assert_eq!(
            attr(second, "proxyd.retry.reason"),
            str("upstream-closed-early").as_ref()
        );
        assert_eq!(
            attr(second, "proxyd.retry.replayed"),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            attr(second, "proxyd.connection.reused"),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            attr(second, "http.response.status_code"),
            Some(&Value::Int(200))
        );
        assert_eq!(second.error, None);
        assert_eq!(second.end, server.end, "it lasted as long as the response");
    }

    #[test]
    fn a_new_trace_is_a_root_and_proxyd_errors_are_errors() {
        let mut h = HeaderMap::new();
        let s = Sampler::new(1.0, false).begin(&mut h, "http").unwrap();
        let o = outcome(s, 503, Some(Cause::QueueTimeout));
        let spans = spans(&o);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent_span_id, None);
        assert_eq!(spans[0].error.as_deref(), Some(Cause::QueueTimeout.code()));
        assert_eq!(
            attr(&spans[0], "error.type"),
            str(Cause::QueueTimeout.code()).as_ref()
        );
    }

    #[test]
    fn untraced_is_no_spans() {
        let mut o = outcome(
            Sampler::new(1.0, false)
                .begin(&mut HeaderMap::new(), "http")
                .unwrap(),
            200,
            None,
        );
        o.trace.spans = None;
        assert!(spans(&o).is_empty());
    }

    #[test]
    fn addresses() {
        assert_eq!(host_port("a.test"), ("a.test", None));
        assert_eq!(host_port("a.test:80"), ("a.test", Some(80)));
        assert_eq!(host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(host_port("::1"), ("::1", None));
        assert_eq!(
            backend_host_port("https://api.test:443"),
            ("api.test", Some(443))
        );
        assert_eq!(backend_host_port("unix:/a.sock"), ("/a.sock", None));
    }
}
