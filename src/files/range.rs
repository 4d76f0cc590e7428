//! `Range: bytes=...` over a file of known size: one range is served (206), an
//! unsatisfiable one is 416, several or a malformed one are ignored (200 with the whole file,
//! which RFC 9110 allows).

use http::header::{self, HeaderMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

pub fn range(headers: &HeaderMap, size: u64) -> Ranged {
    let mut all = headers.get_all(header::RANGE).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return Ranged::Whole;
    };
    let Ok(v) = v.to_str() else {
        return Ranged::Whole;
    };
    let v = v.trim();
    let Some(spec) = v
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .and_then(|_| v.get(6..))
    else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match num(suffix) {
            None => Ranged::Whole,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(size - n.min(size), size - 1),
        },
        (first, "") => match num(first) {
            None => Ranged::Whole,
            Some(a) if a >= size => Ranged::Unsatisfiable,
            Some(a) => Ranged::Part(a, size - 1),
        },
        (first, last) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= size {
                    Ranged::Unsatisfiable
                } else {
                    Ranged::Part(a, b.min(size - 1))
                }
            }
            _ => Ranged::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, size: u64) -> Ranged {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(r("bytes=0-9", 100), Ranged::Part(0, 9));
        assert_eq!(r("bytes=90-200", 100), Ranged::Part(90, 99));
        assert_eq!(r("bytes=90-", 100), Ranged::Part(90, 99));
        assert_eq!(r("bytes=-10", 100), Ranged::Part(90, 99));
        assert_eq!(r("bytes=-1000", 100), Ranged::Part(0, 99));
        assert_eq!(r("Bytes=1-1", 100), Ranged::Part(1, 1));
        assert_eq!(r("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=100-200", 100), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(r("bytes=5-1", 100), Ranged::Whole);
        assert_eq!(r("bytes=a-b", 100), Ranged::Whole);
        assert_eq!(r("items=0-1", 100), Ranged::Whole);
        assert_eq!(r("bytes=+1-2", 100), Ranged::Whole);
    }
}
