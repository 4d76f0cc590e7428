//! A file's validators (a strong ETag from inode, size and modification time; Last-Modified)
//! and the preconditions of RFC 9110 section 13.2.2, in its order: If-Match, else
//! If-Unmodified-Since (412); If-None-Match, else If-Modified-Since (304).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

pub struct Validators {
    pub etag: HeaderValue,
    /// Whole seconds, as Last-Modified states it.
    pub modified: SystemTime,
    pub last_modified: HeaderValue,
}

impl Validators {
    pub fn of(meta: &Metadata) -> Validators {
        let nanos = (meta.mtime() as i128) * 1_000_000_000 + meta.mtime_nsec() as i128;
        let etag = format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.size(), nanos);
        let secs = u64::try_from(meta.mtime()).unwrap_or(0);
        let modified = UNIX_EPOCH + Duration::from_secs(secs);
        Validators {
            // Hex digits, dashes and quotes only: always a header value.
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            modified,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
        }
    }

    /// What the request's preconditions decide.
    pub fn evaluate(&self, headers: &HeaderMap) -> Precondition {
        if headers.contains_key(header::IF_MATCH) {
            if !self.matches(headers, header::IF_MATCH, true) {
                return Precondition::Failed;
            }
        } else if let Some(t) = date(headers, header::IF_UNMODIFIED_SINCE) {
            if self.modified > t {
                return Precondition::Failed;
            }
        }
        if headers.contains_key(header::IF_NONE_MATCH) {
            if self.matches(headers, header::IF_NONE_MATCH, false) {
                return Precondition::NotModified;
            }
        } else if let Some(t) = date(headers, header::IF_MODIFIED_SINCE) {
            if self.modified <= t {
                return Precondition::NotModified;
            }
        }
        Precondition::Proceed
    }

    /// Whether one of the entity tags in `name`'s fields is this file's (`*` is any):
    /// strong comparison for If-Match, weak for If-None-Match.
    fn matches(&self, headers: &HeaderMap, name: header::HeaderName, strong: bool) -> bool {
        let ours = self.etag.as_bytes();
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .any(|t| match t.strip_prefix(b"W/") {
                _ if t == b"*" => true,
                Some(weak) => !strong && weak == ours,
                None => t == ours,
            })
    }

    /// If-Range: the Range applies when it names this file's ETag (strongly) or exact date.
    pub fn if_range(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers.get(header::IF_RANGE) else {
            return true;
        };
        let v = v.as_bytes().trim_ascii();
        if v.starts_with(b"\"") {
            return v == self.etag.as_bytes();
        }
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .is_some_and(|t| t == self.modified)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    /// 304.
    NotModified,
    /// 412.
    Failed,
}

fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}
