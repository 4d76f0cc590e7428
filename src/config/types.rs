//! The configuration file's shape. Every struct denies unknown keys, so a typo is an error
//! with a line and column instead of a silently ignored setting.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{self, Secs};
use serde_saphyr::Spanned;

pub use super::access::BasicAuth;
pub use super::balance::{Balance, Eject, HashKey, Queue, Retries};
pub use super::compression::{Compression, Encoding, RouteCompression};
pub use super::discovery::{Discovery, Family, Resolver};
pub use super::health::Health;
pub use super::limits::{Cidr, Rate};
pub use super::pages::{ErrorPages, Maintenance};
pub use super::upgrade::Upgrade;
pub use super::upstream_tls::{UpstreamProtocol, UpstreamTls};
pub use super::workers::{Restart, Scaling, WorkerCount, WorkerHealth, WorkerListen, Workers};

/// The whole `proxy.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Vec<Listen>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default)]
    pub log: Log,
    /// Access logs; several may be written at once.
    #[serde(default)]
    pub access_log: Vec<AccessLog>,
    /// Runtime threads; default: one per core.
    #[serde(
        default,
        deserialize_with = "units::opt_count::<_, _, 1, 1024>",
        skip_serializing_if = "Option::is_none"
    )]
    pub threads: Option<usize>,
    /// How `threads` > 1 run: one current-thread runtime per thread, each accepting on every
    /// listener (`per_thread`, nginx's shared-nothing shape), or tokio's work-stealing
    /// `multi_thread` runtime.
    #[serde(default)]
    pub runtime: RuntimeShape,
    /// Address ranges of the proxies in front (load balancers): from them, the client IP is
    /// taken from `X-Forwarded-For` (the right-most untrusted address), and only they may
    /// send a PROXY protocol header when a listener takes one.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// A file proxyd writes its pid to once it serves (relative to this file), for
    /// `proxyd upgrade`, systemd's `PIDFile=` and logrotate scripts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<Spanned<String>>,
    /// The binary upgrade (SIGUSR2, `proxyd upgrade`, `POST /upgrade`).
    #[serde(default)]
    pub upgrade: Upgrade,
    /// Upstream responses compressed on the fly (off when absent); routes may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Spans of each request exported over OTLP/HTTP (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<super::tracing::Tracing>,
    /// Where the host names of `servers` and `srv` are looked up (default: /etc/resolv.conf).
    #[serde(default, skip_serializing_if = "Resolver::is_unset")]
    pub resolver: Resolver,
    /// How often those names are looked up again.
    #[serde(default, skip_serializing_if = "Discovery::is_unset")]
    pub discovery: Discovery,
    /// The bodies of the errors proxyd makes: status → file (relative to this file).
    #[serde(default, skip_serializing_if = "ErrorPages::is_empty")]
    pub error_pages: ErrorPages,
    /// The maintenance switch: its file, page and Retry-After.
    #[serde(default, skip_serializing_if = "Maintenance::is_unset")]
    pub maintenance: Maintenance,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub addr: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Overrides `limits.max_connections` for this listener.
    #[serde(
        default,
        deserialize_with = "units::opt_count::<_, _, 1, { units::MAX_CONNECTIONS }>",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<usize>,
    /// On a plain listener: answer every request with a 308 to https (nginx's
    /// `return 308 https://$host$request_uri`), but for those a trusted proxy says came
    /// over https (`X-Forwarded-Proto: https` from `trusted_proxies`: a load balancer that
    /// terminated TLS).
    #[serde(default)]
    pub redirect_https: bool,
    /// The port in those redirects (default 443: none written).
    #[serde(
        default,
        deserialize_with = "units::opt_count::<_, _, 1, 65535>",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_https_port: Option<u16>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) whose source address
    /// becomes the client's; a connection without a valid one is closed.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// A path proxyd answers itself on this listener, whatever the host (HAProxy's
    /// `monitor-uri`): 200 while serving, 503 while shutting down or while the upstreams are
    /// not ready by `health_ready`. For load balancers that cannot reach the admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<Spanned<String>>,
    /// When `health_path` says ready (default `any`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_ready: Option<Spanned<Ready>>,
}

impl Listen {
    /// `health_ready` in force.
    pub fn health_ready(&self) -> Ready {
        self.health_ready.as_ref().map_or(Ready::Any, |r| r.value)
    }
}

/// When proxyd calls itself ready (`listen[].health_ready`, `admin.ready`); never while it
/// shuts down.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// At least one upstream has a ready backend.
    Any,
    /// Every upstream has a ready backend.
    Every,
    /// Whatever the upstreams: ready until shutdown begins.
    Serving,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Picked by SNI from each certificate's names; the one marked `default` (else the
    /// first) serves clients without SNI or with an unknown name.
    pub certs: Vec<CertPair>,
    /// Oldest TLS version accepted: "1.2" or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: Spanned<String>,
    /// Ask clients for certificates (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Strict-Transport-Security on every response of this listener, e.g.
    /// "max-age=63072000; includeSubDomains".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: Spanned<String>,
    /// `required`: no certificate, no connection; `optional`: verified when presented.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// The verified client certificate's subject goes upstream in this header (a client's
    /// own header of that name is always removed).
    #[serde(default = "default_subject_header")]
    pub subject_header: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub addr: Spanned<String>,
    /// When set, the admin's POST endpoints need `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Spanned<String>>,
    /// When `/readyz` says 200 (default `every`).
    #[serde(default = "every")]
    pub ready: Ready,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port`, `[v6]:port`, or `unix:/path`; every address a host name resolves to is
    /// a server, looked up again as its TTL says.
    #[serde(default)]
    pub servers: Vec<Spanned<String>>,
    /// An SRV name (`_http._tcp.app.service.consul`) whose targets are servers too, with
    /// their ports and weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<Spanned<String>>,
    #[serde(default = "default_connect_timeout", with = "units::nonzero_duration")]
    pub connect_timeout: Duration,
    /// Time allowed from sending the request to receiving the response head (504 past it;
    /// default 60s). Not for workers: theirs is `workers.request_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<Spanned<Secs>>,
    #[serde(default)]
    pub pool: Pool,
    /// App processes proxyd launches and supervises, instead of `servers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    #[serde(default)]
    pub balance: Balance,
    /// For `balance: hash`: `client_ip`, `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<Spanned<String>>,
    /// Requests in flight per server at most (`servers:`; workers have their own,
    /// `workers.concurrency`), 1 to 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Spanned<usize>>,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default)]
    pub eject: Eject,
    /// A backend that just became healthy ramps its weight up over this long (0: off).
    #[serde(default = "zero", with = "units::duration")]
    pub slow_start: Duration,
    /// Active health checks of the servers (off when absent; workers have theirs in
    /// `workers.health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// `http1` (default), `h2` (https:// servers, by ALPN) or `h2c` (cleartext HTTP/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Spanned<UpstreamProtocol>>,
    /// Verification of `https://` servers: CA bundle, server name, insecure_skip_verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl Upstream {
    /// Its servers come (also) from names looked up again and again.
    pub fn uses_names(&self) -> bool {
        self.srv.is_some()
            || self.servers.iter().any(|s| {
                matches!(
                    super::addr::parse_server_entry(&s.value),
                    Ok((super::ServerAddr::Name(_), _))
                )
            })
    }

    /// The pool settings in force: for workers, idle connections close well before the
    /// worker's own keep-alive could close them (so a reused connection never races it).
    pub fn effective_pool(&self) -> Pool {
        let mut pool = self.pool.clone();
        if let Some(w) = &self.workers {
            pool.idle_timeout = pool.idle_timeout.min(w.keepalive / 2);
        }
        pool
    }

    /// The protocol spoken to the servers.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol.as_ref().map(|p| p.value).unwrap_or_default()
    }

    /// Requests in flight per backend at most.
    pub fn concurrency(&self) -> usize {
        match &self.workers {
            Some(w) => w.concurrency,
            None => self.concurrency.as_ref().map_or(usize::MAX, |c| c.value),
        }
    }

    /// The time a backend has for a response head: `request_timeout` for workers.
    pub fn effective_response_timeout(&self) -> Duration {
        match &self.workers {
            Some(w) => w.request_timeout,
            None => self
                .response_timeout
                .as_ref()
                .map_or(DEFAULT_RESPONSE_TIMEOUT, |t| t.value.0),
        }
    }
}

/// The keepalive pool kept for each backend of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// 0 keeps none.
    #[serde(
        default = "default_max_idle",
        deserialize_with = "units::count::<_, _, 0, 100_000>"
    )]
    pub max_idle: usize,
    /// Must be shorter than the backend's own keep-alive time-out (gunicorn: 2 s), or a reused
    /// connection can race the backend closing it.
    #[serde(default = "default_idle_timeout", with = "units::nonzero_duration")]
    pub idle_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            max_idle: default_max_idle(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's label in metrics; default: host (if any) and path, e.g. `api.example.com/v1/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Exact (`api.example.com`) or wildcard (`*.example.com`); absent matches any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Spanned<String>>,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default = "default_path")]
    pub path: String,
    /// Where requests go; a `static` route has none (its miss goes to `static.fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Spanned<String>>,
    /// Files served from a directory instead of an upstream.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub files: Option<StaticFiles>,
    /// A request rate limit for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RouteRate>,
    /// This route's compression: its own settings, or `false` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<RouteCompression>,
    /// Answer with a redirect instead (nginx's `return 301 URL`): a route with neither
    /// upstream nor static.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// The methods this route takes (GET brings HEAD); others get 405 with `Allow`
    /// (nginx's `limit_except`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<Spanned<String>>>,
    /// This route's largest request body, in place of `limits.max_body` (413 past it).
    #[serde(
        default,
        with = "units::opt_any_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_body: Option<u64>,
    /// This route's time-outs, in place of the top level's and its upstream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Only clients in these ranges may use the route (others 403); empty: any client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Cidr>,
    /// Clients in these ranges get 403 (before `allow` is looked at).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Cidr>,
    /// HTTP Basic authentication against an htpasswd file (401 without valid credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Error pages of this route, over the top level's.
    #[serde(default, skip_serializing_if = "ErrorPages::is_empty")]
    pub error_pages: ErrorPages,
    /// An upstream answer of 400 or more that has an error page gets the page instead of its
    /// body (nginx's `proxy_intercept_errors on`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intercept_errors: bool,
    /// The maintenance switch covers this route (when no route says so, it covers all).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
    /// Header rules of this route's requests and responses, on top of `headers.request` /
    /// `headers.response` (docs/routes.md, "Headers").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<super::rules::RouteHeaders>,
    /// The route's path is taken off the path the upstream gets (`X-Forwarded-Prefix` says
    /// which); nginx's `proxy_pass` with a URI part.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
    /// Path rewrites for the upstream, the first match wins (after `strip_prefix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<super::rules::Rewrite>,
}

impl Route {
    /// Where an error about the route as a whole points: its upstream, its static root, its
    /// redirect's target, or its host (None: a route of only a path).
    pub fn place(&self) -> Option<&serde_saphyr::Location> {
        self.upstream
            .as_ref()
            .or(self.files.as_ref().map(|f| &f.root))
            .map(|s| &s.referenced)
            .or(self.redirect.as_ref().map(|r| &r.to.referenced))
            .or(self.host.as_ref().map(|h| &h.referenced))
    }
}

/// `routes[].redirect`: `{ to: "https://example.com{path}", status: 301, query: keep }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// The `Location`: a template (`{host}`, `{path}`, `{request_uri}`, ...).
    pub to: Spanned<super::template::Template>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Spanned<u16>>,
    /// `keep` (default): the request's query goes after `to` (`?` or `&`); `drop`: it does
    /// not. Not with a `to` that places it itself (`{query}`, `{request_uri}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Spanned<RedirectQuery>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedirectQuery {
    #[default]
    Keep,
    Drop,
}

/// `routes[].timeouts`: a route's own time-outs.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// How long its upstream has for a response, in place of the upstream's
    /// `response_timeout` (a worker's `request_timeout`, with its effect: a worker past it
    /// is hung and replaced). 504 past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Spanned<Secs>>,
    /// Between two reads of a request body, in place of `timeouts.client_body` (408).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_body: Option<Spanned<Secs>>,
}

/// `routes[].static`: files under `root` (relative to the config file) answer the route's
/// requests; the route's path is taken off the request's (`/static/a.css` is `root/a.css`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFiles {
    pub root: Spanned<String>,
    /// Files tried, in order, for a request naming a directory; none found: 404 (no listing).
    #[serde(default = "default_index")]
    pub index: Vec<String>,
    /// Encodings whose `FILE.br` / `FILE.zst` / `FILE.gz` are served to clients accepting them.
    #[serde(default)]
    pub precompressed: Vec<Spanned<Encoding>>,
    /// The `Cache-Control` header of every file served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Spanned<String>>,
    /// An upstream that gets the requests no file answers (nginx's `try_files $uri @app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Spanned<String>>,
}

/// `routes[].rate`: `{ limit: "50/s", burst: 100, by: ip }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRate {
    pub limit: Rate,
    /// Requests let through back to back (the bucket's size); default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Spanned<u32>>,
    /// `ip`: a bucket per client IP (default); `route`: one bucket for every client.
    #[serde(default)]
    pub by: RateBy,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateBy {
    #[default]
    Ip,
    Route,
}

/// `limits.rate`: `{ per_ip: "100/s", burst: 200, max_clients: 100000 }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per client IP, whatever the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<Rate>,
    /// Requests let through back to back (the bucket's size); default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Spanned<u32>>,
    /// Client IPs tracked per limit (this one and each route's); idle ones are forgotten
    /// first, and past it the least needed. Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<Spanned<usize>>,
}

impl RateLimits {
    pub fn max_clients(&self) -> usize {
        self.max_clients
            .as_ref()
            .map_or(super::limits::DEFAULT_MAX_CLIENTS, |m| m.value)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Request line plus headers (431 past it).
    #[serde(default = "default_max_header_bytes", with = "units::buffer")]
    pub max_header_bytes: u64,
    #[serde(
        default = "default_max_headers",
        deserialize_with = "units::count::<_, _, 1, 1000>"
    )]
    pub max_headers: usize,
    /// Largest request body accepted (413 past it).
    #[serde(default = "default_max_body", with = "units::size")]
    pub max_body: u64,
    /// Bodies up to this size are read whole into memory before a backend is picked; larger
    /// ones stream, except to workers: for them the rest goes to a temp file first.
    #[serde(default = "default_buffer_body", with = "units::buffer")]
    pub buffer_body: u64,
    /// A worker's response is read ahead of a slow client into this much memory, the rest to
    /// a temp file, so the worker is free once it has answered.
    #[serde(default = "default_buffer_response", with = "units::buffer")]
    pub buffer_response: u64,
    /// Concurrent HTTP/2 streams per client connection.
    #[serde(
        default = "default_max_streams",
        deserialize_with = "units::count::<_, _, 1, 10_000>"
    )]
    pub max_concurrent_streams: u32,
    /// Open client connections per listener; past it, accepting pauses.
    #[serde(
        default = "default_max_connections",
        deserialize_with = "units::count::<_, _, 1, { units::MAX_CONNECTIONS }>"
    )]
    pub max_connections: usize,
    /// Open client connections per client IP; more are closed as they are accepted.
    #[serde(
        default,
        deserialize_with = "units::opt_count::<_, _, 1, { units::MAX_CONNECTIONS }>",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections_per_ip: Option<u32>,
    /// Request rate limits per client IP.
    #[serde(default)]
    pub rate: RateLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body: default_max_body(),
            buffer_body: default_buffer_body(),
            buffer_response: default_buffer_response(),
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_streams(),
            max_connections_per_ip: None,
            rate: RateLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (408 past it).
    #[serde(default = "default_client_header", with = "units::nonzero_duration")]
    pub client_header: Duration,
    /// Between two reads of a request body (408 past it).
    #[serde(default = "default_client_body", with = "units::nonzero_duration")]
    pub client_body: Duration,
    /// A response write to the client that makes no progress for this long closes the
    /// connection (nginx's `send_timeout`), so a client that stops reading cannot hold a
    /// backend forever.
    #[serde(default = "default_client_send", with = "units::nonzero_duration")]
    pub client_send: Duration,
    /// An idle client keep-alive connection is closed after this.
    #[serde(default = "default_keepalive", with = "units::duration")]
    pub keepalive: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(default = "default_shutdown_grace", with = "units::duration")]
    pub shutdown_grace: Duration,
    /// On SIGTERM/SIGINT, before the listeners close: this long they still accept and serve
    /// while `health_path` and `/readyz` say 503, so a load balancer takes the instance out
    /// before it stops accepting (HAProxy's `grace`). Then the drain (`shutdown_grace`).
    #[serde(default = "zero", with = "units::duration")]
    pub shutdown_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: default_client_header(),
            client_body: default_client_body(),
            client_send: default_client_send(),
            keepalive: default_keepalive(),
            shutdown_grace: default_shutdown_grace(),
            shutdown_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// Kept when the client sends one, generated otherwise.
    #[serde(default = "default_request_id")]
    pub request_id: String,
    /// Pass the client's Host upstream (nginx's `proxy_set_header Host $host`).
    #[serde(default = "yes")]
    pub preserve_host: bool,
    /// Add `proxyd-backend` and `proxyd-reused` to responses (for tests and debugging).
    #[serde(default)]
    pub debug: bool,
    /// Edits of every request a backend gets (a route's own come on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<super::rules::RequestHeaderRules>,
    /// Edits of every response a client gets, proxyd's own errors included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<super::rules::ResponseHeaderRules>,
    /// `pass` (default: the backend's, none of proxyd's), `off`, or a text for every response.
    #[serde(default, skip_serializing_if = "super::rules::ServerHeader::is_pass")]
    pub server: super::rules::ServerHeader,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            request_id: default_request_id(),
            preserve_host: true,
            debug: false,
            request: None,
            response: None,
            server: super::rules::ServerHeader::Pass,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A tracing filter (`info`, `proxyd=debug`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

/// `runtime:` (docs/configuration.md, `threads`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeShape {
    /// One current-thread runtime per thread; a connection stays on the thread that
    /// accepted it; the control plane (admin, workers, signals, reload) on the main thread.
    #[default]
    PerThread,
    /// tokio's multi-thread runtime: tasks move between threads (work stealing).
    MultiThread,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One access log: `{ format: combined|json|healthd, path: FILE }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub format: Spanned<AccessLogFormat>,
    /// Relative to the config file; `-` or `stderr` for stderr. For `healthd`, the base name
    /// the hour is appended to (default `/var/log/nginx/healthd/application.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// nginx's `combined`.
    Combined,
    /// One JSON object per line.
    Json,
    /// Elastic Beanstalk's enhanced health format, one file per UTC hour.
    Healthd,
}

fn default_min_version() -> Spanned<String> {
    let here = serde_saphyr::Location::UNKNOWN;
    Spanned::new("1.2".to_string(), here, here)
}
fn default_subject_header() -> String {
    "x-client-subject".into()
}
fn zero() -> Duration {
    Duration::ZERO
}
fn every() -> Ready {
    Ready::Every
}
fn yes() -> bool {
    true
}
fn default_index() -> Vec<String> {
    vec!["index.html".into()]
}
fn default_path() -> String {
    "/".into()
}
/// `response_timeout` when it is not set.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_idle() -> usize {
    64
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_header_bytes() -> u64 {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_body() -> u64 {
    100 * 1024 * 1024
}
fn default_buffer_body() -> u64 {
    1024 * 1024
}
fn default_buffer_response() -> u64 {
    1024 * 1024
}
fn default_max_streams() -> u32 {
    256
}
fn default_max_connections() -> usize {
    10_000
}
fn default_client_header() -> Duration {
    Duration::from_secs(10)
}
fn default_client_body() -> Duration {
    Duration::from_secs(60)
}
fn default_client_send() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(75)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_request_id() -> String {
    "x-request-id".into()
}
fn default_log_level() -> String {
    "info".into()
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    fn upstream(extra: &str) -> crate::config::Upstream {
        let yaml = format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"sh\"]\n{extra}"
        );
        let loaded = load_str(&yaml, "t.yaml", ".".into()).unwrap();
        loaded.config.upstreams["app"].clone()
    }

    #[test]
    fn worker_pool_idles_less_than_the_worker_keeps_alive() {
        use std::time::Duration;
        let defaults = upstream("");
        assert_eq!(
            defaults.effective_pool().idle_timeout,
            Duration::from_secs(1)
        );
        // A pool configured past the worker's own keep-alive is brought under it.
        let long = upstream("      keepalive: 1s\n    pool: { idle_timeout: 30s }\n");
        assert_eq!(
            long.effective_pool().idle_timeout,
            Duration::from_millis(500)
        );
        assert_eq!(long.effective_response_timeout(), Duration::from_secs(30));
    }
}
