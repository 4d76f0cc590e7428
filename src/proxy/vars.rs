//! The values of the `{variable}`s in route rules' templates (`config::template`), taken
//! from the request as it arrived.

use std::fmt::Write;

use super::ctx::RequestCtx;
use crate::config::template::{Template, Var};
use crate::state::route::host_only;

/// `t` with the request's values in place of its variables.
pub fn render(t: &Template, ctx: &RequestCtx<'_>) -> String {
    t.render(|v, out| value(ctx, v, out))
}

/// Appends `var`'s value (nothing when the request has none) to `out`.
fn value(ctx: &RequestCtx<'_>, var: Var, out: &mut String) {
    let b = &ctx.begun;
    let (path, query) = b.target.split_at(b.path_len);
    match var {
        Var::ClientIp => {
            if let Some(ip) = ctx.client {
                let _ = write!(out, "{ip}");
            }
        }
        Var::Scheme => out.push_str(b.scheme),
        Var::Host => {
            if let Some(h) = b.host.as_ref().and_then(|h| h.to_str().ok()) {
                out.push_str(host_only(h));
            }
        }
        Var::Path => out.push_str(path),
        Var::Query => out.push_str(query.strip_prefix('?').unwrap_or(query)),
        Var::RequestUri => out.push_str(&b.target),
        Var::Method => out.push_str(b.method.as_str()),
        Var::RequestId => out.push_str(b.request_id.to_str().unwrap_or("")),
        Var::Route => out.push_str(ctx.trace.route.as_deref().unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::super::ctx::testing::{conn, snapshot};
    use super::*;

    #[test]
    fn every_variable() {
        let snap = snapshot("upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n");
        let conn = conn("10.0.0.7:4000");
        let mut req = Request::post("/a/b?x=1&y")
            .header("host", "Example.com:8080")
            .header("x-request-id", "rid-1")
            .body(())
            .unwrap();
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);
        ctx.trace.route = Some("/".into());
        let t = Template::parse(
            "{client_ip}|{scheme}|{host}|{path}|{query}|{request_uri}|{method}|{request_id}|{route}",
        )
        .unwrap();
        assert_eq!(
            render(&t, &ctx),
            "10.0.0.7|http|Example.com|/a/b|x=1&y|/a/b?x=1&y|POST|rid-1|/"
        );
        let mut req = Request::get("/").body(()).unwrap();
        let ctx = RequestCtx::new(&mut req, &snap, &conn);
        let t = Template::parse("[{host}][{query}][{route}]").unwrap();
        assert_eq!(render(&t, &ctx), "[][][]");
    }
}
