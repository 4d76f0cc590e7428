//! Checks beyond the YAML's shape: addresses, references between sections, files, limits.
//! Each error points at the offending value.

use std::collections::HashMap;
use std::net::SocketAddr;

use http::HeaderName;
use serde_saphyr::Spanned;

use super::addr::{parse_listen, parse_nameserver, parse_server_entry, parse_srv};
use super::balance::{Balance, HashKey};
use super::host::HostMatch;
use super::load::{Checks, ConfigError, Loaded};
use super::route_limits;
use super::units::in_range;
use super::workers::{WorkerCount, Workers, MAX_WORKERS};
use super::written::Written;

/// hyper refuses a read buffer smaller than this.
const MIN_HEADER_BYTES: u64 = 8192;
/// A request head larger than this is no browser's nor API client's (nginx's largest default
/// buffers take 32 KiB); each connection may hold one.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Requests waiting in one upstream's queue at most.
const MAX_QUEUE: u64 = 1_000_000;
/// Requests in flight per server at most.
const MAX_CONCURRENCY: u64 = 100_000;
/// Requests let through back to back by one rate limit at most.
const MAX_BURST: u64 = 1_000_000;
/// Client IPs tracked per rate limit at most.
const MAX_RATE_CLIENTS: u64 = 10_000_000;

pub fn validate(loaded: &Loaded) -> Result<(), ConfigError> {
    validate_with(loaded, Checks::ALL)
}

pub fn validate_with(loaded: &Loaded, checks: Checks) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let file = loaded.file.as_str();
    let err = |s: &Spanned<String>, msg: String| ConfigError::at(file, &s.referenced, msg);

    if cfg.listen.is_empty() {
        return Err(ConfigError::new(
            file,
            None,
            "listen: at least one listener is needed",
        ));
    }
    let mut seen: Vec<SocketAddr> = Vec::new();
    for l in &cfg.listen {
        let addr = parse_listen(&l.addr.value).map_err(|m| err(&l.addr, format!("listen: {m}")))?;
        if seen.iter().any(|s| overlaps(*s, addr)) {
            return Err(err(&l.addr, format!("listen: {addr} is listed twice")));
        }
        seen.push(addr);
        if let Some(tls) = &l.tls {
            if !matches!(tls.min_version.value.trim(), "1.2" | "1.3") {
                return Err(err(
                    &tls.min_version,
                    "listen: tls.min_version: expected \"1.2\" or \"1.3\"".into(),
                ));
            }
            // Its certificates, keys and CA are loaded by the check that builds what serving
            // needs (`server::check`): files are not this layer's.
        }
        if l.redirect_https && l.tls.is_some() {
            return Err(err(
                &l.addr,
                "listen: redirect_https belongs on a plain listener".into(),
            ));
        }
        if l.redirect_https_port.is_some() && !l.redirect_https {
            return Err(err(
                &l.addr,
                "listen: redirect_https_port is only used with redirect_https: true".into(),
            ));
        }
        if let Some(p) = &l.health_path {
            health_path(&p.value).map_err(|m| err(p, format!("listen: health_path: {m}")))?;
        }
        if let (Some(r), None) = (&l.health_ready, &l.health_path) {
            return Err(ConfigError::at(
                file,
                &r.referenced,
                "listen: health_ready is only used with health_path",
            ));
        }
    }
    if let Some(admin) = &cfg.admin {
        let addr =
            parse_listen(&admin.addr.value).map_err(|m| err(&admin.addr, format!("admin: {m}")))?;
        if seen.iter().any(|s| overlaps(*s, addr)) {
            return Err(err(
                &admin.addr,
                format!("admin: {addr} is also a proxy listener"),
            ));
        }
        // An empty token (say ADMIN_TOKEN="") would leave the POSTs open by mistake.
        if let Some(t) = admin.token.as_ref().filter(|t| t.value.trim().is_empty()) {
            return Err(err(t, "admin: token must not be empty".into()));
        }
    }

    for (key, path) in [
        ("pid_file", &cfg.pid_file),
        ("upgrade.binary", &cfg.upgrade.binary),
    ] {
        if let Some(p) = path.as_ref() {
            if p.value.trim().is_empty() || p.value.ends_with('/') {
                return Err(err(p, format!("{key}: expected a file name")));
            }
        }
    }

    if cfg.upstreams.is_empty() {
        return Err(ConfigError::new(
            file,
            None,
            "upstreams: at least one upstream is needed",
        ));
    }
    for (name, up) in &cfg.upstreams {
        match (&up.workers, up.servers.first().or(up.srv.as_ref())) {
            (Some(_), Some(s)) => {
                let key = if up.servers.is_empty() { "srv" } else { "servers" };
                return Err(err(
                    s,
                    format!("upstreams.{name}: has both {key} and workers; use one"),
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    file,
                    None,
                    format!(
                        "upstreams.{name}: needs servers (addresses), srv (an SRV name) or workers (a command to run)"
                    ),
                ))
            }
            (Some(w), None) => {
                validate_workers(loaded, name, w, checks)?;
                not_for_workers(file, name, up)?;
            }
            (None, Some(_)) => {}
        }
        for s in &up.servers {
            parse_server_entry(&s.value)
                .map_err(|m| err(s, format!("upstreams.{name}.servers: {m}")))?;
        }
        if let Some(s) = &up.srv {
            parse_srv(&s.value).map_err(|m| err(s, format!("upstreams.{name}.srv: {m}")))?;
        }
        validate_upstream_tls(loaded, name, up)?;
        validate_balancing(file, name, up)?;
        if let Some(h) = up.health.as_ref().filter(|_| up.workers.is_none()) {
            check_path(file, &format!("upstreams.{name}.health"), h.path.as_ref())?;
        }
    }

    if cfg.routes.is_empty() && cfg.upstreams.len() > 1 {
        return Err(ConfigError::new(
            file,
            None,
            "routes: needed when there is more than one upstream (each route names one)",
        ));
    }
    let mut routes: HashMap<(Option<String>, &str), ()> = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let at = |msg: String| match r.place() {
            Some(p) => ConfigError::at(file, p, msg),
            None => ConfigError::new(file, None, msg),
        };
        route_limits::validate(file, r)?;
        match (&r.upstream, &r.files) {
            (None, None) if r.redirect.is_some() => {}
            (Some(u), None) => known_upstream(loaded, u, "routes")?,
            (None, Some(f)) => validate_static(loaded, f)?,
            (Some(u), Some(_)) => {
                return Err(err(
                    u,
                    "routes: a route has upstream or static, not both; a static route's misses go to static.fallback".into(),
                ))
            }
            (None, None) => {
                return Err(at(format!(
                    "routes[{i}] (path {:?}): needs upstream (where requests go), static (a directory to serve) or redirect",
                    r.path
                )))
            }
        }
        if !r.path.starts_with('/') {
            return Err(at(format!("routes: path {:?} must start with /", r.path)));
        }
        if let Some(auth) = &r.basic_auth {
            super::access::validate(loaded, auth)?;
        }
        let host = match &r.host {
            Some(h) => Some(
                HostMatch::parse(&h.value)
                    .map_err(|m| err(h, format!("routes: {m}")))?
                    .to_string(),
            ),
            None => None,
        };
        if routes.insert((host, r.path.as_str()), ()).is_some() {
            return Err(at("routes: the same host and path appear twice".into()));
        }
    }

    super::rules::validate(cfg, file)?;
    if let Some(c) = &cfg.compression {
        compression(file, c)?;
    }
    for r in &cfg.routes {
        if let Some(super::RouteCompression::On(c)) = &r.compression {
            compression(file, c)?;
        }
    }

    let limits = &cfg.limits;
    if limits.max_header_bytes < MIN_HEADER_BYTES || limits.max_header_bytes > MAX_HEADER_BYTES {
        return Err(ConfigError::new(
            file,
            None,
            format!("limits.max_header_bytes: from {MIN_HEADER_BYTES} bytes (8KiB) to {MAX_HEADER_BYTES} (1MiB)"),
        ));
    }
    if limits.buffer_body > limits.max_body {
        return Err(ConfigError::new(
            file,
            None,
            "limits.buffer_body: must not be larger than limits.max_body",
        ));
    }
    validate_rate_limits(loaded)?;
    if HeaderName::from_bytes(cfg.headers.request_id.as_bytes()).is_err() {
        return Err(ConfigError::new(
            file,
            None,
            format!(
                "headers.request_id: {:?} is not a header name",
                cfg.headers.request_id
            ),
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&cfg.log.level).is_err() {
        return Err(ConfigError::new(
            file,
            None,
            format!(
                "log.level: {:?} is not a level or filter (e.g. \"info\")",
                cfg.log.level
            ),
        ));
    }
    validate_access_logs(loaded)?;
    if let Some(t) = &cfg.tracing {
        validate_tracing(file, t)?;
    }
    validate_discovery(loaded)?;
    validate_pages(loaded)?;
    Ok(())
}

/// `error_pages` (top level and per route) name statuses proxyd makes, each once; the files
/// themselves are read when the runtime state is built (`state::pages`).
fn validate_pages(loaded: &Loaded) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let file = loaded.file.as_str();
    let lists = std::iter::once(("error_pages", &cfg.error_pages)).chain(
        cfg.routes
            .iter()
            .map(|r| ("routes: error_pages", &r.error_pages)),
    );
    for (key, pages) in lists {
        let mut seen = Vec::new();
        for (status, page) in &pages.0 {
            let code = status.value;
            if !super::pages::STATUSES.contains(&code) {
                return Err(ConfigError::at(
                    file,
                    &status.referenced,
                    format!(
                        "{key}: {code} is not a status proxyd answers with; expected one of {:?}",
                        super::pages::STATUSES
                    ),
                ));
            }
            if seen.contains(&code) {
                return Err(ConfigError::at(
                    file,
                    &status.referenced,
                    format!("{key}: {code} appears twice"),
                ));
            }
            seen.push(code);
            if page.value.trim().is_empty() || page.value.ends_with('/') {
                return Err(ConfigError::at(
                    file,
                    &page.referenced,
                    format!("{key}: {code}: expected a file name"),
                ));
            }
        }
    }
    for (key, path) in [
        ("maintenance.file", &cfg.maintenance.file),
        ("maintenance.page", &cfg.maintenance.page),
    ] {
        if let Some(p) = path.as_ref() {
            if p.value.trim().is_empty() || p.value.ends_with('/') {
                return Err(ConfigError::at(
                    file,
                    &p.referenced,
                    format!("{key}: expected a file name"),
                ));
            }
        }
    }
    Ok(())
}

/// `resolver:` and `discovery:`: name server addresses, and refresh bounds in order. Names
/// themselves are not looked up here: one that does not resolve yet is no error.
fn validate_discovery(loaded: &Loaded) -> Result<(), ConfigError> {
    use super::discovery::MIN_REFRESH_FLOOR;
    use super::units::show_duration;
    let file = loaded.file.as_str();
    let cfg = &loaded.config;
    for ns in &cfg.resolver.nameservers {
        parse_nameserver(&ns.value).map_err(|m| {
            ConfigError::at(file, &ns.referenced, format!("resolver.nameservers: {m}"))
        })?;
    }
    let d = &cfg.discovery;
    if let Some(min) = &d.min_refresh {
        if min.value.0 < MIN_REFRESH_FLOOR {
            return Err(ConfigError::at(
                file,
                &min.referenced,
                format!(
                    "discovery.min_refresh: at least {} (a name with a TTL of 0 is asked for this often)",
                    show_duration(MIN_REFRESH_FLOOR)
                ),
            ));
        }
    }
    if d.max_refresh() < d.min_refresh() {
        let msg = format!(
            "discovery.max_refresh: shorter than discovery.min_refresh ({} < {})",
            show_duration(d.max_refresh()),
            show_duration(d.min_refresh())
        );
        let place = d.max_refresh.as_ref().or(d.min_refresh.as_ref());
        return Err(match place {
            Some(p) => ConfigError::at(file, &p.referenced, msg),
            None => ConfigError::new(file, None, msg),
        });
    }
    Ok(())
}

/// A listener's `health_path`: a path as a client sends it, compared byte for byte.
fn health_path(p: &str) -> Result<(), String> {
    const MAX: usize = 1024;
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if p.contains(['?', '#']) {
        return Err(format!(
            "{p:?}: a path only (no query or fragment); the query of a request is ignored"
        ));
    }
    if p.len() > MAX {
        return Err(format!("at most {MAX} bytes"));
    }
    match p.parse::<http::uri::PathAndQuery>() {
        Ok(pq) if pq.path() == p => Ok(()),
        _ => Err(format!(
            "{p:?} is not a request path (spaces and control characters are written percent-encoded)"
        )),
    }
}

/// `name` is one of the upstreams.
fn known_upstream(loaded: &Loaded, name: &Spanned<String>, key: &str) -> Result<(), ConfigError> {
    let upstreams = &loaded.config.upstreams;
    if upstreams.contains_key(&name.value) {
        return Ok(());
    }
    let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
    Err(ConfigError::at(
        &loaded.file,
        &name.referenced,
        format!(
            "{key}: unknown upstream {:?}; expected one of {}",
            name.value,
            known.join(", ")
        ),
    ))
}

/// `routes[].static`: a root that is a directory (relative to the config file), index names
/// that are file names, each encoding once, a header value, a fallback that is an upstream.
fn validate_static(loaded: &Loaded, f: &super::StaticFiles) -> Result<(), ConfigError> {
    let file = loaded.file.as_str();
    let at = |loc: &serde_saphyr::Location, msg: String| {
        ConfigError::at(file, loc, format!("routes: static.{msg}"))
    };
    let root = loaded.dir.join(&f.root.value);
    match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(at(
                &f.root.referenced,
                format!("root: {} is not a directory", root.display()),
            ))
        }
        Err(e) => {
            return Err(at(
                &f.root.referenced,
                format!("root: {}: {e}", root.display()),
            ))
        }
    }
    let root_at = &f.root.referenced;
    for name in &f.index {
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
            return Err(at(root_at, format!("index: {name:?} is not a file name")));
        }
    }
    for (i, p) in f.precompressed.iter().enumerate() {
        if f.precompressed[..i].iter().any(|q| q.value == p.value) {
            return Err(at(
                &p.referenced,
                format!("precompressed: {} is listed twice", p.value.token()),
            ));
        }
    }
    if let Some(c) = &f.cache_control {
        if http::HeaderValue::from_str(&c.value).is_err() || c.value.trim().is_empty() {
            return Err(at(
                &c.referenced,
                format!("cache_control: {:?} is not a header value", c.value),
            ));
        }
    }
    if let Some(u) = &f.fallback {
        known_upstream(loaded, u, "routes: static.fallback")?;
    }
    Ok(())
}

/// `compression:`: known media types, at least one algorithm, none twice.
fn compression(file: &str, c: &super::Compression) -> Result<(), ConfigError> {
    for t in &c.types {
        super::compression::check_type(&t.value)
            .map_err(|m| ConfigError::at(file, &t.referenced, m))?;
    }
    if c.algorithms.is_empty() {
        return Err(ConfigError::new(
            file,
            None,
            "compression.algorithms: at least one of zstd, br, gzip",
        ));
    }
    for (i, a) in c.algorithms.iter().enumerate() {
        if c.algorithms[..i].iter().any(|b| b.value == a.value) {
            return Err(ConfigError::at(
                file,
                &a.referenced,
                format!(
                    "compression.algorithms: {} is listed twice",
                    a.value.token()
                ),
            ));
        }
    }
    Ok(())
}

/// `limits.rate`, `routes[].rate` and `limits.max_connections_per_ip`: no zero sizes, and no
/// burst without a rate.
fn validate_rate_limits(loaded: &Loaded) -> Result<(), ConfigError> {
    let file = loaded.file.as_str();
    let limits = &loaded.config.limits;
    let zero = |b: &Spanned<u32>, key: &str| {
        let bound = match u64::from(b.value) {
            0 => "at least 1".to_string(),
            n if n > MAX_BURST => format!("{n} is more than the {MAX_BURST} allowed"),
            _ => return None,
        };
        Some(ConfigError::at(
            file,
            &b.referenced,
            format!("{key}: {bound} (the requests let through back to back)"),
        ))
    };
    if let Some(b) = &limits.rate.burst {
        if let Some(e) = zero(b, "limits.rate.burst") {
            return Err(e);
        }
        if limits.rate.per_ip.is_none() {
            return Err(ConfigError::at(
                file,
                &b.referenced,
                "limits.rate.burst: needs limits.rate.per_ip (the rate the bucket refills at)",
            ));
        }
    }
    if let Some(m) = &limits.rate.max_clients {
        let at = |msg: String| Err(ConfigError::at(file, &m.referenced, msg));
        if let Err(e) = in_range(m.value as u64, 1, MAX_RATE_CLIENTS) {
            return at(format!("limits.rate.max_clients: {e}"));
        }
        let routes = loaded.config.routes.iter().any(|r| r.rate.is_some());
        if limits.rate.per_ip.is_none() && !routes {
            return at("limits.rate.max_clients: only used with limits.rate.per_ip or a route's rate (there is none)".into());
        }
    }
    for r in &loaded.config.routes {
        if let Some(e) = r
            .rate
            .as_ref()
            .and_then(|rate| rate.burst.as_ref())
            .and_then(|b| zero(b, "routes: rate.burst"))
        {
            return Err(e);
        }
    }
    Ok(())
}

/// `tracing:`: an `http://host:port` collector, a ratio within 0..=1.
fn validate_tracing(file: &str, t: &super::tracing::Tracing) -> Result<(), ConfigError> {
    let otlp = &t.otlp;
    let bad = |msg: &str| ConfigError::at(file, &otlp.referenced, format!("tracing.otlp: {msg}"));
    let uri: http::Uri = otlp.value.trim().parse().map_err(|_| {
        bad("expected the collector's OTLP/HTTP URL, like \"http://127.0.0.1:4318\"")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported yet: give the collector's plain http:// endpoint \
                 (a collector or agent on the host or in the pod)",
            ))
        }
        _ => {
            return Err(bad(
                "expected an http:// URL, like \"http://127.0.0.1:4318\"",
            ))
        }
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() && a.port_u16().is_some() => {}
        _ => {
            return Err(bad(
                "expected a host and a port, like \"http://127.0.0.1:4318\" (4318 is OTLP/HTTP's)",
            ))
        }
    }
    if let Some(s) = &t.sample {
        if !(0.0..=1.0).contains(&s.value) {
            return Err(ConfigError::at(
                file,
                &s.referenced,
                format!("tracing.sample: {} is not within 0.0 to 1.0", s.value),
            ));
        }
    }
    Ok(())
}

/// Each access log needs a path (healthd has a default) in a directory that exists or can be
/// created, and no two logs may share a file.
fn validate_access_logs(loaded: &Loaded) -> Result<(), ConfigError> {
    use super::access_log::{creatable_dir, destination, Destination};
    let file = loaded.file.as_str();
    let mut seen = Vec::new();
    for log in &loaded.config.access_log {
        let at = log
            .path
            .as_ref()
            .map_or(&log.format.referenced, |p| &p.referenced);
        let fail = |msg: String| Err(ConfigError::at(file, at, format!("access_log: {msg}")));
        let Some(dest) = destination(log, &loaded.dir) else {
            return fail("path: needed for this format (a file, or \"-\" for stderr)".into());
        };
        let path = match &dest {
            Destination::Stderr => continue,
            Destination::File(p) | Destination::Hourly(p) => p.clone(),
        };
        if seen.contains(&path) {
            return fail(format!("{} is written by two logs", path.display()));
        }
        if path.is_dir() {
            return fail(format!("{} is a directory", path.display()));
        }
        if let Err(m) = creatable_dir(&path) {
            return fail(m);
        }
        seen.push(path);
    }
    Ok(())
}

/// An upstream's protocol and TLS: h2 only to https:// servers (agreed by ALPN), h2c only in
/// cleartext, workers in HTTP/1.1 (their health probes are); a server name that is one.
fn validate_upstream_tls(
    loaded: &Loaded,
    name: &str,
    up: &super::Upstream,
) -> Result<(), ConfigError> {
    use super::UpstreamProtocol;
    let file = loaded.file.as_str();
    let at = |s: &Spanned<String>, msg: String| ConfigError::at(file, &s.referenced, msg);
    let key = format!("upstreams.{name}");
    let protocol = up.protocol();
    if let (Some(p), Some(_)) = (&up.protocol, &up.workers) {
        if p.value != UpstreamProtocol::Http1 {
            return Err(ConfigError::at(
                file,
                &p.referenced,
                format!("{key}.protocol: workers speak HTTP/1.1 (so do their health probes)"),
            ));
        }
    }
    let mut https = false;
    let srv = up
        .srv
        .iter()
        .filter_map(|s| Some((s, parse_srv(&s.value).ok()?.tls)));
    let servers = up
        .servers
        .iter()
        .filter_map(|s| Some((s, parse_server_entry(&s.value).ok()?.0.is_tls())));
    for (s, tls) in servers.chain(srv) {
        https |= tls;
        let wrong = match (protocol, tls) {
            (UpstreamProtocol::H2, false) => "protocol: h2 needs https:// servers (HTTP/2 is agreed by ALPN); h2c is HTTP/2 in cleartext",
            (UpstreamProtocol::H2c, true) => "protocol: h2c is HTTP/2 in cleartext; use protocol: h2 with https:// servers",
            _ => continue,
        };
        let list = if up.srv.as_ref().is_some_and(|x| std::ptr::eq(x, s)) {
            "srv"
        } else {
            "servers"
        };
        return Err(at(s, format!("{key}.{list}: {wrong}")));
    }
    let Some(tls) = &up.tls else {
        return Ok(());
    };
    if !https {
        let msg = format!("{key}.tls: only used with https:// servers");
        let place = tls.ca.as_ref().or(tls.server_name.as_ref());
        return Err(match place.or(up.servers.first()).or(up.srv.as_ref()) {
            Some(s) => at(s, msg),
            None => ConfigError::new(file, None, msg),
        });
    }
    if let Some(n) = &tls.server_name {
        super::upstream_tls::server_name(&n.value)
            .map_err(|m| at(n, format!("{key}.tls.server_name: {m}")))?;
    }
    if let Some(ca) = &tls.ca {
        if tls.insecure_skip_verify {
            return Err(at(
                ca,
                format!("{key}.tls: ca and insecure_skip_verify: true contradict; drop one"),
            ));
        }
        // The bundle is read by the check that builds the upstream (`upstream::tls::check`).
    }
    Ok(())
}

fn validate_balancing(file: &str, name: &str, up: &super::Upstream) -> Result<(), ConfigError> {
    let key = format!("upstreams.{name}");
    let plain = |msg: String| Err(ConfigError::new(file, None, msg));
    match (&up.hash_key, up.balance) {
        (Some(k), Balance::Hash) => {
            HashKey::parse(k)
                .map_err(|m| ConfigError::at(file, &k.referenced, format!("{key}: {m}")))?;
        }
        (None, Balance::Hash) => return plain(format!("{key}: balance: hash needs a hash_key")),
        (Some(k), _) => {
            return Err(ConfigError::at(
                file,
                &k.referenced,
                format!("{key}.hash_key: only used with balance: hash"),
            ))
        }
        (None, _) => {}
    }
    if let Some(c) = &up.concurrency {
        if let Err(m) = in_range(c.value as u64, 1, MAX_CONCURRENCY) {
            return Err(ConfigError::at(
                file,
                &c.referenced,
                format!("{key}.concurrency: {m}"),
            ));
        }
    }
    if !(0.0..=10.0).contains(&up.retries.budget) {
        return plain(format!(
            "{key}.retries.budget: a ratio from 0 to 10 such as 0.2 (retries per request)"
        ));
    }
    if up.eject.failures > 0 && up.eject.base.is_zero() {
        return plain(format!("{key}.eject.base: must be longer than 0s"));
    }
    if up.eject.max < up.eject.base {
        return plain(format!(
            "{key}.eject.max: shorter than eject.base ({} < {}): no ejection would last base",
            super::units::show_duration(up.eject.max),
            super::units::show_duration(up.eject.base)
        ));
    }
    validate_queue(file, &key, &up.queue)
}

fn validate_queue(file: &str, key: &str, q: &super::balance::Queue) -> Result<(), ConfigError> {
    let plain = |msg: String| Err(ConfigError::new(file, None, msg));
    if let Some(max) = &q.max {
        if let Err(m) = in_range(max.value as u64, 0, MAX_QUEUE) {
            return Err(ConfigError::at(
                file,
                &max.referenced,
                format!("{key}.queue.max: {m}"),
            ));
        }
    }
    if !q.target.is_zero() && q.interval.is_zero() {
        return plain(format!(
            "{key}.queue.interval: must be longer than 0s (or set queue.target: 0s to turn the rule off)"
        ));
    }
    Ok(())
}

fn validate_workers(
    loaded: &Loaded,
    name: &str,
    w: &Workers,
    checks: Checks,
) -> Result<(), ConfigError> {
    let file = loaded.file.as_str();
    let at = |loc: &serde_saphyr::Location, msg: String| ConfigError::at(file, loc, msg);
    let key = format!("upstreams.{name}.workers");
    if w.command.value.first().is_none_or(|p| p.is_empty()) {
        return Err(at(
            &w.command.referenced,
            format!("{key}.command: needs a program to run"),
        ));
    }
    let cwd = loaded
        .dir
        .join(w.cwd.as_ref().map_or("", |c| c.value.as_str()));
    if let Some(program) = w.command.value.first().filter(|_| checks.programs) {
        if !program_exists(program, &cwd) {
            return Err(at(
                &w.command.referenced,
                format!(
                    "{key}.command: program {program:?} not found (looked in the PATH, or relative to {})",
                    if cwd.as_os_str().is_empty() { std::path::Path::new(".") } else { &cwd }.display()
                ),
            ));
        }
    }
    if let Some(count) = &w.count {
        validate_count(&key, &count.value).map_err(|m| at(&count.referenced, m))?;
    }
    check_path(file, &format!("{key}.health"), w.health.path.as_ref())?;
    if w.restart.max_backoff < w.restart.backoff {
        return Err(ConfigError::new(
            file,
            None,
            format!(
                "{key}.restart.max_backoff: shorter than restart.backoff ({} < {}): the first wait would not be backoff",
                super::units::show_duration(w.restart.max_backoff),
                super::units::show_duration(w.restart.backoff)
            ),
        ));
    }
    if w.max_requests_jitter > 0 && w.max_requests == 0 {
        return Err(ConfigError::new(
            file,
            None,
            format!("{key}.max_requests_jitter: only used with max_requests (recycling is off)"),
        ));
    }
    if let Some(cwd) = &w.cwd {
        let dir = loaded.dir.join(&cwd.value);
        if !dir.is_dir() {
            return Err(at(
                &cwd.referenced,
                format!("{key}.cwd: {} is not a directory", dir.display()),
            ));
        }
    }
    if let Some(user) = &w.user {
        if !matches!(nix::unistd::User::from_name(&user.value), Ok(Some(_))) {
            return Err(at(
                &user.referenced,
                format!("{key}.user: no user {:?}", user.value),
            ));
        }
    }
    if let Some(group) = &w.group {
        if !matches!(nix::unistd::Group::from_name(&group.value), Ok(Some(_))) {
            return Err(at(
                &group.referenced,
                format!("{key}.group: no group {:?}", group.value),
            ));
        }
    }
    Ok(())
}

/// A health check's `path`, if set: a request target as sent (`/healthz`, `/up?full=1`).
fn check_path(file: &str, key: &str, path: Option<&Spanned<String>>) -> Result<(), ConfigError> {
    let Some(p) = path else { return Ok(()) };
    let wrong = if !p.value.starts_with('/') {
        "must start with /"
    } else if p.value.parse::<http::uri::PathAndQuery>().is_err() {
        "not a request path (spaces and control characters are written percent-encoded)"
    } else {
        return Ok(());
    };
    Err(ConfigError::at(
        file,
        &p.referenced,
        format!("{key}.path: {wrong}"),
    ))
}

/// Keys written where they have no effect, though their values could be the defaults: each
/// is an error at the key that says why.
pub fn without_effect(loaded: &Loaded, written: &Written) -> Result<(), ConfigError> {
    match no_effect(&loaded.config, written).into_iter().next() {
        Some((_, at, msg)) => Err(ConfigError::new(&loaded.file, Some(at), msg)),
        None => Ok(()),
    }
}

/// The keys [`without_effect`] refuses: (path, place, message), in the file's order.
pub fn no_effect(cfg: &super::Config, written: &Written) -> Vec<(String, (u64, u64), String)> {
    let mut found = Vec::new();
    for (name, up) in &cfg.upstreams {
        let key = format!("upstreams.{name}");
        let no_retries = "only used when retries.attempts is above 1 (no retries)";
        let no_eject = "only used when eject.failures is above 0 (ejection is off)";
        let rules: [(&str, bool, &str); 8] = [
            (
                "health",
                up.workers.is_some(),
                "not used with workers: their health checks are workers.health (the same keys, plus unhealthy_restart)",
            ),
            (
                "pool.max_idle",
                up.protocol() != super::UpstreamProtocol::Http1,
                "only used with protocol: http1 (HTTP/2 shares one connection per backend; pool.idle_timeout still applies)",
            ),
            (
                "queue.interval",
                up.queue.target.is_zero(),
                "only used when queue.target is above 0s (the overload rule is off)",
            ),
            ("eject.base", up.eject.failures == 0, no_eject),
            ("eject.max", up.eject.failures == 0, no_eject),
            ("retries.budget", up.retries.attempts == 1, no_retries),
            ("retries.min_per_second", up.retries.attempts == 1, no_retries),
            ("retries.max_body", up.retries.attempts == 1, no_retries),
        ];
        for (sub, no_effect, why) in rules {
            let path = format!("{key}.{sub}");
            if let (true, Some(at)) = (no_effect, written.at(&path)) {
                let msg = format!("{path}: {why}");
                found.push((path, at, msg));
            }
        }
    }
    if !cfg.upstreams.values().any(|u| u.uses_names()) {
        let why = "only used when a server is a host name (servers: [\"app.internal:8000\"]) or an upstream has srv";
        for section in ["resolver", "discovery"] {
            if let Some(at) = written.at(section) {
                found.push((section.to_string(), at, format!("{section}: {why}")));
            }
        }
    }
    found.sort_by_key(|(_, at, _)| *at);
    found
}

/// Upstream keys that workers do not use, each with what to write instead.
fn not_for_workers(file: &str, name: &str, up: &super::Upstream) -> Result<(), ConfigError> {
    let key = format!("upstreams.{name}");
    if let Some(t) = &up.response_timeout {
        return Err(ConfigError::at(
            file,
            &t.referenced,
            format!("{key}.response_timeout: not used with workers; set workers.request_timeout (default 30s: the whole response, past it the worker is replaced)"),
        ));
    }
    if let Some(c) = &up.concurrency {
        return Err(ConfigError::at(
            file,
            &c.referenced,
            format!("{key}.concurrency: not used with workers; set workers.concurrency (requests one worker takes at a time, default 1)"),
        ));
    }
    Ok(())
}

/// A fixed count from 1 to MAX_WORKERS, or a range with 1 <= min <= max <= MAX_WORKERS and
/// scaling windows that are not zero.
fn validate_count(key: &str, count: &WorkerCount) -> Result<(), String> {
    let key = format!("{key}.count");
    match count {
        WorkerCount::Fixed(0) => Err(format!("{key}: must be at least 1")),
        WorkerCount::Fixed(n) if *n > MAX_WORKERS => Err(format!(
            "{key}: {n} workers is more than the {MAX_WORKERS} proxyd runs at most"
        )),
        WorkerCount::Fixed(_) => Ok(()),
        WorkerCount::Range(r) => {
            if r.min == 0 {
                return Err(format!(
                    "{key}.min: must be at least 1 (a worker is kept running to take the first request)"
                ));
            }
            if r.min > r.max {
                return Err(format!("{key}: min ({}) is above max ({})", r.min, r.max));
            }
            if r.max > MAX_WORKERS {
                return Err(format!(
                    "{key}.max: {} workers is more than the {MAX_WORKERS} proxyd runs at most",
                    r.max
                ));
            }
            for (name, d) in [
                ("scale_up_after", r.scale_up_after),
                ("scale_down_after", r.scale_down_after),
            ] {
                if d < MIN_SCALE_WINDOW {
                    return Err(format!(
                        "{key}.{name}: at least {MIN_SCALE_WINDOW:?} (the load is sampled every few ms, a shorter window reacts to noise)"
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Scaling windows shorter than this would react to one sample.
const MIN_SCALE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `program` would run: a path (relative to the worker's cwd) to an executable file,
/// or a name found in the PATH.
fn program_exists(program: &str, cwd: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(&cwd.join(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| runnable(&d.join(program))))
}

/// Two listeners clash on the same port when either is the wildcard address of its family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    const SERVERS: &str =
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\n";
    const WORKERS: &str = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    workers:\n      command: [\"sh\"]\n";

    /// The error for `base` + `extra`, as `proxyd check` prints it.
    fn error(base: &str, extra: &str) -> String {
        match load_str(&format!("{base}{extra}"), "p.yaml", ".".into()) {
            Ok(_) => panic!("accepted:\n{base}{extra}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_error(base: &str, extra: &str, want: &str) {
        let got = error(base, extra);
        assert!(got.starts_with(want), "{extra:?}:\n got {got}\nwant {want}");
    }

    #[test]
    fn keys_workers_ignore_are_errors_that_say_what_to_use() {
        assert_error(
            WORKERS,
            "    response_timeout: 10s\n",
            "p.yaml:7:23: upstreams.app.response_timeout: not used with workers; set workers.request_timeout",
        );
        assert_error(
            WORKERS,
            "    concurrency: 4\n",
            "p.yaml:7:18: upstreams.app.concurrency: not used with workers; set workers.concurrency",
        );
        assert_error(
            WORKERS,
            "      max_requests_jitter: 50\n",
            "p.yaml: upstreams.app.workers.max_requests_jitter: only used with max_requests",
        );
        // Both are fine on servers, and workers take their own.
        for ok in [
            format!("{SERVERS}    response_timeout: 10s\n    concurrency: 4\n"),
            format!("{WORKERS}      request_timeout: 10s\n      concurrency: 4\n      max_requests: 1000\n      max_requests_jitter: 50\n"),
        ] {
            load_str(&ok, "p.yaml", ".".into()).unwrap();
        }
    }

    #[test]
    fn health_checks_of_servers() {
        let loaded = load_str(
            &format!("{SERVERS}    health: {{path: /up, interval: 1s}}\n"),
            "p.yaml",
            ".".into(),
        )
        .unwrap();
        let h = loaded.config.upstreams["app"].health.clone().unwrap();
        assert_eq!(h.path.map(|p| p.value).as_deref(), Some("/up"));
        assert_eq!(h.interval, std::time::Duration::from_secs(1));
        // The workers' defaults.
        let w = crate::config::WorkerHealth::default();
        assert_eq!(
            (h.timeout, h.healthy, h.unhealthy),
            (w.timeout, w.healthy, w.unhealthy)
        );
        assert_error(
            SERVERS,
            "    health: {path: up}\n",
            "p.yaml:6:20: upstreams.app.health.path: must start with /",
        );
        assert_error(
            SERVERS,
            "    health: {path: \"/a b\"}\n",
            "p.yaml:6:20: upstreams.app.health.path: not a request path",
        );
        assert_error(
            SERVERS,
            "    health: {unhealthy: 0}\n",
            "p.yaml:6:25: 0 is out of range",
        );
        assert_error(
            SERVERS,
            "    health: {timeout: 0s}\n",
            "p.yaml:6:23: must be longer than 0s",
        );
        // A server is taken out of the rotation, never restarted.
        assert_error(
            SERVERS,
            "    health: {unhealthy_restart: 5}\n",
            "p.yaml:6:14: unknown field `unhealthy_restart`",
        );
        // Workers are checked by workers.health.
        assert_error(
            WORKERS,
            "    health: {path: /up}\n",
            "p.yaml:7:5: upstreams.app.health: not used with workers: their health checks are workers.health",
        );
        assert_error(
            WORKERS,
            "      health: {path: up}\n",
            "p.yaml:7:22: upstreams.app.workers.health.path: must start with /",
        );
    }

    #[test]
    fn other_keys_without_effect_are_errors() {
        assert_error(
            &SERVERS.replace("0\"\n", "0\"\n    redirect_https_port: 8443\n"),
            "",
            "p.yaml:2:11: listen: redirect_https_port is only used with redirect_https: true",
        );
        for (extra, want) in [
            ("    protocol: h2c\n    pool: { max_idle: 8 }\n", "p.yaml:7:13: upstreams.app.pool.max_idle: only used with protocol: http1"),
            ("    queue: { target: 0s, interval: 1s }\n", "p.yaml:6:26: upstreams.app.queue.interval: only used when queue.target is above 0s"),
            ("    eject: { failures: 0, base: 5s }\n", "p.yaml:6:27: upstreams.app.eject.base: only used when eject.failures is above 0"),
            ("    retries:\n      attempts: 1\n      max_body: 1MiB\n", "p.yaml:8:7: upstreams.app.retries.max_body: only used when retries.attempts is above 1"),
        ] {
            assert_error(SERVERS, extra, want);
        }
        // The same keys where they do work.
        let fine = format!("{SERVERS}    pool: {{ max_idle: 8 }}\n    queue: {{ target: 1s, interval: 2s }}\n    eject: {{ failures: 3, base: 5s }}\n    retries: {{ attempts: 2, max_body: 1MiB }}\n");
        load_str(&fine, "p.yaml", ".".into()).unwrap();
        assert_error(
            SERVERS,
            "    eject: { base: 30s, max: 10s }\n",
            "p.yaml: upstreams.app.eject.max: shorter than eject.base (10s < 30s)",
        );
        assert_error(
            WORKERS,
            "      restart: { backoff: 1s, max_backoff: 500ms }\n",
            "p.yaml: upstreams.app.workers.restart.max_backoff: shorter than restart.backoff (500ms < 1s)",
        );
        assert_error(
            SERVERS,
            "limits:\n  rate: { max_clients: 10 }\n",
            "p.yaml:7:24: limits.rate.max_clients: only used with limits.rate.per_ip or a route's rate",
        );
    }

    #[test]
    fn tracing_errors_say_where() {
        for (keys, want) in [
            (
                "tracing: { otlp: \"127.0.0.1:4318\" }\n",
                "p.yaml:6:18: tracing.otlp: expected an http:// URL",
            ),
            (
                "tracing: { otlp: \"https://collector:4318\" }\n",
                "p.yaml:6:18: tracing.otlp: https is not supported yet",
            ),
            (
                "tracing: { otlp: \"http://collector\" }\n",
                "p.yaml:6:18: tracing.otlp: expected a host and a port",
            ),
            (
                "tracing: { otlp: \"http://a b\" }\n",
                "p.yaml:6:18: tracing.otlp: expected the collector's OTLP/HTTP URL",
            ),
            (
                "tracing: { otlp: \"http://127.0.0.1:4318\", sample: 1.5 }\n",
                "p.yaml:6:51: tracing.sample: 1.5 is not within 0.0 to 1.0",
            ),
            (
                "tracing: { otlp: \"http://127.0.0.1:4318\", sample: -0.1 }\n",
                "p.yaml:6:51: tracing.sample: -0.1 is not within",
            ),
        ] {
            assert_error(SERVERS, keys, want);
        }
        for ok in [
            "tracing: { otlp: \"http://127.0.0.1:4318\" }\n",
            "tracing: { otlp: \"http://otel-collector:4318/v1/traces\", sample: 0 }\n",
            "tracing: { otlp: \"http://[::1]:4318\", sample: 1.0, errors: true }\n",
        ] {
            let yaml = format!("{SERVERS}{ok}");
            assert!(load_str(&yaml, "p.yaml", ".".into()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn health_path_errors_say_where() {
        let on_listener = |keys: &str| SERVERS.replace("0\"\n", &format!("0\"\n{keys}"));
        for (keys, want) in [
            (
                "    health_path: healthz\n",
                "p.yaml:3:18: listen: health_path: \"healthz\" must start with /",
            ),
            (
                "    health_path: \"/healthz?x=1\"\n",
                "p.yaml:3:18: listen: health_path: \"/healthz?x=1\": a path only",
            ),
            (
                "    health_path: \"/a b\"\n",
                "p.yaml:3:18: listen: health_path: \"/a b\" is not a request path",
            ),
            (
                "    health_ready: every\n",
                "p.yaml:3:19: listen: health_ready is only used with health_path",
            ),
            (
                "    health_path: /h\n    health_ready: all\n",
                "p.yaml:4:19: unknown variant `all`, expected one of any, every, serving",
            ),
        ] {
            assert_error(&on_listener(keys), "", want);
        }
        let ok = load_str(
            &on_listener("    health_path: /healthz\n"),
            "p.yaml",
            ".".into(),
        )
        .unwrap();
        assert_eq!(
            ok.config.listen[0].health_ready(),
            crate::config::Ready::Any
        );
        assert_error(
            SERVERS,
            "admin: { addr: \"127.0.0.1:0\", ready: some }\n",
            "p.yaml:6:38: unknown variant `some`, expected one of any, every, serving",
        );
    }

    #[test]
    fn durations_are_bounded() {
        // Past Instant's arithmetic once; now past the 7-day bound.
        assert_error(
            SERVERS,
            "timeouts:\n  keepalive: \"999999999999d\"\n",
            "p.yaml:7:14: duration \"999999999999d\" is too long: at most 7d",
        );
        assert_error(
            SERVERS,
            "    eject: { max: 8d }\n",
            "p.yaml:6:19: duration \"8d\" is too long",
        );
        // Zero where a zero would spin or time out everything at once.
        for (base, extra, at) in [
            (WORKERS, "      health: { interval: 0s }\n", "p.yaml:7:27:"),
            (
                SERVERS,
                "timeouts: { client_header: 0ms }\n",
                "p.yaml:6:28:",
            ),
            (SERVERS, "    connect_timeout: 0s\n", "p.yaml:6:22:"),
            (SERVERS, "    response_timeout: 0s\n", "p.yaml:6:23:"),
            (SERVERS, "    queue: { timeout: 0s }\n", "p.yaml:6:23:"),
        ] {
            assert_error(base, extra, &format!("{at} must be longer than 0s"));
        }
    }

    #[test]
    fn counts_are_bounded() {
        let range = |n: &str, min: u64, max: u64| {
            format!("{n} is out of range: expected a number from {min} to {max}")
        };
        for (base, extra, at, n, min, max) in [
            (
                SERVERS,
                "limits: { max_headers: 0 }\n",
                "6:24",
                "0",
                1,
                1000,
            ),
            (
                SERVERS,
                "limits: { max_headers: 1000000 }\n",
                "6:24",
                "1000000",
                1,
                1000,
            ),
            // Semaphore::MAX_PERMITS is usize::MAX >> 3: once a panic at startup.
            (
                SERVERS,
                "limits: { max_connections: 2305843009213693952 }\n",
                "6:28",
                "2305843009213693952",
                1,
                1_000_000,
            ),
            (
                SERVERS,
                "limits: { max_concurrent_streams: 0 }\n",
                "6:35",
                "0",
                1,
                10_000,
            ),
            (
                SERVERS,
                "limits: { max_connections_per_ip: 0 }\n",
                "6:35",
                "0",
                1,
                1_000_000,
            ),
            (SERVERS, "threads: 5000\n", "6:10", "5000", 1, 1024),
            (
                SERVERS,
                "    retries: { attempts: 0 }\n",
                "6:26",
                "0",
                1,
                10,
            ),
            (
                SERVERS,
                "    pool: { max_idle: 1000000 }\n",
                "6:23",
                "1000000",
                0,
                100_000,
            ),
            (
                SERVERS,
                "    eject: { failures: 100000 }\n",
                "6:24",
                "100000",
                0,
                10_000,
            ),
            (WORKERS, "      concurrency: 0\n", "7:20", "0", 1, 10_000),
            (
                WORKERS,
                "      max_requests: 18446744073709551615\n",
                "7:21",
                "18446744073709551615",
                0,
                1_000_000_000,
            ),
            (
                WORKERS,
                "      health: { unhealthy: 0 }\n",
                "7:28",
                "0",
                1,
                1000,
            ),
            (
                WORKERS,
                "      restart: { max_restarts: 1000000 }\n",
                "7:32",
                "1000000",
                0,
                100_000,
            ),
            (
                &SERVERS.replace("0\"\n", "0\"\n    max_connections: 0\n"),
                "",
                "3:22",
                "0",
                1,
                1_000_000,
            ),
        ] {
            assert_error(base, extra, &format!("p.yaml:{at}: {}", range(n, min, max)));
        }
        for (extra, want) in [
            (
                "    concurrency: 0\n",
                "p.yaml:6:18: upstreams.app.concurrency: 0 is out of range",
            ),
            (
                "    queue: { max: 2000000 }\n",
                "p.yaml:6:19: upstreams.app.queue.max: 2000000 is out of range",
            ),
            (
                "    retries: { budget: 100 }\n",
                "p.yaml: upstreams.app.retries.budget: a ratio from 0 to 10",
            ),
            (
                "limits: { rate: { per_ip: \"1/s\", burst: 2000000 } }\n",
                "p.yaml:6:41: limits.rate.burst: 2000000 is more than the 1000000 allowed",
            ),
            (
                "limits: { rate: { per_ip: \"1/s\", max_clients: 0 } }\n",
                "p.yaml:6:47: limits.rate.max_clients: 0 is out of range",
            ),
            (
                "routes: [{ path: /, upstream: app, rate: { limit: \"1/s\", burst: 0 } }]\n",
                "p.yaml:6:65: routes: rate.burst: at least 1",
            ),
            (
                "limits: { rate: { per_ip: \"0/s\" } }\n",
                "p.yaml:6:27: invalid rate \"0/s\": must be more than 0",
            ),
            (
                "limits: { rate: { per_ip: \"2000000000/s\" } }\n",
                "p.yaml:6:27: invalid rate \"2000000000/s\": too fast",
            ),
        ] {
            assert_error(SERVERS, extra, want);
        }
        for (base, extra) in [
            (WORKERS, "      count: 100000\n"),
            (WORKERS, "      count: 0\n"),
        ] {
            assert!(error(base, extra).contains("upstreams.app.workers.count"));
        }
    }

    #[test]
    fn compression_errors_say_where() {
        for (extra, want) in [
            (
                "compression: { algorithms: [gzip, lzma] }\n",
                "p.yaml:6:35: unknown variant `lzma`, expected one of zstd, br, gzip",
            ),
            (
                "compression: { min_length: \"1 lightyear\" }\n",
                "p.yaml:6:28: invalid size \"1 lightyear\"",
            ),
            (
                "compression: { types: [text/html, html] }\n",
                "p.yaml:6:35: compression.types: \"html\" is not a media type",
            ),
            (
                "compression: { algorithms: [gzip, br, gzip] }\n",
                "p.yaml:6:39: compression.algorithms: gzip is listed twice",
            ),
            (
                "compression: { algorithms: [] }\n",
                "p.yaml: compression.algorithms: at least one",
            ),
            (
                "routes: [{ path: /, upstream: app, compression: { types: [\"a/b c\"] } }]\n",
                "p.yaml:6:59: compression.types: \"a/b c\" is not a media type",
            ),
            (
                "routes: [{ path: /, upstream: app, compression: yes please }]\n",
                "p.yaml:6:36: invalid type: string \"yes please\", expected false, true or a map",
            ),
        ] {
            assert_error(SERVERS, extra, want);
        }
        // What a route gets: its own, the top level's, or none.
        let yaml = format!(
            "{SERVERS}compression: {{ min_length: 10 }}\nroutes:\n  - {{ path: /a, upstream: app }}\n  - {{ path: /b, upstream: app, compression: false }}\n  - {{ path: /c, upstream: app, compression: {{ algorithms: [br] }} }}\n  - {{ path: /d, upstream: app, compression: true }}\n"
        );
        let cfg = load_str(&yaml, "p.yaml", ".".into()).unwrap().config;
        let top = cfg.compression.as_ref();
        let eff = |i: usize| {
            super::super::compression::effective(top, cfg.routes[i].compression.as_ref())
        };
        assert_eq!(eff(0).unwrap().min_length, 10);
        assert!(eff(1).is_none());
        let own = eff(2).unwrap();
        assert_eq!(own.algorithms.len(), 1);
        assert_eq!(
            own.min_length, 1024,
            "its own settings, with their defaults"
        );
        assert_eq!(eff(3).unwrap().min_length, 10);
        assert!(
            super::super::compression::effective(None, None).is_none(),
            "off unless configured"
        );
    }

    #[test]
    fn sizes_are_bounded() {
        for (extra, want) in [
            (
                "limits: { max_body: 2TiB }\n",
                "p.yaml:6:21: size 2TiB is too large: at most 1TiB",
            ),
            (
                "limits: { max_body: 999999999999TiB }\n",
                "p.yaml:6:21: size 18446744073709551615 is too large",
            ),
            (
                "limits: { buffer_response: 2GiB }\n",
                "p.yaml:6:28: size 2GiB is too large: at most 1GiB",
            ),
            (
                "    retries: { max_body: 4GiB }\n",
                "p.yaml:6:26: size 4GiB is too large: at most 1GiB",
            ),
            (
                "limits: { max_header_bytes: 4MiB }\n",
                "p.yaml: limits.max_header_bytes: from 8192 bytes (8KiB) to 1048576 (1MiB)",
            ),
            (
                "limits: { max_header_bytes: 1KiB }\n",
                "p.yaml: limits.max_header_bytes: from 8192",
            ),
        ] {
            assert_error(SERVERS, extra, want);
        }
        assert_error(
            WORKERS,
            "      max_memory: 512\n",
            "p.yaml:7:19: size 512 is too small: at least 1KiB (a bare number is bytes",
        );
    }
}
