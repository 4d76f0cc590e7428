//! The check phase: what is refused or redirected before a request is routed.

use http::header::{self, HeaderValue};
use http::{request, Request, Response, StatusCode, Version};

use super::body::ResponseBody;
use super::error::{error_response, Cause, ProxyError};
use super::headers;

/// Refuses a request whose target, Host or framing a backend could read differently than
/// proxyd. An HTTP/1.x head met these rules in `http1::parse_request`, the one parse, and is
/// not checked twice; an h2 request (hyper's parse) meets them here.
pub fn check(parts: &request::Parts) -> Result<(), ProxyError> {
    if parts.version <= Version::HTTP_11 {
        return Ok(());
    }
    headers::check_request(parts)
}

/// A plain listener's answer when it only redirects: 308 to the same host and target over
/// https, method and body kept by the client (308, not 301).
pub fn redirect_https<B>(req: &Request<B>, port: u16) -> Response<ResponseBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority = h.parse::<http::uri::Authority>().ok()?;
            Some(authority.host().to_string())
        });
    let Some(host) = host else {
        return error_response(&ProxyError::new(
            Cause::BadRequest("missing-host"),
            "a redirect needs the request's host",
        ));
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        443 => format!("https://{host}{target}"),
        p => format!("https://{host}:{p}{target}"),
    };
    redirect(StatusCode::PERMANENT_REDIRECT, &location).unwrap_or_else(|e| error_response(&e))
}

/// A `status` redirect to `location`, with no body (as nginx's `return 301 URL` sends
/// none worth reading); a location that cannot be a header value (from a request's
/// strange host) is a bad request.
pub fn redirect(status: StatusCode, location: &str) -> Result<Response<ResponseBody>, ProxyError> {
    let v = HeaderValue::from_str(location).map_err(|_| {
        ProxyError::new(
            Cause::BadRequest("bad-host"),
            format_args!("unusable redirect location {location:?}"),
        )
    })?;
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, v);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(resp: &Response<ResponseBody>) -> &str {
        resp.headers()[header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn redirect_keeps_host_and_target() {
        let req = Request::post("/a/b?c=1")
            .header("host", "example.com:8080")
            .body(())
            .unwrap();
        let resp = redirect_https(&req, 443);
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location(&resp), "https://example.com/a/b?c=1");
        let resp = redirect_https(&req, 8443);
        assert_eq!(location(&resp), "https://example.com:8443/a/b?c=1");
    }

    #[test]
    fn redirect_prefers_the_targets_authority() {
        let req = Request::get("http://site.test:81/x")
            .header("host", "other.test")
            .body(())
            .unwrap();
        assert_eq!(location(&redirect_https(&req, 443)), "https://site.test/x");
    }

    #[test]
    fn redirect_needs_a_host() {
        let req = Request::get("/").body(()).unwrap();
        let resp = redirect_https(&req, 443);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["proxyd-error"], "missing-host");
        let req = Request::get("/").header("host", "a b").body(()).unwrap();
        assert_eq!(redirect_https(&req, 443).status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn check_refuses_what_a_backend_could_misread() {
        let h2 = |b: http::request::Builder| b.version(Version::HTTP_2).body(()).unwrap();
        let ok = h2(Request::get("/").header("host", "a"));
        assert!(check(&ok.into_parts().0).is_ok());
        let two_hosts = h2(Request::get("/").header("host", "a").header("host", "b"));
        let e = check(&two_hosts.into_parts().0).unwrap_err();
        assert_eq!(e.cause, Cause::BadRequest("duplicate-host"));
        let connect = h2(Request::connect("a:443"));
        let e = check(&connect.into_parts().0).unwrap_err();
        assert_eq!(e.cause, Cause::BadRequest("connect-not-supported"));
        // An HTTP/1.1 head is checked by its parse (http1's tests), not again here.
        let parsed = Request::get("/").header("host", "a").header("host", "b");
        assert!(check(&parsed.body(()).unwrap().into_parts().0).is_ok());
    }
}
