//! `trusted_proxies`: the address ranges whose word proxyd takes about who the client is.
//!
//! A request whose connection comes from a trusted proxy has its client taken from
//! `X-Forwarded-For`: the right-most address that is not itself a trusted proxy (nginx's
//! `set_real_ip_from` + `real_ip_header X-Forwarded-For` + `real_ip_recursive on`). Anything
//! left of that address was written by the client and is not believed. When every address is
//! trusted, the left-most is the client; an entry that is not an address stops the walk (the
//! last trusted hop is then the client). A peer that is not trusted is the client, whatever
//! its headers say.

use std::net::{IpAddr, Ipv4Addr};

use http::header::HeaderMap;

pub use crate::config::Cidr;

/// The configured trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    ranges: Vec<Cidr>,
}

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies { ranges }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The client of a request that came from `peer` with headers `h`.
    pub fn client_ip(&self, peer: IpAddr, h: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        for value in h.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else {
                return client;
            };
            for entry in text.rsplit(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let Some(ip) = parse_forwarded_addr(entry) else {
                    return client;
                };
                client = ip.to_canonical();
                if !self.contains(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, or one with a port (`192.0.2.1:5000`,
/// `[2001:db8::1]:5000`), as some proxies write them.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (ip, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_matches_ranges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "v4-mapped v6 peers");
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert_eq!(
            Cidr::parse(" 192.168.0.0/16 ").unwrap().to_string(),
            "192.168.0.0/16"
        );
        for bad in [
            "",
            "10.0.0/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0.0/+8",
            "host.example",
            "10.0.0.1/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cidr::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn right_most_untrusted_address_is_the_client() {
        let t = TrustedProxies::new(vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("127.0.0.1/32").unwrap(),
        ]);
        let lb = ip("10.0.0.5");
        // The client's own claims (left of the real address) are not believed.
        let h = headers(&["6.6.6.6, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(t.client_ip(lb, &h), ip("203.0.113.7"));
        // Several header fields are one list, in order.
        let h = headers(&["6.6.6.6", "203.0.113.8", "10.1.1.1"]);
        assert_eq!(t.client_ip(lb, &h), ip("203.0.113.8"));
        // An untrusted peer is the client, whatever it says.
        assert_eq!(t.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // No header: the peer.
        assert_eq!(t.client_ip(lb, &HeaderMap::new()), lb);
        // All trusted: the left-most.
        let h = headers(&["10.9.9.9, 127.0.0.1"]);
        assert_eq!(t.client_ip(lb, &h), ip("10.9.9.9"));
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&["203.0.113.7, garbage, 10.1.1.1"]);
        assert_eq!(t.client_ip(lb, &h), ip("10.1.1.1"));
        // Ports and brackets are understood; empty entries skipped.
        let h = headers(&["203.0.113.9:4711, ,"]);
        assert_eq!(t.client_ip(lb, &h), ip("203.0.113.9"));
        let h = headers(&["[2001:db8::7]:443"]);
        assert_eq!(t.client_ip(lb, &h), ip("2001:db8::7"));
    }
}
