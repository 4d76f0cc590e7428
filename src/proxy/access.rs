//! The access phase: a route's `deny`/`allow` lists (403), then its `basic_auth` (401 with
//! the challenge, or 429 for a client past its failed attempts). It runs right after the
//! route is matched, so a refused request reaches no backend and has no body read. The
//! `Authorization` header of a request let through goes on to the upstream (as nginx does).

use http::header::{self, HeaderMap};

use super::ctx::RequestCtx;
use super::error::{Cause, ProxyError};
use crate::limits::access::Access;
use crate::limits::auth::Verdict;

/// Whether the request's client may use the route `access` guards.
pub async fn check(
    ctx: &mut RequestCtx<'_>,
    access: &Access,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    let client = ctx.client;
    let shown = || client.map_or_else(|| "-".to_string(), |c| c.to_string());
    if let Some(rules) = &access.addresses {
        if !rules.permits(client) {
            return Err(ProxyError::new(
                Cause::Forbidden,
                format_args!("client {} refused by the route's allow/deny", shown()),
            ));
        }
    }
    let Some(auth) = &access.basic_auth else {
        return Ok(());
    };
    let unauthorized = |why: &str| {
        ProxyError::new(Cause::Unauthorized, why)
            .with_header(header::WWW_AUTHENTICATE, auth.challenge().clone())
    };
    match auth.check(client, headers.get(header::AUTHORIZATION)).await {
        Verdict::Pass => Ok(()),
        Verdict::Missing => Err(unauthorized("no credentials")),
        Verdict::Failed(why) => {
            ctx.trace.auth_failure = Some(why.label());
            Err(unauthorized(why.label()))
        }
        Verdict::Limited(wait) => {
            let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
            Err(ProxyError::new(
                Cause::RateLimited,
                format_args!("too many failed logins from {}", shown()),
            )
            .retry_after(u32::try_from(secs).unwrap_or(u32::MAX)))
        }
    }
}
