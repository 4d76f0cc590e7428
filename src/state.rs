//! The runtime state one request sees: routes, upstream groups, rate limits and settings,
//! built from a validated config, served behind an `ArcSwap`. A reload builds a new snapshot
//! (keeping what did not change) and swaps it in; requests in flight finish on the one they
//! started with.

pub mod answer;
pub mod pages;
pub mod route;
pub mod rules;
pub mod site;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::config::fingerprint::fingerprint;
use crate::config::{addr, compression, ConfigError, Loaded, Ready, ServerAddr};
// The pipeline's body limits: moves here once proxy/body.rs is free (tests/house.rs PENDING).
use crate::limits::RateLimiter;
use crate::upstream::connect::Connector;
use crate::upstream::discovery::{self, Target};
use crate::upstream::Upstream;
use route::{HostMatch, Router};
pub use site::StaticSite;

/// What `proxyd check` adds to the config's own checks for the runtime state: each upstream's
/// TLS files are read (`upstream::tls::check`), then the whole snapshot is built as serving
/// will build it. Errors are located in the config.
pub fn check(loaded: &Loaded) -> Result<(), ConfigError> {
    crate::upstream::tls::check(loaded)?;
    Snapshot::build(loaded).map(drop)
}

pub struct Snapshot {
    /// Picks an index into `routes`.
    pub router: Router,
    pub routes: Vec<RouteInfo>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub body_limits: BodyLimits,
    pub request_id: HeaderName,
    pub preserve_host: bool,
    pub debug_headers: bool,
    /// `limits.rate.per_ip`: the whole proxy's rate limit per client IP.
    pub rate: Option<Arc<RateLimiter>>,
    /// `error_pages`: for errors before a route is known (and routes without their own).
    pub error_pages: Arc<pages::Pages>,
    /// The maintenance switch (kept across reloads) and its settings.
    pub maintenance: pages::MaintenanceState,
    /// The top level's header rules: what a request no route matched gets.
    pub rules: rules::RouteRules,
    /// `tracing:`: the trace decision each request makes (None: off, nothing traced).
    pub tracing: Option<crate::obs::otel::Sampler>,
}

/// A configured route: its name (the metrics label), its upstream's index (a static route's
/// fallback, if any) and its files.
pub struct RouteInfo {
    pub name: Arc<str>,
    pub upstream: Option<usize>,
    /// `routes[].static`: files answer first.
    pub files: Option<Arc<StaticSite>>,
    /// `routes[].rate`.
    pub rate: Option<Arc<RateLimiter>>,
    /// The compression in force on this route (its own, else the top level's); None: off.
    pub compression: Option<Arc<crate::config::Compression>>,
    /// `routes[].redirect`: the route answers every request with it.
    pub redirect: Option<Box<answer::RedirectRule>>,
    /// `routes[].methods`: the methods it takes (others: 405).
    pub methods: Option<Box<answer::Methods>>,
    /// The body limits with the route's `max_body` and `timeouts.client_body`, when it has
    /// either (else the snapshot's).
    pub body_limits: Option<BodyLimits>,
    /// `routes[].timeouts.response`: its upstream's response time-out on this route.
    pub response_timeout: Option<Duration>,
    /// `routes[].allow`, `deny` and `basic_auth`; None: anyone may use the route.
    pub access: Option<Arc<crate::limits::access::Access>>,
    /// Its error pages (its own over the top level's); `intercept_errors`; whether the
    /// maintenance switch covers it.
    pub pages: RoutePages,
    /// Header rules (the top level's merged in) and path rewrites.
    pub rules: rules::RouteRules,
}

/// A route's error pages and maintenance.
pub struct RoutePages {
    pub pages: Arc<pages::Pages>,
    pub intercept: bool,
    pub maintenance: bool,
}

impl Snapshot {
    /// Makes `metrics`' handles for this snapshot's upstreams and routes.
    pub fn prepare_metrics(&self, metrics: &crate::obs::metrics::Metrics) {
        // A static route's files are counted under no upstream, its misses under its fallback.
        let files = crate::obs::metrics::NO_UPSTREAM;
        let routes = self.routes.iter().flat_map(|r| {
            let upstream = r.upstream.and_then(|i| self.upstreams.get(i));
            let upstream = upstream.map(|u| (&*r.name, &*u.name));
            let files = r.files.as_ref().map(|_| (&*r.name, files));
            upstream.into_iter().chain(files)
        });
        metrics.prepare(self.upstreams.iter().map(|u| &*u.name), routes);
    }

    /// Starts the active health checks of its upstreams that have `health:` (those kept from
    /// an earlier snapshot run theirs already). Call it on the runtime that serves it.
    pub fn start_health_checks(&self) {
        for u in &self.upstreams {
            u.start_health_checks();
        }
    }

    /// Waits until no backend awaits its first health check's verdict: at most the longest
    /// `health.timeout` plus a second, as each first check ends within its time-out.
    pub async fn health_settled(&self) {
        let longest = self
            .upstreams
            .iter()
            .filter_map(|u| u.health().map(|h| h.timeout))
            .max();
        let Some(longest) = longest else { return };
        let deadline = tokio::time::Instant::now() + longest + Duration::from_secs(1);
        while self.upstreams.iter().any(|u| u.checking() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every upstream's live figures, for a metrics scrape.
    pub fn figures(&self) -> Vec<crate::obs::figures::UpstreamFigures> {
        self.upstreams.iter().map(|u| u.figures()).collect()
    }

    /// Starts looking up the host names and SRV names of its upstreams that are not looked
    /// up yet (at start; after a reload, those of new or changed upstreams), with the
    /// resolver `loaded` sets. Fails only when there is no resolver to ask (no
    /// /etc/resolv.conf and no `resolver.nameservers`); a name that does not resolve is no
    /// error. Runs in the runtime the lookups are to run in.
    pub fn start_discovery(&self, loaded: &Loaded) -> Result<(), ConfigError> {
        let mut resolver = None;
        for up in &self.upstreams {
            if up.names.is_empty() || up.names.started() {
                continue;
            }
            let r = match &resolver {
                Some(r) => r,
                None => resolver.insert(Arc::new(
                    discovery::Resolver::new(&loaded.config)
                        .map_err(|m| ConfigError::new(&loaded.file, None, m))?,
                )),
            };
            discovery::start(up, r);
        }
        Ok(())
    }

    /// Whether the upstreams are ready by `rule` (`health_path`, `/readyz`): an upstream is
    /// when it has a ready backend and its workers are not crash-looping (it refuses all
    /// requests then).
    pub fn ready_by(&self, rule: Ready) -> bool {
        let ready = |u: &Arc<Upstream>| u.ready_count() > 0 && !u.is_failed();
        match rule {
            Ready::Any => self.upstreams.iter().any(ready),
            Ready::Every => self.upstreams.iter().all(ready),
            Ready::Serving => true,
        }
    }

    pub fn build(loaded: &Loaded) -> Result<Snapshot, ConfigError> {
        Snapshot::build_reusing(loaded, None)
    }

    /// Builds from `loaded`, keeping each upstream of `previous` (with its pools, counters,
    /// queue and workers) whose configuration did not change.
    pub fn build_reusing(
        loaded: &Loaded,
        previous: Option<(&Snapshot, &Loaded)>,
    ) -> Result<Snapshot, ConfigError> {
        let cfg = &loaded.config;
        let fail = |m: String| ConfigError::new(&loaded.file, None, m);
        let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
        for (name, up) in &cfg.upstreams {
            let kept = previous.and_then(|(snap, old)| {
                let before = old.config.upstreams.get(name)?;
                // A derived queue.max follows limits.max_connections.
                let same_max = before.queue.max_or(old.config.limits.max_connections)
                    == up.queue.max_or(cfg.limits.max_connections);
                // Its names' tasks keep the resolver they started with.
                let same_dns = !up.uses_names() || {
                    let dns = |c: &crate::config::Config| {
                        crate::config::fingerprint::strip_locations(&format!(
                            "{:?}{:?}",
                            c.resolver, c.discovery
                        ))
                    };
                    dns(&old.config) == dns(cfg)
                };
                (old.dir == loaded.dir
                    && fingerprint(before) == fingerprint(up)
                    && same_max
                    && same_dns)
                    .then(|| snap.upstreams.iter().find(|u| *u.name == **name).cloned())
                    .flatten()
            });
            if let Some(u) = kept {
                upstreams.push(u);
                continue;
            }
            // A workers upstream starts empty: its supervisor adds each worker once ready.
            // Host names start empty too: `start_discovery` looks them up.
            let mut fixed = Vec::new();
            let mut names = Vec::new();
            let mut https = false;
            for s in &up.servers {
                let (server, weight) = addr::parse_server_entry(&s.value).map_err(fail)?;
                https |= server.is_tls();
                match server {
                    // With the entry as written: the Host of its health checks.
                    ServerAddr::Fixed(a) => fixed.push((a, weight, addr::written_host(&s.value))),
                    ServerAddr::Name(n) => names.push(Target::Host(n, weight)),
                }
            }
            if let Some(s) = &up.srv {
                let srv = addr::parse_srv(&s.value).map_err(fail)?;
                https |= srv.tls;
                names.push(Target::Srv(srv));
            }
            let connector = Connector::new(name, up, &loaded.dir, https).map_err(fail)?;
            let queue_max = up.queue.max_or(cfg.limits.max_connections);
            upstreams.push(Upstream::new(name, fixed, names, up, connector, queue_max));
        }
        let kept = previous.map(|(snap, old)| crate::limits::rate::Kept {
            loaded: old,
            global: snap.rate.clone(),
            routes: snap.routes.iter().map(|r| r.rate.clone()).collect(),
        });
        let (rate, mut route_rates) = crate::limits::rate::build(loaded, kept);
        let index = |name: &str| upstreams.iter().position(|u| &*u.name == name);
        let body_limits = BodyLimits {
            max_body: cfg.limits.max_body,
            buffer_body: cfg.limits.buffer_body,
            read_timeout: cfg.timeouts.client_body,
            buffer_response: cfg.limits.buffer_response,
        };
        let (error_pages, mut route_pages) = pages::build(loaded)?;
        // No route chosen for maintenance: the switch covers them all.
        let all_maintained = !cfg.routes.iter().any(|r| r.maintenance);
        let (router, routes) = if cfg.routes.is_empty() {
            let all = RouteInfo {
                name: "/".into(),
                upstream: Some(0),
                files: None,
                rate: None,
                compression: cfg.compression.clone().map(Arc::new),
                redirect: None,
                methods: None,
                body_limits: None,
                response_timeout: None,
                access: None,
                pages: RoutePages {
                    pages: error_pages.clone(),
                    intercept: false,
                    maintenance: true,
                },
                rules: rules::build(cfg, None).map_err(fail)?,
            };
            (Router::new([(None, "/".to_string(), 0)]), vec![all])
        } else {
            let kept_access = previous.map(|(snap, old)| {
                let rules: Vec<_> = snap.routes.iter().map(|r| r.access.clone()).collect();
                (old, rules)
            });
            let kept_access = kept_access.as_ref().map(|(o, r)| (*o, r.as_slice()));
            let mut entries = Vec::with_capacity(cfg.routes.len());
            let mut routes = Vec::with_capacity(cfg.routes.len());
            for (i, r) in cfg.routes.iter().enumerate() {
                let host = match &r.host {
                    Some(h) => Some(HostMatch::parse(&h.value).map_err(fail)?),
                    None => None,
                };
                let target = r
                    .upstream
                    .as_ref()
                    .or(r.files.as_ref().and_then(|f| f.fallback.as_ref()));
                let upstream = match target {
                    Some(u) => Some(
                        index(&u.value)
                            .ok_or_else(|| fail(format!("unknown upstream {}", u.value)))?,
                    ),
                    None => None,
                };
                let files = match &r.files {
                    Some(f) => Some(Arc::new(
                        StaticSite::open(f, &loaded.dir, &r.path).map_err(fail)?,
                    )),
                    None => None,
                };
                let name = r.name.clone().unwrap_or_else(|| {
                    let host = r.host.as_ref().map_or("", |h| h.value.as_str());
                    format!("{host}{}", r.path)
                });
                entries.push((host, r.path.clone(), i));
                routes.push(RouteInfo {
                    name: name.into(),
                    upstream,
                    files,
                    rate: route_rates.get_mut(i).and_then(Option::take),
                    compression: compression::effective(
                        cfg.compression.as_ref(),
                        r.compression.as_ref(),
                    )
                    .map(|c| Arc::new(c.into_owned())),
                    redirect: r
                        .redirect
                        .as_ref()
                        .map(|rd| Box::new(answer::RedirectRule::new(rd))),
                    methods: r.methods.as_ref().map(|m| {
                        Box::new(answer::Methods::new(m.iter().map(|s| s.value.as_str())))
                    }),
                    body_limits: route_body_limits(&body_limits, r),
                    response_timeout: r
                        .timeouts
                        .as_ref()
                        .and_then(|t| t.response.as_ref())
                        .map(|s| s.value.0),
                    access: crate::limits::access::build(loaded, r, kept_access)?,
                    pages: RoutePages {
                        pages: std::mem::take(&mut route_pages[i]),
                        intercept: r.intercept_errors,
                        maintenance: r.maintenance || all_maintained,
                    },
                    rules: rules::build(cfg, Some(r)).map_err(fail)?,
                });
            }
            (Router::new(entries), routes)
        };
        let request_id = HeaderName::from_bytes(cfg.headers.request_id.as_bytes())
            .map_err(|e| fail(format!("headers.request_id: {e}")))?;
        Ok(Snapshot {
            router,
            routes,
            upstreams,
            body_limits,
            request_id,
            preserve_host: cfg.headers.preserve_host,
            debug_headers: cfg.headers.debug,
            rate,
            error_pages,
            maintenance: pages::MaintenanceState::build(
                loaded,
                previous.map(|(snap, _)| snap.maintenance.switch.clone()),
            ),
            rules: rules::build(cfg, None).map_err(fail)?,
            tracing: cfg
                .tracing
                .as_ref()
                .map(crate::obs::otel::Sampler::from_config),
        })
    }
}

/// `all` with a route's `max_body` and `timeouts.client_body`; None when it sets neither.
fn route_body_limits(all: &BodyLimits, r: &crate::config::Route) -> Option<BodyLimits> {
    let read_timeout = r
        .timeouts
        .as_ref()
        .and_then(|t| t.client_body.as_ref())
        .map(|s| s.value.0);
    if r.max_body.is_none() && read_timeout.is_none() {
        return None;
    }
    Some(BodyLimits {
        max_body: r.max_body.unwrap_or(all.max_body),
        read_timeout: read_timeout.unwrap_or(all.read_timeout),
        ..*all
    })
}

/// Limits applied while reading a client's request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_body: u64,
    pub buffer_body: u64,
    /// Longest wait between two reads.
    pub read_timeout: Duration,
    /// Memory for a worker's response read ahead of its client; the rest goes to a file.
    pub buffer_response: u64,
}
