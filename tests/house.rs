//! The house (DESIGN.md, "Layout: the house"): which module may import which. Every
//! `src/**/*.rs` is read, each `crate::X` path in its code (comments left out) is an arrow from
//! the file's module to `X`, and an arrow DESIGN.md forbids fails this test with the file, the
//! line and the arrow. Arrows that another change is removing right now are listed in
//! `PENDING`; the test also checks each is still there, so the list can only shrink.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The floors, from the ground up: a module may import its own floor and the floors below.
const FLOORS: &[(&str, &[&str])] = &[
    ("ground", &["error", "config", "http1", "notify", "logging"]),
    ("parts", &["limits", "upstream", "workers", "obs", "state"]),
    ("pipeline", &["proxy", "files"]),
    ("edge", &["server", "admin", "upgrade", "control"]),
    ("top", &["main", "lib", "app"]),
];

/// Arrows that must never exist, beyond the floors: (from, to: a module or a path prefix,
/// what DESIGN.md says). `*` is any module; `!error` any module but `error`.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "config",
        "!error",
        "config is pure data: it imports no runtime module",
    ),
    ("http1", "!error", "http1 imports nothing but error"),
    ("upstream", "proxy", "upstream never imports proxy"),
    ("workers", "proxy", "workers never imports proxy"),
    (
        "obs",
        "proxy",
        "obs takes an Outcome record: it imports nothing of proxy",
    ),
    (
        "obs",
        "upstream",
        "obs takes plain figures: no upstream internals",
    ),
    (
        "obs",
        "workers",
        "obs takes plain figures: no worker internals",
    ),
    ("proxy", "server", "proxy never imports server"),
    (
        "files",
        "proxy",
        "files sits beside proxy: proxy calls files, never the reverse",
    ),
];

/// Forbidden arrows still there because another change is removing them now: (from, path
/// prefix, who removes it). Delete an entry when the test says its arrow is gone.
const PENDING: &[(&str, &str, &str)] = &[];

/// One `crate::` path in the code.
struct Arrow {
    file: PathBuf,
    line: usize,
    from: String,
    /// The path after `crate::`, e.g. `proxy::body::RequestBody`.
    to: String,
}

impl Arrow {
    fn to_module(&self) -> &str {
        self.to.split("::").next().unwrap_or("")
    }

    fn place(&self) -> String {
        format!(
            "{}:{}: {} -> crate::{}",
            self.file.display(),
            self.line,
            self.from,
            self.to
        )
    }
}

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to: `src/proxy/body.rs` is `proxy`, `src/state.rs` is `state`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// A line without its `//` comment and its string literals (so doc links and messages that
/// name a path are not arrows).
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// The paths `crate::` leads to on a line; `crate::{a, b::c}` gives `a` and `b::c`. A brace
/// group that goes on past the line continues on the next ones (`open` carries it).
fn paths_on(code: &str, open: &mut Option<String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    if let Some(mut group) = open.take() {
        match group_end(&group, rest) {
            Some(end) => {
                group.push_str(&rest[..end]);
                found.extend(split_group(&group));
                rest = &rest[end + 1..];
            }
            None => {
                group.push_str(rest);
                *open = Some(group);
                return found;
            }
        }
    }
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::`, not `crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            match group_end("", group) {
                Some(end) => {
                    found.extend(split_group(&group[..end]));
                    rest = &group[end + 1..];
                }
                None => {
                    *open = Some(group.to_string());
                    return found;
                }
            }
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        found.push(path.trim_end_matches(':').to_string());
    }
    found
}

/// Where in `more` the `{` group that `so_far` is inside of closes.
fn group_end(so_far: &str, more: &str) -> Option<usize> {
    let depth = |s: &str| s.matches('{').count() as i64 - s.matches('}').count() as i64;
    let mut open = 1 + depth(so_far);
    for (i, c) in more.char_indices() {
        match c {
            '{' => open += 1,
            '}' => {
                open -= 1;
                if open == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The top-level entries of a `{...}` use group (nested groups keep their prefix).
fn split_group(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    out.push(item);
    out.into_iter()
        .map(|s| s.split_whitespace().collect::<String>())
        .filter(|s| !s.is_empty())
        .collect()
}

fn arrows() -> Vec<Arrow> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut arrows = Vec::new();
    for file in files {
        let from = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let mut open = None;
        for (i, line) in text.lines().enumerate() {
            for to in paths_on(&code_of(line), &mut open) {
                if to.is_empty() || to.split("::").next() == Some(from.as_str()) {
                    continue; // within its own module
                }
                arrows.push(Arrow {
                    file: file.strip_prefix(root).unwrap().to_path_buf(),
                    line: i + 1,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    arrows
}

/// Why `arrow` must not exist, if it must not.
fn forbidden(arrow: &Arrow) -> Option<String> {
    let to = arrow.to_module();
    for (from, target, why) in FORBIDDEN {
        let hit = match *target {
            "*" => true,
            t if t.starts_with('!') => to != &t[1..],
            t => arrow.to == t || arrow.to.starts_with(&format!("{t}::")),
        };
        if *from == arrow.from && hit {
            return Some(why.to_string());
        }
    }
    let (Some(from), Some(target)) = (floor_of(&arrow.from), floor_of(to)) else {
        return None;
    };
    (target > from).then(|| {
        format!(
            "{} is on the {} floor, {} above it on the {} floor: a floor imports only its own and those below",
            arrow.from, FLOORS[from].0, to, FLOORS[target].0
        )
    })
}

fn pending(arrow: &Arrow) -> Option<usize> {
    PENDING.iter().position(|(from, prefix, _)| {
        *from == arrow.from && (arrow.to == *prefix || arrow.to.starts_with(&format!("{prefix}::")))
    })
}

#[test]
fn every_module_is_on_a_floor() {
    let mut missing = BTreeSet::new();
    for a in arrows() {
        for m in [a.from.as_str(), a.to_module()] {
            if floor_of(m).is_none() {
                missing.insert(m.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules on no floor of tests/house.rs's FLOORS (add them where DESIGN.md's Layout puts them): {missing:?}"
    );
}

#[test]
fn no_arrow_goes_against_the_house() {
    let arrows = arrows();
    assert!(
        arrows.iter().any(|a| a.from == "server"),
        "no arrows found: is src/ read?"
    );
    let mut wrong = Vec::new();
    let mut seen = vec![false; PENDING.len()];
    for a in &arrows {
        let Some(why) = forbidden(a) else { continue };
        match pending(a) {
            Some(i) => seen[i] = true,
            None => wrong.push(format!("{}\n    forbidden: {why}", a.place())),
        }
    }
    let gone: Vec<String> = PENDING
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|((from, to, who), _)| {
            format!("{from} -> crate::{to} ({who}) is gone: delete its entry from PENDING in tests/house.rs")
        })
        .collect();
    assert!(
        wrong.is_empty() && gone.is_empty(),
        "arrows against DESIGN.md's house:\n{}\n{}",
        wrong.join("\n"),
        gone.join("\n")
    );
}

/// The reader itself: use groups, comments and strings.
#[test]
fn paths_are_read_from_code_only() {
    let mut open = None;
    assert_eq!(
        paths_on(
            &code_of("use crate::{error::Cause, proxy::{body, error}}; // crate::x"),
            &mut open
        ),
        ["error::Cause", "proxy::{body,error}"]
    );
    assert!(paths_on(&code_of("let s = \"crate::server\";"), &mut open).is_empty());
    assert_eq!(
        paths_on(&code_of("use crate::{"), &mut open),
        Vec::<String>::new()
    );
    assert_eq!(
        paths_on(
            &code_of("    upstream::Upstream, state::Snapshot,"),
            &mut open
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        paths_on(&code_of("};"), &mut open),
        ["upstream::Upstream", "state::Snapshot"]
    );
    assert_eq!(
        paths_on(&code_of("x: mycrate::a, y: crate::limits::Rate"), &mut open),
        ["limits::Rate"]
    );
}
