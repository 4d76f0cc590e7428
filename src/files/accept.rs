//! Accept-Encoding (RFC 9110 section 12.5.3) for precompressed variants: which of a route's
//! encodings a client takes, best first (by q-value, then the route's order); `q=0` refuses
//! one, `*` stands for those not named.

use http::header::HeaderMap;

use crate::config::Encoding;
use crate::http1;

/// The encodings of `offered` the client accepts, best first.
pub fn preferred(headers: &HeaderMap, offered: &[Encoding]) -> Vec<Encoding> {
    let mut taken: Vec<(Encoding, u16)> = offered
        .iter()
        .map(|e| (*e, http1::accept_quality(headers, e.token())))
        .filter(|(_, q)| *q > 0)
        .collect();
    // Stable: equal q-values keep the route's order.
    taken.sort_by_key(|(_, q)| std::cmp::Reverse(*q));
    taken.into_iter().map(|(e, _)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use Encoding::*;

    fn pick(v: &str) -> Vec<Encoding> {
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
