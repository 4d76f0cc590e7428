//! Route rules' header and path keys (docs/routes.md, "Headers" and "Rewrites"): the header
//! edits of the request a backend gets and of the response a client gets (`set`, `add`,
//! `remove`, the security headers, `Server`), per route and at the top level, and a route's
//! path rewrites (`strip_prefix`, `rewrite`). Checked here (names, values, regexes, `$N`
//! groups), built into the runtime's rule sets by `state::rules`.

use std::fmt;

use http::{HeaderName, HeaderValue};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::load::ConfigError;
use super::template::Template;

/// `NAME: VALUE` pairs in the order written; the name's place is kept for errors.
#[derive(Debug, Clone, Default)]
pub struct NamedValues(pub Vec<(Spanned<String>, Spanned<Template>)>);

impl<'de> Deserialize<'de> for NamedValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NamedValues, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NamedValues;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<NamedValues, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<Spanned<String>>()? {
                    out.push((k, m.next_value::<Spanned<Template>>()?));
                }
                Ok(NamedValues(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for NamedValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(&k.value, &v.value)?;
        }
        m.end()
    }
}

impl NamedValues {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `headers.request` and `routes[].headers.request`: edits of the request a backend gets.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeaderRules {
    /// Replaces the header (nginx's `proxy_set_header`).
    #[serde(default, skip_serializing_if = "NamedValues::is_empty")]
    pub set: NamedValues,
    /// Appends a value, keeping those there.
    #[serde(default, skip_serializing_if = "NamedValues::is_empty")]
    pub add: NamedValues,
    /// Removed before `set` and `add` apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Spanned<String>>,
}

/// `headers.response` and `routes[].headers.response`: edits of every response the client
/// gets (the backend's, a static file, proxyd's own errors: nginx's `add_header ... always`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseHeaderRules {
    #[serde(default, skip_serializing_if = "NamedValues::is_empty")]
    pub set: NamedValues,
    #[serde(default, skip_serializing_if = "NamedValues::is_empty")]
    pub add: NamedValues,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Spanned<String>>,
    /// X-Frame-Options, X-Content-Type-Options and Referrer-Policy, each when the response
    /// has none; a route's `false` turns the top level's off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<bool>,
    /// Content-Security-Policy, when the response has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csp: Option<Spanned<String>>,
}

/// `routes[].headers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestHeaderRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseHeaderRules>,
}

/// `headers.server`: the `Server` header clients get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerHeader {
    /// The backend's, if it sent one; proxyd adds none (what proxyd always did).
    #[default]
    Pass,
    /// None, not even the backend's (nginx's `proxy_hide_header Server`).
    Off,
    /// This one on every response, the backend's replaced.
    Set(String),
}

impl<'de> Deserialize<'de> for ServerHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServerHeader, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ServerHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("pass, off, or the Server header's text")
            }
            // `off` may reach here as YAML 1.1's false.
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<ServerHeader, E> {
                if b {
                    Err(E::custom("headers.server: expected pass, off or a text"))
                } else {
                    Ok(ServerHeader::Off)
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ServerHeader, E> {
                Ok(match s {
                    "pass" => ServerHeader::Pass,
                    "off" => ServerHeader::Off,
                    text if text.trim().is_empty() => {
                        return Err(E::custom(
                            "headers.server: an empty Server header; write off for none",
                        ))
                    }
                    text => {
                        HeaderValue::from_str(text).map_err(|_| {
                            E::custom(format!(
                                "headers.server: {text:?} is not a valid header value"
                            ))
                        })?;
                        ServerHeader::Set(text.to_string())
                    }
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ServerHeader {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            ServerHeader::Pass => "pass",
            ServerHeader::Off => "off",
            ServerHeader::Set(t) => t,
        })
    }
}

impl ServerHeader {
    pub fn is_pass(&self) -> bool {
        *self == ServerHeader::Pass
    }
}

/// One `routes[].rewrite` entry: the first whose `from` matches the path rewrites it to `to`
/// (`$1`, `${name}`), nginx's `rewrite ... break`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
}

/// Compiled size a rewrite's regex may take at most (the regex crate's own default is 10 MiB;
/// a path rule needs far less).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `from` compiled as proxyd compiles it (linear time, bounded size).
pub fn compile(from: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(from)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(n) => {
                format!("the regex compiles past the {n}-byte limit; make it smaller")
            }
            e => format!("not a valid regex: {}", one_line(&e.to_string())),
        })
}

/// The regex crate's message without its drawing of the pattern: its `error:` line.
fn one_line(s: &str) -> String {
    let lines = s.lines().map(str::trim);
    match lines.clone().find_map(|l| l.strip_prefix("error: ")) {
        Some(e) => e.to_string(),
        None => lines
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Every `$N`, `${N}` and `${name}` of `to` names a group of `re`; `$$` is a `$`.
pub fn check_groups(re: &regex::Regex, to: &str) -> Result<(), String> {
    let b = to.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let rest = &to[i + 1..];
        let (name, used) = if rest.starts_with('$') {
            i += 2;
            continue;
        } else if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => return Err(format!("{to:?}: ${{ without }}")),
            }
        } else {
            // The regex crate reads the longest name after `$`: `$1a` is a group `1a`.
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(format!("{to:?}: a lone $ (write $$ for a literal one)"));
            }
            (&rest[..end], end + 1)
        };
        let known = match name.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            let groups = re.captures_len() - 1;
            return Err(format!(
                "{to:?}: ${name} names no group of the regex (it has {groups}{}); before a letter or digit write $${{N}} (a lone ${{...}} is an environment variable)",
                if groups == 1 { " group" } else { " groups" }
            ));
        }
        i += 1 + used;
    }
    Ok(())
}

/// Headers a request rule may not touch: the message's framing and connection, which proxyd
/// sets itself (a rule could desynchronise the backend's reading otherwise).
const REQUEST_REFUSED: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The same for a response, plus `Content-Encoding` (proxyd's compression sets it).
const RESPONSE_REFUSED: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-encoding",
];

/// Which side a rule edits, for its checks and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// A rule's header name, checked: a valid name, and one rules may touch on `side`.
pub fn header_name(name: &str, side: Side, key: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{key}: {name:?} is not a valid header name"))?;
    let refused = match side {
        Side::Request => &REQUEST_REFUSED[..],
        Side::Response => &RESPONSE_REFUSED[..],
    };
    if refused.contains(&n.as_str()) {
        return Err(format!(
            "{key}: {name} is set by proxyd itself (message framing and connection), no rule may change it"
        ));
    }
    Ok(n)
}

/// A fixed value's header value; a template with variables is checked when rendered.
pub fn fixed_value(t: &Template, key: &str) -> Result<Option<HeaderValue>, String> {
    if !t.is_fixed() {
        return Ok(None);
    }
    let text = t.render(|_, _| {});
    HeaderValue::from_str(&text)
        .map(Some)
        .map_err(|_| format!("{key}: {text:?} is not a valid header value"))
}

/// Checks one side's rules: `where_` names them in messages (`headers.request`).
fn check_side(
    file: &str,
    where_: &str,
    side: Side,
    set: &NamedValues,
    add: &NamedValues,
    remove: &[Spanned<String>],
) -> Result<(), ConfigError> {
    for (op, pairs) in [("set", set), ("add", add)] {
        for (name, value) in &pairs.0 {
            let key = format!("{where_}.{op}");
            let n = header_name(&name.value, side, &key)
                .map_err(|m| ConfigError::at(file, &name.referenced, m))?;
            if side == Side::Request && op == "add" && n == http::header::HOST {
                return Err(ConfigError::at(
                    file,
                    &name.referenced,
                    format!("{key}: a request has one Host; write it under set"),
                ));
            }
            fixed_value(&value.value, &key)
                .map_err(|m| ConfigError::at(file, &value.referenced, m))?;
        }
    }
    for name in remove {
        let key = format!("{where_}.remove");
        let n = header_name(&name.value, side, &key)
            .map_err(|m| ConfigError::at(file, &name.referenced, m))?;
        if side == Side::Request && n == http::header::HOST {
            return Err(ConfigError::at(
                file,
                &name.referenced,
                format!("{key}: a request needs a Host; for the backend's own address write headers.preserve_host: false"),
            ));
        }
    }
    Ok(())
}

fn check_response(file: &str, where_: &str, r: &ResponseHeaderRules) -> Result<(), ConfigError> {
    check_side(file, where_, Side::Response, &r.set, &r.add, &r.remove)?;
    if let Some(csp) = &r.csp {
        if csp.value.trim().is_empty() || HeaderValue::from_str(&csp.value).is_err() {
            return Err(ConfigError::at(
                file,
                &csp.referenced,
                format!("{where_}.csp: expected a Content-Security-Policy text"),
            ));
        }
    }
    Ok(())
}

/// `proxyd check`'s checks of the header rules and rewrites (from `validate`).
pub fn validate(cfg: &super::Config, file: &str) -> Result<(), ConfigError> {
    if let Some(r) = &cfg.headers.request {
        check_side(
            file,
            "headers.request",
            Side::Request,
            &r.set,
            &r.add,
            &r.remove,
        )?;
    }
    if let Some(r) = &cfg.headers.response {
        check_response(file, "headers.response", r)?;
    }
    for r in &cfg.routes {
        let proxied =
            r.upstream.is_some() || r.files.as_ref().is_some_and(|f| f.fallback.is_some());
        let at = |msg: String| match r.place() {
            Some(p) => ConfigError::at(file, p, msg),
            None => ConfigError::new(file, None, msg),
        };
        let first = |what: &str| {
            at(format!(
                "routes: path {:?}: {what} only applies to requests sent upstream; this route has no upstream (nor static.fallback)",
                r.path
            ))
        };
        if let Some(h) = &r.headers {
            if let Some(q) = &h.request {
                if !proxied {
                    return Err(first("headers.request"));
                }
                check_side(
                    file,
                    "routes: headers.request",
                    Side::Request,
                    &q.set,
                    &q.add,
                    &q.remove,
                )?;
            }
            if let Some(s) = &h.response {
                check_response(file, "routes: headers.response", s)?;
            }
        }
        if r.strip_prefix && !proxied {
            return Err(first("strip_prefix"));
        }
        if r.strip_prefix && r.path == "/" {
            return Err(at(
                "routes: strip_prefix on path \"/\" takes nothing off; remove it".into(),
            ));
        }
        if !r.rewrite.is_empty() && !proxied {
            return Err(first("rewrite"));
        }
        for rw in &r.rewrite {
            let re = compile(&rw.from.value).map_err(|m| {
                ConfigError::at(
                    file,
                    &rw.from.referenced,
                    format!("routes: rewrite.from: {m}"),
                )
            })?;
            check_groups(&re, &rw.to.value).map_err(|m| {
                ConfigError::at(file, &rw.to.referenced, format!("routes: rewrite.to: {m}"))
            })?;
            check_target(&rw.to.value).map_err(|m| {
                ConfigError::at(file, &rw.to.referenced, format!("routes: rewrite.to: {m}"))
            })?;
        }
    }
    Ok(())
}

/// What of a rewrite's `to` can be checked before a request fills its groups in: an
/// origin-form target (it starts with `/`) of characters a request target may hold.
pub fn check_target(to: &str) -> Result<(), String> {
    if !to.starts_with('/') {
        return Err(format!(
            "{to:?}: a path starting with / (a redirect to another site is redirect:'s job)"
        ));
    }
    if let Some(c) = to.chars().find(|c| {
        !c.is_ascii_graphic() || matches!(c, '#' | '"' | '<' | '>' | '\\' | '^' | '`' | '|')
    }) {
        return Err(format!(
            "{to:?}: {c:?} cannot appear in a request target (percent-encode it)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const TOP: &str =
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n";

    fn load(rest: &str) -> Result<crate::config::Loaded, String> {
        load_str(&format!("{TOP}{rest}"), "p.yaml", ".".into()).map_err(|e| e.to_string())
    }

    #[test]
    fn rules_parse_in_order_with_places() {
        let l = load(
            "headers:\n  request: { set: { X-B: \"1\", X-A: \"{client_ip}\" }, remove: [X-Debug] }\n  response: { security: true, csp: \"default-src 'self'\" }\n  server: \"off\"\nroutes:\n  - path: /api/\n    upstream: app\n    strip_prefix: true\n    rewrite: [{ from: \"^/old/(.*)$\", to: \"/new/$1\" }]\n    headers: { response: { add: { X-Y: y } } }\n",
        )
        .unwrap();
        let q = l.config.headers.request.as_ref().unwrap();
        let names: Vec<&str> = q.set.0.iter().map(|(n, _)| n.value.as_str()).collect();
        assert_eq!(names, ["X-B", "X-A"]);
        assert_eq!(q.set.0[1].0.referenced.line(), 7);
        assert_eq!(l.config.headers.server, ServerHeader::Off);
        assert!(l.config.routes[0].strip_prefix);
    }

    #[test]
    fn server_header_values() {
        for (yaml, want) in [
            ("pass", ServerHeader::Pass),
            ("off", ServerHeader::Off),
            ("\"off\"", ServerHeader::Off),
            ("false", ServerHeader::Off),
            ("proxyd", ServerHeader::Set("proxyd".into())),
            (
                "\"nginx/1.0 (x)\"",
                ServerHeader::Set("nginx/1.0 (x)".into()),
            ),
        ] {
            let l = load(&format!("headers: {{ server: {yaml} }}\n")).unwrap();
            assert_eq!(l.config.headers.server, want, "{yaml}");
        }
        assert!(load("headers: { server: \"\" }\n").is_err());
        assert!(load("headers: { server: true }\n").is_err());
    }

    #[test]
    fn mistakes_are_located() {
        let mut bad = 0;
        for (rest, want) in [
            (
                "headers:\n  request: { set: { \"X Bad\": v } }\n",
                "p.yaml:7:21: headers.request.set: \"X Bad\" is not a valid header name",
            ),
            (
                "headers:\n  request: { add: { Content-Length: \"1\" } }\n",
                "p.yaml:7:21: headers.request.add: Content-Length is set by proxyd itself",
            ),
            (
                "headers:\n  response: { remove: [Transfer-Encoding] }\n",
                "p.yaml:7:24: headers.response.remove: Transfer-Encoding is set by proxyd",
            ),
            (
                "headers:\n  request: { remove: [host] }\n",
                "p.yaml:7:23: headers.request.remove: a request needs a Host",
            ),
            (
                "headers:\n  response: { set: { X-A: \"{pth}\" } }\n",
                "p.yaml:7:27: template \"{pth}\": unknown variable {pth}",
            ),
            (
                "routes:\n  - { path: /a/, upstream: app, rewrite: [{ from: \"^/(a\", to: /b }] }\n",
                "p.yaml:7:51: routes: rewrite.from: not a valid regex: unclosed group",
            ),
            (
                "routes:\n  - { path: /a/, upstream: app, rewrite: [{ from: \"^/(a)$\", to: /b/$2 }] }\n",
                "p.yaml:7:65: routes: rewrite.to: \"/b/$2\": $2 names no group of the regex (it has 1 group)",
            ),
            (
                "routes:\n  - { path: /a/, upstream: app, rewrite: [{ from: \"^/(a)$\", to: \"b\" }] }\n",
                "p.yaml:7:65: routes: rewrite.to: \"b\": a path starting with /",
            ),
            (
                "routes:\n  - { path: /a/, upstream: app, rewrite: [{ from: \"a{1000}{1000}\", to: /b }] }\n",
                "routes: rewrite.from: the regex compiles past",
            ),
        ] {
            let e = load(rest).unwrap_err();
            if !e.contains(want) {
                eprintln!("{rest}\n got: {e}\nwant: {want}");
                bad += 1;
            }
        assert_eq!(bad, 0);
        }
    }

    #[test]
    fn groups_in_to() {
        let re = compile("^/(?P<id>[0-9]+)/(.*)$").unwrap();
        for ok in [
            "/$1", "/${1}x", "/$id/$2", "/${id}", "/$$1", "/plain", "/$0",
        ] {
            assert!(check_groups(&re, ok).is_ok(), "{ok}");
        }
        for bad in ["/$3", "/$1x", "/$name", "/${x}", "/$", "/${1"] {
            assert!(check_groups(&re, bad).is_err(), "{bad}");
        }
    }
}
