//! Route access control: `allow` / `deny` by client address (IPv4, IPv6, trusted
//! X-Forwarded-For) and `basic_auth` against an htpasswd file in every format Apache's
//! `htpasswd` writes. Every refused request must reach the backend not at all.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use common::{check, full, get, TestBackend, TestProxy, H1};
use http::Request;

fn basic(user: &str, pw: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
    format!("Basic {token}")
}

/// One GET of `path` on `conn` with the given extra headers.
async fn send(conn: &mut H1, path: &str, headers: &[(&str, &str)]) -> common::Got {
    let mut req = Request::get(path).header("host", "test.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    conn.send(req.body(full("")).unwrap()).await
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

fn proxy_yaml(listen: &str, backend: SocketAddr, extra: &str, routes: &str) -> String {
    format!(
        "listen:\n  - addr: \"{listen}\"\nadmin: {{ addr: \"127.0.0.1:0\" }}\n{extra}upstreams:\n  app:\n    servers: [\"{backend}\"]\nroutes:\n{routes}"
    )
}

const ADDRESS_ROUTES: &str = concat!(
    "  - { path: /v4/, upstream: app, allow: [\"127.0.0.1\"] }\n",
    "  - { path: /v6/, upstream: app, allow: [\"::1/128\"] }\n",
    "  - { path: /ten/, upstream: app, allow: [\"10.0.0.0/8\"] }\n",
    "  - { path: /no-loopback-v4/, upstream: app, deny: [\"127.0.0.0/8\"] }\n",
    "  - { path: /both/, upstream: app, allow: [\"127.0.0.0/8\", \"::1\"], deny: [\"127.0.0.9\"] }\n",
    "  - { path: /, upstream: app }\n",
);

#[tokio::test]
async fn allow_and_deny_by_ipv4_and_ipv6_client() {
    let backend = TestBackend::echo().await;
    // (listen address, path, status); the proxy is reached on its own address family.
    let mut table: Vec<(&str, &str, u16)> = vec![
        ("127.0.0.1:0", "/v4/x", 200),
        ("127.0.0.1:0", "/v6/x", 403),
        ("127.0.0.1:0", "/ten/x", 403),
        ("127.0.0.1:0", "/no-loopback-v4/x", 403),
        ("127.0.0.1:0", "/both/x", 200),
        ("127.0.0.1:0", "/", 200),
    ];
    if ipv6_loopback() {
        table.extend([
            ("[::1]:0", "/v4/x", 403),
            ("[::1]:0", "/v6/x", 200),
            ("[::1]:0", "/ten/x", 403),
            ("[::1]:0", "/no-loopback-v4/x", 200),
            ("[::1]:0", "/both/x", 200),
        ]);
    } else {
        eprintln!("no ::1 on this machine: the IPv6 rows are skipped");
    }
    let mut passed = 0;
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let rows: Vec<_> = table.iter().filter(|r| r.0 == listen).collect();
        if rows.is_empty() {
            continue;
        }
        let proxy =
            TestProxy::from_yaml(&proxy_yaml(listen, backend.addr, "", ADDRESS_ROUTES)).await;
        // One connection for every request: a 403 leaves it open.
        let mut conn = H1::connect(proxy.addr).await;
        for (_, path, want) in rows {
            let before = backend.request_count();
            let got = send(&mut conn, path, &[]).await;
            assert_eq!(
                got.status.as_u16(),
                *want,
                "{listen} {path}: {}",
                got.text()
            );
            if *want == 403 {
                assert_eq!(got.header("proxyd-error"), Some("forbidden"));
                assert_eq!(
                    backend.request_count(),
                    before,
                    "{listen} {path} reached it"
                );
            } else {
                passed += 1;
                assert_eq!(backend.request_count(), before + 1);
            }
        }
    }
    assert_eq!(backend.request_count(), passed);
}

#[tokio::test]
async fn trusted_x_forwarded_for_names_the_client_and_a_spoof_does_not_get_in() {
    let backend = TestBackend::echo().await;
    let routes = "  - { path: /office/, upstream: app, allow: [\"203.0.113.0/24\"] }\n  - { path: /, upstream: app, deny: [\"198.51.100.0/24\"] }\n";
    let trusted = TestProxy::from_yaml(&proxy_yaml(
        "127.0.0.1:0",
        backend.addr,
        "trusted_proxies: [\"127.0.0.1\"]\n",
        routes,
    ))
    .await;
    let untrusted =
        TestProxy::from_yaml(&proxy_yaml("127.0.0.1:0", backend.addr, "", routes)).await;
    // (behind a trusted proxy?, X-Forwarded-For, path, status)
    let table: &[(bool, Option<&str>, &str, u16)] = &[
        (true, Some("203.0.113.5"), "/office/a", 200),
        (true, None, "/office/a", 403),
        (true, Some("198.51.100.1"), "/office/a", 403),
        // The client wrote the left-most entry itself: the right-most untrusted one counts.
        (true, Some("203.0.113.5, 198.51.100.1"), "/office/a", 403),
        (true, Some("198.51.100.1, 203.0.113.5"), "/office/a", 200),
        (true, Some("198.51.100.7"), "/x", 403),
        (true, Some("::ffff:198.51.100.7"), "/x", 403),
        (true, Some("2001:db8::1"), "/office/a", 403),
        // From an untrusted peer, X-Forwarded-For is the client's word: not believed.
        (false, Some("203.0.113.5"), "/office/a", 403),
        (false, Some("198.51.100.7"), "/x", 200),
    ];
    for (behind, xff, path, want) in table {
        let proxy = if *behind { &trusted } else { &untrusted };
        let before = backend.request_count();
        let headers: Vec<(&str, &str)> = xff.iter().map(|x| ("x-forwarded-for", *x)).collect();
        let got = send(&mut H1::connect(proxy.addr).await, path, &headers).await;
        assert_eq!(got.status.as_u16(), *want, "{behind} {xff:?} {path}");
        let reached = backend.request_count() - before;
        assert_eq!(
            reached,
            usize::from(*want == 200),
            "{behind} {xff:?} {path}"
        );
    }
}

/// Users, one per format htpasswd writes, all with password `pw-<user>`.
fn htpasswd_lines() -> String {
    use sha1::Digest as _;
    let pw = |u: &str| format!("pw-{u}");
    let b64 = base64::engine::general_purpose::STANDARD;
    #[allow(deprecated)] // pwhash: old formats, here only to write test hashes.
    let crypt = pwhash::unix_crypt::hash_with("xy", pw("crypt")).unwrap();
    let bcrypt_y = bcrypt::hash_with_salt(pw("bcrypt"), 5, [3; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    [
        format!("bcrypt:{bcrypt_y}"),
        format!(
            "apr1:{}",
            proxyd::limits::htpasswd::apr1(pw("apr1").as_bytes(), b"Zq9/aB.c")
        ),
        format!("sha:{{SHA}}{}", b64.encode(sha1::Sha1::digest(pw("sha")))),
        format!("crypt:{crypt}"),
    ]
    .join("\n")
        + "\n"
}

fn auth_routes(htpasswd: &Path, failures: &str) -> String {
    format!(
        "  - {{ name: admin, path: /admin/, upstream: app, basic_auth: {{ htpasswd: \"{}\", realm: \"admin area\", failures: \"{failures}\" }} }}\n  - {{ path: /, upstream: app }}\n",
        htpasswd.display()
    )
}

#[tokio::test]
async fn basic_auth_for_every_htpasswd_format() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_lines()).unwrap();
    let proxy = TestProxy::from_yaml(&proxy_yaml(
        "127.0.0.1:0",
        backend.addr,
        "",
        &auth_routes(&file, "1000/m"),
    ))
    .await;
    let mut conn = H1::connect(proxy.addr).await;
    let mut passed = 0;
    for user in ["bcrypt", "apr1", "sha", "crypt"] {
        let right = basic(user, &format!("pw-{user}"));
        // (Authorization, status)
        let table: Vec<(Option<String>, u16)> = vec![
            (Some(right.clone()), 200),
            // Again: this time from the cache of verified credentials.
            (Some(right.clone()), 200),
            (Some(basic(user, "wrong-password")), 401),
            (Some(basic(&format!("{user}x"), &format!("pw-{user}"))), 401),
            (None, 401),
            (Some("Basic %%%not-base64".into()), 401),
            (
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(user)
                )),
                401,
            ),
            (Some(right.replace("Basic", "Bearer")), 401),
            (Some(right.replace("Basic ", "")), 401),
        ];
        for (authorization, want) in table {
            let before = backend.request_count();
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|a| ("authorization", a.as_str()))
                .collect();
            let got = send(&mut conn, "/admin/page", &headers).await;
            let what = format!("{user} {authorization:?}");
            assert_eq!(got.status.as_u16(), want, "{what}: {}", got.text());
            if want == 401 {
                assert_eq!(
                    got.header("www-authenticate"),
                    Some("Basic realm=\"admin area\""),
                    "{what}"
                );
                assert_eq!(got.header("proxyd-error"), Some("unauthorized"));
                assert_eq!(
                    backend.request_count(),
                    before,
                    "{what} reached the backend"
                );
            } else {
                passed += 1;
                let seen = backend.requests();
                let last = seen.last().unwrap();
                // As nginx does, the credentials go on to the upstream.
                assert_eq!(
                    last.headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok()),
                    authorization.as_deref(),
                    "{what}"
                );
            }
        }
    }
    // Other routes need nothing.
    assert_eq!(send(&mut conn, "/open", &[]).await.status, 200);
    assert_eq!(backend.request_count(), passed + 1);
}

#[tokio::test]
async fn failures_past_the_limit_get_429_and_are_counted() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_lines()).unwrap();
    let proxy = TestProxy::from_yaml(&proxy_yaml(
        "127.0.0.1:0",
        backend.addr,
        "",
        &auth_routes(&file, "3/h"),
    ))
    .await;
    let mut conn = H1::connect(proxy.addr).await;
    let wrong = basic("apr1", "nope");
    for _ in 0..2 {
        let got = send(&mut conn, "/admin/", &[("authorization", &wrong)]).await;
        assert_eq!(got.status, 401);
    }
    // No credentials is a challenge, not a failure.
    assert_eq!(send(&mut conn, "/admin/", &[]).await.status, 401);
    let got = send(&mut conn, "/admin/", &[("authorization", "Basic !!")]).await;
    assert_eq!(got.status, 401);
    // Three failures: now even the right password is not looked at.
    let right = basic("apr1", "pw-apr1");
    for auth in [Some(right.as_str()), Some(wrong.as_str()), None] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let got = send(&mut conn, "/admin/", &headers).await;
        assert_eq!(got.status, 429, "{auth:?}");
        assert_eq!(got.header("proxyd-error"), Some("rate-limited"));
        let secs: u64 = got.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=1200).contains(&secs), "{secs}");
    }
    assert_eq!(backend.request_count(), 0);
    let metrics = get(proxy.admin.unwrap(), "/metrics").await.text();
    for line in [
        "proxyd_auth_failures_total{reason=\"wrong_password\",route=\"admin\"} 2",
        "proxyd_auth_failures_total{reason=\"malformed\",route=\"admin\"} 1",
        "proxyd_rate_limited_total{route=\"admin\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn a_changed_htpasswd_file_takes_effect() {
    let backend = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    let line = |pw: &str| {
        format!(
            "ann:{}\n",
            proxyd::limits::htpasswd::apr1(pw.as_bytes(), b"salt")
        )
    };
    std::fs::write(&file, line("first")).unwrap();
    let proxy = TestProxy::from_yaml(&proxy_yaml(
        "127.0.0.1:0",
        backend.addr,
        "",
        &auth_routes(&file, "100000/m"),
    ))
    .await;
    let mut conn = H1::connect(proxy.addr).await;
    let first = basic("ann", "first");
    let second = basic("ann", "second");
    assert_eq!(
        send(&mut conn, "/admin/", &[("authorization", &first)])
            .await
            .status,
        200
    );
    // Replaced as editors and deploy tools do: a new file renamed over the old one.
    let tmp = dir.path().join("htpasswd.new");
    std::fs::write(&tmp, line("second")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    // The file is looked at again within about a second: poll until the new password works.
    let mut tries = 0;
    loop {
        let got = send(&mut conn, "/admin/", &[("authorization", &second)]).await;
        if got.status == 200 {
            break;
        }
        assert_eq!(got.status, 401);
        tries += 1;
        assert!(tries < 200, "the new password never worked");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let got = send(&mut conn, "/admin/", &[("authorization", &first)]).await;
    assert_eq!(
        got.status, 401,
        "the old password (cached before) no longer works"
    );
}

#[test]
fn check_names_the_place_of_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::write(&good, "ann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(
        &bad,
        "ann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\nbob:hunter2\n",
    )
    .unwrap();
    let head = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nroutes:\n";
    let (ok, out) = check(&format!(
        "{head}  - path: /\n    upstream: app\n    basic_auth: {{ htpasswd: \"{}\" }}\n",
        good.display()
    ));
    assert!(ok, "{out}");
    // (routes, what the error starts with or holds)
    let table = [
        (
            "  - path: /\n    upstream: app\n    basic_auth:\n      htpasswd: missing/htpasswd\n"
                .to_string(),
            "proxy.yaml:10:17: routes: basic_auth.htpasswd: ".to_string(),
        ),
        (
            format!(
                "  - path: /\n    upstream: app\n    basic_auth: {{ htpasswd: \"{}\" }}\n",
                bad.display()
            ),
            format!("{}:3:5: htpasswd: not a hash", bad.display()),
        ),
        (
            "  - path: /\n    upstream: app\n    allow: [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n".into(),
            "proxy.yaml:9:27: invalid CIDR \"10.0.0.1/8\"".into(),
        ),
        (
            "  - path: /\n    upstream: app\n    deny:\n      - \"::1/200\"\n".into(),
            "proxy.yaml:10:9: invalid CIDR \"::1/200\"".into(),
        ),
        (
            format!(
                "  - path: /\n    upstream: app\n    basic_auth: {{ htpasswd: \"{}\", realm: 'a\"b' }}\n",
                good.display()
            ),
            "proxy.yaml:9:".into(),
        ),
    ];
    for (routes, want) in table {
        let (ok, out) = check(&format!("{head}{routes}"));
        assert!(!ok, "{routes}");
        assert!(out.contains(&want), "{routes}: want {want:?} in:\n{out}");
    }
}
