//! `proxyd check --print`: the loaded config written back as YAML, with `${VAR}` expanded and
//! every default written out (nginx's `-T`), so what proxyd will run is on one page. The
//! output passes `proxyd check` itself (beside the original file: relative paths stay
//! relative to it).
//!
//! `admin.token` is replaced by [`REDACTED`]: the output goes to terminals, tickets and logs,
//! and the token guards the admin's POST endpoints. Everything else is printed as loaded,
//! `workers.env` included, so treat the output like the file.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;

use super::workers::WorkerCount;
use super::{Config, Loaded};

/// What `admin.token` reads in the output.
pub const REDACTED: &str = "<redacted>";

/// The config as YAML, headed by comments saying where it came from and what was redacted.
pub fn render(loaded: &Loaded) -> Result<String, String> {
    let config = with_defaults(&loaded.config);
    let body = serde_saphyr::to_string(&config)
        .map_err(|e| format!("cannot write the config as YAML: {e}"))?;
    let body = drop_without_effect(&config, &body);
    let mut out = format!(
        "# {}: ${{VAR}} expanded, defaults written out (proxyd check --print).\n",
        loaded.file
    );
    out.push_str(&format!(
        "# Relative paths are relative to {}.\n",
        loaded.dir.display()
    ));
    if config.admin.as_ref().is_some_and(|a| a.token.is_some()) {
        out.push_str(&format!(
            "# admin.token is redacted ({REDACTED}): put the real one back to run this file.\n"
        ));
    }
    // A value holding `${` (written `$${` in the file) must not expand when this is read.
    out.push_str(&super::expand::escape_references(&body));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// `yaml` without the lines of defaults that would have no effect where they are written
/// (`pool.max_idle` of an h2 upstream): `proxyd check` refuses those when a file writes
/// them. Each is a `key: value` line of its own in what serde-saphyr writes.
fn drop_without_effect(config: &Config, yaml: &str) -> String {
    let written = super::written::Written::of(yaml);
    let drop: Vec<u64> = super::validate::no_effect(config, &written)
        .into_iter()
        .map(|(_, (line, _), _)| line)
        .collect();
    yaml.lines()
        .zip(1u64..)
        .filter(|(_, n)| !drop.contains(n))
        .map(|(line, _)| format!("{line}\n"))
        .collect()
}

/// The config with the defaults that are computed rather than written in the types filled
/// in, and the admin token redacted.
pub fn with_defaults(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    let here = serde_saphyr::Location::UNKNOWN;
    if let Some(token) = cfg.admin.as_mut().and_then(|a| a.token.as_mut()) {
        *token = Spanned::new(REDACTED.to_string(), here, here);
    }
    cfg.threads = Some(
        cfg.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    let max_connections = cfg.limits.max_connections;
    for l in &mut cfg.listen {
        l.max_connections.get_or_insert(max_connections);
        if l.health_path.is_some() {
            let ready = l.health_ready();
            l.health_ready
                .get_or_insert(Spanned::new(ready, here, here));
        }
    }
    if cfg.upstreams.values().any(|u| u.uses_names()) {
        let (min, max) = (cfg.discovery.min_refresh(), cfg.discovery.max_refresh());
        let d = &mut cfg.discovery;
        d.min_refresh = Some(Spanned::new(super::units::Secs(min), here, here));
        d.max_refresh = Some(Spanned::new(super::units::Secs(max), here, here));
    }
    let upstreams: BTreeMap<_, _> = std::mem::take(&mut cfg.upstreams);
    for (name, mut up) in upstreams {
        let queue_max = up.queue.max_or(max_connections);
        up.queue.max = Some(Spanned::new(queue_max, here, here));
        match up.workers.as_mut() {
            Some(w) => {
                if w.count.is_none() {
                    w.count = Some(Spanned::new(WorkerCount::Fixed(w.count()), here, here));
                }
            }
            None => {
                let timeout = up.effective_response_timeout();
                up.response_timeout = Some(Spanned::new(super::units::Secs(timeout), here, here));
            }
        }
        cfg.upstreams.insert(name, up);
    }
    cfg
}
