//! The rules for retrying a request on another backend, as plain decisions: what may be
//! tried again, when an attempt is the last, and when a failed backend counts as dead.

use http::{Method, Request};

use super::error::Cause;
use crate::upstream::body::RequestBody;

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

/// Whether the attempt after `tried` failed ones is the last: `attempts` (the first
/// included) reached, or no other backend left to try. A workers upstream always has
/// another: a dead worker's replacement. `backends` is only asked when needed (it loads the
/// live list).
pub fn is_last(
    tried: usize,
    attempts: usize,
    dynamic: bool,
    backends: impl FnOnce() -> usize,
) -> bool {
    tried + 1 >= attempts || !(dynamic || backends() > tried + 1)
}

/// Whether an attempt should keep a copy of its request, to replay it if the backend dies:
/// only an idempotent request with a body held whole (and small enough), not on the last
/// attempt, and once per request, so a request that kills its worker takes down at most two.
pub fn wants_spare(idempotent: bool, replayable: bool, last: bool, replayed: bool) -> bool {
    idempotent && replayable && !last && !replayed
}

/// Whether a failure of `cause` means the backend died: it closed, or (a worker past
/// `request_timeout`, replaced as hung) it timed out. A static server that is slow is not
/// dead.
pub fn died(cause: Cause, dynamic: bool) -> bool {
    match cause {
        Cause::UpstreamClosed => true,
        Cause::UpstreamResponseTimeout => dynamic,
        _ => false,
    }
}

/// How a request goes again after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// None of it reached the backend: always safe to send elsewhere.
    Unsent,
    /// It reached a backend that died before answering: its spare copy is sent.
    Replayed,
}

/// What goes again after a failed attempt, if anything: the request handed back `unsent`, or
/// (the backend `died`) the `spare` copy; nothing after the `last` attempt. The retry budget
/// is asked after this.
pub fn again<R>(unsent: Option<R>, spare: Option<R>, died: bool, last: bool) -> Option<(R, Again)> {
    if last {
        return None;
    }
    match (unsent, spare) {
        (Some(r), _) => Some((r, Again::Unsent)),
        (None, Some(copy)) if died => Some((copy, Again::Replayed)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_goes_again_unless_last() {
        assert_eq!(
            again(Some("req"), None, false, false),
            Some(("req", Again::Unsent))
        );
        // The unsent request itself wins over a spare copy, whatever the cause.
        assert_eq!(
            again(Some("req"), Some("copy"), true, false),
            Some(("req", Again::Unsent))
        );
        assert_eq!(again(Some("req"), None, true, true), None);
    }

    #[test]
    fn a_spare_is_replayed_only_after_a_death() {
        assert_eq!(
            again(None, Some("copy"), true, false),
            Some(("copy", Again::Replayed))
        );
        assert_eq!(again(None, Some("copy"), false, false), None);
        assert_eq!(again(None, Some("copy"), true, true), None);
        assert_eq!(again::<&str>(None, None, true, false), None);
    }

    #[test]
    fn deaths() {
        assert!(died(Cause::UpstreamClosed, false));
        assert!(died(Cause::UpstreamClosed, true));
        assert!(died(Cause::UpstreamResponseTimeout, true));
        assert!(!died(Cause::UpstreamResponseTimeout, false));
        assert!(!died(Cause::UpstreamConnectRefused, true));
    }

    #[test]
    fn last_attempts() {
        let never = || -> usize { panic!("backends asked needlessly") };
        // attempts reached
        assert!(is_last(2, 3, true, never));
        assert!(is_last(0, 1, false, never));
        // workers: another one comes
        assert!(!is_last(0, 3, true, never));
        // servers: as many as there are
        assert!(!is_last(0, 3, false, || 2));
        assert!(is_last(1, 3, false, || 2));
        assert!(is_last(0, 3, false, || 1));
    }

    #[test]
    fn spares() {
        assert!(wants_spare(true, true, false, false));
        assert!(!wants_spare(false, true, false, false));
        assert!(!wants_spare(true, false, false, false));
        assert!(!wants_spare(true, true, true, false));
        assert!(!wants_spare(true, true, false, true));
    }

    #[test]
    fn idempotence() {
        let none = http::HeaderMap::new();
        assert!(is_idempotent(&Method::GET, &none));
        assert!(is_idempotent(&Method::PUT, &none));
        assert!(!is_idempotent(&Method::POST, &none));
        assert!(!is_idempotent(&Method::PATCH, &none));
        let mut keyed = http::HeaderMap::new();
        keyed.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        assert!(is_idempotent(&Method::POST, &keyed));
    }

    #[test]
    fn copies_only_held_bodies() {
        let req = Request::put("/x")
            .header("a", "1")
            .body(RequestBody::Buffered {
                data: bytes::Bytes::from_static(b"hi"),
                trailers: None,
            })
            .unwrap();
        let copy = replayable_copy(&req).unwrap();
        assert_eq!(copy.method(), Method::PUT);
        assert_eq!(copy.uri(), "/x");
        assert_eq!(copy.headers()["a"], "1");
        assert_eq!(copy.body().buffered_len(), Some(2));
    }
}
