//! Error pages and the maintenance switch as the config writes them: `error_pages` (top level
//! and per route, status → file), `routes[].intercept_errors`, `routes[].maintenance` and the
//! top-level `maintenance:` block. The files are read when the runtime state is built
//! (`state::pages`); this layer checks the keys.

use std::fmt;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::units;

/// The statuses proxyd answers with itself (`error::Cause::status`): the only keys an
/// `error_pages` map may have.
pub const STATUSES: [u16; 13] = [
    400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504,
];

/// `error_pages: { 404: errors/404.html, ... }`: status → file (relative to the config
/// file), in the order written, each with its place for errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPages(pub Vec<(Spanned<u16>, Spanned<String>)>);

impl ErrorPages {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for ErrorPages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pages;
        impl<'de> Visitor<'de> for Pages {
            type Value = ErrorPages;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of status codes to files, e.g. { 503: errors/503.html }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ErrorPages, A::Error> {
                let mut out = Vec::new();
                while let Some(status) = map.next_key::<Spanned<u16>>()? {
                    let file = map.next_value::<Spanned<String>>()?;
                    out.push((status, file));
                }
                Ok(ErrorPages(out))
            }
        }
        d.deserialize_map(Pages)
    }
}

impl Serialize for ErrorPages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (status, file) in &self.0 {
            map.serialize_entry(&status.value, &file.value)?;
        }
        map.end()
    }
}

/// The top-level `maintenance:` block: what the switch (admin API, or `file`'s presence)
/// answers on the routes it covers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// While this file exists the switch is on (looked for about once a second; relative to
    /// the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Spanned<String>>,
    /// The maintenance page; default: the route's 503 error page, else a short text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Spanned<String>>,
    /// The `Retry-After` of a maintenance 503.
    #[serde(default = "default_retry_after", with = "units::duration")]
    pub retry_after: Duration,
}

fn default_retry_after() -> Duration {
    Duration::from_secs(30)
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            file: None,
            page: None,
            retry_after: default_retry_after(),
        }
    }
}

impl Maintenance {
    pub fn is_unset(&self) -> bool {
        *self == Maintenance::default()
    }
}
