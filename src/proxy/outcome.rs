//! The pipeline fills a [`Trace`] and completes an [`Outcome`]; both are the observability
//! record (`crate::obs::outcome`), re-exported under the path `server::conn` imports.

pub use crate::obs::outcome::{Observe, Observers, Outcome, Trace};
