//! Configuration: the file's types and defaults (`types`), reading it with `${VAR}` expansion
//! (`load`), the `workers:` block (`workers`), an upstream's protocol and TLS
//! (`upstream_tls`), the binary upgrade's settings (`upgrade`), the checks that `proxyd check`
//! runs (`validate`), and the warnings about secret files others can read (`secrets`).

pub mod addr;
pub mod balance;
pub mod load;
pub mod secrets;
pub mod types;
pub mod upgrade;
pub mod upstream_tls;
pub mod validate;
pub mod workers;

pub use addr::BackendAddr;
pub use load::{load_file, load_file_with, load_str, load_str_with, Checks, ConfigError, Loaded};
pub use types::*;
