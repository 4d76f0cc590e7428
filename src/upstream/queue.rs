//! The admission queue: requests waiting for a backend slot, oldest first. A freed slot is
//! handed to the front waiter directly, so a newcomer can never overtake a waiting request.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Backend, InFlight};

pub struct Waiter {
    pub id: u64,
    pub tx: oneshot::Sender<InFlight>,
    pub key: Option<u64>,
    /// Backends this request already failed on (a retry waits for another one).
    pub tried: Vec<Arc<Backend>>,
    /// When it joined the queue (`clock::now_ns`), for the oldest wait (worker scaling).
    pub since: u64,
}

#[derive(Default)]
pub struct Waiters {
    pub list: std::sync::Mutex<VecDeque<Waiter>>,
    /// `list.len()` readable without the lock; a released slot only takes the lock when
    /// someone waits.
    pub len: AtomicUsize,
}
