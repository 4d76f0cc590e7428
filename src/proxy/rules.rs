//! Header rules applied (built per route by `state::rules`): to the request a backend gets,
//! after proxyd's own X-Forwarded-* (so a rule can override them), and to every response
//! the client gets on the route (`RequestCtx::stamp`), proxyd's own errors included.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;

use super::ctx::RequestCtx;
use super::forward::Attempt;
use super::vars;
use crate::state::rules::{HeaderOps, Value};
use crate::state::RouteInfo;

/// The route's request rules on the head a backend gets; a rule that sets `Host` keeps it
/// from being replaced by the backend's address.
pub fn request(
    ctx: &RequestCtx<'_>,
    route: Option<&RouteInfo>,
    parts: &mut request::Parts,
    attempt: &mut Attempt,
) {
    let Some(ops) = route.and_then(|r| r.rules.request.as_deref()) else {
        return;
    };
    apply(ops, ctx, &mut parts.headers);
    if ops.sets(&header::HOST) && parts.headers.contains_key(header::HOST) {
        attempt.backend_host = false;
    }
}

/// `ops` on `h`: remove, set, add, then the defaults a message lacks.
pub fn apply(ops: &HeaderOps, ctx: &RequestCtx<'_>, h: &mut HeaderMap) {
    for name in &ops.remove {
        h.remove(name);
    }
    for (name, v) in &ops.set {
        match value(v, ctx, name) {
            Some(v) => {
                h.insert(name.clone(), v);
            }
            // The rule meant to replace it: what the message carried does not stay.
            None => {
                h.remove(name);
            }
        }
    }
    for (name, v) in &ops.add {
        if let Some(v) = value(v, ctx, name) {
            h.append(name.clone(), v);
        }
    }
    for (name, v) in &ops.defaults {
        if !h.contains_key(name) {
            h.insert(name.clone(), v.clone());
        }
    }
}

/// The value of a rule; None (logged) when a template renders to no valid header value.
fn value(v: &Value, ctx: &RequestCtx<'_>, name: &HeaderName) -> Option<HeaderValue> {
    match v {
        Value::Fixed(v) => Some(v.clone()),
        Value::Template(t) => {
            let text = vars::render(t, ctx);
            HeaderValue::from_str(&text)
                .map_err(|_| {
                    tracing::debug!(header = %name, value = ?text, "header rule skipped: not a valid header value");
                })
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::super::ctx::testing::{conn, snapshot};
    use super::*;

    #[test]
    fn remove_set_add_defaults_in_order() {
        let snap = snapshot(
            "upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nheaders:\n  response:\n    remove: [X-Powered-By]\n    set: { X-Who: \"{client_ip} {method}\", X-Frame-Options: DENY }\n    add: { X-Many: two }\n    security: true\n",
        );
        let c = conn("10.0.0.7:4000");
        let mut req = Request::get("/").body(()).unwrap();
        let ctx = RequestCtx::new(&mut req, &snap, &c);
        let mut h = HeaderMap::new();
        h.insert("x-powered-by", HeaderValue::from_static("php"));
        h.insert("x-who", HeaderValue::from_static("old"));
        h.insert("x-many", HeaderValue::from_static("one"));
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        let ops = snap.rules.response.as_deref().unwrap();
        apply(ops, &ctx, &mut h);
        assert!(!h.contains_key("x-powered-by"));
        assert_eq!(h["x-who"], "10.0.0.7 GET");
        assert_eq!(h["x-frame-options"], "DENY");
        let many: Vec<_> = h.get_all("x-many").iter().collect();
        assert_eq!(many, ["one", "two"]);
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer", "the app's own stays");
    }
}
