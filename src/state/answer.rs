//! What a route answers itself (`routes[].redirect`) and the methods it takes
//! (`routes[].methods`), as serving uses them.

use http::{HeaderValue, Method, StatusCode};

use crate::config::template::{Template, Var};
use crate::config::{Redirect, RedirectQuery};

/// `routes[].redirect`: every request gets `status` to `to`, rendered from the request.
pub struct RedirectRule {
    pub status: StatusCode,
    pub to: Template,
    /// The request's query goes after the target (`query: keep`, and `to` does not place it).
    pub keep_query: bool,
}

impl RedirectRule {
    pub fn new(r: &Redirect) -> RedirectRule {
        let to = r.to.value.clone();
        let places_query = to.uses(Var::Query) || to.uses(Var::RequestUri);
        let query = r.query.as_ref().map_or(RedirectQuery::Keep, |q| q.value);
        RedirectRule {
            status: r
                .status
                .as_ref()
                .and_then(|s| StatusCode::from_u16(s.value).ok())
                .unwrap_or(StatusCode::MOVED_PERMANENTLY),
            keep_query: query == RedirectQuery::Keep && !places_query,
            to,
        }
    }
}

/// `routes[].methods`: the methods taken (GET brings HEAD), and the `Allow` value of a 405.
pub struct Methods {
    taken: Vec<Method>,
    pub allow: HeaderValue,
}

impl Methods {
    /// Names were checked by the config (`config::route_limits`); one that is not a method
    /// is left out.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Methods {
        let mut taken: Vec<Method> = Vec::new();
        for name in names {
            if let Ok(m) = Method::from_bytes(name.as_bytes()) {
                if m == Method::GET && !taken.contains(&Method::HEAD) {
                    taken.push(Method::HEAD);
                }
                if !taken.contains(&m) {
                    taken.push(m);
                }
            }
        }
        let mut names: Vec<&str> = taken.iter().map(Method::as_str).collect();
        names.sort_unstable();
        let allow = HeaderValue::from_str(&names.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Methods { taken, allow }
    }

    pub fn takes(&self, m: &Method) -> bool {
        self.taken.contains(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_brings_head_and_allow_lists_them_all() {
        let m = Methods::new(["POST", "GET", "POST"]);
        assert!(m.takes(&Method::GET) && m.takes(&Method::HEAD) && m.takes(&Method::POST));
        assert!(!m.takes(&Method::PUT) && !m.takes(&Method::DELETE));
        assert_eq!(m.allow, "GET, HEAD, POST");
        let m = Methods::new(["PURGE"]);
        assert!(m.takes(&Method::from_bytes(b"PURGE").unwrap()) && !m.takes(&Method::HEAD));
        assert_eq!(m.allow, "PURGE");
    }
}
