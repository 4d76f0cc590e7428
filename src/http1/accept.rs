//! `Accept-Encoding` (RFC 9110 12.5.3): the q-value a client gives a content coding. One
//! reading for both of its uses, compression on the fly (`proxy::compress`) and precompressed
//! files (`files`).

use http::header::{self, HeaderMap};

/// The q-value (in thousandths) `Accept-Encoding` gives `token`: its own entry's, else `*`'s,
/// else 0. No field at all accepts only identity.
pub fn accept_quality(h: &HeaderMap, token: &str) -> u16 {
    let mut star = None;
    for value in h.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v.trim());
                    }
                }
            }
            let Some(q) = q else { continue };
            if name.eq_ignore_ascii_case(token)
                || (token == "gzip" && name.eq_ignore_ascii_case("x-gzip"))
            {
                return q;
            }
            if name == "*" {
                star = Some(q);
            }
        }
    }
    star.unwrap_or(0)
}

/// `0`, `0.5`, `1.000` as thousandths; None when malformed (the entry is ignored).
fn parse_q(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_values() {
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.05"), Some(50));
        assert_eq!(parse_q("0"), Some(0));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
        assert_eq!(parse_q(""), None);
    }

    #[test]
    fn a_token_its_own_entry_else_star() {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT_ENCODING,
            "GZIP;Q=0.8, br;q=abc".parse().unwrap(),
        );
        h.append(header::ACCEPT_ENCODING, "*;q=0.1".parse().unwrap());
        assert_eq!(accept_quality(&h, "gzip"), 800);
        // A malformed entry is ignored: `*` answers for it.
        assert_eq!(accept_quality(&h, "br"), 100);
        assert_eq!(accept_quality(&HeaderMap::new(), "gzip"), 0);
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, "x-gzip".parse().unwrap());
        assert_eq!(accept_quality(&h, "gzip"), 1000);
    }
}
