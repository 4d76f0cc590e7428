//! A route's `host:` pattern: an exact name or `*.suffix`, checked when the config is read.

use std::fmt;

/// A route's host pattern, stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: any subdomain, not the bare domain (as nginx).
    Wildcard(String),
}

impl HostMatch {
    pub fn parse(s: &str) -> Result<HostMatch, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match s.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') && rest.len() > 1 => (true, rest),
            Some(_) => return Err(format!("host {s:?}: a wildcard is written *.example.com")),
            None => (false, s.as_str()),
        };
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        let body = if wild { &name[1..] } else { name };
        if body.is_empty() || !body.chars().all(ok_char) || body.contains("..") {
            return Err(format!(
                "host {s:?} is not a host name (no port, no scheme)"
            ));
        }
        Ok(if wild {
            HostMatch::Wildcard(name.to_string())
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    /// `host` is the request's host without port, in any case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    /// Exact names beat wildcards; longer wildcards beat shorter ones.
    pub fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Exact(h) => (2, h.len()),
            HostMatch::Wildcard(s) => (1, s.len()),
        }
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}
