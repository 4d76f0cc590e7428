//! `${VAR}` and `${VAR:-default}` in the config's values, expanded one YAML scalar at a time.
//!
//! The YAML is parsed first (granit-parser, the parser serde-saphyr reads with) and only scalar
//! *values* are expanded: comments and mapping keys are left alone, and whatever a variable
//! holds (`"`, `#`, `: `, a newline, `[`) stays inside the one scalar it was written in.
//! Each changed scalar is written back in a form that keeps its type: a plain scalar whose
//! expansion is still a safe plain scalar stays plain (`count: ${N}` is still a number), any
//! other becomes a double-quoted string. Those rewrites can move what follows them on the
//! same line, so [`Expanded::original_at`] maps a place in the expanded text back to the
//! file's.
//!
//! serde-saphyr's own `properties` feature was the first choice, but it either expands plain
//! scalars only (and configs write `addr: "0.0.0.0:${PORT:-8080}"`) or follows Docker
//! Compose (bare `$NAME` expands, an unset variable is silently empty), so it is not used.

use std::borrow::Cow;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, StructureStyle};

use super::load::ConfigError;

/// The config text with its values expanded, and where each rewritten scalar came from.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub text: String,
    original: String,
    /// Byte ranges: (in the original text, in the expanded text), in order.
    edits: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Expanded {
    /// The 1-based (line, column) in the original file of a place in the expanded text: a
    /// place inside a rewritten scalar maps to that scalar's start.
    pub fn original_at(&self, line: u64, column: u64) -> (u64, u64) {
        let Some(at) = byte_at(&self.text, line, column) else {
            return (line, column);
        };
        let mut orig = at;
        for (from, to) in &self.edits {
            if at < to.start {
                break;
            }
            orig = if at < to.end {
                from.start
            } else {
                at - to.end + from.end
            };
        }
        line_col(&self.original, orig)
    }

    /// `err` with its place moved back to the original file.
    pub fn locate(&self, mut err: ConfigError) -> ConfigError {
        if let Some((line, col)) = err.at {
            err.at = Some(self.original_at(line, col));
        }
        err
    }
}

/// A hint for a YAML error on `line` of the file: in `[...]` and `{...}`, `{` is YAML's own
/// syntax, so a value holding `${VAR}` there must be quoted.
pub fn hint_for(original: &str, line: u64) -> Option<&'static str> {
    let text = original
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut depth = 0usize;
    let mut prev = ' ';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if escaped => escaped = false,
            '\\' if double => escaped = true,
            '"' if !single => double = !double,
            '\'' if !double => single = !single,
            _ if single || double => {}
            '#' if prev.is_whitespace() => return None,
            '$' if chars.peek() == Some(&'{') => {
                if depth > 0 {
                    return Some("a value holding ${VAR} inside [ ] or { } must be quoted, e.g. [\"${HOST}:5001\"]");
                }
                // Outside brackets its braces are the reference's own.
                chars.by_ref().find(|&c| c == '}');
            }
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// Expands every scalar value of `text`. `lookup` gives a variable's value; an empty value
/// counts as unset. A YAML syntax error stops the expansion there: the parse that follows
/// reports it.
pub fn expand(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Expanded, ConfigError> {
    rewrite_values(text, |value, place| {
        expand_value(value, file, &lookup, place)
    })
}

/// `text` (YAML that proxyd wrote) with every `${` in a value escaped as `$${`, so reading it
/// back expands nothing: the values stay as they are.
pub fn escape_references(text: &str) -> String {
    let escaped = rewrite_values(text, |value, _| {
        Ok::<_, ConfigError>(Some(value.replace("${", "$${")))
    });
    escaped.map_or_else(|_| text.to_string(), |e| e.text)
}

/// `text` with each scalar value holding `${` replaced by what `change` makes of it (`None`:
/// left as written), written back as one scalar of the same kind. `change` also gets where
/// the value's n-th `${` is in the file.
fn rewrite_values<E>(
    text: &str,
    mut change: impl FnMut(&str, &dyn Fn(usize) -> Option<(u64, u64)>) -> Result<Option<String>, E>,
) -> Result<Expanded, E> {
    let mut out = String::with_capacity(text.len());
    let mut edits = Vec::new();
    let mut copied = 0;
    // Per open collection: flow style?, and for a mapping whether the next node is a key.
    let mut stack: Vec<(bool, Option<bool>)> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let is_key = match stack.last_mut() {
            Some((_, Some(next_is_key)))
                if matches!(
                    event,
                    Event::Scalar(..)
                        | Event::Alias(_)
                        | Event::SequenceStart(..)
                        | Event::MappingStart(..)
                ) =>
            {
                let was = *next_is_key;
                *next_is_key = !was;
                was
            }
            _ => false,
        };
        match event {
            Event::SequenceStart(style, ..) => stack.push((style == StructureStyle::Flow, None)),
            Event::MappingStart(style, ..) => {
                stack.push((style == StructureStyle::Flow, Some(true)))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
            }
            Event::Scalar(value, style, ..) if !is_key && value.contains("${") => {
                let Some(mut range) = span.byte_range() else {
                    continue;
                };
                if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
                    // The span starts at the content: take the `|` or `>` header too.
                    range.start = block_header(&text[..range.start]).unwrap_or(range.start);
                }
                if range.start < copied {
                    continue; // never splice over what was already written
                }
                let source = &text[range.clone()];
                let at = |nth: usize| place_of_nth(text, range.start, source, nth);
                let Some(changed) = change(&value, &at)? else {
                    continue;
                };
                let flow = stack.iter().any(|(flow, _)| *flow);
                let written = match style {
                    ScalarStyle::Plain if changed.is_empty() => Cow::Borrowed("null"),
                    ScalarStyle::Plain if plain_safe(&changed, flow) => Cow::Borrowed(&*changed),
                    _ => Cow::Owned(double_quoted(&changed)),
                };
                out.push_str(&text[copied..range.start]);
                let start = out.len();
                out.push_str(&written);
                // A block scalar's span takes its last line break: give it back.
                if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded)
                    && source.ends_with('\n')
                {
                    out.push('\n');
                }
                edits.push((range.clone(), start..out.len()));
                copied = range.end;
            }
            _ => {}
        }
    }
    out.push_str(&text[copied..]);
    Ok(Expanded {
        text: out,
        original: text.to_string(),
        edits,
    })
}

/// Expands `${VAR}` and `${VAR:-default}` in one scalar's value; `$${` is a literal `${`.
/// `None` when nothing was to expand. `at(n)` places the n-th `${` of the value in the file.
fn expand_value(
    value: &str,
    file: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    at: impl Fn(usize) -> Option<(u64, u64)>,
) -> Result<Option<String>, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut nth = 0;
    let mut changed = false;
    while let Some(i) = rest.find("${") {
        let escaped = rest[..i].ends_with('$');
        out.push_str(&rest[..i]);
        rest = &rest[i + 2..];
        let place = at(nth);
        nth += 1;
        changed = true;
        if escaped {
            // `$${`: the `$` before is the escape, dropped; `${` is kept as written.
            out.pop();
            out.push_str("${");
            continue;
        }
        let Some(end) = rest.find('}') else {
            return Err(ConfigError::new(file, place, "unterminated ${ in value"));
        };
        let expr = &rest[..end];
        rest = &rest[end + 1..];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(ConfigError::new(
                file,
                place,
                format!("invalid variable name {name:?} in ${{...}}; expected ${{NAME}} or ${{NAME:-default}} (letters, digits, _)"),
            ));
        }
        match lookup(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_string))
        {
            Some(v) => out.push_str(&v),
            None => {
                return Err(ConfigError::new(
                    file,
                    place,
                    format!("environment variable {name} is not set and has no default (use ${{{name}:-default}})"),
                ))
            }
        }
    }
    out.push_str(rest);
    Ok(changed.then_some(out))
}

/// The place of the `nth` `${` of a scalar whose source text starts at byte `start`. Escapes
/// in a quoted scalar can hide one (`\x24{`): then the scalar's own start.
fn place_of_nth(text: &str, start: usize, source: &str, nth: usize) -> Option<(u64, u64)> {
    let offset = source.match_indices("${").nth(nth).map_or(0, |(i, _)| i);
    Some(line_col(text, start + offset))
}

/// Where the header (`|`, `>-`, `|2+ # comment`) of a block scalar whose content starts at
/// the end of `before` begins: the last `|` or `>` followed only by indentation and chomping
/// indicators, an optional comment, and blank lines.
fn block_header(before: &str) -> Option<usize> {
    let header_then_blank = |rest: &str| {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == '+' || c == '-');
        let (line, blank) = rest.split_once('\n').unwrap_or((rest, ""));
        let line = line.trim_start_matches([' ', '\t']);
        (line.is_empty() || line.starts_with('#') || line.trim().is_empty())
            && blank.chars().all(char::is_whitespace)
    };
    before
        .char_indices()
        .rev()
        .filter(|(_, c)| matches!(c, '|' | '>'))
        .find(|(i, _)| header_then_blank(&before[i + 1..]))
        .map(|(i, _)| i)
}

/// Whether `s`, written as a plain scalar, reads back as exactly `s` (conservatively).
fn plain_safe(s: &str, flow: bool) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    let starts_ok = match first {
        '-' | '?' | ':' => second.is_some_and(|c| !c.is_whitespace()),
        '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%'
        | '@' | '`' => false,
        c => !c.is_whitespace(),
    };
    starts_ok
        && !s.ends_with(char::is_whitespace)
        && !s.ends_with(':')
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.contains(['\t', '\u{feff}'])
        && !s
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        && !(flow && s.contains([',', '[', ']', '{', '}']))
}

/// `s` as a YAML double-quoted scalar, on one line.
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The byte offset of a 1-based (line, column in characters) place in `text`.
fn byte_at(text: &str, line: u64, column: u64) -> Option<usize> {
    let line_start = if line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(usize::try_from(line - 2).ok()?)
            .map(|(i, _)| i + 1)?
    };
    let rest = &text[line_start..];
    let col = usize::try_from(column.saturating_sub(1)).ok()?;
    Some(line_start + rest.char_indices().nth(col).map_or(rest.len(), |(i, _)| i))
}

/// The 1-based (line, column in characters) of byte `at` of `text`.
fn line_col(text: &str, at: usize) -> (u64, u64) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() as u64 + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() as u64 + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8000".into()),
            "N" => Some("4".into()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("a\"b".into()),
            "HASH" => Some("x #y".into()),
            "COLON" => Some("a: b".into()),
            "NL" => Some("one\ntwo".into()),
            "FLOW" => Some("[1, 2]".into()),
            "BOOL" => Some("true".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, ConfigError> {
        expand(text, "f", env).map(|e| e.text)
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        let out = run("a: ${PORT}\nb: ${NOPE:-7}\nc: ${EMPTY:-x}\nd: $${PORT} $5\n");
        assert_eq!(out.unwrap(), "a: 8000\nb: 7\nc: x\nd: ${PORT} $5\n");
    }

    #[test]
    fn comments_and_keys_are_untouched() {
        let text = "a: \"x:${PORT}\"   # ${VAR} and ${VAR:-default} expand\n# ${NOPE\n${KEY}: 1\n";
        let out = run(text).unwrap();
        assert_eq!(
            out,
            "a: \"x:8000\"   # ${VAR} and ${VAR:-default} expand\n# ${NOPE\n${KEY}: 1\n"
        );
    }

    #[test]
    fn values_stay_one_scalar_of_their_type() {
        let out = run("count: ${N}\naddr: \"x:${PORT}\"\nq: ${QUOTE}\nh: ${HASH}\nc: ${COLON}\nn: ${NL}\nl: [\"${FLOW}\", \"${N}\"]\nb: ${BOOL}\ne: ${NOPE:-}\n").unwrap();
        assert_eq!(
            out,
            "count: 4\naddr: \"x:8000\"\nq: a\"b\nh: \"x #y\"\nc: \"a: b\"\nn: \"one\\ntwo\"\nl: [\"[1, 2]\", \"4\"]\nb: true\ne: null\n"
        );
        let quoted = run("s: 'it''s ${QUOTE}'\nd: \"${NL}\"\n").unwrap();
        assert_eq!(quoted, "s: \"it's a\\\"b\"\nd: \"one\\ntwo\"\n");
    }

    #[test]
    fn block_scalars_become_quoted_strings() {
        let out = run("a: |\n  x ${PORT}\n  y\nb: 1\n").unwrap();
        assert_eq!(out, "a: \"x 8000\\ny\\n\"\nb: 1\n");
    }

    #[test]
    fn unset_without_default_names_place() {
        let err = run("x: 1\naddr: \"${HOST}:80\"\n").unwrap_err();
        assert_eq!(err.at, Some((2, 8)));
        assert!(err.message.contains("HOST"), "{err}");
        assert!(err.to_string().starts_with("f:2:8: "), "{err}");
        let err = run("a: [x, \"${PORT}${NOPE}\"]\n").unwrap_err();
        assert_eq!(err.at, Some((1, 16)), "{err}");
    }

    #[test]
    fn bad_names_and_unterminated() {
        let err = run("a: ${1A}\n").unwrap_err();
        assert!(err.message.contains("invalid"), "{err}");
        assert_eq!(err.at, Some((1, 4)));
        let err = run("a: x\nb: \"${PORT\"\n").unwrap_err();
        assert!(err.message.contains("unterminated"), "{err}");
        assert_eq!(err.at, Some((2, 5)));
    }

    #[test]
    fn unquoted_references_in_flow_collections_get_a_hint() {
        let text = "a: 1 # [${X}\nb: [${X}:1, 'y']\nc: ['${X}', \"${X}\"]\nd: ${X} [\n";
        assert_eq!(hint_for(text, 1), None);
        assert_eq!(hint_for(text, 4), None);
        assert!(hint_for(text, 2).is_some_and(|h| h.contains("quoted")));
        assert_eq!(hint_for(text, 3), None);
        assert_eq!(hint_for(text, 9), None);
    }

    #[test]
    fn places_map_back_to_the_file() {
        let e = expand("a: [\"${NL}\", x, \"${PORT}\"]\nb: 2\n", "f", env).unwrap();
        assert_eq!(e.text, "a: [\"one\\ntwo\", x, \"8000\"]\nb: 2\n");
        // `x` moved from column 14 to 17; `"8000"` replaced `"${PORT}"` at column 17.
        assert_eq!(e.original_at(1, 17), (1, 14));
        assert_eq!(e.original_at(1, 20), (1, 17));
        assert_eq!(e.original_at(1, 23), (1, 17));
        assert_eq!(e.original_at(1, 26), (1, 26));
        assert_eq!(e.original_at(2, 4), (2, 4));
        let block = expand("a: |\n  ${NL}\n  z\nb: x\n", "f", env).unwrap();
        assert_eq!(block.text, "a: \"one\\ntwo\\nz\\n\"\nb: x\n");
        assert_eq!(block.original_at(2, 4), (4, 4));
    }
}
