//! `compression:` (top level, and per route, where `false` turns it off): which encodings
//! proxyd may apply to upstream responses on the fly, from what size, for which types.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::Spanned;

use super::units;

/// A content coding proxyd can apply, by its `Content-Encoding` token.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Zstd,
    Br,
    Gzip,
}

impl Encoding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// A precompressed variant's file name suffix (`routes[].static.precompressed`).
    pub fn suffix(self) -> &'static str {
        match self {
            Encoding::Zstd => ".zst",
            Encoding::Br => ".br",
            Encoding::Gzip => ".gz",
        }
    }
}

/// `compression: { algorithms: [zstd, br, gzip], min_length: "1KiB", types: [...] }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// In the server's order of preference: among those a client accepts equally, the first.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Spanned<Encoding>>,
    /// Bodies known to be shorter are sent as they are (nginx's `gzip_min_length`); a body of
    /// unknown length is compressed.
    #[serde(default = "default_min_length", with = "units::size")]
    pub min_length: u64,
    /// Media types compressed: `text/html`, or `text/*` for a whole top-level type
    /// (nginx's `gzip_types`).
    #[serde(default = "default_types")]
    pub types: Vec<Spanned<String>>,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithms: default_algorithms(),
            min_length: default_min_length(),
            types: default_types(),
        }
    }
}

/// A route's `compression:`: its own settings, `true` (the top level's, or the defaults),
/// or `false` (none on this route).
#[derive(Debug, Clone)]
pub enum RouteCompression {
    Off,
    Inherit,
    On(Compression),
}

impl<'de> Deserialize<'de> for RouteCompression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RouteCompression;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("false, true or a map of compression settings")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(if on {
                    RouteCompression::Inherit
                } else {
                    RouteCompression::Off
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                Compression::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RouteCompression::On)
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Serialize for RouteCompression {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RouteCompression::Off => s.serialize_bool(false),
            RouteCompression::Inherit => s.serialize_bool(true),
            RouteCompression::On(c) => c.serialize(s),
        }
    }
}

/// The settings in force on a route: its own, else the top level's; None when off.
pub fn effective<'a>(
    top: Option<&'a Compression>,
    route: Option<&'a RouteCompression>,
) -> Option<std::borrow::Cow<'a, Compression>> {
    use std::borrow::Cow;
    match route {
        None => top.map(Cow::Borrowed),
        Some(RouteCompression::Off) => None,
        Some(RouteCompression::On(c)) => Some(Cow::Borrowed(c)),
        Some(RouteCompression::Inherit) => Some(match top {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(Compression::default()),
        }),
    }
}

/// Why a `types` entry is not a media type or a `type/*` pattern, if it is not.
pub fn check_type(t: &str) -> Result<(), String> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((ty, "*")) if token(ty) => Ok(()),
        Some((ty, sub)) if token(ty) && token(sub) => Ok(()),
        _ => Err(format!(
            "compression.types: {t:?} is not a media type; expected e.g. \"text/html\" or \"text/*\""
        )),
    }
}

fn here<T>(value: T) -> Spanned<T> {
    let at = serde_saphyr::Location::UNKNOWN;
    Spanned::new(value, at, at)
}

fn default_algorithms() -> Vec<Spanned<Encoding>> {
    [Encoding::Zstd, Encoding::Br, Encoding::Gzip]
        .into_iter()
        .map(here)
        .collect()
}

fn default_min_length() -> u64 {
    1024
}

/// Text, and the application types that are text (nginx's `gzip_types` as the guides set
/// it, Caddy's `encode` defaults).
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "application/problem+json",
    "application/wasm",
    "application/x-javascript",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
];

fn default_types() -> Vec<Spanned<String>> {
    DEFAULT_TYPES.iter().map(|t| here(t.to_string())).collect()
}
