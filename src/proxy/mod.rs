//! The request pipeline, one phase a function: check → route → read body → pick → forward →
//! respond. `handle` runs them and turns any error into proxyd's one error response.

pub mod body;
pub mod error;
pub mod forward;
pub mod headers;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;

use crate::obs::{Outcome, Trace};
use body::{read_request_body, FromClient, ResponseBody};
use error::{error_response, Cause, ProxyError};
use headers::ClientSide;
use spool::{BodyTimer, OnTimeout, SpooledResponse};

pub use crate::state::route;
use crate::state::Snapshot;
use crate::upstream::body::RequestBody;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::stats::Stats;
use crate::upstream::transport;
use crate::upstream::{Backend, InFlight, Upstream, WorkerEvent};

/// What the pipeline knows about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// "http" or "https".
    pub proto: &'static str,
    /// The verified client certificate's subject (mTLS), as a header value.
    pub client_subject: Option<HeaderValue>,
    pub listener: Arc<ListenerSettings>,
    /// `trusted_proxies`, when there are any: the client may then be named in
    /// `X-Forwarded-For`.
    pub trusted: Option<Arc<crate::limits::TrustedProxies>>,
}

impl ConnInfo {
    /// The request's client: the peer, or with trusted proxies, the right-most untrusted
    /// address of `X-Forwarded-For` (rate limits, logs, `hash_key: client_ip` and the
    /// `X-Forwarded-For` proxyd sends all use it).
    pub fn client_ip(&self, h: &http::HeaderMap) -> Option<std::net::IpAddr> {
        let peer = self.peer?.ip();
        Some(match &self.trusted {
            None => peer,
            Some(t) => t.client_ip(peer, h),
        })
    }

    pub fn new(
        peer: SocketAddr,
        listener: &Arc<ListenerSettings>,
        subject: Option<String>,
    ) -> ConnInfo {
        ConnInfo {
            peer: Some(peer),
            proto: if listener.tls { "https" } else { "http" },
            client_subject: subject.and_then(|s| HeaderValue::from_str(&s).ok()),
            listener: listener.clone(),
            trusted: None,
        }
    }
}

/// What a listener adds to the requests it receives.
#[derive(Debug, Default)]
pub struct ListenerSettings {
    pub tls: bool,
    /// Answer every request with a 308 to https on this port.
    pub redirect_https: Option<u16>,
    pub hsts: Option<HeaderValue>,
    /// Where a verified client certificate's subject goes upstream (mTLS listeners).
    pub subject_header: Option<http::HeaderName>,
}

impl ListenerSettings {
    pub fn from_config(l: &crate::config::Listen) -> ListenerSettings {
        let tls = l.tls.as_ref();
        ListenerSettings {
            tls: tls.is_some(),
            redirect_https: l
                .redirect_https
                .then(|| l.redirect_https_port.unwrap_or(443)),
            hsts: tls
                .and_then(|t| t.hsts.as_deref())
                .and_then(|h| HeaderValue::from_str(h).ok()),
            subject_header: tls
                .and_then(|t| t.client_auth.as_ref())
                .and_then(|a| http::HeaderName::from_bytes(a.subject_header.as_bytes()).ok()),
        }
    }
}

/// Runs the pipeline for one request; never fails: errors become proxyd's error responses.
/// Every response carries the request's id, so a client can quote it. The `Pending` outcome
/// is completed by the server once the response body has been sent. A 101 to an upgrade
/// carries the backend's switched connection in its body (`UpstreamBody::take_upgrade`): the
/// server joins it to the client's.
pub async fn handle<B: FromClient>(
    mut req: Request<B>,
    snap: Arc<Snapshot>,
    conn: &ConnInfo,
) -> (Response<ResponseBody>, Pending) {
    let started = tokio::time::Instant::now();
    let request_id = headers::ensure_request_id(req.headers_mut(), &snap.request_id);
    let client = conn.client_ip(req.headers());
    let begun = Begun::of(&req, client, request_id.clone());
    let mut trace = Trace::default();
    if let Some(port) = conn.listener.redirect_https {
        let resp = redirect_https(&req, port);
        let status = resp.status();
        return (
            resp,
            Pending {
                begun,
                started,
                trace,
                status,
            },
        );
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut resp = match proxy(req, &snap, conn, client, &mut trace).await {
        Ok(resp) => resp,
        Err(e) => {
            match e.cause.side() {
                error::Side::Client => {
                    tracing::debug!(%method, %uri, error = %e, "refused request")
                }
                _ => tracing::warn!(%method, %uri, ?request_id, error = %e, "request failed"),
            }
            trace.cause = Some(e.cause);
            error_response(&e)
        }
    };
    let pending = Pending {
        begun,
        started,
        trace,
        status: resp.status(),
    };
    let h = resp.headers_mut();
    h.insert(snap.request_id.clone(), request_id);
    if let Some(hsts) = &conn.listener.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    (resp, pending)
}

/// A plain listener's answer when it only redirects: 308 to the same host and target over
/// https, method and body kept by the client (308, not 301).
fn redirect_https<B>(req: &Request<B>, port: u16) -> Response<ResponseBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority = h.parse::<http::uri::Authority>().ok()?;
            Some(authority.host().to_string())
        });
    let Some(host) = host else {
        return error_response(&ProxyError::new(
            Cause::BadRequest("missing-host"),
            "a redirect needs the request's host",
        ));
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        443 => format!("https://{host}{target}"),
        p => format!("https://{host}:{p}{target}"),
    };
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => error_response(&ProxyError::new(
            Cause::BadRequest("bad-host"),
            "unusable host",
        )),
    }
}

async fn proxy<B: FromClient>(
    req: Request<B>,
    snap: &Snapshot,
    conn: &ConnInfo,
    client: Option<std::net::IpAddr>,
    trace: &mut Trace,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, incoming) = req.into_parts();
    let client_version = parts.version;

    // check
    headers::check_request(&parts)?;
    let upgrade = headers::is_upgrade(&parts);

    // route
    let host = parts.uri.authority().map(|a| a.host()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(route::host_only)
    });
    let route = snap
        .router
        .pick(host, parts.uri.path())
        .and_then(|i| snap.routes.get(i));
    if snap.rate.is_some() || route.is_some_and(|r| r.rate.is_some()) {
        trace.route = route.map(|r| r.name.clone());
        let route_rate = route.and_then(|r| r.rate.as_deref());
        crate::limits::rate::admit(snap.rate.as_deref(), route_rate, client)?;
    }
    let route = route.ok_or_else(|| {
        ProxyError::new(
            Cause::NoRoute,
            format_args!("no route for {:?}{}", host.unwrap_or(""), parts.uri.path()),
        )
    })?;
    let upstream = snap
        .upstreams
        .get(route.upstream)
        .ok_or_else(|| ProxyError::new(Cause::NoRoute, "the route's upstream is missing"))?;
    trace.route = Some(route.name.clone());
    trace.upstream = Some(upstream.name.clone());

    // read body
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Boxed: reading (and spooling) a body is a large future that a GET never needs. A
    // declared length goes the long way, where its limit is checked.
    let body = if incoming.is_end_stream() && declared.is_none() {
        RequestBody::Empty
    } else {
        Box::pin(read_request_body(
            incoming,
            declared,
            &snap.body_limits,
            upstream.buffer_bodies,
        ))
        .await?
    };

    // pick + forward
    // A trusted proxy in front (a load balancer that terminated TLS) says which scheme the
    // client used; anyone else's X-Forwarded-Proto is replaced.
    let proto = match (&conn.trusted, conn.peer) {
        (Some(t), Some(peer)) if t.contains(peer.ip()) => {
            match parts.headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
                Some(b"https") => "https",
                Some(b"http") => "http",
                _ => conn.proto,
            }
        }
        _ => conn.proto,
    };
    let side = ClientSide {
        client_ip: client,
        proto,
        preserve_host: snap.preserve_host,
    };
    let idempotent = forward::is_idempotent(&parts.method, &parts.headers);
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
        .and_then(|k| headers::hash_key(k, &parts.headers, client));
    // An HTTP/2 upstream cannot take an HTTP/1.1 upgrade: the request goes without it.
    let upgrade = upgrade && !upstream.connector.multiplexed();
    let backend_host = headers::prepare_request(&mut parts, &body, upgrade, &side);
    let request = Attempt {
        idempotent,
        backend_host,
        key,
        buffer_response: snap.body_limits.buffer_response,
    };
    let answer = pick_and_send(upstream, Request::from_parts(parts, body), request, trace).await?;

    // respond
    let mut head = answer.head;
    // A 101's body holds the backend's switched connection: the server joins it to the
    // client's (`UpstreamBody::take_upgrade`).
    let body = answer.body;
    head.version = client_version;
    headers::prepare_response(&mut head);
    if snap.debug_headers {
        if let Ok(v) = HeaderValue::from_str(&answer.backend.label) {
            head.headers.insert("proxyd-backend", v);
        }
        head.headers.insert(
            "proxyd-reused",
            HeaderValue::from_static(if answer.reused { "1" } else { "0" }),
        );
    }
    Ok(Response::from_parts(head, body))
}

/// What is known of a request when it arrives, kept for its outcome.
struct Begun {
    at: std::time::SystemTime,
    method: http::Method,
    target: String,
    path_len: usize,
    version: http::Version,
    host: Option<HeaderValue>,
    client: Option<std::net::IpAddr>,
    forwarded_for: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    request_id: HeaderValue,
}

impl Begun {
    fn of<B>(req: &Request<B>, client: Option<std::net::IpAddr>, request_id: HeaderValue) -> Begun {
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
        }
    }
}

/// A response's outcome until its body has been sent; the server completes it.
pub struct Pending {
    begun: Begun,
    started: tokio::time::Instant,
    trace: Trace,
    status: StatusCode,
}

impl Pending {
    /// The finished request, once `body_bytes` of its response body were sent.
    pub fn finish(self, body_bytes: u64) -> Outcome {
        let b = self.begun;
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
            trace: self.trace,
        }
    }
}

/// What the retry rules need to know of a request, besides the request.
#[derive(Clone, Copy)]
struct Attempt {
    idempotent: bool,
    /// The backend's address goes in `Host` (the client's is not passed on).
    backend_host: bool,
    /// For `balance: hash`.
    key: Option<u64>,
    /// `limits.buffer_response`: a worker's response is read this far before the client
    /// gets its head.
    buffer_response: u64,
}

/// What a backend answered: the head, and the body as the client will get it.
struct Answer {
    head: http::response::Parts,
    body: ResponseBody,
    backend: Arc<Backend>,
    reused: bool,
}

/// Takes a backend slot (waiting in the queue if need be) and sends; retries on another
/// backend what is safe to retry, within `retries.attempts` and the retry budget: any request
/// none of which reached the failed backend, and once, an idempotent one with a replayable
/// body when the backend failed before the client got anything (a worker's response is read
/// whole, or to `buffer_response`, before its head goes out), so a request that kills its
/// worker cannot take down more than two.
async fn pick_and_send(
    upstream: &Upstream,
    req: Request<RequestBody>,
    attempt: Attempt,
    trace: &mut Trace,
) -> Result<Answer, ProxyError> {
    Stats::add(&upstream.stats.requests);
    upstream.budget.deposit();
    let result = attempts(upstream, req, attempt, trace).await;
    if let Err(e) = &result {
        upstream.stats.error(e.cause);
    }
    result
}

async fn attempts(
    upstream: &Upstream,
    mut req: Request<RequestBody>,
    attempt: Attempt,
    trace: &mut Trace,
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
        // The queue's wait is boxed: most requests get a slot at once, and the request's
        // future stays small (it is moved on every request).
        let acquired = match upstream.acquire_now(attempt.key, &tried) {
            Some(f) => Ok(f),
            None => {
                let waiting = tokio::time::Instant::now();
                let got = Box::pin(upstream.acquire(attempt.key, tried.clone())).await;
                trace.queued += waiting.elapsed();
                got
            }
        };
        let flight = match acquired {
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
        trace.backend = Some(backend.label.clone());
        if attempt.backend_host {
            forward::set_backend_host(&mut req, &backend);
        }
        let last = tried.len() + 1 >= upstream.retries.attempts
            || !(upstream.dynamic || upstream.backends().len() > tried.len() + 1);
        let spare = if attempt.idempotent && replayable && !last && !replayed {
            forward::replayable_copy(&req)
        } else {
            None
        };
        let started = tokio::time::Instant::now();
        let sent = transport::send(
            &backend,
            req,
            &upstream.connector,
            upstream.response_timeout,
        )
        .await;
        let failed = match sent {
            Ok(sent) => {
                trace.upstream_time = Some(started.elapsed());
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                backend.observe_latency(nanos);
                let status = sent.head.status;
                match respond(upstream, sent, flight, started, attempt.buffer_response).await {
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
        // A worker past request_timeout is hung: it is replaced, as if it had died.
        let died = match failed.error.cause {
            Cause::UpstreamClosed => true,
            Cause::UpstreamResponseTimeout => {
                backend.report(WorkerEvent::Hung);
                upstream.dynamic
            }
            _ => false,
        };
        let (again, counter) = match (failed.request, spare) {
            (Some(unsent), _) => (unsent, &upstream.stats.retried_unsent),
            (None, Some(copy)) if died => {
                replayed = true;
                (copy, &upstream.stats.retried_replayed)
            }
            _ => return Err(failed.error),
        };
        if last {
            return Err(failed.error);
        }
        if !upstream.budget.try_withdraw() {
            Stats::add(&upstream.stats.retry_budget_exhausted);
            return Err(failed.error);
        }
        Stats::add(counter);
        trace.retries += 1;
        tracing::debug!(backend = %backend.label, error = %failed.error, "retrying on another backend");
        req = again;
        tried.push(backend);
        previous = Some(failed.error);
    }
}

/// The response as the client will get it. A worker's body is read ahead before the head
/// is committed, until it ends or fills `buffer_response` (the rest goes on by a task), all
/// of it within `request_timeout` of sending: a worker that dies or hangs before then is a
/// failed attempt the client never sees. A stream from a worker (server-sent events,
/// `X-Accel-Buffering: no`) goes out as it comes, and may be silent at most
/// `request_timeout` at a time. A server's body streams.
async fn respond(
    upstream: &Upstream,
    sent: transport::Sent,
    flight: InFlight,
    started: tokio::time::Instant,
    buffer_response: u64,
) -> Result<Answer, ProxyError> {
    let backend = flight.backend().clone();
    let reused = sent.reused;
    let mut head = sent.head;
    let body = UpstreamBody::new(sent.body, flight);
    let buffered = upstream.buffer_bodies
        && !body.is_end_stream()
        && head.status != StatusCode::SWITCHING_PROTOCOLS;
    let body = if !buffered {
        ResponseBody::Upstream(body)
    } else {
        let hung = backend.clone();
        let on_timeout: OnTimeout = Box::new(move || hung.report(WorkerEvent::Hung));
        if headers::take_stream_hint(&mut head.headers) {
            let silence = BodyTimer::Silence(upstream.response_timeout);
            ResponseBody::Spooled(SpooledResponse::start(
                body,
                buffer_response,
                silence,
                on_timeout,
            ))
        } else {
            let deadline = started + upstream.response_timeout;
            let read = SpooledResponse::read_ahead(body, buffer_response, deadline, on_timeout);
            let spooled = Box::pin(read).await.map_err(|e| {
                ProxyError::new(e.cause, format_args!("{}: {}", backend.label, e.detail))
            })?;
            ResponseBody::Spooled(spooled)
        }
    };
    Ok(Answer {
        head,
        body,
        backend,
        reused,
    })
}
