//! Error pages on the way out: the maintenance phase (right after the route is matched) and
//! `intercept_errors` (an upstream's error answer replaced by the route's page). The pages
//! of proxyd's own errors are put in by the one mapping (`error::error_response_with`).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::Response;
use http_body::Body as _;

use super::body::ResponseBody;
use super::ctx::RequestCtx;
use super::error::{Cause, ProxyError};
use super::respond::Answer;
use crate::state::RouteInfo;
use crate::upstream::pool::UpstreamBody;

/// An intercepted answer's body is read to its end (so its connection goes back to the
/// pool) when it is at most this long and comes within `DRAIN_TIME`; else its connection
/// closes.
const DRAIN_MAX: u64 = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The maintenance phase: a route the switch covers answers 503 with the maintenance page
/// while it is on.
#[inline]
pub fn maintenance(ctx: &RequestCtx<'_>, route: Option<&RouteInfo>) -> Result<(), ProxyError> {
    let m = &ctx.snap.maintenance;
    match route {
        Some(r) if r.pages.maintenance && m.switch.on() => Err(ProxyError::new(
            Cause::Maintenance,
            format_args!("route {} is in maintenance", r.name),
        )
        .retry_after(m.retry_after)),
        _ => Ok(()),
    }
}

/// What `intercept` made of an answer.
pub enum Intercepted {
    /// Not intercepted: it goes on to the respond phase.
    Pass(Answer),
    /// The page that replaces it.
    Page(Response<ResponseBody>),
}

/// `intercept_errors`: an answer of 400 or more for which the route has a page becomes the
/// page, with the upstream's status, `proxyd-error: upstream-status`, and the
/// upstream's `Retry-After`, `Allow` and `WWW-Authenticate`; its body is discarded.
pub fn intercept(
    ctx: &mut RequestCtx<'_>,
    route: Option<&RouteInfo>,
    answer: Answer,
) -> Intercepted {
    let status = answer.head.status;
    let page = route
        .filter(|r| r.pages.intercept && status.as_u16() >= 400)
        .and_then(|r| r.pages.pages.get(status.as_u16()));
    let Some(page) = page else {
        return Intercepted::Pass(answer);
    };
    ctx.trace.intercepted = true;
    let mut resp = Response::new(ResponseBody::full(page.body.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, page.content_type.clone());
    h.insert(
        "proxyd-error",
        HeaderValue::from_static(crate::obs::INTERCEPTED),
    );
    for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
        for v in answer.head.headers.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    discard(answer.body);
    Intercepted::Page(resp)
}

/// Drops an intercepted body: a worker's was read ahead already (its connection is back in
/// the pool); a server's is drained by a task when short, else its connection closes.
fn discard(body: ResponseBody) {
    if let ResponseBody::Upstream(b) = body {
        let short = b.size_hint().upper().is_none_or(|n| n <= DRAIN_MAX);
        if !b.is_end_stream() && short {
            tokio::spawn(drain(b));
        }
    }
}

async fn drain(mut body: UpstreamBody) {
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_MAX {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
