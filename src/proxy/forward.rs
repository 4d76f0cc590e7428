//! The admit and forward phases: the request head as a backend gets it, a backend slot taken
//! (waiting in the admission queue if need be), the request sent, and retried on another
//! backend when the rules of `retry` allow it.

use std::sync::Arc;

use http::{header, request, Request};

use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::{self, ClientSide};
use super::respond::{self, Answer};
use super::retry::{self, Again};
use super::ConnInfo;
use crate::upstream::body::RequestBody;
use crate::upstream::stats::Stats;
use crate::upstream::transport;
use crate::upstream::{Backend, InFlight, Refusal, Upstream, WorkerEvent};

/// What the retry rules need to know of a request, besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub idempotent: bool,
    /// The backend's address goes in `Host` (the client's is not passed on).
    pub backend_host: bool,
    /// For `balance: hash`.
    pub key: Option<u64>,
    /// `limits.buffer_response`: a worker's response is read this far before the client
    /// gets its head.
    pub buffer_response: u64,
    /// The upstream's response time-out, or the route's (`routes[].timeouts.response`).
    pub response_timeout: std::time::Duration,
}

/// The scheme the client used, for `X-Forwarded-Proto`: a trusted proxy in front (a load
/// balancer that terminated TLS) says it; anyone else's `X-Forwarded-Proto` is replaced.
pub fn client_proto(conn: &ConnInfo, h: &http::HeaderMap) -> &'static str {
    match (&conn.trusted, conn.peer) {
        (Some(t), Some(peer)) if t.contains(peer.ip()) => {
            match h.get("x-forwarded-proto").map(|v| v.as_bytes()) {
                Some(b"https") => "https",
                Some(b"http") => "http",
                _ => conn.proto,
            }
        }
        _ => conn.proto,
    }
}

/// Rewrites the client's request head into the one `upstream` gets (`headers::
/// prepare_request`, the client certificate's subject) and says how to attempt it.
pub fn prepare(
    ctx: &RequestCtx<'_>,
    upstream: &Upstream,
    parts: &mut request::Parts,
    body: &RequestBody,
) -> Attempt {
    let conn = ctx.conn;
    let side = ClientSide {
        client_ip: ctx.client,
        proto: ctx.begun.scheme,
        preserve_host: ctx.snap.preserve_host,
    };
    // An HTTP/2 upstream cannot take an HTTP/1.1 upgrade: the request goes without it.
    let upgrade = headers::is_upgrade(parts) && !upstream.connector.multiplexed();
    let idempotent = retry::is_idempotent(&parts.method, &parts.headers);
    if let Some(name) = &conn.listener.subject_header {
        // Only proxyd may say who the client certificate belongs to.
        parts.headers.remove(name);
        if let Some(subject) = &conn.client_subject {
            parts.headers.insert(name.clone(), subject.clone());
        }
    }
    let key = upstream
        .hash_key
        .as_ref()
        .and_then(|k| headers::hash_key(k, &parts.headers, ctx.client));
    let backend_host = headers::prepare_request(parts, body, upgrade, &side);
    Attempt {
        idempotent,
        backend_host,
        key,
        buffer_response: ctx.snap.body_limits.buffer_response,
        response_timeout: ctx
            .route
            .and_then(|r| r.response_timeout)
            .unwrap_or(upstream.response_timeout),
    }
}

/// The forward phase: takes a backend slot (`admit`) and sends; retries on another backend
/// what is safe to retry, within `retries.attempts` and the retry budget: any request none
/// of which reached the failed backend, and once, an idempotent one with a replayable body
/// when the backend failed before the client got anything (a worker's response is read
/// whole, or to `buffer_response`, before its head goes out), so a request that kills its
/// worker cannot take down more than two.
pub async fn forward(
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    req: Request<RequestBody>,
    attempt: Attempt,
) -> Result<Answer, ProxyError> {
    Stats::add(&upstream.stats.requests);
    upstream.budget.deposit();
    let result = attempts(ctx, upstream, req, attempt).await;
    if let Err(e) = &result {
        upstream.stats.error(e.cause);
    }
    result
}

/// The admit phase: a slot on one of `upstream`'s backends not yet `tried`, at once or after
/// a wait in its queue (kept in the trace); refused when the queue cannot serve it in time.
pub async fn admit(
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    key: Option<u64>,
    tried: &[Arc<Backend>],
) -> Result<InFlight, Refusal> {
    if let Some(flight) = upstream.acquire_now(key, tried) {
        return Ok(flight);
    }
    // The queue's wait is boxed: most requests get a slot at once, and the request's future
    // stays small (it is moved on every request).
    let waiting = tokio::time::Instant::now();
    let got = Box::pin(upstream.acquire(key, tried.to_vec())).await;
    ctx.trace.queued += waiting.elapsed();
    if let Some(s) = ctx.trace.spans.as_deref_mut() {
        let from = waiting.duration_since(ctx.started);
        s.waited(from, ctx.started.elapsed());
    }
    got
}

async fn attempts(
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    mut req: Request<RequestBody>,
    attempt: Attempt,
) -> Result<Answer, ProxyError> {
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut replayed = false;
    // The failure being retried: if no backend can be had for the retry, it is the answer.
    let mut previous: Option<ProxyError> = None;
    let replayable = req
        .body()
        .buffered_len()
        .is_some_and(|n| n <= upstream.retries.max_body);
    loop {
        let flight = match admit(ctx, upstream, attempt.key, &tried).await {
            Ok(f) => f,
            Err(refusal) => {
                return Err(previous.take().unwrap_or_else(|| {
                    let e =
                        ProxyError::new(refusal.cause, format_args!("upstream {}", upstream.name));
                    match refusal.retry_after {
                        Some(secs) => e.retry_after(secs),
                        None => e,
                    }
                }))
            }
        };
        let backend = flight.backend().clone();
        ctx.trace.backend = Some(backend.label.clone());
        if attempt.backend_host {
            set_backend_host(&mut req, &backend);
        }
        let last = retry::is_last(
            tried.len(),
            upstream.retries.attempts,
            upstream.dynamic,
            || upstream.backends().len(),
        );
        let spare = if retry::wants_spare(attempt.idempotent, replayable, last, replayed) {
            retry::replayable_copy(&req)
        } else {
            None
        };
        if let Some(s) = ctx.trace.spans.as_deref_mut() {
            // Each attempt its own span, the parent of the app's (its `traceparent`).
            let worker = backend.worker.as_ref().map(|w| (w.id, w.pid));
            let at = ctx.started.elapsed();
            s.attempt(at, backend.label.clone(), worker, req.headers_mut());
        }
        let started = tokio::time::Instant::now();
        let sent =
            transport::send(&backend, req, &upstream.connector, attempt.response_timeout).await;
        let failed = match sent {
            Ok(sent) => {
                ctx.trace.upstream_time = Some(started.elapsed());
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                backend.observe_latency(nanos);
                let status = sent.head.status;
                if let Some(s) = ctx.trace.spans.as_deref_mut() {
                    s.answered(sent.reused, status.as_u16());
                }
                match respond::receive(upstream, sent, flight, started, &attempt).await {
                    Ok(answer) => {
                        upstream.record(&backend, status.is_server_error());
                        return Ok(answer);
                    }
                    Err(error) => transport::Failed {
                        error,
                        request: None,
                    },
                }
            }
            Err(f) => {
                drop(flight);
                f
            }
        };
        upstream.record(&backend, true);
        let cause = failed.error.cause;
        if let Some(s) = ctx.trace.spans.as_deref_mut() {
            s.failed(ctx.started.elapsed(), cause);
        }
        if cause == crate::error::Cause::UpstreamResponseTimeout {
            // A worker past request_timeout is hung: it is replaced, as if it had died.
            backend.report(WorkerEvent::Hung);
        }
        let died = retry::died(cause, upstream.dynamic);
        let Some((again, how)) = retry::again(failed.request, spare, died, last) else {
            return Err(failed.error);
        };
        if !upstream.budget.try_withdraw() {
            Stats::add(&upstream.stats.retry_budget_exhausted);
            return Err(failed.error);
        }
        Stats::add(match how {
            Again::Unsent => &upstream.stats.retried_unsent,
            Again::Replayed => {
                replayed = true;
                &upstream.stats.retried_replayed
            }
        });
        ctx.trace.retries += 1;
        if let Some(s) = ctx.trace.spans.as_deref_mut() {
            s.retrying(how == Again::Replayed);
        }
        let trace_id = ctx.trace_id();
        tracing::debug!(backend = %backend.label, trace_id, error = %failed.error, "retrying on another backend");
        req = again;
        tried.push(backend);
        previous = Some(failed.error);
    }
}

/// Points `req` at `backend` when the client's Host is not passed on.
pub fn set_backend_host(req: &mut Request<RequestBody>, backend: &Backend) {
    if let Ok(v) = http::HeaderValue::from_str(&backend.addr.host_header()) {
        req.headers_mut().insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::super::ctx::testing::{conn, snapshot};
    use super::super::ListenerSettings;
    use super::*;
    use crate::limits::{Cidr, TrustedProxies};

    const ONE: &str = "upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n";

    fn trusting(peer: &str) -> ConnInfo {
        let mut c = conn(peer);
        let ranges = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        c.trusted = Some(Arc::new(TrustedProxies::new(ranges)));
        c
    }

    #[test]
    fn only_a_trusted_proxy_says_the_scheme() {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
        assert_eq!(client_proto(&conn("10.0.0.1:1"), &h), "http");
        assert_eq!(client_proto(&trusting("10.0.0.1:1"), &h), "https");
        assert_eq!(client_proto(&trusting("192.0.2.1:1"), &h), "http");
        h.insert(
            "x-forwarded-proto",
            http::HeaderValue::from_static("gopher"),
        );
        assert_eq!(client_proto(&trusting("10.0.0.1:1"), &h), "http");
    }

    fn prepared(
        snap: &crate::state::Snapshot,
        conn: &ConnInfo,
        req: Request<()>,
    ) -> (request::Parts, Attempt) {
        let (mut parts, ()) = req.into_parts();
        // The context sees the request as the pipeline's does.
        let mut ctx_req = Request::new(());
        *ctx_req.headers_mut() = parts.headers.clone();
        *ctx_req.uri_mut() = parts.uri.clone();
        let ctx = RequestCtx::new(&mut ctx_req, snap, conn);
        let upstream = &snap.upstreams[0];
        let attempt = prepare(&ctx, upstream, &mut parts, &RequestBody::Empty);
        (parts, attempt)
    }

    #[test]
    fn the_head_a_backend_gets() {
        let snap = snapshot(ONE);
        let mut c = trusting("10.0.0.1:1");
        c.listener = Arc::new(ListenerSettings {
            subject_header: Some(http::HeaderName::from_static("x-client-subject")),
            ..Default::default()
        });
        c.client_subject = Some(http::HeaderValue::from_static("CN=alice"));
        let req = Request::get("/a")
            .header("host", "site.test")
            .header("x-client-subject", "CN=forged")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "192.0.2.7")
            .header("connection", "close")
            .body(())
            .unwrap();
        let (parts, attempt) = prepared(&snap, &c, req);
        let h = &parts.headers;
        assert_eq!(h["x-client-subject"], "CN=alice");
        assert_eq!(h["x-forwarded-proto"], "https");
        // The trusted peer names the client, which is appended (nginx's realip with
        // $proxy_add_x_forwarded_for; tests/limits.rs has the whole story).
        assert_eq!(h["x-forwarded-for"], "192.0.2.7, 192.0.2.7");
        assert_eq!(h["host"], "site.test");
        assert!(!h.contains_key("connection"));
        assert!(attempt.idempotent);
        assert!(!attempt.backend_host, "the client's Host is passed on");
        assert!(attempt.key.is_none());
        assert_eq!(attempt.buffer_response, snap.body_limits.buffer_response);
    }

    #[test]
    fn a_forged_subject_is_dropped_without_a_certificate() {
        let snap = snapshot(ONE);
        let mut c = conn("192.0.2.1:1");
        c.listener = Arc::new(ListenerSettings {
            subject_header: Some(http::HeaderName::from_static("x-client-subject")),
            ..Default::default()
        });
        let req = Request::post("/")
            .header("host", "site.test")
            .header("x-client-subject", "CN=forged")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let (parts, attempt) = prepared(&snap, &c, req);
        assert!(!parts.headers.contains_key("x-client-subject"));
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
        assert!(!attempt.idempotent);
    }

    #[test]
    fn hash_key_and_backend_host() {
        let snap = snapshot(
            "headers: { preserve_host: false }
upstreams:
  app:
    servers: [\"127.0.0.1:9\", \"127.0.0.1:10\"]
    balance: hash
    hash_key: header:x-user
",
        );
        let c = conn("192.0.2.1:1");
        let req = |user: &'static str| {
            Request::get("/")
                .header("host", "site.test")
                .header("x-user", user)
                .body(())
                .unwrap()
        };
        let (_, a) = prepared(&snap, &c, req("u1"));
        let (_, b) = prepared(&snap, &c, req("u1"));
        let (_, other) = prepared(&snap, &c, req("u2"));
        assert!(a.backend_host, "preserve_host: false");
        assert!(a.key.is_some());
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, other.key);
    }
}
