//! The request path as a file path beneath a root: percent-decoded once, and refused when it
//! could mean something else than a plain descent (NUL, backslashes, encoded slashes, `..`).
//! This is the first guard; the kernel's `RESOLVE_BENEATH` (`open.rs`) is the one that holds
//! whatever a path holds (symlinks included).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// A path refused: the reason, for the log.
pub type Refused = &'static str;

/// The relative file path `rest` names (the request path after the route's prefix, still
/// percent-encoded); empty segments and `.` are dropped, so `""` is the root itself.
pub fn relative(rest: &str) -> Result<PathBuf, Refused> {
    if rest.contains('\\') {
        return Err("a backslash in the path");
    }
    // An encoded separator would turn into one after decoding: never a name.
    let lower = rest.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err("an encoded slash in the path");
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(rest).collect();
    if decoded.contains(&0) {
        return Err("a NUL in the path");
    }
    if decoded.contains(&b'\\') {
        return Err("a backslash in the path");
    }
    let mut out = PathBuf::new();
    for seg in decoded.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err("a .. segment in the path"),
            s => out.push(OsStr::from_bytes(s)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_descend() {
        assert_eq!(relative("css/a.css").unwrap(), PathBuf::from("css/a.css"));
        assert_eq!(relative("/a//b/./c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(relative("").unwrap(), PathBuf::new());
        assert_eq!(relative("a%20b.txt").unwrap(), PathBuf::from("a b.txt"));
        // Decoded once: a double-encoded dot is a name of its own, not a dot.
        assert_eq!(relative("%252e%252e/x").unwrap(), PathBuf::from("%2e%2e/x"));
        assert_eq!(relative("..a/b..").unwrap(), PathBuf::from("..a/b.."));
    }

    #[test]
    fn what_could_leave_the_root_is_refused() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "%2e%2e/x",
            "%2E%2e/x",
            ".%2e/x",
            "..%2fx",
            "..%2Fx",
            "a%2f..%2f..%2fb",
            "a%00.txt",
            "a\\..\\b",
            "a%5c..%5cb",
            "..",
            "a/..",
        ] {
            assert!(relative(bad).is_err(), "{bad} was taken");
        }
    }
}
