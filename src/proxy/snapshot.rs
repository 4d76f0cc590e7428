//! The runtime state one request sees: routes, upstream groups and settings, built from a
//! validated config. A reload builds a new snapshot and swaps it in; requests in flight finish
//! on the one they started with.

use std::sync::Arc;

use http::HeaderName;

use super::body::BodyLimits;
use super::route::{HostMatch, Router};
use crate::config::{addr, BackendAddr, ConfigError, Loaded};
use crate::upstream::connect::Connector;
use crate::upstream::Upstream;

pub struct Snapshot {
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    pub body_limits: BodyLimits,
    pub request_id: HeaderName,
    pub preserve_host: bool,
    pub debug_headers: bool,
}

impl Snapshot {
    pub fn build(loaded: &Loaded) -> Result<Snapshot, ConfigError> {
        let cfg = &loaded.config;
        let fail = |m: String| ConfigError::new(&loaded.file, None, m);
        let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
        for (name, up) in &cfg.upstreams {
            // A workers upstream starts empty: its supervisor adds each worker once ready.
            let addrs = up
                .servers
                .iter()
                .map(|s| addr::parse_server_entry(&s.value))
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            let https = addrs
                .iter()
                .any(|(a, _)| matches!(a, BackendAddr::Tls { .. }));
            let connector = Connector::new(name, up, &loaded.dir, https).map_err(fail)?;
            upstreams.push(Upstream::new(name, addrs, up, connector));
        }
        let index = |name: &str| upstreams.iter().position(|u| u.name == name);
        let router = if cfg.routes.is_empty() {
            Router::new([(None, "/".to_string(), 0)])
        } else {
            let mut routes = Vec::with_capacity(cfg.routes.len());
            for r in &cfg.routes {
                let host = match &r.host {
                    Some(h) => Some(HostMatch::parse(&h.value).map_err(fail)?),
                    None => None,
                };
                let target = index(&r.upstream.value)
                    .ok_or_else(|| fail(format!("unknown upstream {}", r.upstream.value)))?;
                routes.push((host, r.path.clone(), target));
            }
            Router::new(routes)
        };
        let request_id = HeaderName::from_bytes(cfg.headers.request_id.as_bytes())
            .map_err(|e| fail(format!("headers.request_id: {e}")))?;
        Ok(Snapshot {
            router,
            upstreams,
            body_limits: BodyLimits {
                max_body: cfg.limits.max_body,
                buffer_body: cfg.limits.buffer_body,
                read_timeout: cfg.timeouts.client_body,
                buffer_response: cfg.limits.buffer_response,
            },
            request_id,
            preserve_host: cfg.headers.preserve_host,
            debug_headers: cfg.headers.debug,
        })
    }
}
