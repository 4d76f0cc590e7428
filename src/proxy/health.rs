//! A listener's `health_path` (HAProxy's `monitor-uri`): proxyd answers it itself, before
//! routing, rate limits and admission, so a load balancer's probes never reach an upstream and
//! are never refused for coming often. 200 while serving; 503 once shutdown has begun (before
//! the listeners close: `timeouts.shutdown_delay`) and while the upstreams are not ready by
//! `health_ready`. Like HAProxy's, these requests are neither logged nor counted: the server
//! asks [`answer`] before the pipeline and reports no outcome for what it answers.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::ResponseBody;
use super::error::{error_response, Cause, ProxyError};
use super::ConnInfo;
use crate::config::Ready;
use crate::state::Snapshot;

/// A listener's health path and when it says ready.
#[derive(Debug, Clone)]
pub struct HealthPath {
    pub path: Box<str>,
    pub ready: Ready,
}

/// The answer to `req` when it asks for its listener's health path (the path alone, byte for
/// byte; the query and the host do not matter), else None. `leaving`: shutdown has begun.
#[inline]
pub fn answer<B>(
    req: &Request<B>,
    snap: &Snapshot,
    conn: &ConnInfo,
    leaving: bool,
) -> Option<Response<ResponseBody>> {
    let health = conn.listener.health.as_ref()?;
    if req.uri().path() != &*health.path {
        return None;
    }
    Some(respond(req.method(), snap, health.ready, leaving, conn))
}

#[cold]
fn respond(
    method: &Method,
    snap: &Snapshot,
    rule: Ready,
    leaving: bool,
    conn: &ConnInfo,
) -> Response<ResponseBody> {
    let head = *method == Method::HEAD;
    let mut resp = if !head && *method != Method::GET {
        error_response(&ProxyError::new(
            Cause::MethodNotAllowed,
            format_args!("{method} on the health path"),
        ))
    } else {
        // Upstream names stay on the admin's /readyz: this port may be public.
        let (status, body) = if leaving {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if !snap.ready_by(rule) {
            let why = match rule {
                Ready::Every => "not ready: an upstream has no ready backend\n",
                _ => "not ready: no upstream has a ready backend\n",
            };
            (StatusCode::SERVICE_UNAVAILABLE, why)
        } else {
            (StatusCode::OK, "ok\n")
        };
        let mut resp = Response::new(match head {
            true => ResponseBody::empty(),
            false => ResponseBody::full(Bytes::from_static(body.as_bytes())),
        });
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        resp
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(hsts) = &conn.listener.hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::ctx::testing::{conn, snapshot};
    use super::super::ListenerSettings;
    use super::*;

    fn on(ready: Ready) -> ConnInfo {
        let mut c = conn("10.0.0.1:4000");
        c.listener = Arc::new(ListenerSettings {
            health: Some(HealthPath {
                path: "/healthz".into(),
                ready,
            }),
            ..Default::default()
        });
        c
    }

    fn req(method: &str, target: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .header("host", "anything")
            .body(())
            .unwrap()
    }

    const TWO: &str =
        "upstreams:\n  a:\n    servers: [\"127.0.0.1:9\"]\n  b:\n    servers: [\"127.0.0.1:9\"]\nroutes: [{ path: /, upstream: a }]\n";

    #[test]
    fn only_the_exact_path_is_answered() {
        let snap = snapshot(TWO);
        let c = on(Ready::Any);
        for other in ["/healthz/", "/healthzz", "/Healthz", "/", "/healthz%2F"] {
            assert!(
                answer(&req("GET", other), &snap, &c, false).is_none(),
                "{other}"
            );
        }
        for same in ["/healthz", "/healthz?lb=1", "http://elsewhere.test/healthz"] {
            let resp = answer(&req("GET", same), &snap, &c, false).expect(same);
            assert_eq!(resp.status(), StatusCode::OK, "{same}");
            assert_eq!(resp.headers()["cache-control"], "no-store");
        }
        // A listener without one answers nothing.
        let plain = conn("10.0.0.1:4000");
        assert!(answer(&req("GET", "/healthz"), &snap, &plain, false).is_none());
    }

    #[test]
    fn methods_draining_and_the_rule() {
        let snap = snapshot(TWO);
        let c = on(Ready::Any);
        let post = answer(&req("POST", "/healthz"), &snap, &c, false).unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()["allow"], "GET, HEAD");
        let head = answer(&req("HEAD", "/healthz"), &snap, &c, false).unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()["content-length"], "3");
        let leaving = answer(&req("GET", "/healthz"), &snap, &c, true).unwrap();
        assert_eq!(leaving.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Servers are ready from the start; a workers upstream is not until one is.
        let one_empty = snapshot(
            "upstreams:\n  a:\n    servers: [\"127.0.0.1:9\"]\n  w:\n    workers:\n      command: [\"sh\"]\nroutes: [{ path: /, upstream: a }]\n",
        );
        for (rule, status) in [
            (Ready::Any, StatusCode::OK),
            (Ready::Every, StatusCode::SERVICE_UNAVAILABLE),
            (Ready::Serving, StatusCode::OK),
        ] {
            let resp = answer(&req("GET", "/healthz"), &one_empty, &on(rule), false).unwrap();
            assert_eq!(resp.status(), status, "{rule:?}");
        }
    }
}
