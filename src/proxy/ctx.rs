//! One request's context: what every phase reads (the snapshot, the client connection, the
//! client) and what they record (the `Trace`), and the outcome kept until the response has
//! been sent.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::body::ResponseBody;
use super::compress::Tally;
use super::error::{error_response_with, ProxyError, Side};
use super::headers;
use super::ConnInfo;
use crate::config::Encoding;
use crate::obs::otel::context::TraceId;
use crate::obs::{Compressed, Outcome, Trace};
use crate::state::{RouteInfo, Snapshot};

/// What the phases of one request share. It borrows the snapshot the request started on, so
/// a reload cannot change a request half way.
pub struct RequestCtx<'a> {
    pub snap: &'a Snapshot,
    pub conn: &'a ConnInfo,
    /// The client, as `ConnInfo::client_ip` names it.
    pub client: Option<IpAddr>,
    /// The route the request took (the route phase sets it): its limits, and its response
    /// rules, which apply to whatever answers.
    pub route: Option<&'a RouteInfo>,
    /// When the request arrived (the outcome's duration).
    pub started: tokio::time::Instant,
    /// The request as it arrived, its id included, for its outcome.
    pub begun: Begun,
    /// What the phases found: route, upstream, backend, time queued, retries, cause.
    pub trace: Trace,
    /// The response body is compressed: its coding, and what went in (read once it is sent).
    pub compressed: Option<(Encoding, Tally)>,
    /// The error pages in force: the top level's, the route's once it is known.
    pub pages: &'a crate::state::pages::Pages,
}

impl<'a> RequestCtx<'a> {
    /// The context of `req`, which gets its request id (the client's, or a new one).
    pub fn new<B>(req: &mut Request<B>, snap: &'a Snapshot, conn: &'a ConnInfo) -> Self {
        let started = tokio::time::Instant::now();
        let request_id = headers::ensure_request_id(req.headers_mut(), &snap.request_id);
        let client = conn.client_ip(req.headers());
        let scheme = super::forward::client_proto(conn, req.headers());
        let mut trace = Trace::default();
        // Tracing off: this one branch, nothing allocated, `traceparent` passed on untouched.
        if let Some(sampler) = &snap.tracing {
            trace.spans = sampler.begin(req.headers_mut(), scheme);
        }
        RequestCtx {
            snap,
            conn,
            client,
            route: None,
            started,
            begun: Begun::of(req, client, request_id, scheme),
            trace,
            compressed: None,
            pages: &snap.error_pages,
        }
    }

    /// The trace id when the request is traced, for log lines (`trace_id` is then a field).
    pub fn trace_id(&self) -> Option<tracing::field::DisplayValue<TraceId>> {
        self.trace.trace_id().map(tracing::field::display)
    }

    /// Time since the request arrived: the offsets its spans record.
    pub fn since_start(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn request_id(&self) -> &HeaderValue {
        &self.begun.request_id
    }

    /// The one error response for `e`, which the trace and the log keep.
    pub fn fail(&mut self, e: &ProxyError) -> Response<ResponseBody> {
        let (method, target) = (&self.begun.method, &self.begun.target);
        match e.cause.side() {
            Side::Client => tracing::debug!(%method, %target, error = %e, "refused request"),
            _ => {
                let request_id = self.request_id();
                let trace_id = self.trace_id();
                tracing::warn!(%method, %target, ?request_id, trace_id, error = %e, "request failed")
            }
        }
        self.trace.cause = Some(e.cause);
        error_response_with(e, Some(self.pages))
    }

    /// Stamps the response as it goes out with the request's id (and the listener's HSTS),
    /// then the route's response rules (the top level's when no route matched): every
    /// response passes here, proxyd's own errors and static files too.
    #[inline]
    pub fn stamp(&self, resp: &mut Response<ResponseBody>) {
        let h = resp.headers_mut();
        h.insert(self.snap.request_id.clone(), self.begun.request_id.clone());
        if let Some(hsts) = &self.conn.listener.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        let rules = self.route.map_or(&self.snap.rules, |r| &r.rules);
        if let Some(ops) = rules.response.as_deref() {
            super::rules::apply(ops, self, h);
        }
    }

    /// The outcome of a response with `status`, to complete once its body has been sent.
    #[inline]
    pub fn pending(self, status: StatusCode) -> Pending {
        Pending {
            begun: self.begun,
            started: self.started,
            trace: self.trace,
            status,
            compressed: self.compressed,
        }
    }
}

/// What is known of a request when it arrives, kept for its outcome.
pub struct Begun {
    pub(super) at: std::time::SystemTime,
    pub(super) method: http::Method,
    pub(super) target: String,
    pub(super) path_len: usize,
    pub(super) version: http::Version,
    pub(super) host: Option<HeaderValue>,
    pub(super) client: Option<IpAddr>,
    pub(super) forwarded_for: Option<HeaderValue>,
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) referer: Option<HeaderValue>,
    pub(super) request_id: HeaderValue,
    /// `http` or `https`: as the client connected, or as a trusted proxy says.
    pub(super) scheme: &'static str,
}

impl Begun {
    pub(super) fn of<B>(
        req: &Request<B>,
        client: Option<IpAddr>,
        request_id: HeaderValue,
        scheme: &'static str,
    ) -> Begun {
        let h = req.headers();
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        Begun {
            at: std::time::SystemTime::now(),
            method: req.method().clone(),
            path_len: req.uri().path().len().min(target.len()),
            target,
            version: req.version(),
            host: req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| h.get(header::HOST).cloned()),
            client,
            forwarded_for: h.get("x-forwarded-for").cloned(),
            user_agent: h.get(header::USER_AGENT).cloned(),
            referer: h.get(header::REFERER).cloned(),
            request_id,
            scheme,
        }
    }
}

/// A response's outcome until its body has been sent; the server completes it.
pub struct Pending {
    pub(super) begun: Begun,
    pub(super) started: tokio::time::Instant,
    pub(super) trace: Trace,
    pub(super) status: StatusCode,
    pub(super) compressed: Option<(Encoding, Tally)>,
}

impl Pending {
    /// The finished request, once `body_bytes` of its response body were sent.
    pub fn finish(self, body_bytes: u64) -> Outcome {
        let b = self.begun;
        let mut trace = self.trace;
        trace.compressed = self.compressed.map(|(e, tally)| Compressed {
            encoding: e.token(),
            bytes_in: tally.bytes_in(),
        });
        Outcome {
            at: b.at,
            method: b.method,
            target: b.target,
            path_len: b.path_len,
            version: b.version,
            host: b.host,
            client: b.client,
            forwarded_for: b.forwarded_for,
            user_agent: b.user_agent,
            referer: b.referer,
            request_id: b.request_id,
            status: self.status,
            body_bytes,
            duration: self.started.elapsed(),
            trace,
        }
    }
}

/// A snapshot and a client connection built from a config, for the phases' own tests.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use super::super::{ConnInfo, ListenerSettings};
    use crate::state::Snapshot;

    /// The snapshot of `rest` (upstreams, routes, ...) after a listener.
    pub fn snapshot(rest: &str) -> Snapshot {
        let yaml = format!("listen:\n  - addr: \"127.0.0.1:0\"\n{rest}");
        let loaded = crate::config::load_str(&yaml, "t.yaml", ".".into()).unwrap();
        Snapshot::build(&loaded).unwrap()
    }

    /// A plain-HTTP client connection from `peer`.
    pub fn conn(peer: &str) -> ConnInfo {
        ConnInfo::new(
            peer.parse().unwrap(),
            &Arc::new(ListenerSettings::default()),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{conn, snapshot};
    use super::*;
    use crate::error::Cause;

    const ONE: &str = "upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n";

    #[test]
    fn a_request_gets_an_id_once() {
        let snap = snapshot(ONE);
        let conn = conn("10.1.2.3:5000");
        let mut req = Request::get("/a?b").header("host", "h").body(()).unwrap();
        let ctx = RequestCtx::new(&mut req, &snap, &conn);
        let id = ctx.request_id().clone();
        assert_eq!(id.len(), 16);
        assert_eq!(req.headers()["x-request-id"], id, "the backend sees it too");
        assert_eq!(ctx.client, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(ctx.begun.target, "/a?b");
        assert_eq!(ctx.begun.path_len, 2);

        let mut req = Request::get("/")
            .header("host", "h")
            .header("x-request-id", "client-7")
            .body(())
            .unwrap();
        let ctx = RequestCtx::new(&mut req, &snap, &conn);
        assert_eq!(ctx.request_id(), "client-7");
    }

    #[test]
    fn the_response_carries_the_id_and_hsts() {
        let snap = snapshot(ONE);
        let mut conn = conn("10.1.2.3:5000");
        conn.listener = std::sync::Arc::new(super::super::ListenerSettings {
            hsts: Some(HeaderValue::from_static("max-age=60")),
            ..Default::default()
        });
        let mut req = Request::get("/").header("host", "h").body(()).unwrap();
        let ctx = RequestCtx::new(&mut req, &snap, &conn);
        let id = ctx.request_id().clone();
        let mut resp = Response::new(ResponseBody::empty());
        ctx.stamp(&mut resp);
        let pending = ctx.pending(resp.status());
        assert_eq!(resp.headers()["x-request-id"], id);
        assert_eq!(resp.headers()["strict-transport-security"], "max-age=60");
        let outcome = pending.finish(0);
        assert_eq!(outcome.status, StatusCode::OK);
        assert_eq!(outcome.request_id, id);
        assert!(outcome.trace.cause.is_none());
    }

    #[test]
    fn a_failure_is_one_error_response_and_in_the_outcome() {
        let snap = snapshot(ONE);
        let conn = conn("10.1.2.3:5000");
        let mut req = Request::get("/").header("host", "h").body(()).unwrap();
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);
        let resp = ctx.fail(&ProxyError::new(Cause::NoRoute, "none"));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["proxyd-error"], Cause::NoRoute.code());
        let pending = ctx.pending(resp.status());
        let outcome = pending.finish(42);
        assert_eq!(outcome.status, StatusCode::NOT_FOUND);
        assert_eq!(outcome.body_bytes, 42);
        assert_eq!(outcome.trace.cause, Some(Cause::NoRoute));
    }
}
