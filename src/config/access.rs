//! `routes[].allow`, `routes[].deny` and `routes[].basic_auth`: who may use a route, by
//! address and by password. The checks that run on requests are in `crate::limits::access`
//! and `crate::limits::auth`.

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::limits::Rate;
use super::load::{ConfigError, Loaded};

/// The realm when `basic_auth.realm` is not set.
pub const DEFAULT_REALM: &str = "restricted";

/// `routes[].basic_auth`: `{ htpasswd: FILE, realm: "admin", failures: "10/m" }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// An htpasswd file (relative to the config file), as Apache's `htpasswd` writes it.
    pub htpasswd: Spanned<String>,
    /// Shown by browsers in the login prompt (`WWW-Authenticate: Basic realm="..."`).
    #[serde(default = "default_realm")]
    pub realm: Spanned<String>,
    /// Failed logins let through per client: past them, 429 until the rate allows one more.
    #[serde(default = "default_failures")]
    pub failures: Rate,
}

fn default_realm() -> Spanned<String> {
    let here = serde_saphyr::Location::UNKNOWN;
    Spanned::new(DEFAULT_REALM.to_string(), here, here)
}

/// 10 failures back to back, then one more every 6 seconds.
fn default_failures() -> Rate {
    Rate {
        count: 10,
        per: std::time::Duration::from_secs(60),
    }
}

/// A route's `basic_auth`: a realm that fits in a quoted header value, and an htpasswd file
/// that exists (its lines are read, and checked, when the runtime state is built).
pub fn validate(loaded: &Loaded, auth: &BasicAuth) -> Result<(), ConfigError> {
    let at = |s: &Spanned<String>, msg: String| {
        ConfigError::at(
            &loaded.file,
            &s.referenced,
            format!("routes: basic_auth.{msg}"),
        )
    };
    let realm = &auth.realm.value;
    if realm.is_empty()
        || realm.len() > 200
        || realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(at(
            &auth.realm,
            format!("realm: {realm:?}: expected 1 to 200 characters, without quotes, backslashes or control characters"),
        ));
    }
    let path = loaded.dir.join(&auth.htpasswd.value);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(at(
            &auth.htpasswd,
            format!("htpasswd: {} is not a file", path.display()),
        )),
        Err(e) => Err(at(
            &auth.htpasswd,
            format!("htpasswd: {}: {e}", path.display()),
        )),
    }
}
