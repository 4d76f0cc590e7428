//! `limits.max_connections_per_ip`: open client connections by client IP. An entry lives
//! while its IP has a connection open, so the map never holds more entries than there are
//! open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// Open connections by client IP.
#[derive(Debug)]
pub struct OpenConnections {
    shards: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl Default for OpenConnections {
    fn default() -> Self {
        OpenConnections {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl OpenConnections {
    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let n = match ip {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let n = u128::from(a);
                (n as u64) ^ ((n >> 64) as u64)
            }
        };
        &self.shards[(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS]
    }

    /// Counts one more connection from `ip` unless it already has `max` open.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ConnSlot> {
        let ip = ip.to_canonical();
        let mut map = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(ip).or_insert(0);
        if *open >= max {
            if *open == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *open += 1;
        Some(ConnSlot(Some((self.clone(), ip))))
    }

    /// Connections open now from `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let ip = ip.to_canonical();
        let map = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }

    /// Client IPs with a connection open.
    pub fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// One counted connection; dropping it counts the connection closed.
#[derive(Debug)]
pub struct ConnSlot(Option<(Arc<OpenConnections>, IpAddr)>);

impl ConnSlot {
    /// A connection that is not counted (no cap, or from a trusted proxy).
    pub fn none() -> ConnSlot {
        ConnSlot(None)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some((open, ip)) = self.0.take() {
            open.release(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_forgets_closed() {
        let open = Arc::new(OpenConnections::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = open.acquire(a, 2).unwrap();
        let s2 = open.acquire(a, 2).unwrap();
        assert!(open.acquire(a, 2).is_none());
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(open.acquire(mapped, 2).is_none(), "the same client");
        let other = open.acquire(b, 2).unwrap();
        assert_eq!(open.open(a), 2);
        drop(s1);
        let s3 = open.acquire(a, 2).unwrap();
        drop((s2, s3, other));
        assert_eq!(open.clients(), 0);
        assert!(open.acquire(a, 0).is_none());
        assert_eq!(open.clients(), 0);
    }
}
