//! Configuration: the file's types and defaults (`types`), reading it with `${VAR}` expansion
//! (`load`), the `workers:` block (`workers`), an upstream's protocol and TLS
//! (`upstream_tls`), the binary upgrade's settings (`upgrade`), the checks that `proxyd check`
//! runs (`validate`), the warnings about secret files others can read (`secrets`), and the
//! config that `proxyd run` and `proxyd proxy` make of their flags (`oneliner`).

pub mod addr;
pub mod balance;
pub mod load;
pub mod oneliner;
pub mod secrets;
pub mod types;
pub mod upgrade;
pub mod upstream_tls;
pub mod validate;
pub mod workers;

pub use addr::BackendAddr;
pub use load::{load_file, load_str, ConfigError, Loaded};
pub use types::*;
