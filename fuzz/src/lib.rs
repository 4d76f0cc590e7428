//! The fuzz targets' bodies, one function per target, each taking the fuzzer's bytes.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, one line each) and by
//! `tests/fuzz_smoke.rs`, which replays `fuzz/corpus/<target>/` through the same functions
//! under a plain `cargo test` (CI's smoke run). A parser refusing its input is fine; a panic
//! is a finding, and so is a failed assertion below: each states a property the code must
//! keep for every input (a complete head stays complete when cut to its length, the request
//! sent upstream carries no hop-by-hop header, a route is the best match, ...).
//!
//! Nothing here touches the network: the config loader keeps host names in `servers:` as
//! names (they are looked up by the running proxy only), so every config is validated.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::{Result, Unstructured};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use proxyd::config::addr::{
    parse_listen, parse_server, parse_server_entry, BackendAddr, ServerAddr,
};
use proxyd::config::balance::HashKey;
use proxyd::config::load::expand_env;
use proxyd::config::load_str;
use proxyd::fuzzing::{combined, healthd, json};
use proxyd::http1::{self, Framing, Limits};
use proxyd::limits::{Cidr, Rate, TrustedProxies};
use proxyd::obs::{Outcome, Trace};
use proxyd::proxy::headers::{self, ClientSide};
use proxyd::server::proxy_protocol::{self, Header, Parsed};
use proxyd::state::route::{host_only, HostMatch, Router};
use proxyd::upstream::body::RequestBody;

#[path = "http1_diff.rs"]
mod http1_diff;
pub use http1_diff::http1_diff;

/// A target's body: takes the fuzzer's bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and its `corpus/` directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("config_loader", config_loader),
    ("request_head", request_head),
    ("pipelined", pipelined),
    ("http1_diff", http1_diff),
    ("proxy_protocol", proxy_protocol),
    ("headers", headers),
    ("route", route),
    ("parsers", parsers),
    ("access_log", access_log),
    ("static_path", static_path),
];

/// The repository's `config/` directory: relative paths in fuzzed configs (certificates, CA
/// bundles) resolve against it, so the seed configs load as `proxyd check` loads them.
fn config_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if here.ends_with("fuzz") {
        here.parent().map_or(here.clone(), PathBuf::from)
    } else {
        here
    };
    root.join("config")
}

/// Config text (any bytes, read as UTF-8 with replacement) through `${VAR}` expansion, the
/// YAML parser and validation, as `proxyd check` does; a config that validates must also
/// build the runtime snapshot `proxyd` serves from.
pub fn config_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fake_env = |name: &str| match name {
        "PORT" => Some("8080".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    if let Err(e) = expand_env(&text, "fuzz.yaml", fake_env) {
        let (line, col) = e.at.expect("expansion errors have a place");
        assert!(line >= 1 && col >= 1, "{e}");
        assert!(line as usize <= text.split('\n').count(), "{e}");
    }
    match load_str(&text, "fuzz.yaml", config_dir()) {
        Ok(loaded) => {
            let _ = proxyd::config::secrets::warnings(&loaded);
            let _ = proxyd::server::conn_setup(&loaded.config);
            let _ = proxyd::limits::ClientPolicy::from_config(&loaded.config);
            if let Err(e) = proxyd::state::Snapshot::build(&loaded) {
                panic!("the config validates but does not build: {e}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// A client's byte stream (after a first byte choosing the limits and how the stream is cut
/// into reads) through `http1::check_request` and `http1::parse_request`.
pub fn request_head(data: &[u8]) {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let max_bytes = [8192, 256, 65536, 64][usize::from(knobs & 3)];
    let max_headers = [100, 0, 1, 200][usize::from((knobs >> 2) & 3)];
    let limits = Limits {
        max_head_bytes: max_bytes,
        max_headers,
    };
    let checked = http1::check_request(stream, &limits);
    match checked {
        Ok(Some((len, framing))) => {
            assert!(len <= stream.len() && len <= max_bytes, "{len} {framing:?}");
            // A complete head is judged alike without what follows it.
            assert_eq!(
                http1::check_request(&stream[..len], &limits),
                Ok(Some((len, framing)))
            );
        }
        Ok(None) => assert!(stream.len() <= max_bytes),
        Err(_) => {}
    }
    // parse_request applies the same rules, and the target and Host rules on top.
    let mut buf = bytes::BytesMut::from(stream);
    match (http1::parse_request(&mut buf, &limits), checked) {
        (Ok(Some(head)), Ok(Some((len, framing)))) => {
            assert_eq!(head.framing, framing);
            assert_eq!(buf.len(), stream.len() - len, "the head is split off");
            assert_eq!(http1::check_parts(&head.parts), Ok(()));
        }
        (Ok(None), Ok(None)) => assert_eq!(buf.len(), stream.len()),
        (Err(e), Err(c)) => assert_eq!(e, c),
        (Err(_), Ok(Some(_))) => {}
        (parsed, checked) => panic!("parse_request: {parsed:?}, check_request: {checked:?}"),
    }
}

/// The heads a client's stream holds, as proxyd's HTTP/1.1 server walks it: each head
/// parsed, its body skipped by its framing, then the next; stops at the first refusal
/// (its index and cause) or where the bytes run out.
fn walk(pieces: &[&[u8]], limits: &Limits) -> (Vec<String>, Option<(usize, String)>) {
    let mut buf = bytes::BytesMut::new();
    let mut heads = Vec::new();
    let mut body: Option<Result<u64, http1::ChunkedDecoder>> = None;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match &mut body {
                Some(Ok(left)) => {
                    let n = (*left).min(buf.len() as u64);
                    let _ = buf.split_to(n as usize);
                    *left -= n;
                    if *left > 0 {
                        break;
                    }
                    body = None;
                }
                Some(Err(dec)) => match dec.decode(&buf) {
                    Ok((used, http1::Chunk::End(_))) => {
                        let _ = buf.split_to(used);
                        body = None;
                    }
                    Ok((used, _)) => {
                        let _ = buf.split_to(used);
                        if buf.is_empty() {
                            break;
                        }
                    }
                    Err(e) => return (heads.clone(), Some((heads.len(), format!("{e:?}")))),
                },
                None => {
                    if buf.is_empty() {
                        break;
                    }
                    match http1::parse_request(&mut buf, limits) {
                        Ok(Some(h)) => {
                            heads.push(format!("{} {}", h.parts.method, h.parts.uri));
                            body = match h.framing {
                                Framing::Length(n) => Some(Ok(n)),
                                Framing::Chunked => {
                                    Some(Err(http1::ChunkedDecoder::new(16 * 1024)))
                                }
                                Framing::None | Framing::Close => None,
                            };
                        }
                        Ok(None) => break,
                        Err(e) => return (heads.clone(), Some((heads.len(), format!("{e:?}")))),
                    }
                }
            }
        }
    }
    (heads, None)
}

/// A client's byte stream (after a first byte choosing the head limits and how the stream is
/// cut into reads) walked head to body to head: however TCP cuts it, the same requests are
/// found and the same head is refused. A walker that lost its place in the stream (a body's
/// end seen elsewhere) would take a smuggled head for a body or a body for a head.
pub fn pipelined(data: &[u8]) {
    let Some((&knobs, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_head_bytes: [8192, 16384][usize::from(knobs & 1)],
        max_headers: [100, 4][usize::from((knobs >> 1) & 1)],
    };
    let whole = walk(&[stream], &limits);
    let step = usize::from(knobs >> 2) + 1;
    let pieces: Vec<&[u8]> = stream.chunks(step).collect();
    let cut = walk(&pieces, &limits);
    assert_eq!(whole, cut, "read whole vs in reads of {step}");
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime")
    })
}

/// PROXY protocol v1 and v2 headers: the parser on the bytes and on their prefixes, the
/// connection reader on the same bytes (it must hand on exactly what follows the header),
/// and v2 encodings of addresses taken from the input.
pub fn proxy_protocol(data: &[u8]) {
    let full = proxy_protocol::parse(data);
    if let Ok(Parsed::Done(h, n)) = &full {
        let (h, n) = (*h, *n);
        assert!(n > 0 && n <= data.len());
        assert_eq!(proxy_protocol::parse(&data[..n]), Ok(Parsed::Done(h, n)));
        for k in [0, 1, n / 2, n - 1] {
            assert_eq!(
                proxy_protocol::parse(&data[..k]),
                Ok(Parsed::Partial),
                "{k}"
            );
        }
    }
    let read = runtime().block_on(async {
        use tokio::io::AsyncReadExt;
        let (h, mut rest) = proxy_protocol::read(data, Duration::from_secs(5)).await?;
        let mut after = Vec::new();
        rest.read_to_end(&mut after).await.expect("reading a slice");
        Ok::<_, proxy_protocol::Error>((h, after))
    });
    match (&full, read) {
        (Ok(Parsed::Done(h, n)), Ok((rh, after))) => {
            assert_eq!(*h, rh);
            assert_eq!(&data[*n..], &after[..]);
        }
        (Ok(Parsed::Partial), Err(e)) => {
            let want = if data.is_empty() {
                proxy_protocol::Error::Missing
            } else {
                proxy_protocol::Error::Truncated
            };
            assert_eq!(e, want);
        }
        (Err(e), Err(re)) => assert_eq!(*e, re),
        (full, read) => panic!("parse: {full:?}, read: {read:?}"),
    }
    if data.len() >= 36 {
        let addr = |b: &[u8], v6: bool| {
            let port = u16::from_be_bytes([b[0], b[1]]);
            let ip = if v6 {
                IpAddr::from(<[u8; 16]>::try_from(&b[2..18]).expect("16 bytes"))
            } else {
                IpAddr::from(<[u8; 4]>::try_from(&b[2..6]).expect("4 bytes"))
            };
            SocketAddr::new(ip, port)
        };
        let v6 = data[0] & 1 == 1;
        let (source, destination) = (addr(&data[0..18], v6), addr(&data[18..36], v6));
        let encoded = proxy_protocol::encode_v2(source, destination);
        let header = Header::Proxied {
            source,
            destination,
        };
        assert_eq!(
            proxy_protocol::parse(&encoded),
            Ok(Parsed::Done(header, encoded.len()))
        );
        let (proto, s, d) = match (source, destination) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                ("TCP4", s.ip().to_string(), d.ip().to_string())
            }
            _ => (
                "TCP6",
                source.ip().to_string(),
                destination.ip().to_string(),
            ),
        };
        let v1 = format!(
            "PROXY {proto} {s} {d} {} {}\r\n",
            source.port(),
            destination.port()
        );
        assert_eq!(
            proxy_protocol::parse(v1.as_bytes()),
            Ok(Parsed::Done(header, v1.len()))
        );
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "DELETE", "PATCH", "TRACE",
];
const TARGETS_SEEN: &[&str] = &[
    "/",
    "*",
    "/a?b=1",
    "http://example.com/x",
    "https://a:443",
    "http://a?q",
    "HTTP://A:80/p?q#f",
    "example.com:443",
    "ftp://a/",
    "http://u@a/",
    "http://a:99999/",
    "http://[::1]:8080/x",
    "//a/b",
    "/a/../b",
];
const NAMES: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
    "x-client-subject",
    "x-other",
    "x_forwarded_for",
    "x_forwarded_host",
    "content_length",
    "transfer_encoding",
    "x_client_subject",
    "x_request_id",
    "x_other",
    "http2-settings",
];
const VALUES: &[&str] = &[
    "",
    "chunked",
    "Chunked",
    "gzip, chunked",
    "close",
    "keep-alive",
    "upgrade",
    "Upgrade, x-other",
    "x-other, te, x_other",
    "x-forwarded-for, host",
    "content-length, x-request-id",
    "trailers",
    "trailers;q=1, deflate",
    "h2c",
    "websocket",
    "websocket, h2c",
    "example.com",
    "EXAMPLE.com.:8080",
    "[::1]:80",
    "a@b",
    "a:99999",
    "1.2.3.4",
    "1.2.3.4, 10.0.0.1:80, [::1]:5, x",
    "5",
    "100-continue",
    "a=1",
    "b=2; c=3",
];

fn method(u: &mut Unstructured<'_>) -> Result<Method> {
    if u.ratio(3, 4)? {
        return Ok(Method::from_bytes(u.choose(METHODS)?.as_bytes()).unwrap_or(Method::GET));
    }
    Ok(Method::from_bytes(u.arbitrary::<&[u8]>()?).unwrap_or(Method::GET))
}

fn uri(u: &mut Unstructured<'_>) -> Result<Uri> {
    let text: &str = if u.ratio(2, 3)? {
        u.choose(TARGETS_SEEN)?
    } else {
        u.arbitrary()?
    };
    Ok(text.parse().unwrap_or_else(|_| Uri::from_static("/")))
}

fn version(u: &mut Unstructured<'_>) -> Result<Version> {
    Ok(*u.choose(&[
        Version::HTTP_11,
        Version::HTTP_10,
        Version::HTTP_2,
        Version::HTTP_3,
        Version::HTTP_09,
    ])?)
}

fn header_map(u: &mut Unstructured<'_>) -> Result<HeaderMap> {
    let mut h = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=16)? {
        let name = if u.ratio(4, 5)? {
            HeaderName::from_static(u.choose(NAMES)?)
        } else {
            match HeaderName::from_bytes(u.arbitrary::<&[u8]>()?) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        let value = if u.ratio(1, 2)? {
            HeaderValue::from_static(u.choose(VALUES)?)
        } else {
            match HeaderValue::from_bytes(u.arbitrary::<&[u8]>()?) {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        h.append(name, value);
    }
    Ok(h)
}

fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(if u.arbitrary()? {
        IpAddr::from(u.arbitrary::<[u8; 4]>()?)
    } else {
        IpAddr::from(u.arbitrary::<[u8; 16]>()?)
    })
}

/// Hop-by-hop names: never sent upstream, nor back to the client, but for an upgrade.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The names listed in `Connection`.
fn connection_names(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// A request head built from the input through the pipeline's header rules
/// (`check_request`, `is_upgrade`, `hash_key`, `prepare_request`) and a response head through
/// `prepare_response`, with what the backend and the client get checked.
pub fn headers(data: &[u8]) {
    let _ = headers_with(&mut Unstructured::new(data));
}

fn headers_with(u: &mut Unstructured<'_>) -> Result<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = method(u)?;
    *req.uri_mut() = uri(u)?;
    *req.version_mut() = version(u)?;
    *req.headers_mut() = header_map(u)?;
    let (mut parts, ()) = req.into_parts();

    let rid = HeaderName::from_static("x-request-id");
    let id = headers::ensure_request_id(&mut parts.headers, &rid);
    assert_eq!(parts.headers.get(&rid), Some(&id));
    let client_ip = if u.arbitrary()? { Some(ip(u)?) } else { None };
    let key = match u.int_in_range(0..=2)? {
        0 => HashKey::ClientIp,
        1 => HashKey::Header(HeaderName::from_static(u.choose(NAMES)?)),
        _ => HashKey::Cookie(u.arbitrary::<String>()?),
    };
    let _ = headers::hash_key(&key, &parts.headers, client_ip);

    if headers::check_request(&parts).is_ok() {
        prepare_request(u, parts, client_ip)?;
    }
    prepare_response(u)
}

fn prepare_request(
    u: &mut Unstructured<'_>,
    mut parts: http::request::Parts,
    client_ip: Option<IpAddr>,
) -> Result<()> {
    // What `check_request` let through.
    assert!(parts.method != Method::CONNECT);
    assert!(parts.headers.get_all(header::HOST).iter().count() <= 1);
    let upgrade = headers::is_upgrade(&parts) && u.arbitrary()?;
    let host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let listed = connection_names(&parts.headers);
    let body = match u.int_in_range(0..=2)? {
        0 => RequestBody::Empty,
        n => RequestBody::Buffered {
            data: bytes::Bytes::copy_from_slice(u.arbitrary::<&[u8]>()?),
            trailers: (n == 2).then(|| {
                let mut t = HeaderMap::new();
                t.insert("x-checksum", HeaderValue::from_static("1"));
                t
            }),
        },
    };
    let side = ClientSide {
        client_ip,
        proto: if u.arbitrary()? { "https" } else { "http" },
        preserve_host: u.arbitrary()?,
    };
    let backend_host = headers::prepare_request(&mut parts, &body, upgrade, &side);

    let h = &parts.headers;
    assert_eq!(parts.version, Version::HTTP_11);
    assert!(
        parts.uri.scheme().is_none() && parts.uri.authority().is_none(),
        "not origin-form: {}",
        parts.uri
    );
    for name in HOP_BY_HOP {
        let values: Vec<_> = h.get_all(name).iter().collect();
        let allowed: &[&str] = match name {
            "connection" if upgrade => &["upgrade"],
            "upgrade" if upgrade => continue,
            "transfer-encoding" if body.has_trailers() => &["chunked"],
            _ => &[],
        };
        assert!(
            values.is_empty() || values == allowed,
            "{name}: {values:?} (upgrade {upgrade})"
        );
    }
    let te: Vec<_> = h.get_all(header::TE).iter().collect();
    assert!(te.is_empty() || te == ["trailers"], "te: {te:?}");
    // What the client named in Connection is gone, but for what proxyd writes itself.
    let written = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    for name in &listed {
        if !written.contains(&name.as_str()) {
            assert!(!h.contains_key(name), "{name} was listed in Connection");
        }
    }
    let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    match &body {
        RequestBody::Buffered { data, .. } if !body.has_trailers() => {
            assert_eq!(lengths, [&HeaderValue::from(data.len())]);
        }
        RequestBody::Buffered { .. } => assert!(lengths.is_empty()),
        _ => assert!(lengths.is_empty() || lengths == ["0"], "{lengths:?}"),
    }
    for name in h.keys().filter(|n| n.as_str().contains('_')) {
        let dashed = name.as_str().replace('_', "-");
        assert!(
            !h.contains_key(dashed.as_str()),
            "{name} went with {dashed}"
        );
        assert!(
            ![
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-real-ip",
                "x-client-subject"
            ]
            .contains(&dashed.as_str()),
            "{name} stands for a header proxyd vouches for"
        );
    }
    assert_eq!(
        h.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(side.proto.as_bytes())
    );
    if let Some(ip) = client_ip {
        let xff = h
            .get("x-forwarded-for")
            .expect("the client's address is added");
        let xff = xff.to_str().expect("X-Forwarded-For is text");
        assert!(xff.ends_with(&ip.to_string()), "{xff}");
    }
    assert_eq!(h.get("x-forwarded-host"), host.as_ref());
    match &host {
        Some(host) if side.preserve_host => {
            assert!(!backend_host);
            let hosts: Vec<_> = h.get_all(header::HOST).iter().collect();
            assert_eq!(hosts, [host]);
        }
        _ => assert!(backend_host),
    }
    Ok(())
}

fn prepare_response(u: &mut Unstructured<'_>) -> Result<()> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::from_u16(u.int_in_range(100..=999)?).unwrap_or_default();
    *resp.headers_mut() = header_map(u)?;
    let (mut parts, ()) = resp.into_parts();
    let listed = connection_names(&parts.headers);
    headers::prepare_response(&mut parts);
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let h = &parts.headers;
    for name in HOP_BY_HOP {
        let values: Vec<_> = h.get_all(name).iter().collect();
        match name {
            "connection" if switching => assert_eq!(values, ["upgrade"]),
            "upgrade" if switching => {}
            _ => assert!(values.is_empty(), "{name}: {values:?}"),
        }
    }
    assert!(!h.contains_key(header::TE));
    for name in &listed {
        if !(switching && (*name == header::UPGRADE || *name == header::CONNECTION)) {
            assert!(!h.contains_key(name), "{name} was listed in Connection");
        }
    }
    Ok(())
}

const HOSTS: &[&str] = &[
    "example.com",
    "*.example.com",
    "api.example.com",
    "API.Example.COM",
    "a.example.com.",
    "*.eu.example.com",
    "*.",
    "*",
    "",
    "*.b",
    "ü.example.com",
    "[::1]:80",
    "example.com:8080",
    "x.example.com:443",
];
const PATHS: &[&str] = &["/", "/api/", "/api", "/static/", "/v1/users", "", "/é"];

fn host_text<'a>(u: &mut Unstructured<'a>) -> Result<&'a str> {
    if u.ratio(2, 3)? {
        u.choose(HOSTS).copied()
    } else {
        u.arbitrary()
    }
}

fn path_text<'a>(u: &mut Unstructured<'a>) -> Result<&'a str> {
    if u.ratio(2, 3)? {
        u.choose(PATHS).copied()
    } else {
        u.arbitrary()
    }
}

/// Route host patterns and a router built from them: each request's pick is checked
/// against the rule written out plainly (exact hosts before wildcards before no host, then
/// the longest prefix, then the first listed).
pub fn route(data: &[u8]) {
    let _ = route_with(&mut Unstructured::new(data));
}

fn rank(h: &Option<HostMatch>) -> (u8, usize) {
    match h {
        Some(HostMatch::Exact(h)) => (2, h.len()),
        Some(HostMatch::Wildcard(s)) => (1, s.len()),
        None => (0, 0),
    }
}

fn route_with(u: &mut Unstructured<'_>) -> Result<()> {
    let mut routes = Vec::new();
    for i in 0..u.int_in_range(0..=8)? {
        let host = if u.arbitrary()? {
            let text = host_text(u)?;
            match HostMatch::parse(text) {
                Ok(m) => {
                    assert_eq!(HostMatch::parse(&m.to_string()), Ok(m.clone()));
                    Some(m)
                }
                Err(_) => continue,
            }
        } else {
            None
        };
        routes.push((host, path_text(u)?.to_string(), i));
    }
    let router = Router::new(routes.clone());
    while !u.is_empty() {
        let authority = host_text(u)?;
        let host = host_only(authority);
        assert!(authority.starts_with(host));
        let host = if u.arbitrary()? { Some(host) } else { None };
        let path = path_text(u)?;
        let matching = routes.iter().filter(|(m, prefix, _)| {
            let host_ok = match (m, host) {
                (None, _) => true,
                (Some(m), Some(h)) => m.matches(h),
                (Some(_), None) => false,
            };
            host_ok && path.starts_with(prefix.as_str())
        });
        let mut best: Option<&(Option<HostMatch>, String, usize)> = None;
        for r in matching {
            if best.is_none_or(|b| (rank(&r.0), r.1.len()) > (rank(&b.0), b.1.len())) {
                best = Some(r);
            }
        }
        assert_eq!(
            router.pick(host, path),
            best.map(|b| b.2),
            "{host:?} {path:?} in {routes:?}"
        );
    }
    Ok(())
}

/// The small parsers of config values, a first byte choosing which: listen and server
/// addresses, rates, CIDRs and trusted-proxy client addresses, hash keys, TLS server names.
pub fn parsers(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let s = text.as_ref();
    match which % 7 {
        0 => {
            if let Ok(a) = parse_listen(s) {
                assert_eq!(parse_listen(&a.to_string()), Ok(a));
            }
        }
        1 => {
            if let Ok((addr, weight)) = parse_server_entry(s) {
                assert!(weight >= 1);
                match &addr {
                    ServerAddr::Fixed(a) => {
                        let _ = a.host_header();
                        if let BackendAddr::Tcp(_) = a {
                            assert_eq!(parse_server(&a.to_string()), Ok(addr));
                        }
                    }
                    // A name is kept as written, and reads back the same.
                    ServerAddr::Name(n) => {
                        assert_eq!(parse_server(&n.to_string()), Ok(addr.clone()));
                    }
                }
            }
        }
        2 => {
            if let Ok(rate) = Rate::parse(s) {
                assert!(rate.interval_ns() > 0 && rate.per_second_ceil() >= 1);
                assert_eq!(Rate::parse(&rate.to_string()), Ok(rate));
            }
        }
        3 => {
            if let Ok(c) = Cidr::parse(s) {
                let shown = c.to_string();
                assert_eq!(Cidr::parse(&shown), Ok(c));
                let network = shown.split_once('/').expect("addr/prefix").0;
                assert!(c.contains(network.parse().expect("an address")));
            }
        }
        4 => {
            let _ = trusted(&mut Unstructured::new(rest));
        }
        5 => {
            let loc = serde_saphyr::Location::UNKNOWN;
            let spanned = serde_saphyr::Spanned::new(s.to_string(), loc, loc);
            let _ = HashKey::parse(&spanned);
        }
        _ => {
            let _ = proxyd::upstream::tls::server_name(s);
        }
    }
}

/// An `X-Forwarded-For` entry as `TrustedProxies` reads one (an address, with or without a
/// port), written out independently.
fn forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            let inner = entry.strip_prefix('[')?.split_once(']')?.0;
            inner.parse().ok()
        })
}

fn trusted(u: &mut Unstructured<'_>) -> Result<()> {
    let mut ranges = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let text = if u.ratio(1, 2)? {
            u.choose(&[
                "10.0.0.0/8",
                "127.0.0.1",
                "::1",
                "0.0.0.0/0",
                "fd00::/8",
                "::/0",
            ])?
            .to_string()
        } else {
            u.arbitrary::<String>()?
        };
        if let Ok(c) = Cidr::parse(&text) {
            ranges.push(c);
        }
    }
    let proxies = TrustedProxies::new(ranges);
    let peer = ip(u)?;
    let mut xff = header_map(u)?;
    for _ in 0..u.int_in_range(0..=3)? {
        let v = if u.ratio(1, 2)? {
            HeaderValue::from_static(u.choose(VALUES)?)
        } else {
            let ips: Vec<String> = (0..u.int_in_range(0..=3)?)
                .map(|_| ip(u).map(|i| i.to_string()))
                .collect::<Result<_>>()?;
            HeaderValue::from_str(&ips.join(", ")).unwrap_or(HeaderValue::from_static(""))
        };
        xff.append("x-forwarded-for", v);
    }
    let client = proxies.client_ip(peer, &xff);
    if !proxies.contains(peer) {
        assert_eq!(client, peer.to_canonical());
    } else if client != peer.to_canonical() {
        let named = xff
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(forwarded_addr)
            .any(|ip| ip.to_canonical() == client);
        assert!(named, "{client} is neither the peer {peer} nor in {xff:?}");
    }
    Ok(())
}

/// Access log lines (combined, healthd, JSON) for any request: one line each, whatever the
/// client sent, with its quoted fields intact.
pub fn access_log(data: &[u8]) {
    let _ = access_log_with(&mut Unstructured::new(data));
}

fn header_value(u: &mut Unstructured<'_>) -> Result<Option<HeaderValue>> {
    Ok(if u.arbitrary()? {
        HeaderValue::from_bytes(u.arbitrary::<&[u8]>()?).ok()
    } else {
        None
    })
}

fn access_log_with(u: &mut Unstructured<'_>) -> Result<()> {
    // Up to the year 9999, and requests up to a day long.
    let at = UNIX_EPOCH + Duration::from_millis(u.int_in_range(0..=253_402_300_799_999)?);
    let target: String = u.arbitrary()?;
    let outcome = Outcome {
        at,
        method: method(u)?,
        path_len: target.find('?').unwrap_or(target.len()),
        target,
        version: version(u)?,
        host: header_value(u)?,
        client: if u.arbitrary()? { Some(ip(u)?) } else { None },
        forwarded_for: header_value(u)?,
        user_agent: header_value(u)?,
        referer: header_value(u)?,
        request_id: header_value(u)?.unwrap_or(HeaderValue::from_static("-")),
        status: StatusCode::from_u16(u.int_in_range(100..=999)?).unwrap_or_default(),
        body_bytes: u.arbitrary()?,
        duration: Duration::from_micros(u.int_in_range(0..=86_400_000_000)?),
        trace: Trace {
            compressed: None,
            upstream_time: if u.arbitrary()? {
                Some(Duration::from_micros(u.int_in_range(0..=86_400_000_000)?))
            } else {
                None
            },
            retries: u.arbitrary()?,
            queued: Duration::from_micros(u.int_in_range(0..=86_400_000_000)?),
            ..Trace::default()
        },
    };
    let line = combined(&outcome);
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
    assert!(line.ends_with('\n'));
    assert_eq!(line.matches('"').count(), 6, "{line:?}");
    let line = healthd(&outcome);
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
    assert_eq!(line.matches('"').count(), 5, "{line:?}");
    let line = json(&outcome);
    assert_eq!(line.matches('\n').count(), 1, "{line:?}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["target"].as_str(), Some(outcome.target.as_str()));
    assert_eq!(
        v["status"].as_u64(),
        Some(u64::from(outcome.status.as_u16()))
    );
    Ok(())
}

/// A static route's request path (the part after the route's prefix) is refused, missing, or
/// opens a file whose real path is beneath the root: never anything outside it, whatever
/// the dots, encodings, NULs, backslashes and symlinks (out of the root, absolute, /proc).
pub fn static_path(data: &[u8]) {
    use std::os::unix::io::AsRawFd;
    use std::sync::OnceLock;

    // One tree per process (kept for its life): root/ with files and symlinks, a secret beside.
    static TREE: OnceLock<(tempfile::TempDir, PathBuf, std::fs::File)> = OnceLock::new();
    let (_, real_root, root) = TREE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).expect("root");
        std::fs::write(dir.path().join("secret"), "s").expect("secret");
        std::fs::write(root.join("a/f"), "f").expect("file");
        for (link, to) in [
            ("up", ".."),
            ("a/upup", "../.."),
            ("abs", "/"),
            ("a/side", "../a/b"),
            ("a/b/secret", "../../../secret"),
            ("self", "/proc/self/root"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).expect("symlink");
        }
        let real = std::fs::canonicalize(&root).expect("canonical root");
        let opened = std::fs::File::open(&root).expect("open root");
        (dir, real, opened)
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rel) = proxyd::files::path::relative(text) else {
        return;
    };
    let Ok(o) = proxyd::files::open::beneath(root, &rel) else {
        return;
    };
    let real = std::fs::read_link(format!("/proc/self/fd/{}", o.file.as_raw_fd()))
        .expect("the opened file's path");
    assert!(
        real.starts_with(real_root),
        "{text:?} opened {}",
        real.display()
    );
}
