//! The ground floor every module may use: which side failed (`Side`), what failed (`Cause`,
//! one status and one `proxyd-error` code each), and the pipeline's error (`ProxyError`).
//! The one mapping from an error to a response lives in `proxy::error`.

use std::fmt;

use http::StatusCode;

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// What failed. Each cause has one status and one `proxyd-error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Malformed request, bad framing headers, smuggling attempt.
    BadRequest(&'static str),
    HeadersTooLarge,
    BodyTooLarge,
    ClientHeaderTimeout,
    ClientBodyTimeout,
    /// A rate limit (`limits.rate`, `routes[].rate`) has no token for this request.
    RateLimited,
    NoRoute,
    /// A static route has no file for the request (and no fallback).
    NotFound,
    /// A static route answers GET and HEAD only (and has no fallback), or the route's
    /// `methods` leave the request's out; the error carries the `Allow` header.
    MethodNotAllowed,
    /// The client's address is refused by the route's `allow`/`deny` lists.
    Forbidden,
    /// The route's `basic_auth` refused the request's credentials (or it had none); the
    /// error carries the `WWW-Authenticate` challenge.
    Unauthorized,
    /// The route is in maintenance (`maintenance`): 503 with the maintenance page.
    Maintenance,
    NoBackend,
    /// Every backend slot is taken and the queue holds `queue.max` requests (a memory guard).
    QueueFull,
    /// A queued request waited `queue.timeout` for a slot.
    QueueTimeout,
    /// The request's expected wait in the queue is longer than `queue.timeout`: refused at
    /// once rather than after waiting in vain.
    QueueDeadline,
    /// Under persistent overload, the request could not be served within `queue.target`.
    QueueOverload,
    UpstreamConnectRefused,
    UpstreamConnectTimeout,
    UpstreamConnectFailed,
    /// The TLS handshake with an `https://` backend failed (certificate not trusted, name
    /// mismatch, no common protocol).
    UpstreamTls,
    /// The backend closed or reset the connection before a complete response head.
    UpstreamClosed,
    UpstreamResponseTimeout,
    /// The backend sent something that is not HTTP.
    UpstreamProtocol,
    Internal,
}

impl Cause {
    pub fn status(self) -> StatusCode {
        match self {
            Cause::BadRequest(_) => StatusCode::BAD_REQUEST,
            Cause::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Cause::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Cause::ClientHeaderTimeout | Cause::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Cause::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Cause::NoRoute | Cause::NotFound => StatusCode::NOT_FOUND,
            Cause::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Cause::Forbidden => StatusCode::FORBIDDEN,
            Cause::Unauthorized => StatusCode::UNAUTHORIZED,
            Cause::Maintenance => StatusCode::SERVICE_UNAVAILABLE,
            Cause::NoBackend
            | Cause::QueueFull
            | Cause::QueueTimeout
            | Cause::QueueDeadline
            | Cause::QueueOverload => StatusCode::SERVICE_UNAVAILABLE,
            Cause::UpstreamConnectRefused
            | Cause::UpstreamConnectTimeout
            | Cause::UpstreamConnectFailed
            | Cause::UpstreamTls
            | Cause::UpstreamClosed
            | Cause::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            Cause::UpstreamResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            Cause::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `proxyd-error` header value.
    pub fn code(self) -> &'static str {
        match self {
            Cause::BadRequest(code) => code,
            Cause::HeadersTooLarge => "headers-too-large",
            Cause::BodyTooLarge => "body-too-large",
            Cause::ClientHeaderTimeout => "client-header-timeout",
            Cause::ClientBodyTimeout => "client-body-timeout",
            Cause::RateLimited => "rate-limited",
            Cause::NoRoute => "no-route",
            Cause::NotFound => "not-found",
            Cause::MethodNotAllowed => "method-not-allowed",
            Cause::Forbidden => "forbidden",
            Cause::Unauthorized => "unauthorized",
            Cause::Maintenance => "maintenance",
            Cause::NoBackend => "no-healthy-backend",
            Cause::QueueFull => "queue-full",
            Cause::QueueTimeout => "queue-timeout",
            Cause::QueueDeadline => "queue-deadline",
            Cause::QueueOverload => "queue-overload",
            Cause::UpstreamConnectRefused => "upstream-connect-refused",
            Cause::UpstreamConnectTimeout => "upstream-connect-timeout",
            Cause::UpstreamConnectFailed => "upstream-connect-failed",
            Cause::UpstreamTls => "upstream-tls-failed",
            Cause::UpstreamClosed => "upstream-closed-early",
            Cause::UpstreamResponseTimeout => "upstream-response-timeout",
            Cause::UpstreamProtocol => "upstream-bad-response",
            Cause::Internal => "internal",
        }
    }

    pub fn side(self) -> Side {
        match self {
            Cause::BadRequest(_)
            | Cause::HeadersTooLarge
            | Cause::BodyTooLarge
            | Cause::ClientHeaderTimeout
            | Cause::ClientBodyTimeout
            | Cause::RateLimited
            | Cause::NotFound
            | Cause::MethodNotAllowed
            | Cause::Forbidden
            | Cause::Unauthorized => Side::Client,
            Cause::NoRoute
            | Cause::Maintenance
            | Cause::NoBackend
            | Cause::QueueFull
            | Cause::QueueTimeout
            | Cause::QueueDeadline
            | Cause::QueueOverload
            | Cause::Internal => Side::Internal,
            _ => Side::Upstream,
        }
    }

    /// After these the client connection is not trusted for another request (a request
    /// refused by a rule of its route, or for a missing file, was well-formed: its
    /// connection stays).
    pub fn closes_connection(self) -> bool {
        self.side() == Side::Client
            && !matches!(
                self,
                Cause::RateLimited
                    | Cause::NotFound
                    | Cause::MethodNotAllowed
                    | Cause::Forbidden
                    | Cause::Unauthorized
            )
    }
}

/// An error in the pipeline: its cause, whether a retry elsewhere is safe, and its source.
#[derive(Debug)]
pub struct ProxyError {
    pub cause: Cause,
    /// True when nothing of the request reached a backend, so any method may be retried.
    pub nothing_sent: bool,
    pub detail: String,
    /// Seconds for `Retry-After` (a 503 says 1 without it).
    pub retry_after: Option<u32>,
    /// A header the response must carry: `Allow` with a 405, `WWW-Authenticate` with a 401.
    /// (Boxed: most errors carry none, and the error travels in every `Result`.)
    pub header: Option<Box<(http::HeaderName, http::HeaderValue)>>,
}

impl ProxyError {
    pub fn new(cause: Cause, detail: impl fmt::Display) -> ProxyError {
        ProxyError {
            cause,
            nothing_sent: false,
            detail: detail.to_string(),
            retry_after: None,
            header: None,
        }
    }

    /// Adds `name: value` to the error's response.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> ProxyError {
        self.header = Some(Box::new((name, value)));
        self
    }

    /// Tells the client to come back in `secs` seconds.
    pub fn retry_after(mut self, secs: u32) -> ProxyError {
        self.retry_after = Some(secs);
        self
    }

    pub fn nothing_sent(mut self) -> ProxyError {
        self.nothing_sent = true;
        self
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause.code(), self.detail)
    }
}

impl std::error::Error for ProxyError {}
