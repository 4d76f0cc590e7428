//! What one client may take and who the client is: rate limits (`limits.rate` per client IP,
//! `routes[].rate` by ip or route) answering 429 with Retry-After, the client IP taken from
//! `X-Forwarded-For` of trusted proxies, PROXY protocol v1/v2 listeners, the per-IP
//! connection cap, config errors for bad rates and CIDRs, and warnings about secret files
//! others can read.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A GET with `X-Forwarded-For: xff` (when given) on a fresh connection.
async fn get_as(addr: SocketAddr, path: &str, xff: Option<&str>) -> Got {
    let mut req = Request::get(path).header("host", "test.local");
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    H1::connect(addr)
        .await
        .send(req.body(full("")).unwrap())
        .await
}

/// `/metrics` from the admin listener.
async fn metrics(proxy: &TestProxy) -> String {
    get(proxy.admin.expect("admin listener"), "/metrics")
        .await
        .text()
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

fn assert_429(got: &Got) -> u64 {
    assert_eq!(got.status, 429, "{}", got.text());
    assert_eq!(got.header("proxyd-error"), Some("rate-limited"));
    let secs: u64 = got
        .header("retry-after")
        .expect("Retry-After on a 429")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    secs
}

const ADMIN: &str = "admin: { addr: \"127.0.0.1:0\" }\n";

#[tokio::test]
async fn per_ip_burst_passes_then_429_with_retry_after_on_the_same_connection() {
    let backend = TestBackend::echo().await;
    let extra = format!("{ADMIN}limits:\n  rate: {{ per_ip: \"1/m\", burst: 3 }}\n");
    let proxy = TestProxy::to(&[backend.addr], &extra).await;
    let mut client = H1::connect(proxy.addr).await;
    for i in 0..3 {
        assert_eq!(
            client.get("/").await.status,
            200,
            "request {i} of the burst"
        );
    }
    // The connection stays open after a 429: the request was well-formed.
    assert_429(&client.get("/").await);
    assert_429(&client.get("/").await);
    // A new connection from the same IP shares the bucket.
    assert_429(&get(proxy.addr, "/").await);
    assert_eq!(
        backend.request_count(),
        3,
        "no rate-limited request reached the backend"
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "proxyd_rate_limited_total{route=\"/\"}"),
        Some(3.0),
        "{m}"
    );
}

#[tokio::test]
async fn route_limits_by_route_and_by_ip() {
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n{ADMIN}trusted_proxies: [\"127.0.0.1/32\"]\nupstreams:\n  app:\n    servers: [\"{}\"]\nroutes:\n  - {{ name: shared, path: /shared/, upstream: app, rate: {{ limit: \"1/m\", burst: 2, by: route }} }}\n  - {{ name: each, path: /each/, upstream: app, rate: {{ limit: \"1/h\", burst: 1 }} }}\n  - {{ path: /, upstream: app }}\n",
        backend.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let (a, b, c) = (
        Some("203.0.113.1"),
        Some("203.0.113.2"),
        Some("203.0.113.3"),
    );

    // by: route — one bucket for everyone.
    assert_eq!(get_as(proxy.addr, "/shared/x", a).await.status, 200);
    assert_eq!(get_as(proxy.addr, "/shared/y", b).await.status, 200);
    assert_429(&get_as(proxy.addr, "/shared/z", c).await);

    // by: ip (the default) — a bucket per client.
    assert_eq!(get_as(proxy.addr, "/each/", a).await.status, 200);
    let limited = get_as(proxy.addr, "/each/", a).await;
    assert_429_hourly(&limited);
    let secs: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(secs > 60, "an hourly token is minutes away, not {secs}");
    assert_eq!(get_as(proxy.addr, "/each/", b).await.status, 200);
    assert_429_hourly(&get_as(proxy.addr, "/each/", b).await);

    // Routes without a rate are not limited.
    for _ in 0..20 {
        assert_eq!(get_as(proxy.addr, "/other", a).await.status, 200);
    }
    assert_eq!(backend.request_count(), 2 + 2 + 20);
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(&m, "proxyd_rate_limited_total{route=\"shared\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "proxyd_rate_limited_total{route=\"each\"}"),
        Some(2.0),
        "{m}"
    );
}

/// Like `assert_429`, for an hourly rate.
fn assert_429_hourly(got: &Got) {
    assert_eq!(got.status, 429, "{}", got.text());
    let secs: u64 = got.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&secs), "Retry-After {secs}");
}

#[tokio::test]
async fn trusted_proxy_xff_names_the_client_for_limits_logs_and_forwarding() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let extra = format!(
        "trusted_proxies: [\"10.0.0.0/8\", \"127.0.0.1/32\"]\nlimits:\n  rate: {{ per_ip: \"1/h\", burst: 2 }}\naccess_log:\n  - {{ format: json, path: \"{}\" }}\n",
        log.display()
    );
    let proxy = TestProxy::to(&[backend.addr], &extra).await;
    // proxyd's peer (127.0.0.1) is trusted, so is 10.1.1.1: the client is 203.0.113.1, and
    // what the client itself wrote left of it (6.6.6.6) does not count.
    let first = "6.6.6.6, 203.0.113.1, 10.1.1.1";
    for _ in 0..2 {
        assert_eq!(get_as(proxy.addr, "/", Some(first)).await.status, 200);
    }
    assert_429_hourly(&get_as(proxy.addr, "/", Some("203.0.113.1")).await);
    // Another client behind the same proxies has its own bucket; so does proxyd's peer.
    assert_eq!(
        get_as(proxy.addr, "/", Some("203.0.113.2")).await.status,
        200
    );
    assert_eq!(
        get_as(proxy.addr, "/", Some("5.5.5.5, 203.0.113.2"))
            .await
            .status,
        200
    );
    assert_429_hourly(&get_as(proxy.addr, "/", Some("203.0.113.2")).await);
    assert_eq!(get_as(proxy.addr, "/", None).await.status, 200);

    // The backend sees the incoming list with the client appended (nginx's realip +
    // $proxy_add_x_forwarded_for): its right-most entry is the real client.
    let seen = backend.requests();
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen[0].headers["x-forwarded-for"],
        format!("{first}, 203.0.113.1")
    );
    assert_eq!(
        seen[2].headers["x-forwarded-for"],
        "203.0.113.2, 203.0.113.2"
    );
    assert_eq!(seen[4].headers["x-forwarded-for"], "127.0.0.1");

    // The access log names the client.
    let mut text = String::new();
    for _ in 0..500 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let clients: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["client"].to_string())
        .collect();
    let one = "\"203.0.113.1\"";
    let two = "\"203.0.113.2\"";
    assert_eq!(
        clients,
        [one, one, one, two, two, two, "\"127.0.0.1\""],
        "{text}"
    );
}

#[tokio::test]
async fn untrusted_peer_xff_is_ignored() {
    let backend = TestBackend::echo().await;
    let extra =
        "trusted_proxies: [\"10.0.0.0/8\"]\nlimits:\n  rate: { per_ip: \"1/h\", burst: 1 }\n";
    let proxy = TestProxy::to(&[backend.addr], extra).await;
    assert_eq!(
        get_as(proxy.addr, "/", Some("203.0.113.1")).await.status,
        200
    );
    // Another claimed address does not buy a new bucket: the client is the peer.
    assert_429_hourly(&get_as(proxy.addr, "/", Some("203.0.113.2")).await);
    let seen = backend.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-forwarded-for"], "203.0.113.1, 127.0.0.1");
}

#[tokio::test]
async fn hash_on_client_ip_uses_the_trusted_client() {
    let a = TestBackend::echo().await;
    let b = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\ntrusted_proxies: [\"127.0.0.1\"]\nheaders: {{ debug: true }}\nupstreams:\n  app:\n    servers: [\"{}\", \"{}\"]\n    balance: hash\n    hash_key: client_ip\n",
        a.addr, b.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    // Each client sticks to one backend; different clients spread over both.
    let mut picked = std::collections::HashMap::new();
    for i in 0..40 {
        let ip = format!("203.0.113.{}", i % 20);
        let got = get_as(proxy.addr, "/", Some(ip.as_str())).await;
        let backend = got.header("proxyd-backend").unwrap().to_string();
        let first = picked.entry(ip.clone()).or_insert_with(|| backend.clone());
        assert_eq!(*first, backend, "{ip} moved");
    }
    assert!(a.request_count() > 0 && b.request_count() > 0);
}

// --- PROXY protocol ---------------------------------------------------------------------

fn proxy_listener_yaml(backend: SocketAddr, extra: &str) -> String {
    format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n    proxy_protocol: true\n{ADMIN}timeouts: {{ client_header: 500ms }}\nupstreams:\n  app:\n    servers: [\"{backend}\"]\n{extra}"
    )
}

const GET: &[u8] = b"GET /pp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

async fn through(proxy: SocketAddr, header: &[u8]) -> String {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(GET);
    raw(proxy, &bytes).await
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_carry_the_client_address() {
    use proxyd::server::proxy_protocol::encode_v2;
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::from_yaml(&proxy_listener_yaml(
        backend.addr,
        "trusted_proxies: [\"127.0.0.1/32\"]\n",
    ))
    .await;
    let v1 = through(proxy.addr, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n").await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    let v1_6 = through(
        proxy.addr,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 80\r\n",
    )
    .await;
    assert!(v1_6.starts_with("HTTP/1.1 200"), "{v1_6}");
    let v2 = encode_v2(
        "198.51.100.9:4000".parse().unwrap(),
        "10.0.0.1:80".parse().unwrap(),
    );
    assert!(through(proxy.addr, &v2).await.starts_with("HTTP/1.1 200"));
    let v2_6 = encode_v2(
        "[2001:db8::9]:4000".parse().unwrap(),
        "[2001:db8::1]:80".parse().unwrap(),
    );
    assert!(through(proxy.addr, &v2_6).await.starts_with("HTTP/1.1 200"));
    // LOCAL (a balancer's health check) and UNKNOWN: the peer is the client.
    let mut local = proxyd::server::proxy_protocol::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert!(through(proxy.addr, &local)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(through(proxy.addr, b"PROXY UNKNOWN\r\n")
        .await
        .starts_with("HTTP/1.1 200"));

    // Header and request written separately (the header arrives alone) works the same.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.44 10.0.0.1 1 80\r\n")
        .await
        .unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(GET).await.unwrap();
    assert!(read_until_close(&mut s).await.starts_with("HTTP/1.1 200"));

    let xff: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.headers["x-forwarded-for"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        xff,
        [
            "203.0.113.7",
            "2001:db8::7",
            "198.51.100.9",
            "2001:db8::9",
            "127.0.0.1",
            "127.0.0.1",
            "192.0.2.44"
        ]
    );
}

#[tokio::test]
async fn bad_or_missing_proxy_header_closes_the_connection() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::from_yaml(&proxy_listener_yaml(backend.addr, "")).await;
    // A plain request where the header should be.
    assert_eq!(raw(proxy.addr, GET).await, "");
    // Malformed, and too long.
    assert_eq!(through(proxy.addr, b"PROXY TCP4 203.0.113.7\r\n").await, "");
    assert_eq!(through(proxy.addr, &[b'P'; 300]).await, "");
    let mut bad_v2 = proxyd::server::proxy_protocol::V2_SIGNATURE.to_vec();
    bad_v2.extend_from_slice(&[0x21, 0x12, 0, 12]);
    bad_v2.extend_from_slice(&[0; 12]);
    assert_eq!(through(proxy.addr, &bad_v2).await, "");
    // Truncated: the header never ends (closed after timeouts.client_header).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1")
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await, "");
    // Nothing at all.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_until_close(&mut s).await, "");
    assert_eq!(backend.request_count(), 0);
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "proxyd_client_connections_rejected_total{reason=\"proxy_protocol\"}"
        ),
        Some(6.0),
        "{m}"
    );
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_refused() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::from_yaml(&proxy_listener_yaml(
        backend.addr,
        "trusted_proxies: [\"10.0.0.0/8\"]\n",
    ))
    .await;
    let got = through(proxy.addr, b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n").await;
    assert_eq!(got, "");
    assert_eq!(backend.request_count(), 0);
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "proxyd_client_connections_rejected_total{reason=\"untrusted_proxy\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

// --- per-IP connection cap --------------------------------------------------------------

/// Polls until a fresh connection is served (the cap frees a slot once proxyd has seen an
/// earlier connection close).
async fn served_soon(addr: SocketAddr, header: &[u8]) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        last = through(addr, header).await;
        if !last.is_empty() {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_accept() {
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let extra = format!("{ADMIN}limits: {{ max_connections_per_ip: 2 }}\n");
    let proxy = TestProxy::to(&[backend.addr], &extra).await;
    let mut one = H1::connect(proxy.addr).await;
    let mut two = H1::connect(proxy.addr).await;
    assert_eq!(one.get("/").await.status, 200);
    assert_eq!(two.get("/").await.status, 200);
    // The third is closed before anything is read from it.
    assert_eq!(raw(proxy.addr, GET).await, "");
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            "proxyd_client_connections_rejected_total{reason=\"per_ip_limit\"}"
        ),
        Some(1.0),
        "{m}"
    );
    // The open ones still work; once one closes, a new one gets in.
    assert_eq!(one.get("/").await.status, 200);
    drop(two);
    assert!(served_soon(proxy.addr, b"")
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(backend.request_count(), 4);
}

#[tokio::test]
async fn per_ip_cap_counts_the_address_a_proxy_header_carries() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::from_yaml(&proxy_listener_yaml(
        backend.addr,
        "trusted_proxies: [\"127.0.0.1/32\"]\nlimits: { max_connections_per_ip: 1 }\n",
    ))
    .await;
    let a = b"PROXY TCP4 203.0.113.1 10.0.0.1 1000 80\r\n";
    let b = b"PROXY TCP4 203.0.113.2 10.0.0.1 1000 80\r\n";
    // Client A holds a connection open (one request served, keep-alive).
    let mut held = TcpStream::connect(proxy.addr).await.unwrap();
    let mut first = a.to_vec();
    first.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    held.write_all(&first).await.unwrap();
    let mut buf = [0u8; 256];
    let n = held.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A's second connection through the same balancer is closed; B's is served, although
    // both come from the same peer (a trusted proxy's own connections are not capped).
    assert_eq!(through(proxy.addr, a).await, "");
    assert!(through(proxy.addr, b).await.starts_with("HTTP/1.1 200"));
    drop(held);
    assert!(served_soon(proxy.addr, a).await.starts_with("HTTP/1.1 200"));
}

// --- config errors and warnings ---------------------------------------------------------

const GOOD: &str = "listen:\n  - addr: \"127.0.0.1:8080\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:5001\"]\n";

#[test]
fn bad_rates_and_cidrs_are_located() {
    let cases = [
        (
            format!("{GOOD}limits:\n  rate: {{ per_ip: \"100/week\" }}\n"),
            "proxy.yaml:7:19:",
            "invalid rate \"100/week\"",
        ),
        (
            format!("{GOOD}limits:\n  rate:\n    per_ip: \"lots\"\n"),
            "proxy.yaml:8:13:",
            "invalid rate",
        ),
        (
            format!("{GOOD}limits:\n  rate: {{ per_ip: \"10/s\", burst: 0 }}\n"),
            "proxy.yaml:7:34:",
            "limits.rate.burst: at least 1",
        ),
        (
            format!("{GOOD}limits:\n  rate: {{ burst: 5 }}\n"),
            "proxy.yaml:7:18:",
            "needs limits.rate.per_ip",
        ),
        (
            format!("{GOOD}limits:\n  rate: {{ per_ip: \"10/s\", brust: 5 }}\n"),
            "proxy.yaml:7:",
            "unknown field `brust`",
        ),
        (
            format!("{GOOD}routes:\n  - {{ path: /, upstream: app, rate: {{ limit: \"0/s\" }} }}\n"),
            "proxy.yaml:7:",
            "invalid rate \"0/s\": must be more than 0",
        ),
        (
            format!("{GOOD}routes:\n  - {{ path: /, upstream: app, rate: {{ limit: \"5/s\", by: host }} }}\n"),
            "proxy.yaml:7:",
            "unknown variant `host`",
        ),
        (
            format!("{GOOD}trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n"),
            "proxy.yaml:6:33:",
            "did you mean 10.0.0.0/8",
        ),
        (
            format!("{GOOD}trusted_proxies:\n  - \"192.168.0.0/33\"\n"),
            "proxy.yaml:7:5:",
            "prefix length must be 0 to 32",
        ),
        (
            format!("{GOOD}trusted_proxies: [\"lb.internal\"]\n"),
            "proxy.yaml:6:19:",
            "is not an IP address",
        ),
        (
            format!("{GOOD}limits: {{ max_connections_per_ip: 0 }}\n"),
            "proxy.yaml:",
            "0 is out of range: expected a number from 1 to 1000000",
        ),
        (
            GOOD.replace("8080\"\n", "8080\"\n    proxy_protocol: yes please\n"),
            "proxy.yaml:3:21:",
            "",
        ),
    ];
    for (yaml, at, msg) in cases {
        let (ok, text) = check(&yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(text.contains(at) && text.contains(msg), "{yaml}\n=> {text}");
    }
    let fine = format!(
        "{GOOD}trusted_proxies: [\"10.0.0.0/8\", \"::1\", \"fd00::/8\"]\nlimits:\n  max_connections_per_ip: 50\n  rate: {{ per_ip: \"100r/s\", burst: 200, max_clients: 5000 }}\nroutes:\n  - {{ path: /, upstream: app, rate: {{ limit: \"6000/m\", by: route }} }}\n"
    );
    let (ok, text) = check(&fine);
    assert!(ok, "{text}");
}

fn write_mode(path: &std::path::Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn world_readable_key_and_token_files_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    write_mode(&dir.path().join("site.pem"), &cert.pem(), 0o644);
    let key = dir.path().join("site.key");
    let config = dir.path().join("proxy.yaml");
    let yaml = "listen:\n  - addr: \"127.0.0.1:8443\"\n    tls:\n      certs: [{ cert: site.pem, key: site.key }]\nadmin: { addr: \"127.0.0.1:9901\", token: \"s3cret-token\" }\nupstreams:\n  app:\n    servers: [\"127.0.0.1:5001\"]\n".to_string();

    write_mode(&key, &signing_key.serialize_pem(), 0o644);
    write_mode(&config, &yaml, 0o600);
    let (ok, text) = check_path(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "warning: {} is readable by every user (mode 644)",
            key.display()
        )),
        "{text}"
    );
    assert!(!text.contains("proxy.yaml is readable"), "{text}");

    write_mode(&key, &signing_key.serialize_pem(), 0o600);
    let (ok, text) = check_path(&config);
    assert!(ok && !text.contains("warning"), "{text}");

    // The token is written in the config file: the file is a secret too.
    write_mode(&config, &yaml, 0o644);
    let (ok, text) = check_path(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "warning: {} is readable by every user",
            config.display()
        )) && text.contains("admin.token"),
        "{text}"
    );
    // From the environment instead: nothing secret in the file.
    // (HOME stands in for a token variable: it is set wherever the tests run.)
    let from_env = yaml.replace("s3cret-token", "${HOME}");
    write_mode(&config, &from_env, 0o644);
    let (ok, text) = check_path(&config);
    assert!(ok && !text.contains("warning"), "{text}");
}

#[test]
fn startup_logs_the_warning_too() {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    write_mode(&dir.path().join("site.pem"), &cert.pem(), 0o644);
    let key = dir.path().join("site.key");
    write_mode(&key, &signing_key.serialize_pem(), 0o604);
    let config = dir.path().join("proxy.yaml");
    write_mode(
        &config,
        "listen:\n  - addr: \"127.0.0.1:0\"\n    tls:\n      certs: [{ cert: site.pem, key: site.key }]\nupstreams:\n  app:\n    servers: [\"127.0.0.1:5001\"]\n",
        0o600,
    );
    let p = ProxydProcess::start_file(&config);
    let lines = p.stderr_lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains(&key.display().to_string())),
        "{lines:#?}"
    );
}

/// A GET with `X-Forwarded-Proto: proto` on a fresh connection.
async fn get_with_proto(addr: SocketAddr, proto: &str) -> Got {
    let req = Request::get("/")
        .header("host", "test.local")
        .header("x-forwarded-proto", proto);
    H1::connect(addr)
        .await
        .send(req.body(full("")).unwrap())
        .await
}

#[tokio::test]
async fn x_forwarded_proto_is_kept_only_from_a_trusted_proxy() {
    // A load balancer that terminated TLS says https; proxyd's own listener is plain.
    let backend = TestBackend::echo().await;
    let trusted = TestProxy::to(&[backend.addr], "trusted_proxies: [\"127.0.0.1/32\"]\n").await;
    assert_eq!(get_with_proto(trusted.addr, "https").await.status, 200);
    assert_eq!(get_with_proto(trusted.addr, "gopher").await.status, 200);
    let untrusted = TestProxy::to(&[backend.addr], "trusted_proxies: [\"10.0.0.0/8\"]\n").await;
    assert_eq!(get_with_proto(untrusted.addr, "https").await.status, 200);
    let seen: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.headers["x-forwarded-proto"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["https", "http", "http"]);
}
