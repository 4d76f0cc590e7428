//! Upstream groups and their backends: balancing (`balancer`), new connections (`connect`)
//! and the per-backend keepalive pool (`pool`).

pub mod balancer;
pub mod connect;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, BackendAddr};
use balancer::RoundRobin;
use pool::Pool;

/// One server of an upstream group.
pub struct Backend {
    pub addr: BackendAddr,
    /// `addr` as text, for headers and logs.
    pub label: String,
    pub pool: Pool,
}

/// A named group of backends that routes point at.
pub struct Upstream {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    balancer: RoundRobin,
}

impl Upstream {
    pub fn new(name: &str, addrs: Vec<BackendAddr>, cfg: &config::Upstream) -> Upstream {
        let backends = addrs
            .into_iter()
            .map(|addr| {
                Arc::new(Backend {
                    label: addr.to_string(),
                    addr,
                    pool: Pool::new(cfg.pool.max_idle, cfg.pool.idle_timeout),
                })
            })
            .collect();
        Upstream {
            name: name.to_string(),
            backends,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            balancer: RoundRobin::default(),
        }
    }

    /// The backend for the next request, or None when the group has none.
    pub fn pick(&self) -> Option<&Arc<Backend>> {
        if self.backends.is_empty() {
            return None;
        }
        self.backends.get(self.balancer.pick(self.backends.len()))
    }
}
