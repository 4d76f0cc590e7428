//! The running listeners: started at boot, added and removed by a config reload, and stopped
//! together at shutdown (their open connections then drain).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::conn::HeadLimits;
use super::{accept_loop, Listener};
use crate::proxy::outcome::Observers;
use crate::proxy::Snapshot;

/// What every accept loop shares.
pub struct Spawner {
    pub state: Arc<ArcSwap<Snapshot>>,
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub client: HeadLimits,
    pub graceful: Arc<GracefulShutdown>,
    pub observers: Observers,
    pub metrics: Arc<crate::metrics::Metrics>,
}

struct Running {
    /// The address as configured (port 0 stays 0), which is how a reload names it.
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
pub struct ListenerSet {
    spawner: Mutex<Option<Spawner>>,
    running: Mutex<Vec<Running>>,
}

impl ListenerSet {
    pub fn new(spawner: Spawner) -> ListenerSet {
        ListenerSet {
            spawner: Mutex::new(Some(spawner)),
            running: Mutex::new(Vec::new()),
        }
    }

    /// Starts accepting on `l`; Err once shutdown has begun.
    pub fn add(&self, l: Listener) -> Result<SocketAddr, String> {
        let spawner = self.spawner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = spawner.as_ref() else {
            return Err("shutting down".into());
        };
        let (stop, stopped) = watch::channel(false);
        let (configured, bound) = (l.configured, l.addr);
        tracing::info!(addr = %bound, "listening");
        let task = tokio::spawn(accept_loop(
            l,
            s.state.clone(),
            s.builder.clone(),
            s.client,
            s.graceful.clone(),
            stopped,
            s.observers.clone(),
            s.metrics.clone(),
        ));
        self.lock().push(Running {
            configured,
            bound,
            stop,
            task,
        });
        Ok(bound)
    }

    /// Stops accepting on the listener configured as `configured`; its connections drain.
    pub fn remove(&self, configured: SocketAddr) -> Option<SocketAddr> {
        let mut running = self.lock();
        let i = running.iter().position(|r| r.configured == configured)?;
        let r = running.remove(i);
        let _ = r.stop.send(true);
        tracing::info!(addr = %r.bound, "stopped listening");
        Some(r.bound)
    }

    /// The configured addresses of the running listeners.
    pub fn configured(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|r| r.configured).collect()
    }

    /// Stops every listener, waits for the accept loops, and hands back what drains the
    /// connections they accepted.
    pub async fn shutdown(&self) -> Option<GracefulShutdown> {
        let spawner = self
            .spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let running = std::mem::take(&mut *self.lock());
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
        spawner.and_then(|s| Arc::try_unwrap(s.graceful).ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}
