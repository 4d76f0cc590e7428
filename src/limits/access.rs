//! `routes[].allow` / `routes[].deny` (nginx's `allow` / `deny`) and `routes[].basic_auth`
//! (`auth::BasicAuth`): a route's rules on who may use it, checked right after the route is
//! matched, before its rate limits, before a body is read or a backend touched.
//!
//! The client is the request's (`trusted_proxies` taken into account). `deny` is looked at
//! first: a client in it gets 403, whatever `allow` says; with `allow` set, a client in none
//! of its ranges gets 403 too, and so does a request whose client address is unknown.

use std::net::IpAddr;
use std::sync::Arc;

use super::auth::BasicAuth;
use super::Cidr;
use crate::config::{ConfigError, Loaded, Route};

/// A route's address lists.
#[derive(Debug, Clone, Default)]
pub struct AddressRules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl AddressRules {
    /// Whether `client` may use the route.
    pub fn permits(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// Everything a route checks about its client before anything else.
#[derive(Debug)]
pub struct Access {
    /// None: no `allow` nor `deny`.
    pub addresses: Option<AddressRules>,
    pub basic_auth: Option<BasicAuth>,
}

/// The access rules of route `r` (None when it has none). `previous`: the config before a
/// reload and its routes' rules, whose failure counts are kept for the same route (host and
/// path) with the same `failures` setting.
pub fn build(
    loaded: &Loaded,
    r: &Route,
    previous: Option<(&Loaded, &[Option<Arc<Access>>])>,
) -> Result<Option<Arc<Access>>, ConfigError> {
    let addresses = (!r.allow.is_empty() || !r.deny.is_empty()).then(|| AddressRules {
        allow: r.allow.clone(),
        deny: r.deny.clone(),
    });
    let basic_auth = match &r.basic_auth {
        None => None,
        Some(cfg) => {
            let kept = previous.and_then(|(old, rules)| {
                let i = old.config.routes.iter().position(|o| {
                    o.path == r.path
                        && o.host.as_ref().map(|h| &h.value) == r.host.as_ref().map(|h| &h.value)
                        && o.basic_auth.as_ref().map(|a| a.failures) == Some(cfg.failures)
                })?;
                let a = rules.get(i)?.as_ref()?.basic_auth.as_ref()?;
                Some(a.failures().clone())
            });
            Some(BasicAuth::build(loaded, cfg, kept)?)
        }
    };
    if addresses.is_none() && basic_auth.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Access {
        addresses,
        basic_auth,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> AddressRules {
        let list = |l: &[&str]| l.iter().map(|c| Cidr::parse(c).unwrap()).collect();
        AddressRules {
            allow: list(allow),
            deny: list(deny),
        }
    }

    #[test]
    fn deny_first_then_allow() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // (allow, deny, client, permitted)
        let table: &[(&[&str], &[&str], &str, bool)] = &[
            (&["10.0.0.0/8"], &[], "10.1.2.3", true),
            (&["10.0.0.0/8"], &[], "11.1.2.3", false),
            (&["10.0.0.0/8"], &[], "::ffff:10.1.2.3", true),
            (&["10.0.0.0/8"], &[], "::1", false),
            (&["10.0.0.0/8"], &["10.0.0.5"], "10.0.0.5", false),
            (&["10.0.0.0/8"], &["10.0.0.5"], "10.0.0.6", true),
            (&[], &["192.0.2.0/24"], "192.0.2.9", false),
            (&[], &["192.0.2.0/24"], "::ffff:192.0.2.9", false),
            (&[], &["192.0.2.0/24"], "198.51.100.1", true),
            (&["2001:db8::/32"], &[], "2001:db8:1::7", true),
            (&["2001:db8::/32"], &[], "2001:db9::7", false),
            (&["::1"], &[], "::1", true),
            (&["::1"], &[], "::2", false),
            (&["127.0.0.1"], &[], "127.0.0.2", false),
            (&[], &["::/0", "0.0.0.0/0"], "203.0.113.1", false),
            (&["::ffff:0:0/96"], &[], "::ffff:1.2.3.4", true),
        ];
        for (allow, deny, client, want) in table {
            let r = rules(allow, deny);
            assert_eq!(r.permits(ip(client)), *want, "{allow:?} {deny:?} {client}");
        }
        // An unknown client: refused by an allow list, not by a deny list.
        assert!(!rules(&["10.0.0.0/8"], &[]).permits(None));
        assert!(rules(&[], &["10.0.0.0/8"]).permits(None));
    }
}
