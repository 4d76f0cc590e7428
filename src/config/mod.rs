//! Configuration: the file's types and defaults (`types`), reading it with `${VAR}` expansion
//! (`load`), and the checks that `proxyd check` runs (`validate`).

pub mod addr;
pub mod load;
pub mod types;
pub mod validate;

pub use addr::BackendAddr;
pub use load::{load_file, load_str, ConfigError, Loaded};
pub use types::*;
