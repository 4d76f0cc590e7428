//! Checks beyond the YAML's shape: addresses, references between sections, files, limits.
//! Each error points at the offending value.

use std::collections::HashMap;
use std::net::SocketAddr;

use http::HeaderName;
use serde_saphyr::Spanned;

use super::addr::{parse_listen, parse_server_entry};
use super::balance::{Balance, HashKey};
use super::load::{Checks, ConfigError, Loaded};
use super::workers::{WorkerCount, Workers, MAX_WORKERS};
use crate::proxy::route::HostMatch;

/// hyper refuses a read buffer smaller than this.
const MIN_HEADER_BYTES: u64 = 8192;

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
            let first = tls.certs.first().map(|c| &c.cert).unwrap_or(&l.addr);
            if !matches!(tls.min_version.value.trim(), "1.2" | "1.3") {
                return Err(err(
                    &tls.min_version,
                    "listen: tls.min_version: expected \"1.2\" or \"1.3\"".into(),
                ));
            }
            // Loads every certificate, key and CA as serving would: unreadable, mismatched or
            // expired files are reported here, by name.
            crate::server::tls::build_located(tls, &loaded.dir).map_err(|(at, m)| {
                let msg = format!("listen: tls: {m}");
                match at {
                    Some(at) => ConfigError::at(file, &at, msg),
                    None => err(first, msg),
                }
            })?;
        }
        if l.redirect_https && l.tls.is_some() {
            return Err(err(
                &l.addr,
                "listen: redirect_https belongs on a plain listener".into(),
            ));
        }
        if l.max_connections == Some(0) {
            return Err(err(
                &l.addr,
                "listen: max_connections must be at least 1".into(),
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
        match (&up.workers, up.servers.first()) {
            (Some(_), Some(s)) => {
                return Err(err(
                    s,
                    format!("upstreams.{name}: has both servers and workers; use one"),
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    file,
                    None,
                    format!(
                        "upstreams.{name}: needs servers (addresses) or workers (a command to run)"
                    ),
                ))
            }
            (Some(w), None) => validate_workers(loaded, name, w, checks)?,
            (None, Some(_)) => {}
        }
        for s in &up.servers {
            parse_server_entry(&s.value)
                .map_err(|m| err(s, format!("upstreams.{name}.servers: {m}")))?;
        }
        validate_upstream_tls(loaded, name, up)?;
        validate_balancing(file, name, up)?;
    }

    if cfg.routes.is_empty() && cfg.upstreams.len() > 1 {
        return Err(ConfigError::new(
            file,
            None,
            "routes: needed when there is more than one upstream (each route names one)",
        ));
    }
    let mut routes: HashMap<(Option<String>, &str), ()> = HashMap::new();
    for r in &cfg.routes {
        if !cfg.upstreams.contains_key(&r.upstream.value) {
            let known: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
            return Err(err(
                &r.upstream,
                format!(
                    "routes: unknown upstream {:?}; expected one of {}",
                    r.upstream.value,
                    known.join(", ")
                ),
            ));
        }
        if !r.path.starts_with('/') {
            return Err(err(
                &r.upstream,
                format!("routes: path {:?} must start with /", r.path),
            ));
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
            return Err(err(
                &r.upstream,
                "routes: the same host and path appear twice".into(),
            ));
        }
    }

    let limits = &cfg.limits;
    if limits.max_header_bytes < MIN_HEADER_BYTES {
        return Err(ConfigError::new(
            file,
            None,
            format!("limits.max_header_bytes: at least {MIN_HEADER_BYTES} bytes"),
        ));
    }
    if limits.buffer_body > limits.max_body {
        return Err(ConfigError::new(
            file,
            None,
            "limits.buffer_body: must not be larger than limits.max_body",
        ));
    }
    if limits.max_connections == 0 {
        return Err(ConfigError::new(
            file,
            None,
            "limits.max_connections: must be at least 1",
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
    if cfg.threads == Some(0) {
        return Err(ConfigError::new(file, None, "threads: must be at least 1"));
    }
    validate_access_logs(loaded)?;
    Ok(())
}

/// `limits.rate`, `routes[].rate` and `limits.max_connections_per_ip`: no zero sizes, and no
/// burst without a rate.
fn validate_rate_limits(loaded: &Loaded) -> Result<(), ConfigError> {
    let file = loaded.file.as_str();
    let limits = &loaded.config.limits;
    let zero = |b: &Spanned<u32>, key: &str| {
        (b.value == 0).then(|| {
            ConfigError::at(
                file,
                &b.referenced,
                format!("{key}: at least 1 (the requests let through back to back)"),
            )
        })
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
    if let Some(m) = limits.rate.max_clients.as_ref().filter(|m| m.value == 0) {
        return Err(ConfigError::at(
            file,
            &m.referenced,
            "limits.rate.max_clients: at least 1",
        ));
    }
    if limits.max_connections_per_ip == Some(0) {
        return Err(ConfigError::new(
            file,
            None,
            "limits.max_connections_per_ip: at least 1 (leave it out for no cap)",
        ));
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

/// Each access log needs a path (healthd has a default) in a directory that exists or can be
/// created, and no two logs may share a file.
fn validate_access_logs(loaded: &Loaded) -> Result<(), ConfigError> {
    use crate::access_log::{destination, Destination};
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
        if let Err(m) = crate::access_log::creatable_dir(&path) {
            return fail(m);
        }
        seen.push(path);
    }
    Ok(())
}

/// An upstream's protocol and TLS: h2 only to https:// servers (agreed by ALPN), h2c only in
/// cleartext, workers in HTTP/1.1 (their health probes are); a readable, valid CA bundle.
fn validate_upstream_tls(
    loaded: &Loaded,
    name: &str,
    up: &super::Upstream,
) -> Result<(), ConfigError> {
    use super::{BackendAddr, UpstreamProtocol};
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
    for s in &up.servers {
        let Ok((addr, _)) = parse_server_entry(&s.value) else {
            continue;
        };
        let tls = matches!(addr, BackendAddr::Tls { .. });
        https |= tls;
        let wrong = match (protocol, tls) {
            (UpstreamProtocol::H2, false) => "protocol: h2 needs https:// servers (HTTP/2 is agreed by ALPN); h2c is HTTP/2 in cleartext",
            (UpstreamProtocol::H2c, true) => "protocol: h2c is HTTP/2 in cleartext; use protocol: h2 with https:// servers",
            _ => continue,
        };
        return Err(at(s, format!("{key}.servers: {wrong}")));
    }
    let Some(tls) = &up.tls else {
        return Ok(());
    };
    if !https {
        let msg = format!("{key}.tls: only used with https:// servers");
        let place = tls.ca.as_ref().or(tls.server_name.as_ref());
        return Err(match place.or(up.servers.first()) {
            Some(s) => at(s, msg),
            None => ConfigError::new(file, None, msg),
        });
    }
    if let Some(n) = &tls.server_name {
        crate::upstream::tls::server_name(&n.value)
            .map_err(|m| at(n, format!("{key}.tls.server_name: {m}")))?;
    }
    if let Some(ca) = &tls.ca {
        if tls.insecure_skip_verify {
            return Err(at(
                ca,
                format!("{key}.tls: ca and insecure_skip_verify: true contradict; drop one"),
            ));
        }
        crate::upstream::tls::load_ca(&loaded.dir.join(&ca.value))
            .map_err(|m| at(ca, format!("{key}.tls.ca: {m}")))?;
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
    if up.concurrency == Some(0) || up.workers.as_ref().is_some_and(|w| w.concurrency == 0) {
        return plain(format!("{key}: concurrency must be at least 1"));
    }
    if up.retries.attempts == 0 {
        return plain(format!(
            "{key}.retries.attempts: at least 1 (the first try)"
        ));
    }
    if !(up.retries.budget >= 0.0 && up.retries.budget.is_finite()) {
        return plain(format!("{key}.retries.budget: a ratio such as 0.2"));
    }
    if up.eject.failures > 0 && up.eject.base.is_zero() {
        return plain(format!("{key}.eject.base: must be longer than 0s"));
    }
    validate_queue(file, &key, &up.queue)
}

fn validate_queue(file: &str, key: &str, q: &super::balance::Queue) -> Result<(), ConfigError> {
    let plain = |msg: String| Err(ConfigError::new(file, None, msg));
    if q.timeout.is_zero() {
        return plain(format!(
            "{key}.queue.timeout: must be longer than 0s (how long a request may wait)"
        ));
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
    if let Some(p) = &w.health.path {
        if !p.value.starts_with('/') {
            return Err(at(
                &p.referenced,
                format!("{key}.health.path: must start with /"),
            ));
        }
    }
    let h = &w.health;
    if h.healthy == 0 || h.unhealthy == 0 || h.unhealthy_restart == 0 {
        return Err(ConfigError::new(
            file,
            None,
            format!("{key}.health: healthy, unhealthy and unhealthy_restart must be at least 1"),
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
