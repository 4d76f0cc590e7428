//! The route and limit phases: which route a request takes, whether its client may send it
//! now, and the upstream it goes to.

use http::{header, request};

use super::ctx::RequestCtx;
use super::error::{Cause, ProxyError};
use crate::state::route::host_only;
use crate::state::RouteInfo;
use crate::upstream::Upstream;

/// The request's host, without port: the target's authority, else `Host`.
fn host(parts: &request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.host()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_only)
    })
}

/// The route phase: the first route matching the request's host and path (kept in the
/// trace), or None.
pub fn route<'a>(ctx: &mut RequestCtx<'a>, parts: &request::Parts) -> Option<&'a RouteInfo> {
    let snap = ctx.snap;
    let route = snap
        .router
        .pick(host(parts), parts.uri.path())
        .and_then(|i| snap.routes.get(i));
    if let Some(r) = route {
        ctx.trace.route = Some(r.name.clone());
    }
    ctx.route = route;
    route
}

/// The limit phase: the proxy's rate limit per client, then the route's. A client over a
/// limit gets 429 whether or not a route matched.
pub fn limit(ctx: &RequestCtx<'_>, route: Option<&RouteInfo>) -> Result<(), ProxyError> {
    let route_rate = route.and_then(|r| r.rate.as_deref());
    if ctx.snap.rate.is_none() && route_rate.is_none() {
        return Ok(());
    }
    crate::limits::rate::admit(ctx.snap.rate.as_deref(), route_rate, ctx.client)
}

/// The upstream of the route (kept in the trace); 404 when no route matched.
pub fn upstream<'a>(
    ctx: &mut RequestCtx<'a>,
    route: Option<&RouteInfo>,
    parts: &request::Parts,
) -> Result<&'a Upstream, ProxyError> {
    let route = route.ok_or_else(|| {
        ProxyError::new(
            Cause::NoRoute,
            format_args!(
                "no route for {:?}{}",
                host(parts).unwrap_or(""),
                parts.uri.path()
            ),
        )
    })?;
    let upstream = route
        .upstream
        .and_then(|i| ctx.snap.upstreams.get(i))
        .ok_or_else(|| ProxyError::new(Cause::NotFound, "a static route without a fallback"))?;
    ctx.trace.upstream = Some(upstream.name.clone());
    Ok(upstream)
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::super::ctx::testing::{conn, snapshot};
    use super::*;

    const ROUTES: &str = "\
upstreams:
  api:
    servers: [\"127.0.0.1:9\"]
  site:
    servers: [\"127.0.0.1:10\"]
routes:
  - { host: \"api.test\", path: \"/v1/\", upstream: api }
  - { path: \"/login\", upstream: site, rate: { limit: \"1/h\", burst: 1 } }
  - { path: \"/pages/\", upstream: site }
";

    fn parts(uri: &str, host: &str) -> request::Parts {
        let req = Request::get(uri).header("host", host).body(()).unwrap();
        req.into_parts().0
    }

    #[test]
    fn routes_by_host_and_path() {
        let snap = snapshot(ROUTES);
        let conn = conn("10.0.0.1:4000");
        let mut req = Request::get("/").body(()).unwrap();
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);

        let p = parts("/v1/users", "API.test.:8080");
        let r = route(&mut ctx, &p);
        assert_eq!(r.map(|r| &*r.name), Some("api.test/v1/"));
        assert_eq!(upstream(&mut ctx, r, &p).unwrap().name.as_ref(), "api");
        assert_eq!(ctx.trace.route.as_deref(), Some("api.test/v1/"));
        assert_eq!(ctx.trace.upstream.as_deref(), Some("api"));

        // The target's authority wins over Host.
        let p = parts("http://api.test/v1/x", "other.test");
        let r = route(&mut ctx, &p);
        assert_eq!(upstream(&mut ctx, r, &p).unwrap().name.as_ref(), "api");

        let p = parts("/pages/1", "other.test");
        let r = route(&mut ctx, &p);
        assert_eq!(upstream(&mut ctx, r, &p).unwrap().name.as_ref(), "site");
    }

    #[test]
    fn no_route_is_404() {
        let snap = snapshot(ROUTES);
        let conn = conn("10.0.0.1:4000");
        let mut req = Request::get("/").body(()).unwrap();
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);
        let p = parts("/v1/users", "www.test");
        let r = route(&mut ctx, &p);
        assert!(r.is_none());
        assert!(limit(&ctx, r).is_ok(), "no limit applies");
        let Err(e) = upstream(&mut ctx, r, &p) else {
            panic!("no route: an upstream")
        };
        assert_eq!(e.cause, Cause::NoRoute);
        assert_eq!(e.cause.status(), http::StatusCode::NOT_FOUND);
        assert!(ctx.trace.route.is_none() && ctx.trace.upstream.is_none());
    }

    #[test]
    fn a_routes_rate_is_per_client() {
        let snap = snapshot(ROUTES);
        let (one, two) = (conn("10.0.0.1:4000"), conn("10.0.0.2:4000"));
        let p = parts("/login", "www.test");
        let mut req = Request::get("/").body(()).unwrap();
        let mut ctx = RequestCtx::new(&mut req, &snap, &one);
        let r = route(&mut ctx, &p);
        assert!(limit(&ctx, r).is_ok());
        let e = limit(&ctx, r).unwrap_err();
        assert_eq!(e.cause, Cause::RateLimited);
        assert!(e.retry_after.is_some());
        // Another client has its own bucket; another route has none.
        let other = RequestCtx::new(&mut req, &snap, &two);
        assert!(limit(&other, r).is_ok());
        let pages = route(&mut ctx, &parts("/pages/1", "www.test"));
        assert!(limit(&ctx, pages).is_ok());
    }

    #[test]
    fn the_proxys_rate_applies_with_or_without_a_route() {
        let snap = snapshot(&format!(
            "{ROUTES}limits:\n  rate: {{ per_ip: \"1/h\", burst: 1 }}\n"
        ));
        let conn = conn("10.0.0.1:4000");
        let mut req = Request::get("/").body(()).unwrap();
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);
        let r = route(&mut ctx, &parts("/nowhere", "www.test"));
        assert!(r.is_none());
        assert!(limit(&ctx, r).is_ok());
        // The second request is limited before it is found to have no route.
        assert_eq!(limit(&ctx, r).unwrap_err().cause, Cause::RateLimited);
        let pages = route(&mut ctx, &parts("/pages/1", "www.test"));
        assert_eq!(limit(&ctx, pages).unwrap_err().cause, Cause::RateLimited);
    }
}
