//! The request pipeline: its phases, each a plain function over one per-request context
//! (`ctx::RequestCtx`): check → route → limit → (a static route's files, `crate::files`,
//! or) body → admit → forward (with retries) → respond; the outcome goes to the log once the response is sent (`Pending`). `handle` runs
//! them and turns any error into proxyd's one error response (`error::error_response`).
//!
//! - `ctx`: the per-request context, and the outcome kept until the response is sent
//! - `check`: requests refused (or redirected to https) before routing
//! - `route`: the route, the rate limits, the upstream; `access`: the route's address lists
//!   and basic auth, checked right after it is matched
//! - `body`: the request body read (and checked) before a backend is picked; response bodies
//! - `forward`: the request head a backend gets, admission (a backend slot, or the queue),
//!   sending, retries; `retry`: the retry rules as plain decisions
//! - `respond`: the backend's answer taken in (a worker's read ahead) and made the client's;
//!   `compress`: compression on the fly, negotiated from `Accept-Encoding`
//! - `headers`, `spool`, `error`: header rules, response buffering, the error mapping
//! - `vars`: the request's values for route rules' `{variable}` templates; `rules`: route
//!   rules' header edits (request and response); `rewrite`: `strip_prefix` and `rewrite`
//! - `pages`: the maintenance switch's phase and `intercept_errors`
//! - `health`: a listener's `health_path`, answered before any phase (the server asks it
//!   first, and neither logs nor counts what it answers)

pub mod access;
pub mod body;
pub mod check;
pub mod compress;
pub mod ctx;
pub mod error;
pub mod forward;
pub mod headers;
pub mod health;
pub mod pages;
pub mod respond;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod rules;
pub mod spool;
pub mod vars;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response};

use body::{FromClient, ResponseBody};
pub use ctx::{Pending, RequestCtx};
use error::ProxyError;

use crate::state::{self, Snapshot};
use crate::upstream::body::RequestBody;

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
    /// `health_path`: answered by proxyd itself (`health`).
    pub health: Option<health::HealthPath>,
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
            health: l.health_path.as_ref().map(|p| health::HealthPath {
                path: p.value.as_str().into(),
                ready: l.health_ready(),
            }),
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
    let mut ctx = RequestCtx::new(&mut req, &snap, conn);
    // Behind a load balancer that terminated TLS (a trusted proxy saying
    // `X-Forwarded-Proto: https`), the request came over https already: no redirect loop.
    if let Some(port) = conn
        .listener
        .redirect_https
        .filter(|_| ctx.begun.scheme != "https")
    {
        let resp = check::redirect_https(&req, port);
        let status = resp.status();
        return (resp, ctx.pending(status));
    }
    let mut resp = match phases(&mut ctx, req).await {
        Ok(resp) => resp,
        Err(e) => ctx.fail(&e),
    };
    ctx.stamp(&mut resp);
    let status = resp.status();
    (resp, ctx.pending(status))
}

/// Whether a static route's `miss` goes on to its fallback upstream (a missing file, or a
/// method files do not take: nginx's `try_files $uri @app`).
fn fallback(route: Option<&state::RouteInfo>, miss: &ProxyError) -> bool {
    use error::Cause;
    route.is_some_and(|r| r.upstream.is_some())
        && matches!(miss.cause, Cause::NotFound | Cause::MethodNotAllowed)
}

/// The phases in their order; the first error ends the request.
async fn phases<B: FromClient>(
    ctx: &mut RequestCtx<'_>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, incoming) = req.into_parts();
    check::check(&parts)?;
    let route = route::route(ctx, &parts);
    if let Some(rule) = route.and_then(|r| r.redirect.as_deref()) {
        return route::redirect(ctx, rule, &parts);
    }
    pages::maintenance(ctx, route)?;
    if let Some(rules) = route.and_then(|r| r.access.as_deref()) {
        access::check(ctx, rules, &parts.headers).await?;
    }
    route::limit(ctx, route)?;
    route::methods(route, &parts.method)?;
    if let Some(site) = route.and_then(|r| r.files.as_deref()) {
        // A static route: its files answer; a miss goes on to its fallback, if it has one.
        match crate::files::serve(site, &parts.method, parts.uri.path(), &parts.headers) {
            Ok(resp) => return Ok(resp.map(ResponseBody::File)),
            Err(e) if !fallback(route, &e) => return Err(e),
            Err(_) => {}
        }
    }
    let upstream = route::upstream(ctx, route, &parts)?;
    // A request without a body skips the body phase's future (it is moved on every request).
    let body = if body::none(&incoming, &parts.headers) {
        RequestBody::Empty
    } else {
        body::read(ctx, upstream, &parts.headers, incoming).await?
    };
    let version = parts.version;
    let compress = compress::asked(
        route.and_then(|r| r.compression.as_deref()),
        &parts.method,
        &parts.headers,
    );
    rewrite::apply(route, &mut parts)?;
    let mut attempt = forward::prepare(ctx, upstream, &mut parts, &body);
    rules::request(ctx, route, &mut parts, &mut attempt);
    let answer = forward::forward(ctx, upstream, Request::from_parts(parts, body), attempt).await?;
    let answer = match pages::intercept(ctx, route, answer) {
        pages::Intercepted::Pass(answer) => answer,
        pages::Intercepted::Page(page) => return Ok(page),
    };
    Ok(respond::respond(ctx, answer, version, compress))
}
