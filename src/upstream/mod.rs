//! Upstream groups and their backends: the backend itself (`backend`), balancing
//! (`balancer`), new connections (`connect`) and the per-backend keepalive pool (`pool`).
//! A group's backend list can change while requests run: worker restarts swap it.

pub mod backend;
pub mod balancer;
pub mod connect;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{self, BackendAddr};
pub use backend::{Backend, BackendState, InFlight, WorkerEvent, WorkerLink};
use balancer::RoundRobin;
use pool::Pool;

/// A named group of backends that routes point at.
pub struct Upstream {
    pub name: String,
    backends: ArcSwap<Vec<Arc<Backend>>>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pool: config::Pool,
    balancer: RoundRobin,
}

impl Upstream {
    /// A group over fixed `addrs` (an empty list for one whose workers are still starting).
    pub fn new(name: &str, addrs: Vec<BackendAddr>, cfg: &config::Upstream) -> Upstream {
        let pool = cfg.effective_pool();
        let backends = addrs
            .into_iter()
            .map(|addr| {
                Arc::new(Backend::new(
                    addr,
                    Pool::new(pool.max_idle, pool.idle_timeout),
                    None,
                ))
            })
            .collect();
        Upstream {
            name: name.to_string(),
            backends: ArcSwap::from_pointee(backends),
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.effective_response_timeout(),
            pool,
            balancer: RoundRobin::default(),
        }
    }

    /// A backend for a new worker of this group, with the group's pool settings.
    pub fn new_backend(&self, addr: BackendAddr, worker: WorkerLink) -> Arc<Backend> {
        let pool = Pool::new(self.pool.max_idle, self.pool.idle_timeout);
        Arc::new(Backend::new(addr, pool, Some(worker)))
    }

    /// The current backends, whatever their state.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    pub fn add(&self, b: Arc<Backend>) {
        self.backends.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(b.clone());
            list
        });
    }

    pub fn remove(&self, b: &Arc<Backend>) {
        self.backends.rcu(|list| {
            list.iter()
                .filter(|x| !Arc::ptr_eq(x, b))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    pub fn ready_count(&self) -> usize {
        self.backends.load().iter().filter(|b| b.is_ready()).count()
    }

    /// The next ready backend not in `tried`, round robin.
    pub fn pick(&self, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let list = self.backends.load();
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.balancer.pick(n);
        (0..n)
            .map(|i| &list[(start + i) % n])
            .find(|b| b.is_ready() && !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .cloned()
    }
}
