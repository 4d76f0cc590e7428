//! Templates of route rules (header values, redirect targets): text with `{variable}`s taken
//! from the request, parsed when the config is read so a misspelt variable is a `proxyd
//! check` error. `{{` and `}}` are a literal brace. What each variable's value is, is the
//! pipeline's business (`proxy::vars`); here it is only named.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A variable a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's address (`trusted_proxies` taken into account).
    ClientIp,
    /// `http` or `https`, as the client connected (or as a trusted proxy says).
    Scheme,
    /// The request's host, without port.
    Host,
    /// The request's path, as it arrived (before any rewrite), without the query.
    Path,
    /// The query without its `?`; empty when there is none.
    Query,
    /// The path and, when there is one, `?` and the query (nginx's `$request_uri`).
    RequestUri,
    Method,
    /// The request's id (`headers.request_id`).
    RequestId,
    /// The matched route's name.
    Route,
}

impl Var {
    const ALL: [(&'static str, Var); 9] = [
        ("client_ip", Var::ClientIp),
        ("scheme", Var::Scheme),
        ("host", Var::Host),
        ("path", Var::Path),
        ("query", Var::Query),
        ("request_uri", Var::RequestUri),
        ("method", Var::Method),
        ("request_id", Var::RequestId),
        ("route", Var::Route),
    ];

    pub fn name(self) -> &'static str {
        Var::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }

    fn parse(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template; its text is kept to print the config back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let known = || {
            Var::ALL
                .iter()
                .map(|(n, _)| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            lit.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(t) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
                lit.push_str(&tail[..1]);
                rest = t;
                continue;
            }
            if tail.starts_with('}') {
                return Err(format!(
                    "template {text:?}: a lone }} (write }}}} for a literal one)"
                ));
            }
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "template {text:?}: {{ without }} (write {{{{ for a literal one)"
                ));
            };
            let name = &tail[1..end];
            let var = Var::parse(name).ok_or_else(|| {
                format!(
                    "template {text:?}: unknown variable {{{name}}}; expected one of {}",
                    known()
                )
            })?;
            if !lit.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = &tail[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when it names no variable (its value can be made once).
    pub fn is_fixed(&self) -> bool {
        !self.parts.iter().any(|p| matches!(p, Part::Var(_)))
    }

    /// Whether it names `var`.
    pub fn uses(&self, var: Var) -> bool {
        self.parts.contains(&Part::Var(var))
    }

    /// The text with each variable's value as `value` gives it.
    pub fn render(&self, mut value: impl FnMut(Var, &mut String)) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => value(*v, &mut out),
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(t: &Template) -> String {
        t.render(|v, out| {
            out.push('<');
            out.push_str(v.name());
            out.push('>');
        })
    }

    #[test]
    fn variables_and_literal_braces() {
        let t = Template::parse("https://example.com{path}?{query}").unwrap();
        assert_eq!(show(&t), "https://example.com<path>?<query>");
        assert!(t.uses(Var::Path) && !t.uses(Var::Host) && !t.is_fixed());
        let t = Template::parse("a {{b}} {client_ip}{scheme}").unwrap();
        assert_eq!(show(&t), "a {b} <client_ip><scheme>");
        let t = Template::parse("DENY").unwrap();
        assert!(t.is_fixed());
        assert_eq!(show(&t), "DENY");
        assert_eq!(t.to_string(), "DENY");
        assert_eq!(show(&Template::parse("").unwrap()), "");
    }

    #[test]
    fn mistakes_are_named() {
        let e = Template::parse("{pth}").unwrap_err();
        assert!(
            e.contains("unknown variable {pth}") && e.contains("{path}"),
            "{e}"
        );
        assert!(Template::parse("a{path").unwrap_err().contains("without }"));
        assert!(Template::parse("a}b").unwrap_err().contains("lone }"));
        assert!(Template::parse("{}")
            .unwrap_err()
            .contains("unknown variable {}"));
    }
}
