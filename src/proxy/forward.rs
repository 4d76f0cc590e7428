//! The rules for retrying a request on another backend, and the Host a backend gets.

use http::{header, Method, Request};

use crate::upstream::body::RequestBody;
use crate::upstream::Backend;

/// Methods whose repetition has the same effect as one request (RFC 9110, 9.2.2), and any
/// request the client marked with an `Idempotency-Key`.
pub fn is_idempotent(method: &Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

/// A copy to send again after the backend failed before answering; None when the body was
/// streamed (it cannot be replayed).
pub fn replayable_copy(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let body = req.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Points `req` at `backend` when the client's Host is not passed on.
pub fn set_backend_host(req: &mut Request<RequestBody>, backend: &Backend) {
    if let Ok(v) = http::HeaderValue::from_str(&backend.addr.host_header()) {
        req.headers_mut().insert(header::HOST, v);
    }
}
