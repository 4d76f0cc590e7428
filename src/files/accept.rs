//! Accept-Encoding (RFC 9110 section 12.5.3) for precompressed variants: which of a route's
//! encodings a client takes, best first (by q-value, then the route's order); `q=0` refuses
//! one, `*` stands for those not named.

use http::header::{self, HeaderMap};

use crate::config::Precompressed;

/// The encodings of `offered` the client accepts, best first.
pub fn preferred(headers: &HeaderMap, offered: &[Precompressed]) -> Vec<Precompressed> {
    if offered.is_empty() {
        return Vec::new();
    }
    let mut named: Vec<(String, f32)> = Vec::new();
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1.0f32);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = v
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q));
                    }
                }
            }
            // A malformed q-value: the coding is not taken.
            let q = q.unwrap_or(0.0);
            let coding = if coding == "x-gzip" {
                "gzip".into()
            } else {
                coding
            };
            named.push((coding, q));
        }
    }
    let q_of = |token: &str| {
        named
            .iter()
            .find(|(c, _)| c == token)
            .or_else(|| named.iter().find(|(c, _)| c == "*"))
            .map_or(0.0, |(_, q)| *q)
    };
    let mut taken: Vec<(Precompressed, f32)> = offered
        .iter()
        .map(|p| (*p, q_of(p.token())))
        .filter(|(_, q)| *q > 0.0)
        .collect();
    // Stable: equal q-values keep the route's order.
    taken.sort_by(|a, b| b.1.total_cmp(&a.1));
    taken.into_iter().map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precompressed::*;

    fn pick(v: &str) -> Vec<Precompressed> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
        preferred(&h, &[Br, Zstd, Gzip])
    }

    #[test]
    fn by_q_then_route_order() {
        assert_eq!(pick("gzip, br"), vec![Br, Gzip]);
        assert_eq!(pick("gzip;q=1, br;q=0.5"), vec![Gzip, Br]);
        assert_eq!(pick("br;q=0, gzip"), vec![Gzip]);
        assert_eq!(pick("*"), vec![Br, Zstd, Gzip]);
        assert_eq!(pick("*;q=0.1, zstd"), vec![Zstd, Br, Gzip]);
        assert_eq!(pick("*, br;q=0"), vec![Zstd, Gzip]);
        assert_eq!(pick("identity"), vec![]);
        assert_eq!(pick("x-gzip"), vec![Gzip]);
        assert_eq!(pick("GZIP;Q=0.8"), vec![Gzip]);
        assert_eq!(pick("gzip;q=2"), vec![]);
        assert_eq!(preferred(&HeaderMap::new(), &[Br]), vec![]);
    }
}
