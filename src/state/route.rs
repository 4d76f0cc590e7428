//! Route matching: host (exact or `*.suffix`), then the longest path prefix.

pub use crate::config::HostMatch;

#[derive(Debug, Clone)]
struct Entry {
    host: Option<HostMatch>,
    path: String,
    target: usize,
}

/// Routes in match order: the first entry whose host and prefix match wins.
#[derive(Debug, Clone, Default)]
pub struct Router {
    entries: Vec<Entry>,
}

impl Router {
    /// `routes` are (host, path prefix, target index).
    pub fn new(routes: impl IntoIterator<Item = (Option<HostMatch>, String, usize)>) -> Router {
        let mut entries: Vec<Entry> = routes
            .into_iter()
            .map(|(host, path, target)| Entry { host, path, target })
            .collect();
        entries.sort_by(|a, b| {
            let ra = a.host.as_ref().map(HostMatch::rank).unwrap_or((0, 0));
            let rb = b.host.as_ref().map(HostMatch::rank).unwrap_or((0, 0));
            rb.cmp(&ra).then(b.path.len().cmp(&a.path.len()))
        });
        Router { entries }
    }

    /// The target for a request to `host` (no port) and `path`.
    pub fn pick(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| {
                let host_ok = match (&e.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                };
                host_ok && path.starts_with(e.path.as_str())
            })
            .map(|e| e.target)
    }
}

/// The host part of a Host header or URI authority: port and trailing dot removed.
pub fn host_only(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[..=i],
            None => authority,
        }
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let h = |s: &str| Some(HostMatch::parse(s).unwrap());
        Router::new([
            (None, "/".to_string(), 0),
            (None, "/static/".to_string(), 1),
            (h("api.example.com"), "/v1/".to_string(), 2),
            (h("*.example.com"), "/".to_string(), 3),
            (h("*.eu.example.com"), "/".to_string(), 4),
        ])
    }

    #[test]
    fn exact_host_then_longest_prefix() {
        let r = router();
        assert_eq!(r.pick(Some("api.example.com"), "/v1/users"), Some(2));
        assert_eq!(r.pick(Some("API.Example.COM"), "/v1/"), Some(2));
        assert_eq!(r.pick(Some("api.example.com"), "/other"), Some(3));
        assert_eq!(r.pick(Some("x.eu.example.com"), "/"), Some(4));
        assert_eq!(r.pick(Some("example.com"), "/static/a.css"), Some(1));
        assert_eq!(r.pick(None, "/x"), Some(0));
        assert_eq!(
            Router::new([(None, "/api/".to_string(), 0)]).pick(None, "/x"),
            None
        );
    }

    #[test]
    fn host_patterns() {
        assert!(HostMatch::parse("*.example.com")
            .unwrap()
            .matches("a.b.example.com"));
        assert!(!HostMatch::parse("*.example.com")
            .unwrap()
            .matches("example.com"));
        assert!(HostMatch::parse("example.com:80").is_err());
        assert!(HostMatch::parse("*example.com").is_err());
        assert!(HostMatch::parse("a*.b").is_err());
        assert_eq!(host_only("Example.com:8080"), "Example.com");
        assert_eq!(host_only("[::1]:80"), "[::1]");
        assert_eq!(host_only("a.com."), "a.com");
    }
}
