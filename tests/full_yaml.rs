//! config/full.yaml lists every key the config types accept.
//!
//! The keys are taken from the types themselves, through the loader's own deserializer: every
//! struct denies unknown keys, so a probe document such as `{listen: [{tls: {__probe__: 0}}]}`
//! fails with "unknown field `__probe__`, expected one of `certs`, `min_version`, ..." when
//! the value at that path is a struct, and with some other error when it is not. Walking the
//! answers from the top gives every key path (a sequence's items are `[]`, a map's keys `*`),
//! whatever the types' names or layout, with no list kept by hand.

use std::collections::BTreeSet;

use proxyd::config::Config;

const PROBE: &str = "__probe__";

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Item,
    Entry,
}

fn show(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Item => out.push_str("[]"),
            Step::Entry => out.push_str(".*"),
        }
    }
    out
}

/// The keys of the struct at `path`, if the value there is a struct.
fn fields(path: &[Step]) -> Option<Vec<String>> {
    let mut doc = format!("{{{PROBE}: 0}}");
    for step in path.iter().rev() {
        doc = match step {
            Step::Key(k) => format!("{{{k}: {doc}}}"),
            Step::Item => format!("[{doc}]"),
            Step::Entry => format!("{{x: {doc}}}"),
        };
    }
    let err = serde_saphyr::from_str::<Config>(&doc).err()?;
    let msg = err.without_snippet().to_string();
    let rest = msg.split_once(&format!("unknown field `{PROBE}`, "))?.1;
    let rest = rest.split(" at line ").next().unwrap_or(rest);
    if rest.starts_with("there are no fields") {
        return Some(Vec::new());
    }
    let list = rest
        .strip_prefix("expected one of ")
        .or_else(|| rest.strip_prefix("expected "))?;
    Some(
        list.split(", ")
            .map(|f| f.trim().trim_matches('`').to_string())
            .collect(),
    )
}

/// Every key path under `path`; `maps` gets the paths whose keys are names (`upstreams`).
fn walk(path: &mut Vec<Step>, keys: &mut BTreeSet<String>, maps: &mut BTreeSet<String>) {
    let Some(names) = fields(path) else { return };
    for name in names {
        path.push(Step::Key(name));
        keys.insert(show(path));
        if fields(path).is_some() {
            walk(path, keys, maps);
        } else {
            for (step, is_map) in [(Step::Item, false), (Step::Entry, true)] {
                path.push(step);
                if fields(path).is_some() {
                    if is_map {
                        path.pop();
                        maps.insert(show(path));
                        path.push(Step::Entry);
                        keys.insert(show(path));
                    }
                    walk(path, keys, maps);
                }
                path.pop();
            }
        }
        path.pop();
    }
}

/// Every key path of a YAML document, named as [`walk`] names them.
fn yaml_keys(
    value: &serde_json::Value,
    at: &str,
    maps: &BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = match (at.is_empty(), maps.contains(at)) {
                    (true, _) => k.clone(),
                    (false, true) => format!("{at}.*"),
                    (false, false) => format!("{at}.{k}"),
                };
                out.insert(path.clone());
                yaml_keys(v, &path, maps, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                yaml_keys(item, &format!("{at}[]"), maps, out);
            }
        }
        _ => {}
    }
}

/// A header name under a header rule's `set` or `add` (`headers.request.set.X-Env`).
fn header_name(key: &str) -> bool {
    key.rsplit_once('.').is_some_and(|(parent, _)| {
        (parent.contains("headers.request.") || parent.contains("headers.response."))
            && (parent.ends_with(".set") || parent.ends_with(".add"))
    })
}

#[test]
fn full_yaml_has_every_key_of_the_config_types() {
    let mut keys = BTreeSet::new();
    let mut maps = BTreeSet::new();
    walk(&mut Vec::new(), &mut keys, &mut maps);
    // The probe itself works: it reaches nested structs, sequences of structs, map entries
    // and the range form of `count`. (A handful of samples, not the list.)
    for sample in [
        "listen[].tls.client_auth.mode",
        "upstreams.*.workers.health.unhealthy_restart",
        "upstreams.*.workers.count.min_free_memory",
        "routes[].rate.by",
        "limits.rate.max_clients",
        "access_log[].format",
    ] {
        assert!(
            keys.contains(sample),
            "the probe missed {sample}: {keys:#?}"
        );
    }
    assert_eq!(maps, BTreeSet::from(["upstreams".to_string()]));
    assert!(keys.len() > 120, "{} keys: {keys:#?}", keys.len());

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/full.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let mut written = BTreeSet::new();
    yaml_keys(&doc, "", &maps, &mut written);
    let missing: Vec<&String> = keys.difference(&written).collect();
    assert!(
        missing.is_empty(),
        "config/full.yaml lacks {} key(s) the config types accept: {missing:#?}",
        missing.len()
    );
    // And nothing in it that the types do not know (proxyd check says so too, with a place).
    // An `error_pages` map's keys are statuses, not names of keys.
    let status_key = |k: &str| {
        k.rsplit_once('.')
            .is_some_and(|(at, last)| at.ends_with("error_pages") && last.parse::<u16>().is_ok())
    };
    let unknown: Vec<&String> = written
        .iter()
        // Free-form names: workers' environment variables, header rules' header names.
        .filter(|k| !keys.contains(*k) && !k.contains(".env.") && !status_key(k) && !header_name(k))
        .collect();
    assert!(
        unknown.is_empty(),
        "unknown keys in full.yaml: {unknown:#?}"
    );
}
