//! A route's own answers and limits, table-driven against the recording backend: redirects
//! (with and without the query, over HTTP/1.1 and h2c), methods (405 with Allow), max_body
//! (413), its time-outs (504, 408), and `proxyd check`'s errors for each key.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{check, full, TestBackend, TestProxy, H1, H2};
use http::{Method, Request, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A request to send: method, host, target, body.
struct Send {
    method: &'static str,
    host: &'static str,
    target: &'static str,
    body: &'static str,
}

fn req(method: &'static str, host: &'static str, target: &'static str) -> Send {
    Send {
        method,
        host,
        target,
        body: "",
    }
}

fn request(s: &Send, version: Version) -> Request<common::BoxBody> {
    let mut b = Request::builder()
        .method(Method::from_bytes(s.method.as_bytes()).unwrap())
        .version(version);
    b = if version == Version::HTTP_2 {
        b.uri(format!("http://{}{}", s.host, s.target))
    } else {
        b.uri(s.target).header("host", s.host)
    };
    b.body(full(Bytes::from_static(s.body.as_bytes()))).unwrap()
}

const REDIRECTS: &str = "\
routes:
  - { host: www.example.test, redirect: { to: \"https://example.test{path}\" } }
  - { path: /old/, redirect: { to: \"/new/\", status: 308, query: drop } }
  - { path: /login, redirect: { to: \"https://id.example.test/login?next={path}\", status: 302 } }
  - { path: /moved, redirect: { to: \"https://{host}/here{request_uri}\", status: 307 } }
  - { path: /see, redirect: { to: \"{scheme}://{host}/other\", status: 303 } }
  - { path: /, upstream: app }
";

#[tokio::test]
async fn redirects_with_and_without_the_query() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], REDIRECTS).await;
    // (request, status, Location)
    let cases = [
        (
            req("GET", "www.example.test", "/a/b?x=1&y=2"),
            301,
            "https://example.test/a/b?x=1&y=2",
        ),
        (
            req("POST", "www.example.test:8080", "/"),
            301,
            "https://example.test/",
        ),
        (req("GET", "site.test", "/old/page?x=1"), 308, "/new/"),
        (
            req("GET", "site.test", "/login?x=1"),
            302,
            "https://id.example.test/login?next=/login&x=1",
        ),
        (
            req("GET", "site.test", "/moved/a?q=2"),
            307,
            "https://site.test/here/moved/a?q=2",
        ),
        (
            req("GET", "site.test", "/see?z"),
            303,
            "http://site.test/other?z",
        ),
    ];
    let mut h1 = H1::connect(proxy.addr).await;
    let mut h2 = H2::connect(proxy.addr).await;
    for (send, status, location) in &cases {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let got = match version {
                Version::HTTP_2 => h2.send(request(send, version)).await,
                _ => h1.send(request(send, version)).await,
            };
            let what = format!(
                "{} {}{} over {version:?}",
                send.method, send.host, send.target
            );
            assert_eq!(got.status.as_u16(), *status, "{what}");
            assert_eq!(got.header("location"), Some(*location), "{what}");
            assert!(got.header("x-request-id").is_some(), "{what}: stamped");
        }
    }
    // The same connection goes on, and nothing went upstream.
    assert_eq!(h1.get("/fine").await.status, 200);
    assert_eq!(backend.request_count(), 1, "only /fine reached the backend");
}

const METHODS: &str = "\
routes:
  - { path: /api/, upstream: app, methods: [GET, POST] }
  - { path: /purge/, upstream: app, methods: [PURGE] }
  - { path: /, upstream: app }
";

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], METHODS).await;
    // (method, path, status, Allow)
    let cases = [
        ("GET", "/api/x", 200, None),
        ("HEAD", "/api/x", 200, None),
        ("POST", "/api/x", 200, None),
        ("PUT", "/api/x", 405, Some("GET, HEAD, POST")),
        ("DELETE", "/api/x", 405, Some("GET, HEAD, POST")),
        ("OPTIONS", "/api/x", 405, Some("GET, HEAD, POST")),
        ("PURGE", "/purge/x", 200, None),
        ("GET", "/purge/x", 405, Some("PURGE")),
        ("DELETE", "/other", 200, None),
    ];
    let mut h1 = H1::connect(proxy.addr).await;
    let mut h2 = H2::connect(proxy.addr).await;
    let mut passed = Vec::new();
    for (method, path, status, allow) in cases {
        let send = req(method, "site.test", path);
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let got = match version {
                Version::HTTP_2 => h2.send(request(&send, version)).await,
                _ => h1.send(request(&send, version)).await,
            };
            let what = format!("{method} {path} over {version:?}");
            assert_eq!(got.status.as_u16(), status, "{what}");
            assert_eq!(got.header("allow"), allow, "{what}");
            if status == 405 {
                assert_eq!(got.header("proxyd-error"), Some("method-not-allowed"));
            } else {
                passed.push((method, path));
            }
        }
    }
    let seen: Vec<(String, String)> = backend
        .requests()
        .iter()
        .map(|s| (s.method.to_string(), s.uri.path().to_string()))
        .collect();
    let passed: Vec<(String, String)> = passed
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        seen, passed,
        "the backend got exactly the methods let through"
    );
}

const BODIES: &str = "\
limits: { max_body: 20, buffer_body: 8 }
routes:
  - { path: /small/, upstream: app, max_body: 10 }
  - { path: /upload/, upstream: app, max_body: 1KiB }
  - { path: /, upstream: app }
";

#[tokio::test]
async fn a_routes_max_body() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], BODIES).await;
    let body500: &'static str = "x".repeat(500).leak();
    // (path, body, status)
    let cases = [
        ("/small/a", "0123456789", 200),
        ("/small/a", "0123456789a", 413),
        ("/other", "0123456789a", 200),
        ("/other", "012345678901234567890", 413),
        ("/upload/a", body500, 200),
    ];
    let mut h1 = H1::connect(proxy.addr).await;
    for (path, body, status) in cases {
        let send = Send {
            method: "POST",
            host: "site.test",
            target: path,
            body,
        };
        // A body the client declares, and one in chunks of unknown length (h2 sends no
        // content-length for a streamed body).
        let got = h1.send(request(&send, Version::HTTP_11)).await;
        assert_eq!(
            got.status.as_u16(),
            status,
            "{path} with {} bytes",
            body.len()
        );
        if status == 413 {
            assert_eq!(got.header("proxyd-error"), Some("body-too-large"));
            h1 = H1::connect(proxy.addr).await;
        }
        let chunked = chunked_post(proxy.addr, path, body).await;
        assert!(
            chunked.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path} chunked: {chunked}"
        );
    }
    let got: Vec<(String, usize)> = backend
        .requests()
        .iter()
        .map(|s| (s.uri.path().to_string(), s.body.len()))
        .collect();
    let want: Vec<(String, usize)> = cases
        .iter()
        .filter(|c| c.2 == 200)
        .flat_map(|c| [(c.0.to_string(), c.1.len()), (c.0.to_string(), c.1.len())])
        .collect();
    assert_eq!(got, want, "refused bodies never reached the backend");
}

/// POSTs `body` chunked on a fresh connection and reads the answer to its end.
async fn chunked_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: site.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    common::read_until_close(&mut s).await
}

/// A backend that accepts and never answers.
async fn silent_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_routes_time_outs() {
    let silent = silent_backend().await;
    let backend = TestBackend::echo().await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n\
         upstreams:\n  slow:\n    servers: [\"{silent}\"]\n    response_timeout: 1h\n    retries: {{ attempts: 1 }}\n\
         \x20 app:\n    servers: [\"{}\"]\n\
         timeouts: {{ client_body: 1h }}\n\
         routes:\n\
         \x20 - {{ path: /quick/, upstream: slow, timeouts: {{ response: 300ms }} }}\n\
         \x20 - {{ path: /upload/, upstream: app, timeouts: {{ client_body: 300ms }} }}\n\
         \x20 - {{ path: /, upstream: app }}\n",
        backend.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    // The route's response time-out, not the upstream's hour: a 504 (bounded here so a
    // failure is a failed test, not a hung one).
    let got = tokio::time::timeout(Duration::from_secs(30), common::get(proxy.addr, "/quick/a"))
        .await
        .expect("the route's response time-out did not apply");
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        got.header("proxyd-error"),
        Some("upstream-response-timeout")
    );

    // A body that stalls: 408 after the route's client_body, not the top level's hour.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload/a HTTP/1.1\r\nhost: site.test\r\ncontent-length: 10\r\n\r\n012")
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), common::read_until_close(&mut s))
        .await
        .expect("the route's client_body time-out did not apply");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains("proxyd-error: client-body-timeout"),
        "{answer}"
    );
    assert_eq!(backend.request_count(), 0, "the stalled body went nowhere");
}

#[test]
fn check_names_each_mistake() {
    let head = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nroutes:\n";
    // (route line(s), file:line:column and message)
    let cases = [
        (
            "  - { path: /a, redirect: { to: \"/b\", status: 200 } }\n",
            "proxy.yaml:7:47: routes: redirect.status: 200 is not a redirect",
        ),
        (
            "  - { path: /a, upstream: app, redirect: { to: \"/b\" } }\n",
            "proxy.yaml:7:48: routes: redirect: a redirecting route has no upstream or static",
        ),
        (
            "  - { path: /a, redirect: { to: \"/b{pth}\" } }\n",
            "proxy.yaml:7:33: template \"/b{pth}\": unknown variable {pth}",
        ),
        (
            "  - { path: /a, redirect: { to: \"{request_uri}\", query: keep } }\n",
            "proxy.yaml:7:57: routes: redirect.query: `to` places the query itself",
        ),
        (
            "  - { path: /a, redirect: { to: \"/b\" }, max_body: 1KiB }\n",
            "proxy.yaml:7:33: routes: max_body: has no effect on a route that redirects",
        ),
        (
            "  - { path: /a, upstream: app, methods: [GET, post] }\n",
            "proxy.yaml:7:47: routes: methods: \"post\": methods are case-sensitive; write \"POST\"",
        ),
        (
            "  - { path: /a, upstream: app, methods: [\"GE T\"] }\n",
            "proxy.yaml:7:42: routes: methods: \"GE T\" is not a method name",
        ),
        (
            "  - { path: /a, upstream: app, methods: [] }\n",
            "proxy.yaml:7:27: routes: methods: [] would refuse every request",
        ),
        (
            "  - { path: /a, upstream: app, max_body: lots }\n",
            "proxy.yaml:7:42: invalid size \"lots\"",
        ),
        (
            "  - { path: /a, upstream: app, timeouts: { response: 0s } }\n",
            "proxy.yaml:7:54: must be longer than 0s",
        ),
        (
            "  - { path: /a, upstream: app, timeouts: { connect: 1s } }\n",
            "proxy.yaml:7:44: unknown field `connect`",
        ),
        (
            "  - { path: /a }\n",
            "needs upstream (where requests go), static (a directory to serve) or redirect",
        ),
    ];
    for (route, want) in cases {
        let (ok, out) = check(&format!("{head}{route}"));
        assert!(!ok, "{route}: accepted");
        assert!(out.contains(want), "{route}: want {want:?}, got: {out}");
    }
    let (ok, out) = check(&format!(
        "{head}{}",
        REDIRECTS.trim_start_matches("routes:\n")
    ));
    assert!(ok, "{out}");
}
