//! Which keys the file itself writes, and where. A key whose value equals its default can
//! still be one the user wrote where it has no effect (`pool.max_idle` with `protocol: h2`):
//! the types cannot tell, the text can.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// Key paths as written (`upstreams.app.pool.max_idle`; a sequence's items are `[]`), each
/// with the 1-based line and column of its key.
#[derive(Debug, Default)]
pub struct Written(HashMap<String, (u64, u64)>);

impl Written {
    /// The keys of YAML `text`; what does not parse is left out (the loader reports it).
    pub fn of(text: &str) -> Written {
        // Per open collection: for a mapping, whether the next node is a key and the key
        // being read; a sequence's items are all `[]`.
        enum Frame {
            Map { next_is_key: bool, key: String },
            Seq,
        }
        let path = |stack: &[Frame]| {
            let mut out = String::new();
            for frame in stack {
                match frame {
                    Frame::Map { key, .. } if !out.is_empty() => {
                        out.push('.');
                        out.push_str(key);
                    }
                    Frame::Map { key, .. } => out.push_str(key),
                    Frame::Seq => out.push_str("[]"),
                }
            }
            out
        };
        let mut keys = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let node = matches!(
                event,
                Event::Scalar(..)
                    | Event::Alias(_)
                    | Event::SequenceStart(..)
                    | Event::MappingStart(..)
            );
            let mut is_key = false;
            if let (true, Some(Frame::Map { next_is_key, .. })) = (node, stack.last_mut()) {
                is_key = *next_is_key;
                *next_is_key = !*next_is_key;
            }
            match event {
                Event::Scalar(value, ..) if is_key => {
                    if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                        *key = value.into_owned();
                    }
                    let at = (span.start.line() as u64, span.start.col() as u64 + 1);
                    keys.entry(path(&stack)).or_insert(at);
                }
                Event::MappingStart(..) => stack.push(Frame::Map {
                    next_is_key: true,
                    key: String::new(),
                }),
                Event::SequenceStart(..) => stack.push(Frame::Seq),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        Written(keys)
    }

    /// Where the file writes `path`, if it does.
    pub fn at(&self, path: &str) -> Option<(u64, u64)> {
        self.0.get(path).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_their_places() {
        let w = Written::of("a:\n  b: 1\n  c: { d: [x, {e: 2}] }\nl:\n  - f: 1\n  - g: 2\n");
        assert_eq!(w.at("a"), Some((1, 1)));
        assert_eq!(w.at("a.b"), Some((2, 3)));
        assert_eq!(w.at("a.c.d"), Some((3, 8)));
        assert_eq!(w.at("a.c.d[].e"), Some((3, 16)));
        assert_eq!(w.at("l[].g"), Some((6, 5)));
        assert_eq!(w.at("a.x"), None);
    }
}
