//! Configuration: the file's types and defaults (`types`), durations, sizes and counts with
//! their bounds (`units`), `${VAR}` expansion in values (`expand`), reading a file (`load`),
//! the `workers:` block (`workers`), active health checks of servers (`health`), an
//! upstream's protocol and TLS (`upstream_tls`), the binary upgrade's settings (`upgrade`),
//! host names re-resolved (`discovery`: `resolver:`, `discovery:`), error pages and the
//! maintenance switch (`pages`), route rules: their `{variable}` templates (`template`), a
//! route's redirect, methods, body size and time-outs (`route_limits`), its headers and
//! rewrites (`rules`), its `allow`/`deny`/`basic_auth` (`access`); the checks that `proxyd
//! check` runs (`validate`), `proxyd check --print` (`print`), the keys a file writes and
//! where (`written`), the warnings about secret files others can read (`secrets`), and the
//! config that `proxyd run` and `proxyd proxy` make of their flags (`oneliner`), the OTLP
//! export of spans (`tracing`).

pub mod access;
pub mod access_log;
pub mod addr;
pub mod balance;
pub mod compression;
pub mod discovery;
pub mod expand;
pub mod fingerprint;
pub mod health;
pub mod host;
pub mod limits;
pub mod load;
pub mod oneliner;
pub mod pages;
pub mod print;
pub mod route_limits;
pub mod rules;
pub mod secrets;
pub mod template;
pub mod tracing;
pub mod types;
pub mod units;
pub mod upgrade;
pub mod upstream_tls;
pub mod validate;
pub mod workers;
pub mod written;

pub use addr::{BackendAddr, NamedServer, ServerAddr, SrvName};
pub use host::HostMatch;
pub use load::{load_file, load_file_with, load_str, load_str_with, Checks, ConfigError, Loaded};
pub use types::*;
