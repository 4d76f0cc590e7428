//! Route rules built for serving (docs/routes.md, "Headers" and "Rewrites"): each route's
//! header edits merged with the top level's once, at snapshot build, so a request applies one
//! list per side (`proxy::rules`) and a route without rules costs a branch; fixed values are
//! header values already, only templates naming a variable are rendered per request. And a
//! route's path rewrites, compiled (`proxy::rewrite` applies them).

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};

use crate::config::rules::{
    compile, fixed_value, header_name, NamedValues, RequestHeaderRules, ResponseHeaderRules,
    ServerHeader, Side,
};
use crate::config::template::Template;
use crate::config::{Config, Route};

/// A rule's value: made once, or rendered from the request.
#[derive(Debug, Clone)]
pub enum Value {
    Fixed(HeaderValue),
    Template(Template),
}

/// One side's edits, applied in this order: `remove`, `set` (replaces), `add` (appends),
/// then `defaults` where the message has none of that name (the security headers).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, Value)>,
    pub add: Vec<(HeaderName, Value)>,
    pub defaults: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
            && self.defaults.is_empty()
    }

    /// Whether it sets `Host` (the backend's address then does not replace it).
    pub fn sets(&self, name: &HeaderName) -> bool {
        self.set.iter().any(|(n, _)| n == name)
    }
}

/// A route's path rewrites for its upstream: `strip_prefix`, then the first matching `rewrite`.
#[derive(Debug, Clone)]
pub struct Rewrites {
    /// The route's path without its trailing `/` (`/api`), taken off the path.
    pub strip: Option<Box<str>>,
    /// `X-Forwarded-Prefix`'s value: the same, as a header value.
    pub prefix: Option<HeaderValue>,
    /// (from, to): `to` with `$N` / `${name}` is the whole new target (nginx's `rewrite`).
    pub rules: Vec<(regex::Regex, Box<str>)>,
}

/// What a route (or no route) applies besides forwarding.
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    pub request: Option<Arc<HeaderOps>>,
    pub response: Option<Arc<HeaderOps>>,
    pub rewrite: Option<Arc<Rewrites>>,
}

/// The security headers of `security: true`, each added when the response has none.
pub const SECURITY: [(&str, &str); 3] = [
    ("x-frame-options", "SAMEORIGIN"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
];

/// The rules of `route` (None: what a request no route matched gets), the top level's merged
/// in: a name the route sets or removes overrides the top level's `set` and `add` of it; the
/// removes of both apply.
pub fn build(cfg: &Config, route: Option<&Route>) -> Result<RouteRules, String> {
    let g = &cfg.headers;
    let rh = route.and_then(|r| r.headers.as_ref());
    let request = merge(
        Side::Request,
        g.request.as_ref().map(request_parts),
        rh.and_then(|h| h.request.as_ref()).map(request_parts),
        None,
    )?;
    let (gr, rr) = (g.response.as_ref(), rh.and_then(|h| h.response.as_ref()));
    let mut defaults = Vec::new();
    if rr.and_then(|r| r.security).or(gr.and_then(|r| r.security)) == Some(true) {
        for (n, v) in SECURITY {
            defaults.push((HeaderName::from_static(n), HeaderValue::from_static(v)));
        }
    }
    if let Some(csp) = rr
        .and_then(|r| r.csp.as_ref())
        .or(gr.and_then(|r| r.csp.as_ref()))
    {
        let v = HeaderValue::from_str(&csp.value)
            .map_err(|_| format!("csp: {:?} is not a valid header value", csp.value))?;
        defaults.push((header::CONTENT_SECURITY_POLICY, v));
    }
    let mut response = merge(
        Side::Response,
        gr.map(response_parts),
        rr.map(response_parts),
        Some(&g.server),
    )?;
    // An explicit set or remove of a name wins over its default.
    defaults.retain(|(n, _)| !response.remove.contains(n) && !response.sets(n));
    response.defaults = defaults;
    let rewrite = match route {
        Some(r) if r.strip_prefix || !r.rewrite.is_empty() => Some(Arc::new(rewrites(r)?)),
        _ => None,
    };
    Ok(RouteRules {
        request: (!request.is_empty()).then(|| Arc::new(request)),
        response: (!response.is_empty()).then(|| Arc::new(response)),
        rewrite,
    })
}

type Parts<'a> = (&'a NamedValues, &'a NamedValues, Vec<&'a str>);

fn request_parts(r: &RequestHeaderRules) -> Parts<'_> {
    (
        &r.set,
        &r.add,
        r.remove.iter().map(|n| n.value.as_str()).collect(),
    )
}

fn response_parts(r: &ResponseHeaderRules) -> Parts<'_> {
    (
        &r.set,
        &r.add,
        r.remove.iter().map(|n| n.value.as_str()).collect(),
    )
}

fn pairs(side: Side, key: &str, values: &NamedValues) -> Result<Vec<(HeaderName, Value)>, String> {
    values
        .0
        .iter()
        .map(|(n, v)| {
            let name = header_name(&n.value, side, key)?;
            let value = match fixed_value(&v.value, key)? {
                Some(fixed) => Value::Fixed(fixed),
                None => Value::Template(v.value.clone()),
            };
            Ok((name, value))
        })
        .collect()
}

fn names(side: Side, key: &str, list: &[&str]) -> Result<Vec<HeaderName>, String> {
    list.iter().map(|n| header_name(n, side, key)).collect()
}

/// The top level's rules (and `headers.server`) with the route's over them.
fn merge(
    side: Side,
    top: Option<Parts<'_>>,
    route: Option<Parts<'_>>,
    server: Option<&ServerHeader>,
) -> Result<HeaderOps, String> {
    let mut ops = HeaderOps::default();
    if let Some((set, add, remove)) = &top {
        ops.remove = names(side, "headers.remove", remove)?;
        ops.set = pairs(side, "headers.set", set)?;
        ops.add = pairs(side, "headers.add", add)?;
    }
    match server {
        Some(ServerHeader::Off) if !ops.remove.contains(&header::SERVER) => {
            ops.remove.push(header::SERVER)
        }
        Some(ServerHeader::Set(text)) if !ops.sets(&header::SERVER) => {
            let v = HeaderValue::from_str(text)
                .map_err(|_| format!("headers.server: {text:?} is not a valid header value"))?;
            ops.set.push((header::SERVER, Value::Fixed(v)));
        }
        _ => {}
    }
    if let Some((set, add, remove)) = &route {
        let remove = names(side, "routes: headers.remove", remove)?;
        let set = pairs(side, "routes: headers.set", set)?;
        let add = pairs(side, "routes: headers.add", add)?;
        let mentioned = |n: &HeaderName| remove.contains(n) || set.iter().any(|(s, _)| s == n);
        ops.set.retain(|(n, _)| !mentioned(n));
        ops.add.retain(|(n, _)| !mentioned(n));
        for n in remove {
            if !ops.remove.contains(&n) {
                ops.remove.push(n);
            }
        }
        ops.set.extend(set);
        ops.add.extend(add);
    }
    Ok(ops)
}

fn rewrites(r: &Route) -> Result<Rewrites, String> {
    let (strip, prefix) = if r.strip_prefix {
        let p = r.path.trim_end_matches('/');
        let v = HeaderValue::from_str(p)
            .map_err(|_| format!("routes: strip_prefix: path {:?} is no header value", r.path))?;
        (Some(p.into()), Some(v))
    } else {
        (None, None)
    };
    let rules = r
        .rewrite
        .iter()
        .map(|rw| {
            let re = compile(&rw.from.value).map_err(|m| format!("routes: rewrite.from: {m}"))?;
            Ok((re, rw.to.value.as_str().into()))
        })
        .collect::<Result<_, String>>()?;
    Ok(Rewrites {
        strip,
        prefix,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rest: &str) -> Config {
        let yaml = format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n{rest}"
        );
        crate::config::load_str(&yaml, "t.yaml", ".".into())
            .unwrap()
            .config
    }

    fn shown(ops: &HeaderOps) -> String {
        let v = |v: &Value| match v {
            Value::Fixed(h) => h.to_str().unwrap_or("?").to_string(),
            Value::Template(t) => t.to_string(),
        };
        let mut out = String::new();
        for n in &ops.remove {
            out += &format!("-{n} ");
        }
        for (n, x) in &ops.set {
            out += &format!("={n}:{} ", v(x));
        }
        for (n, x) in &ops.add {
            out += &format!("+{n}:{} ", v(x));
        }
        for (n, x) in &ops.defaults {
            out += &format!("?{n}:{} ", x.to_str().unwrap_or("?"));
        }
        out.trim_end().to_string()
    }

    #[test]
    fn a_route_over_the_top_level() {
        let cfg = config(
            "headers:
  server: proxyd
  request: { set: { X-Env: prod, X-A: a }, add: { X-L: top }, remove: [X-Debug] }
  response: { set: { X-Frame-Options: DENY }, security: true, csp: \"default-src 'self'\" }
routes:
  - path: /a/
    upstream: app
    headers:
      request: { set: { X-Env: \"{route}\" }, remove: [X-A, X-L] }
      response: { remove: [Server, X-Content-Type-Options], security: false }
  - path: /b/
    upstream: app
    headers: { response: { set: { Server: b } } }
  - { path: /c/, upstream: app }
",
        );
        let a = build(&cfg, Some(&cfg.routes[0])).unwrap();
        assert_eq!(
            shown(a.request.as_deref().unwrap()),
            "-x-debug -x-a -x-l =x-env:{route}"
        );
        // security: false on the route; the top level's csp stays.
        assert_eq!(
            shown(a.response.as_deref().unwrap()),
            "-server -x-content-type-options =x-frame-options:DENY ?content-security-policy:default-src 'self'"
        );
        let b = build(&cfg, Some(&cfg.routes[1])).unwrap();
        assert_eq!(
            shown(b.response.as_deref().unwrap()),
            "=x-frame-options:DENY =server:b ?x-content-type-options:nosniff ?referrer-policy:strict-origin-when-cross-origin ?content-security-policy:default-src 'self'"
        );
        let none = build(&cfg, None).unwrap();
        assert_eq!(
            shown(none.request.as_deref().unwrap()),
            "-x-debug =x-env:prod =x-a:a +x-l:top"
        );
        assert!(none.response.as_deref().unwrap().sets(&header::SERVER));
        assert!(a.rewrite.is_none());
    }

    #[test]
    fn no_rules_build_nothing() {
        let cfg = config("routes:\n  - { path: /, upstream: app }\n");
        let r = build(&cfg, Some(&cfg.routes[0])).unwrap();
        assert!(r.request.is_none() && r.response.is_none() && r.rewrite.is_none());
        let cfg = config("headers: { server: off }\n");
        assert_eq!(
            shown(build(&cfg, None).unwrap().response.as_deref().unwrap()),
            "-server"
        );
    }

    #[test]
    fn rewrites_compiled() {
        let cfg = config(
            "routes:\n  - { path: /api/, upstream: app, strip_prefix: true, rewrite: [{ from: \"^/v1/(.*)$\", to: \"/v2/$1\" }] }\n",
        );
        let r = build(&cfg, Some(&cfg.routes[0])).unwrap();
        let rw = r.rewrite.unwrap();
        assert_eq!(rw.strip.as_deref(), Some("/api"));
        assert_eq!(rw.prefix.as_ref().unwrap(), "/api");
        assert_eq!(rw.rules.len(), 1);
    }
}
