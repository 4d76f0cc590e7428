//! One monotonic clock as nanoseconds, for timestamps kept in atomics (ejections, EWMA, slow
//! start). tokio's clock, so tests can pause it.

use std::sync::OnceLock;

use tokio::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(Instant::now().duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}
