//! The pure-data values of the `limits` and `trusted_proxies` sections: rates (`"100/s"`)
//! and address ranges (`"10.0.0.0/8"`), parsed when the config is read. The limiters that
//! use them are in `crate::limits`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How many per-IP buckets are tracked when `max_clients` is not set.
pub const DEFAULT_MAX_CLIENTS: usize = 100_000;

/// A rate as written in the config: `"100/s"`, `"6000/m"`, `"10r/s"` (nginx's spelling),
/// `"1/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let expected = "expected a rate such as \"100/s\", \"6000/m\" or \"10r/s\"";
        let t = text.trim();
        let (n, unit) = t
            .split_once('/')
            .ok_or_else(|| format!("invalid rate {text:?}; {expected}"))?;
        let n = n.trim();
        let n = n.strip_suffix('r').unwrap_or(n);
        let count: u64 = n.parse().map_err(|_| {
            format!("invalid rate {text:?}: {n:?} is not a whole number; {expected}")
        })?;
        if count == 0 {
            return Err(format!("invalid rate {text:?}: must be more than 0"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            u => {
                return Err(format!(
                    "invalid rate {text:?}: unknown unit {u:?} (s, m, h or d); {expected}"
                ))
            }
        };
        let rate = Rate { count, per };
        if rate.interval_ns() == 0 {
            return Err(format!("invalid rate {text:?}: too fast"));
        }
        Ok(rate)
    }

    /// Nanoseconds between two tokens.
    pub fn interval_ns(&self) -> u64 {
        u64::try_from(self.per.as_nanos() / u128::from(self.count)).unwrap_or(u64::MAX)
    }

    /// Tokens per second, rounded up: the default burst.
    pub fn per_second_ceil(&self) -> u32 {
        let per_s = (self.count as f64) / self.per.as_secs_f64();
        (per_s.ceil() as u32).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address (`127.0.0.1`, a /32 or
/// /128). Parsed and matched by `ipnet`; the messages are proxyd's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        let expected =
            "expected an address range such as \"10.0.0.0/8\", \"fd00::/8\" or \"127.0.0.1\"";
        let (ip, prefix) = match t.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            format!("invalid CIDR {text:?}: {ip:?} is not an IP address; {expected}")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bad_prefix =
            || format!("invalid CIDR {text:?}: the prefix length must be 0 to {max}; {expected}");
        let net = match prefix {
            None => ipnet::IpNet::from(addr),
            // ipnet takes "+8" as 8: the text must be digits only.
            Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(bad_prefix())
            }
            Some(_) => t.parse::<ipnet::IpNet>().map_err(|_| bad_prefix())?,
        };
        if net.network() != addr {
            return Err(format!(
                "invalid CIDR {text:?}: address bits set past the /{} (did you mean {}?)",
                net.prefix_len(),
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, how a
    /// dual-stack socket shows an IPv4 peer) matches IPv4 ranges too.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip) || self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}
