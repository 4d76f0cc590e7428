//! The ONE mapping from errors to responses. The error types themselves are the ground
//! floor's (`crate::error`), re-exported here for the pipeline.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
pub use crate::error::{Cause, ProxyError, Side};
use crate::state::pages::Pages;

/// How long a client should wait after a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The response proxyd sends for `err`: the status, `proxyd-error: <code>`, and a short body.
pub fn error_response(err: &ProxyError) -> Response<ResponseBody> {
    error_response_with(err, None)
}

/// `error_response` with the body of `pages`' page for its status, when there is one (the
/// maintenance page for `Cause::Maintenance`); the headers stay the same.
pub fn error_response_with(err: &ProxyError, pages: Option<&Pages>) -> Response<ResponseBody> {
    let cause = err.cause;
    let status = cause.status();
    let page = pages.and_then(|p| match cause {
        Cause::Maintenance => p.maintenance(),
        _ => p.get(status.as_u16()),
    });
    let (body, content_type) = match page {
        Some(page) => (page.body.clone(), page.content_type.clone()),
        None => (
            Bytes::from(format!(
                "{} {}\nproxyd: {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                cause.code()
            )),
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
    };
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert("proxyd-error", HeaderValue::from_static(cause.code()));
    if let Some(secs) = err.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER.as_secs()),
        );
    }
    if let Some(extra) = &err.header {
        h.insert(extra.0.clone(), extra.1.clone());
    } else if cause == Cause::MethodNotAllowed {
        // Static files and the health path take these.
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if cause.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// `error_response` as raw HTTP/1.1 bytes, for the rare answer written below hyper (a client
/// whose request head is refused before hyper parses it, or never finished), with the
/// top level's `pages` when the server has them.
pub fn error_response_h1(cause: Cause, pages: Option<&Pages>) -> Vec<u8> {
    let (parts, body) = error_response_with(&ProxyError::new(cause, ""), pages).into_parts();
    let body = match body {
        ResponseBody::Full(Some(b)) => b,
        _ => Bytes::new(),
    };
    let reason = parts.status.canonical_reason().unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_changes_the_body_and_keeps_the_headers() {
        let snap = crate::proxy::ctx::testing::snapshot(
            "upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n",
        );
        let err = ProxyError::new(Cause::QueueDeadline, "x").retry_after(9);
        let plain = error_response_with(&err, Some(&snap.error_pages));
        assert_eq!(plain.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(plain.headers()["retry-after"], "9");
        assert_eq!(plain.headers()["proxyd-error"], "queue-deadline");
        let raw = String::from_utf8(error_response_h1(Cause::HeadersTooLarge, None)).unwrap();
        assert!(raw.starts_with("HTTP/1.1 431 "), "{raw}");
        assert!(raw.contains("connection: close\r\n"), "{raw}");
    }
}
