//! Config sections as text without the places they were written at: how a reload tells
//! whether a section changed.

/// An upstream's settings as text without the places they were written at, so moving lines
/// around in the file does not count as a change.
pub fn fingerprint(up: &crate::config::Upstream) -> String {
    strip_locations(&format!("{up:?}"))
}

/// Removes every `, referenced: Location { .. }` and `, defined: Location { .. }` from a
/// Debug rendering.
pub fn strip_locations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = [", referenced: Location {", ", defined: Location {"]
            .iter()
            .filter_map(|m| rest.find(m).map(|i| (i, m.len())))
            .min();
        let Some((i, len)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i]);
        let mut depth = 1;
        let mut end = rest.len();
        for (k, c) in rest[i + len..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + len + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
}
