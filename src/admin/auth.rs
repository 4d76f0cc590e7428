//! The admin's optional bearer token: POST endpoints change things (reloads, restarts), so
//! with `admin.token` set they need `Authorization: Bearer <token>`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::proxy::body::ResponseBody;

/// True when no token is configured, or the request carries it.
pub fn allowed(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, value) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(value.trim())
        })
        .any(|given| same(given.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference, so timing tells nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn unauthorized() -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from_static(
        b"unauthorized: this endpoint needs Authorization: Bearer <admin.token>\n",
    )));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    let h = resp.headers_mut();
    h.insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"proxyd admin\""),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    #[test]
    fn bearer_token() {
        assert!(
            allowed(None, &HeaderMap::new()),
            "no token configured: open"
        );
        assert!(!allowed(Some("s3cret"), &HeaderMap::new()));
        assert!(allowed(Some("s3cret"), &with("Bearer s3cret")));
        assert!(allowed(Some("s3cret"), &with("bearer  s3cret ")));
        assert!(!allowed(Some("s3cret"), &with("Bearer s3cre")));
        assert!(!allowed(Some("s3cret"), &with("Bearer s3crett")));
        assert!(!allowed(Some("s3cret"), &with("Basic s3cret")));
        assert!(!allowed(Some("s3cret"), &with("s3cret")));
    }
}
