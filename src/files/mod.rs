//! Static files: a static route's requests answered from a directory, beside the proxy
//! (which calls `serve` after the route and limit phases; a miss may go on to the route's
//! fallback upstream). GET and HEAD; strong ETag and Last-Modified with their conditionals;
//! one byte range; precompressed variants; never a file outside the root.
//!
//! - `path`: the request path decoded once and checked
//! - `open`: `openat2` beneath the root (the kernel keeps every resolution inside it)
//! - `validators`: ETag, Last-Modified, the preconditions (304, 412)
//! - `range`: `Range: bytes=` (206, 416)
//! - `accept`: Accept-Encoding for the precompressed variants
//! - `body`: the file's bytes as a response body

pub mod accept;
pub mod body;
pub mod open;
pub mod path;
pub mod range;
pub mod validators;

use std::path::{Path, PathBuf};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

pub use body::FileBody;
use open::Opened;
use range::Ranged;
use validators::{Precondition, Validators};

use crate::config::Encoding;
use crate::error::{Cause, ProxyError};
use crate::state::StaticSite;

/// The answer of `site` to a request for `path` (the whole request path, still
/// percent-encoded). A miss is `Cause::NotFound`, a method other than GET and HEAD
/// `Cause::MethodNotAllowed` (the caller may send either on to a fallback); a path that could
/// leave the root is a 400.
pub fn serve(
    site: &StaticSite,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<FileBody>, ProxyError> {
    let head = *method == Method::HEAD;
    if !head && *method != Method::GET {
        return Err(ProxyError::new(
            Cause::MethodNotAllowed,
            format_args!("{method} on a static route"),
        ));
    }
    let rest = path.strip_prefix(site.prefix.as_str()).unwrap_or(path);
    let rel =
        path::relative(rest).map_err(|why| ProxyError::new(Cause::BadRequest("bad-path"), why))?;
    let (rel, found) = find(site, rel)?;
    let (found, encoding) = variant(site, &rel, headers).unwrap_or((found, None));
    respond(site, &rel, found, encoding, head, headers)
}

/// The regular file `rel` names, or for a directory its first index file.
fn find(site: &StaticSite, rel: PathBuf) -> Result<(PathBuf, Opened), ProxyError> {
    let opened = open(site, &rel)?.ok_or_else(|| missing(&rel))?;
    if opened.meta.is_file() {
        return Ok((rel, opened));
    }
    if !opened.meta.is_dir() {
        return Err(missing(&rel));
    }
    for name in &site.index {
        let index = rel.join(name);
        if let Some(o) = open(site, &index)?.filter(|o| o.meta.is_file()) {
            return Ok((index, o));
        }
    }
    Err(ProxyError::new(
        Cause::NotFound,
        format_args!("{}: a directory without an index file", rel.display()),
    ))
}

/// `rel` opened beneath the root; None when it is not there for the client.
fn open(site: &StaticSite, rel: &Path) -> Result<Option<Opened>, ProxyError> {
    match open::cached(site, rel) {
        Ok(o) => Ok(Some(o)),
        Err(e) if open::is_miss(&e) => Ok(None),
        Err(e) => Err(ProxyError::new(
            Cause::Internal,
            format_args!("static file {}: {e}", rel.display()),
        )),
    }
}

fn missing(rel: &Path) -> ProxyError {
    ProxyError::new(Cause::NotFound, format_args!("no file {}", rel.display()))
}

/// The best precompressed variant of `rel` the client accepts that exists.
fn variant(
    site: &StaticSite,
    rel: &Path,
    headers: &HeaderMap,
) -> Option<(Opened, Option<Encoding>)> {
    for p in accept::preferred(headers, &site.precompressed) {
        let mut name = rel.as_os_str().to_owned();
        name.push(p.suffix());
        if let Ok(Some(o)) = open(site, Path::new(&name)) {
            if o.meta.is_file() {
                return Some((o, Some(p)));
            }
        }
    }
    None
}

/// The response for the file `found` (named `rel`, sent in `encoding`).
fn respond(
    site: &StaticSite,
    rel: &Path,
    found: Opened,
    encoding: Option<Encoding>,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response<FileBody>, ProxyError> {
    let size = found.meta.len();
    let v = Validators::of(&found.meta);
    let mut resp = Response::new(FileBody::empty());
    let h = resp.headers_mut();
    h.insert(header::ETAG, v.etag.clone());
    h.insert(header::LAST_MODIFIED, v.last_modified.clone());
    if let Some(c) = &site.cache_control {
        h.insert(header::CACHE_CONTROL, c.clone());
    }
    if !site.precompressed.is_empty() {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    match v.evaluate(headers) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(resp);
        }
        Precondition::Failed => {
            *resp.status_mut() = StatusCode::PRECONDITION_FAILED;
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Ok(resp);
        }
    }
    let h = resp.headers_mut();
    let kind = mime_guess::from_path(rel).first_raw();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.unwrap_or("application/octet-stream")),
    );
    if let Some(p) = encoding {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(p.token()),
        );
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Ranges are for GET (RFC 9110 section 14.2); If-Range may turn one into the whole file.
    let ranged = if head || !v.if_range(headers) {
        Ranged::Whole
    } else {
        range::range(headers, size)
    };
    let (start, len) = match ranged {
        Ranged::Whole => (0, size),
        Ranged::Part(first, last) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes {first}-{last}/{size}");
            if let Ok(r) = HeaderValue::from_str(&range) {
                resp.headers_mut().insert(header::CONTENT_RANGE, r);
            }
            (first, last - first + 1)
        }
        Ranged::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = resp.headers_mut();
            if let Ok(r) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, r);
            }
            h.remove(header::CONTENT_ENCODING);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return Ok(resp);
        }
    };
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if !head {
        *resp.body_mut() = FileBody::new(found.file, start, len);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::os::unix::io::AsRawFd;

    use super::*;

    /// Random paths of segments meant to get out (dots raw, encoded and double-encoded,
    /// encoded slashes, NUL, backslashes, symlinks that climb out or point anywhere) never
    /// open anything outside the root: each is refused, missing, or a file whose real path
    /// (`/proc/self/fd`) is beneath the root.
    #[test]
    fn random_paths_never_open_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::fs::write(root.join("a/f"), "f").unwrap();
        std::fs::write(root.join("a/b/g"), "g").unwrap();
        for (link, to) in [
            ("up", ".."),
            ("a/upup", "../.."),
            ("abs", "/"),
            ("a/side", "../a/b"),
            ("a/b/secret", "../../../secret"),
            ("self", "/proc/self/root"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).unwrap();
        }
        let real_root = std::fs::canonicalize(&root).unwrap();
        let site = std::fs::File::open(&root).unwrap();
        let segments = [
            "..",
            ".",
            "",
            "a",
            "b",
            "f",
            "g",
            "up",
            "upup",
            "abs",
            "side",
            "secret",
            "self",
            "%2e%2e",
            "%2e",
            ".%2e",
            "%252e%252e",
            "..%2f",
            "%2f",
            "%5c",
            "\\",
            "%00",
            "etc",
            "passwd",
            "tmp",
            "%2E%2E",
            "a%2f..",
            "..;",
            "%c0%ae%c0%ae",
        ];
        let mut rng = fastrand::Rng::with_seed(17);
        let (mut opened, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let n = rng.usize(1..7);
            let path: Vec<&str> = (0..n)
                .map(|_| segments[rng.usize(..segments.len())])
                .collect();
            let path = path.join("/");
            let Ok(rel) = path::relative(&path) else {
                refused += 1;
                continue;
            };
            let Ok(o) = open::beneath(&site, &rel) else {
                continue;
            };
            let fd = format!("/proc/self/fd/{}", o.file.as_raw_fd());
            let real = std::fs::read_link(fd).unwrap();
            assert!(
                real.starts_with(&real_root),
                "{path} opened {}",
                real.display()
            );
            opened += 1;
        }
        // The walk reached both ends.
        assert!(
            opened > 100 && refused > 100,
            "{opened} opened, {refused} refused"
        );
    }
}
