//! Request rate limits: `limits.rate` (per client IP, the whole proxy) and `routes[].rate`
//! (per client IP on that route, or one bucket for the whole route).
//!
//! Each bucket is a token bucket of `burst` tokens refilled at `rate`, kept as the one number
//! GCRA needs: the time at which the bucket will be full again (its "theoretical arrival
//! time"). A request is let through when that time is at most `(burst - 1)` refill intervals
//! ahead of now, and pushes it one interval further; otherwise it is refused, and the client
//! is told when the next token comes (`Retry-After`). A bucket whose time has passed is full,
//! exactly as if it had never been used, so it can be forgotten: that is how the per-IP map
//! stays small (idle entries are swept) and bounded (`max_clients`, spread over shards).
//!
//! Like nginx's `limit_req ... nodelay`, nothing is delayed: a request either passes at once or
//! is answered 429. `burst: N` lets N requests through back to back (nginx's `burst=N-1`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::config::Rate;
use crate::error::{Cause, ProxyError};
use crate::upstream::clock::now_ns;

/// The arithmetic of one token bucket (GCRA).
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Between two tokens.
    interval: u64,
    /// How far ahead of now a bucket's full-again time may be: `(burst - 1)` intervals.
    tolerance: u64,
}

impl Gcra {
    fn new(rate: Rate, burst: u32) -> Gcra {
        let interval = rate.interval_ns();
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// The bucket's next full-again time if a request at `now` passes, else how long until
    /// a token comes.
    fn take(self, tat: u64, now: u64) -> Result<u64, u64> {
        let tat = tat.max(now);
        if tat - now > self.tolerance {
            return Err(tat - now - self.tolerance);
        }
        Ok(tat.saturating_add(self.interval))
    }
}

pub use crate::config::limits::DEFAULT_MAX_CLIENTS;
const SHARDS: usize = 32;
/// An idle-entry sweep of a shard runs at most this often (ns), and when the shard is full.
const SWEEP_EVERY: u64 = 10_000_000_000;

/// A full shard is swept at most this often (ns); in between, making room drops a bucket.
const SWEEP_WHEN_FULL: u64 = 100_000_000;

/// One limit: a bucket per client IP (IPv6 clients by their /64), or one for everyone.
pub struct RateLimiter {
    rate: Rate,
    burst: u32,
    gcra: Gcra,
    kind: Kind,
}

enum Kind {
    Shared(AtomicU64),
    PerIp {
        shards: Box<[Mutex<Shard>]>,
        per_shard: usize,
    },
}

#[derive(Default)]
struct Shard {
    /// Client key → the time its bucket is full again.
    buckets: HashMap<u128, u64>,
    last_sweep: u64,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate.to_string())
            .field("burst", &self.burst)
            .field("per_ip", &matches!(self.kind, Kind::PerIp { .. }))
            .finish()
    }
}

impl RateLimiter {
    /// A bucket for each client IP, `max_clients` of them at most.
    pub fn per_ip(rate: Rate, burst: u32, max_clients: usize) -> RateLimiter {
        let per_shard = max_clients.div_ceil(SHARDS).max(1);
        RateLimiter {
            rate,
            burst,
            gcra: Gcra::new(rate, burst),
            kind: Kind::PerIp {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                per_shard,
            },
        }
    }

    /// One bucket that every client shares.
    pub fn shared(rate: Rate, burst: u32) -> RateLimiter {
        RateLimiter {
            rate,
            burst,
            gcra: Gcra::new(rate, burst),
            kind: Kind::Shared(AtomicU64::new(0)),
        }
    }

    /// Takes a token for a request from `client`; Err: how long until one comes. A per-IP
    /// limit lets a request without a client address through.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        self.check_at(client, now_ns())
    }

    fn check_at(&self, client: Option<IpAddr>, now: u64) -> Result<(), Duration> {
        match &self.kind {
            Kind::Shared(tat) => {
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    let next = self.gcra.take(current, now).map_err(Duration::from_nanos)?;
                    match tat.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(seen) => current = seen,
                    }
                }
            }
            Kind::PerIp { shards, per_shard } => {
                let Some(ip) = client else { return Ok(()) };
                let key = key(ip);
                let shard = &shards[shard_of(key)];
                let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tat) = s.buckets.get_mut(&key) {
                    *tat = self.gcra.take(*tat, now).map_err(Duration::from_nanos)?;
                    return Ok(());
                }
                // A new client starts with a full bucket.
                let next = self.gcra.take(0, now).map_err(Duration::from_nanos)?;
                s.make_room(*per_shard, now);
                s.buckets.insert(key, next);
                Ok(())
            }
        }
    }

    /// Whether a request from `client` would get a token now, without taking it (a per-IP
    /// limit answers Ok for a request without a client address).
    pub fn peek(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let now = now_ns();
        let tat = match &self.kind {
            Kind::Shared(tat) => tat.load(Ordering::Acquire),
            Kind::PerIp { shards, .. } => {
                let Some(ip) = client else { return Ok(()) };
                let key = key(ip);
                let s = shards[shard_of(key)]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                s.buckets.get(&key).copied().unwrap_or(0)
            }
        };
        self.gcra
            .take(tat, now)
            .map(drop)
            .map_err(Duration::from_nanos)
    }

    /// Client IPs tracked now.
    pub fn tracked(&self) -> usize {
        match &self.kind {
            Kind::Shared(_) => 0,
            Kind::PerIp { shards, .. } => shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).buckets.len())
                .sum(),
        }
    }
}

impl Shard {
    /// Before an insert: forgets full (idle) buckets now and then, and when the shard is at
    /// its cap; when every bucket is in use, one is dropped (that client starts over).
    fn make_room(&mut self, cap: usize, now: u64) {
        let due = now.saturating_sub(self.last_sweep) >= SWEEP_EVERY;
        let full = self.buckets.len() >= cap;
        if due || (full && now.saturating_sub(self.last_sweep) >= SWEEP_WHEN_FULL) {
            self.buckets.retain(|_, tat| *tat > now);
            self.last_sweep = now;
        }
        while self.buckets.len() >= cap {
            let Some(k) = self.buckets.keys().next().copied() else {
                break;
            };
            self.buckets.remove(&k);
        }
    }
}

/// An IPv4 address as itself; an IPv6 one by its /64 (one host usually has a whole /64, and
/// could take a new address for every request).
fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | (1 << 32),
    }
}

fn shard_of(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize % SHARDS
}

/// The limiters a running config has, which a reload may keep.
pub struct Kept<'a> {
    /// The config they were built from.
    pub loaded: &'a crate::config::Loaded,
    /// `limits.rate.per_ip`.
    pub global: Option<Arc<RateLimiter>>,
    /// Each route's, in that config's `routes` order.
    pub routes: Vec<Option<Arc<RateLimiter>>>,
}

/// The limiters of a config: the proxy's per-IP one and each route's (in `routes` order). A
/// limit whose settings did not change since `previous` is kept, buckets and all, so a
/// reload does not hand every client a fresh burst.
pub fn build(
    loaded: &crate::config::Loaded,
    previous: Option<Kept<'_>>,
) -> (Option<Arc<RateLimiter>>, Vec<Option<Arc<RateLimiter>>>) {
    use crate::config::fingerprint::strip_locations;
    use crate::config::RateBy;
    let cfg = &loaded.config;
    let text = |v: &dyn fmt::Debug| strip_locations(&format!("{v:?}"));
    let max_clients = cfg.limits.rate.max_clients();
    let global = cfg.limits.rate.per_ip.map(|rate| {
        let kept = previous.as_ref().and_then(|p| {
            (text(&p.loaded.config.limits.rate) == text(&cfg.limits.rate))
                .then(|| p.global.clone())
                .flatten()
        });
        kept.unwrap_or_else(|| {
            let burst = burst_of(cfg.limits.rate.burst.as_ref(), rate);
            Arc::new(RateLimiter::per_ip(rate, burst, max_clients))
        })
    });
    let routes = cfg
        .routes
        .iter()
        .map(|r| {
            let limit = r.rate.as_ref()?;
            let same = |o: &crate::config::Route| {
                text(&o.host) == text(&r.host) && o.path == r.path && text(&o.rate) == text(&r.rate)
            };
            let kept = previous.as_ref().and_then(|p| {
                let old = &p.loaded.config;
                let i = old.routes.iter().position(same)?;
                (old.limits.rate.max_clients() == max_clients)
                    .then(|| p.routes.get(i)?.clone())
                    .flatten()
            });
            Some(kept.unwrap_or_else(|| {
                let burst = burst_of(limit.burst.as_ref(), limit.limit);
                Arc::new(match limit.by {
                    RateBy::Ip => RateLimiter::per_ip(limit.limit, burst, max_clients),
                    RateBy::Route => RateLimiter::shared(limit.limit, burst),
                })
            }))
        })
        .collect();
    (global, routes)
}

fn burst_of(burst: Option<&serde_saphyr::Spanned<u32>>, rate: Rate) -> u32 {
    burst.map_or_else(|| rate.per_second_ceil(), |b| b.value.max(1))
}

/// Takes a token from each limit that applies (the route's first, then the proxy's per-IP
/// one); the first that has none answers 429 with `Retry-After`, whole seconds until the
/// next token (at least 1).
pub fn admit(
    global: Option<&RateLimiter>,
    route: Option<&RateLimiter>,
    client: Option<IpAddr>,
) -> Result<(), ProxyError> {
    for (limiter, which) in [(route, "route"), (global, "per-IP")] {
        let Some(limiter) = limiter else { continue };
        if let Err(wait) = limiter.check(client) {
            let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
            let secs = u32::try_from(secs).unwrap_or(u32::MAX);
            return Err(ProxyError::new(
                Cause::RateLimited,
                format_args!(
                    "{which} rate limit {} (burst {}) exceeded by {}",
                    limiter.rate,
                    limiter.burst,
                    client.map_or_else(|| "-".to_string(), |c| c.to_string())
                ),
            )
            .retry_after(secs));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn parses_rates() {
        assert_eq!(
            Rate::parse("100/s").unwrap(),
            Rate {
                count: 100,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(Rate::parse(" 10r/m ").unwrap().per, Duration::from_secs(60));
        assert_eq!(Rate::parse("1/h").unwrap().interval_ns(), 3600 * S);
        assert_eq!(Rate::parse("3/min").unwrap().interval_ns(), 20 * S);
        for bad in ["", "100", "0/s", "-1/s", "1.5/s", "10/week", "x/s", "10/"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Rate::parse("7/s").unwrap().to_string(), "7/s");
        assert_eq!(Rate::parse("1/m").unwrap().per_second_ceil(), 1);
        assert_eq!(Rate::parse("250/s").unwrap().per_second_ceil(), 250);
    }

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::per_ip(Rate::parse("10/s").unwrap(), 3, 100);
        let a = Some("192.0.2.1".parse().unwrap());
        let b = Some("192.0.2.2".parse().unwrap());
        let t0 = 50 * S;
        for _ in 0..3 {
            assert!(l.check_at(a, t0).is_ok());
        }
        // The fourth waits for the next token: 100 ms.
        assert_eq!(l.check_at(a, t0), Err(Duration::from_millis(100)));
        // Another client has its own bucket.
        assert!(l.check_at(b, t0).is_ok());
        // 40 ms later: still 60 ms to go; at 100 ms one token, and only one.
        assert_eq!(
            l.check_at(a, t0 + 40_000_000),
            Err(Duration::from_millis(60))
        );
        assert!(l.check_at(a, t0 + 100_000_000).is_ok());
        assert!(l.check_at(a, t0 + 100_000_000).is_err());
        // Long idle: the whole burst again, not more.
        let later = t0 + 10 * S;
        for _ in 0..3 {
            assert!(l.check_at(a, later).is_ok());
        }
        assert!(l.check_at(a, later).is_err());
    }

    #[test]
    fn shared_bucket_counts_everyone() {
        let l = RateLimiter::shared(Rate::parse("1/m").unwrap(), 2);
        let t0 = 5 * S;
        assert!(l.check_at(Some("192.0.2.1".parse().unwrap()), t0).is_ok());
        assert!(l.check_at(Some("192.0.2.2".parse().unwrap()), t0).is_ok());
        assert!(l.check_at(None, t0).is_err());
        assert!(
            l.check_at(None, t0 + 60 * S).is_ok(),
            "one token after a minute"
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_v4_as_v4() {
        let l = RateLimiter::per_ip(Rate::parse("1/h").unwrap(), 1, 100);
        let t = S;
        assert!(l
            .check_at(Some("2001:db8:1:2::1".parse().unwrap()), t)
            .is_ok());
        assert!(l
            .check_at(Some("2001:db8:1:2:ffff::9".parse().unwrap()), t)
            .is_err());
        assert!(l
            .check_at(Some("2001:db8:1:3::1".parse().unwrap()), t)
            .is_ok());
        assert!(l.check_at(Some("192.0.2.9".parse().unwrap()), t).is_ok());
        assert!(l
            .check_at(Some("::ffff:192.0.2.9".parse().unwrap()), t)
            .is_err());
    }

    #[test]
    fn tracked_clients_stay_bounded() {
        let cap = 320;
        let l = RateLimiter::per_ip(Rate::parse("1/h").unwrap(), 5, cap);
        let t = S;
        for i in 0..20_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check_at(Some(ip), t);
        }
        assert!(l.tracked() <= cap, "{} tracked", l.tracked());
    }

    #[test]
    fn idle_buckets_are_swept() {
        let l = RateLimiter::per_ip(Rate::parse("1/s").unwrap(), 5, 10_000);
        let v4 = |i: u32| Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        for i in 0..100 {
            assert!(l.check_at(v4(i), S).is_ok());
        }
        // Once their buckets have refilled (5 s) and a sweep is due, the first 100 are gone.
        let later = S + SWEEP_EVERY + 5 * S;
        for i in 1000..2000 {
            assert!(l.check_at(v4(i), later).is_ok());
        }
        assert_eq!(l.tracked(), 1000);
    }

    #[test]
    fn admit_answers_429_with_retry_after() {
        let route = RateLimiter::shared(Rate::parse("1/m").unwrap(), 1);
        assert!(admit(None, Some(&route), None).is_ok());
        let e = admit(None, Some(&route), None).unwrap_err();
        assert_eq!(e.cause, Cause::RateLimited);
        assert!(matches!(e.retry_after, Some(1..=60)), "{:?}", e.retry_after);
        assert!(admit(None, None, None).is_ok());
    }
}
