//! A route's path rewrites (built by `state::rules`): `strip_prefix` takes the route's path
//! off the target the upstream gets and says so in `X-Forwarded-Prefix`; then the first
//! `rewrite` whose regex matches the path makes the new target (nginx's `rewrite ... break`).
//! The access log and the `{path}` variables keep the target as it arrived.

use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{request, Uri};

use super::error::{Cause, ProxyError};
use crate::state::rules::Rewrites;
use crate::state::RouteInfo;

static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Rewrites `parts`' target for the upstream as the route says. A rewrite whose result is no
/// valid origin-form target is the config's fault: 500.
pub fn apply(route: Option<&RouteInfo>, parts: &mut request::Parts) -> Result<(), ProxyError> {
    match route.and_then(|r| r.rules.rewrite.as_deref()) {
        Some(rw) => rewrite(rw, parts),
        None => Ok(()),
    }
}

fn rewrite(rw: &Rewrites, parts: &mut request::Parts) -> Result<(), ProxyError> {
    let Some(target) = rewritten(rw, parts) else {
        return Ok(());
    };
    let refused = |path: &str| {
        ProxyError::new(
            Cause::Internal,
            format_args!("rewrite of {path} gave {target:?}: not a request target"),
        )
    };
    let pq = match PathAndQuery::try_from(target.as_str()) {
        Ok(pq) if target.starts_with('/') && !target.contains('#') => pq,
        _ => return Err(refused(parts.uri.path())),
    };
    let mut up = parts.uri.clone().into_parts();
    up.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(up).map_err(|_| refused(parts.uri.path()))?;
    Ok(())
}

/// The new target (path and query), or None when neither rule changes it.
fn rewritten(rw: &Rewrites, parts: &mut request::Parts) -> Option<String> {
    let mut path = parts.uri.path();
    let query = parts.uri.query();
    let mut changed = false;
    if let (Some(prefix), Some(value)) = (&rw.strip, &rw.prefix) {
        // A whole segment only: route `/api` takes `/api` and `/api/x`, not `/apix`.
        if let Some(rest) = path.strip_prefix(&**prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                path = if rest.is_empty() { "/" } else { rest };
                changed = true;
                parts
                    .headers
                    .insert(X_FORWARDED_PREFIX.clone(), value.clone());
            }
        }
    }
    for (re, to) in &rw.rules {
        if let Some(caps) = re.captures(path) {
            let mut out = String::with_capacity(to.len() + path.len());
            caps.expand(to, &mut out);
            // A `?` in `to` makes the query (`/x?` none); otherwise the request's is kept.
            if let Some(bare) = out.strip_suffix('?') {
                out.truncate(bare.len());
            } else if let (false, Some(q)) = (out.contains('?'), query) {
                out.push('?');
                out.push_str(q);
            }
            return Some(out);
        }
    }
    if !changed {
        return None;
    }
    Some(match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::super::ctx::testing::snapshot;
    use super::*;

    fn target(routes: &str, uri: &str) -> Result<(String, Option<String>), Cause> {
        let snap = snapshot(&format!(
            "upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nroutes:\n{routes}"
        ));
        let (mut parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
        let path = parts.uri.path().to_string();
        let route = snap
            .router
            .pick(None, &path)
            .and_then(|i| snap.routes.get(i));
        apply(route, &mut parts).map_err(|e| e.cause)?;
        let prefix = parts
            .headers
            .get("x-forwarded-prefix")
            .map(|v| v.to_str().unwrap().to_string());
        Ok((parts.uri.to_string(), prefix))
    }

    #[test]
    fn cases() {
        let strip = "  - { path: /api/, upstream: app, strip_prefix: true }\n  - { path: /, upstream: app }\n";
        let bare = "  - { path: /api, upstream: app, strip_prefix: true }\n  - { path: /, upstream: app }\n";
        let re = "  - { path: /, upstream: app, rewrite: [{ from: \"^/old/(.*)$\", to: \"/new/$1\" }, { from: \"^/q/(\\\\w+)$\", to: \"/search?q=$1\" }, { from: \"^/drop$\", to: \"/dropped?\" }, { from: \"^/frag/(.*)$\", to: \"/x/$1\" }] }\n";
        let both = "  - { path: /api/, upstream: app, strip_prefix: true, rewrite: [{ from: \"^/v1/(.*)$\", to: \"/v2/$1\" }] }\n  - { path: /, upstream: app }\n";
        let some = |t: &str, p: Option<&str>| Ok((t.to_string(), p.map(str::to_string)));
        for (routes, uri, want) in [
            (strip, "/api/users?x=1", some("/users?x=1", Some("/api"))),
            (strip, "/api/", some("/", Some("/api"))),
            (strip, "/other", some("/other", None)),
            (bare, "/api", some("/", Some("/api"))),
            (bare, "/api/a", some("/a", Some("/api"))),
            (bare, "/apix", some("/apix", None)),
            (re, "/old/a/b?k=v", some("/new/a/b?k=v", None)),
            (re, "/q/rust?page=2", some("/search?q=rust", None)),
            (re, "/drop?secret=1", some("/dropped", None)),
            (re, "/elsewhere?k", some("/elsewhere?k", None)),
            (both, "/api/v1/x?y", some("/v2/x?y", Some("/api"))),
            (both, "/api/v3/x", some("/v3/x", Some("/api"))),
            (
                both,
                "http://h.test/api/v1/z",
                some("http://h.test/v2/z", Some("/api")),
            ),
        ] {
            assert_eq!(target(routes, uri), want, "{uri}");
        }
    }

    #[test]
    fn a_result_that_is_no_target_is_a_500() {
        // The config's checks keep `to` an origin-form target and captures come from a valid
        // path, so this is the backstop: a rule built past those checks.
        let rw = |to: &str| Rewrites {
            strip: None,
            prefix: None,
            rules: vec![(regex::Regex::new("^/(.*)$").unwrap(), to.into())],
        };
        for bad in ["$1", "/a b$1", "/#$1"] {
            let (mut parts, ()) = Request::get("/x").body(()).unwrap().into_parts();
            let e = rewrite(&rw(bad), &mut parts).unwrap_err();
            assert_eq!(e.cause, Cause::Internal, "{bad}");
            assert_eq!(parts.uri, "/x", "unchanged");
        }
        let (mut parts, ()) = Request::get("/x?q").body(()).unwrap().into_parts();
        rewrite(&rw("//$1"), &mut parts).unwrap();
        assert_eq!(parts.uri, "//x?q");
    }
}
