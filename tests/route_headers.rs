//! Route rules: headers and rewrites (docs/routes.md, "Headers" and "Rewrites"), table-driven
//! through the recording backend: what the upstream received (target, headers) and what the
//! client got, over HTTP/1.1 and h2c; the rules on proxyd's own 404 and 502 and on a static
//! file; `Server` control; and `proxyd check`'s errors with file:line:column.

mod common;

use std::net::SocketAddr;

use common::{check, full, TestBackend, TestProxy, H1, H2};
use http::{Request, Response};

/// A backend that records what it got and answers with headers a rule may act on.
async fn backend() -> TestBackend {
    TestBackend::start(|seen| {
        let mut resp = Response::new(full("ok"));
        let h = resp.headers_mut();
        h.insert("server", "backend/1".parse().unwrap());
        h.insert("x-powered-by", "php".parse().unwrap());
        h.insert("x-echo-uri", seen.uri.to_string().parse().unwrap());
        if seen.uri.path().starts_with("/own-frame") {
            h.insert("x-frame-options", "ALLOW-FROM x".parse().unwrap());
        }
        resp
    })
    .await
}

/// A port nothing listens on: connecting is refused (502).
async fn dead_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

const ALL_VARS: &str =
    "{client_ip}|{scheme}|{host}|{path}|{query}|{request_uri}|{method}|{request_id}|{route}";

fn config(app: SocketAddr, dead: SocketAddr, root: &std::path::Path) -> String {
    format!(
        r#"listen:
  - addr: "127.0.0.1:0"
upstreams:
  app: {{ servers: ["{app}"] }}
  dead: {{ servers: ["{dead}"], retries: {{ attempts: 1 }} }}
headers:
  request: {{ set: {{ X-Env: prod, X-Forwarded-Proto: "{{scheme}}-by-rule" }}, add: {{ X-Top: top }}, remove: [X-Debug] }}
  response: {{ set: {{ X-Top-Resp: t }}, add: {{ X-Multi: top }}, remove: [X-Powered-By], security: true }}
routes:
  - path: /r/
    upstream: app
    headers:
      request: {{ set: {{ X-Env: "{{route}}" }}, add: {{ X-Top: route }}, remove: [X-Secret] }}
      response: {{ set: {{ X-Frame-Options: DENY }}, add: {{ X-Multi: route }}, remove: [X-Top-Resp, Referrer-Policy] }}
  - path: /vars/
    upstream: app
    headers:
      request: {{ set: {{ X-Vars: "{ALL_VARS}" }} }}
      response: {{ set: {{ X-Vars: "{ALL_VARS}" }}, csp: "default-src 'self'" }}
  - path: /own-frame
    upstream: app
    headers: {{ response: {{ security: false }} }}
  - path: /host/
    upstream: app
    headers: {{ request: {{ set: {{ Host: backend.internal }} }} }}
  - {{ path: /api/, upstream: app, strip_prefix: true }}
  - {{ path: /bare, upstream: app, strip_prefix: true }}
  - path: /re/
    upstream: app
    strip_prefix: true
    rewrite:
      - {{ from: "^/old/(.*)$", to: "/new/$1" }}
      - {{ from: "^/search/(?P<term>\\w+)$", to: "/find?q=$${{term}}" }}
      - {{ from: "^/noquery$", to: "/plain?" }}
  - path: /static/
    static: {{ root: "{root}" }}
    headers: {{ response: {{ set: {{ X-Static: "yes" }} }} }}
  - path: /down/
    upstream: dead
    headers: {{ response: {{ set: {{ X-Down: "{{route}}" }} }} }}
"#,
        root = root.display()
    )
}

/// One request and what should come of it. Header expectations: `Some(v)` is the value (all
/// values joined by ", "), `None` absent.
struct Case {
    name: &'static str,
    path: &'static str,
    send: &'static [(&'static str, &'static str)],
    status: u16,
    /// The target the backend got; None: no request reached it.
    target: Option<&'static str>,
    upstream: &'static [(&'static str, Option<&'static str>)],
    client: &'static [(&'static str, Option<&'static str>)],
}

const SECURITY: [(&str, Option<&str>); 3] = [
    ("x-frame-options", Some("SAMEORIGIN")),
    ("x-content-type-options", Some("nosniff")),
    ("referrer-policy", Some("strict-origin-when-cross-origin")),
];

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "top-level rules on a route without its own",
            path: "/api/x",
            send: &[("x-debug", "1"), ("x-env", "client")],
            status: 200,
            target: Some("/x"),
            upstream: &[
                ("x-env", Some("prod")),
                ("x-top", Some("top")),
                ("x-debug", None),
                ("x-forwarded-proto", Some("http-by-rule")),
            ],
            client: &[
                ("x-top-resp", Some("t")),
                ("x-multi", Some("top")),
                ("x-powered-by", None),
                ("server", Some("backend/1")),
                SECURITY[0],
                SECURITY[1],
                SECURITY[2],
            ],
        },
        Case {
            name: "a route's set wins, removes of both apply, adds of both apply",
            path: "/r/a",
            send: &[("x-debug", "1"), ("x-secret", "s"), ("x-top", "client")],
            status: 200,
            target: Some("/r/a"),
            upstream: &[
                ("x-env", Some("/r/")),
                ("x-top", Some("client, top, route")),
                ("x-debug", None),
                ("x-secret", None),
            ],
            client: &[
                ("x-frame-options", Some("DENY")),
                ("x-multi", Some("top, route")),
                ("x-top-resp", None),
                ("referrer-policy", None),
                ("x-content-type-options", Some("nosniff")),
                ("x-powered-by", None),
            ],
        },
        Case {
            name: "every variable, both sides",
            path: "/vars/p?q=1&r",
            send: &[("x-request-id", "rid-7")],
            status: 200,
            target: Some("/vars/p?q=1&r"),
            upstream: &[(
                "x-vars",
                Some("127.0.0.1|http|test.local|/vars/p|q=1&r|/vars/p?q=1&r|GET|rid-7|/vars/"),
            )],
            client: &[
                (
                    "x-vars",
                    Some("127.0.0.1|http|test.local|/vars/p|q=1&r|/vars/p?q=1&r|GET|rid-7|/vars/"),
                ),
                ("content-security-policy", Some("default-src 'self'")),
            ],
        },
        Case {
            name: "security headers do not replace the app's own; security: false on the route",
            path: "/own-frame",
            send: &[],
            status: 200,
            target: Some("/own-frame"),
            upstream: &[],
            client: &[
                ("x-frame-options", Some("ALLOW-FROM x")),
                ("x-content-type-options", None),
            ],
        },
        Case {
            name: "a rule may set Host",
            path: "/host/a",
            send: &[],
            status: 200,
            target: Some("/host/a"),
            upstream: &[
                ("host", Some("backend.internal")),
                ("x-forwarded-host", Some("test.local:8080")),
            ],
            client: &[],
        },
        Case {
            name: "strip_prefix, the query kept",
            path: "/api/users?id=3",
            send: &[("x-forwarded-prefix", "/forged")],
            status: 200,
            target: Some("/users?id=3"),
            upstream: &[("x-forwarded-prefix", Some("/api"))],
            client: &[("x-echo-uri", Some("/users?id=3"))],
        },
        Case {
            name: "strip_prefix of the route's own path",
            path: "/bare",
            send: &[],
            status: 200,
            target: Some("/"),
            upstream: &[("x-forwarded-prefix", Some("/bare"))],
            client: &[],
        },
        Case {
            name: "strip_prefix: only a whole segment",
            path: "/barely",
            send: &[],
            status: 200,
            target: Some("/barely"),
            upstream: &[("x-forwarded-prefix", None)],
            client: &[],
        },
        Case {
            name: "strip_prefix then rewrite, the query kept",
            path: "/re/old/a/b?k=v",
            send: &[],
            status: 200,
            target: Some("/new/a/b?k=v"),
            upstream: &[("x-forwarded-prefix", Some("/re"))],
            client: &[],
        },
        Case {
            name: "a rewrite with its own query replaces the request's",
            path: "/re/search/rust?page=2",
            send: &[],
            status: 200,
            target: Some("/find?q=rust"),
            upstream: &[],
            client: &[],
        },
        Case {
            name: "a rewrite ending in ? drops the query",
            path: "/re/noquery?secret=1",
            send: &[],
            status: 200,
            target: Some("/plain"),
            upstream: &[],
            client: &[],
        },
        Case {
            name: "no rewrite matches: stripped only",
            path: "/re/other?x",
            send: &[],
            status: 200,
            target: Some("/other?x"),
            upstream: &[],
            client: &[],
        },
        Case {
            name: "a static file gets the route's and the top level's response rules",
            path: "/static/a.txt",
            send: &[],
            status: 200,
            target: None,
            upstream: &[],
            client: &[
                ("x-static", Some("yes")),
                ("x-top-resp", Some("t")),
                SECURITY[1],
            ],
        },
        Case {
            name: "proxyd's 404 on a static route",
            path: "/static/missing.txt",
            send: &[],
            status: 404,
            target: None,
            upstream: &[],
            client: &[("x-static", Some("yes")), SECURITY[0]],
        },
        Case {
            name: "proxyd's 404 with no route: the top level's rules",
            path: "/nowhere",
            send: &[],
            status: 404,
            target: None,
            upstream: &[],
            client: &[
                ("x-top-resp", Some("t")),
                ("proxyd-error", Some("no-route")),
                SECURITY[0],
                SECURITY[1],
                SECURITY[2],
            ],
        },
        Case {
            name: "proxyd's 502 gets the route's rules",
            path: "/down/x",
            send: &[],
            status: 502,
            target: None,
            upstream: &[],
            client: &[
                ("x-down", Some("/down/")),
                ("x-top-resp", Some("t")),
                SECURITY[1],
            ],
        },
    ]
}

fn joined(h: &http::HeaderMap, name: &str) -> Option<String> {
    let all: Vec<&str> = h
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

async fn run_cases(h2: bool) {
    let app = backend().await;
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("a.txt"), "file\n").unwrap();
    let proxy = TestProxy::from_yaml(&config(app.addr, dead_port().await, site.path())).await;
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let tag = i.to_string();
        let uri = if h2 {
            format!("http://test.local:8080{}", case.path)
        } else {
            case.path.to_string()
        };
        let mut req = Request::get(uri).header("x-case", &tag);
        if !h2 {
            req = req.header("host", "test.local:8080");
        }
        for (n, v) in case.send {
            req = req.header(*n, *v);
        }
        let req = req.body(full("")).unwrap();
        let got = if h2 {
            H2::connect(proxy.addr).await.send(req).await
        } else {
            H1::connect(proxy.addr).await.send(req).await
        };
        let mut wrong = |what: String| failures.push(format!("[{}] {}: {what}", i, case.name));
        if got.status != case.status {
            wrong(format!("status {} (want {})", got.status, case.status));
        }
        for (n, want) in case.client {
            let have = joined(&got.headers, n);
            if have.as_deref() != *want {
                wrong(format!("client {n}: {have:?} (want {want:?})"));
            }
        }
        let seen = app
            .requests()
            .into_iter()
            .find(|s| s.headers.get("x-case").is_some_and(|v| v == tag.as_str()));
        match (&seen, case.target) {
            (None, None) => {}
            (Some(s), Some(t)) => {
                if s.uri != t {
                    wrong(format!("upstream target {} (want {t})", s.uri));
                }
                for (n, want) in case.upstream {
                    let have = joined(&s.headers, n);
                    if have.as_deref() != *want {
                        wrong(format!("upstream {n}: {have:?} (want {want:?})"));
                    }
                }
            }
            (s, t) => wrong(format!(
                "upstream got {:?} (want {t:?})",
                s.as_ref().map(|s| s.uri.to_string())
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} (h2: {h2}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn header_rules_and_rewrites_over_http1() {
    run_cases(false).await;
}

#[tokio::test]
async fn header_rules_and_rewrites_over_h2c() {
    run_cases(true).await;
}

#[tokio::test]
async fn server_header_control() {
    let app = backend().await;
    // (headers.server, route's own response rules, path, Server on the backend's answer,
    // Server on proxyd's 404)
    let table: [(&str, &str, Option<&str>, Option<&str>); 5] = [
        ("", "", Some("backend/1"), None),
        ("server: pass", "", Some("backend/1"), None),
        ("server: off", "", None, None),
        ("server: proxyd", "", Some("proxyd"), Some("proxyd")),
        (
            "server: proxyd",
            "headers: { response: { remove: [Server] } }",
            None,
            Some("proxyd"),
        ),
    ];
    for (server, route, answer, own) in table {
        let yaml = format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app: {{ servers: [\"{}\"] }}\nheaders: {{ {server} }}\nroutes:\n  - {{ path: /a/, upstream: app, {route} }}\n",
            app.addr
        );
        let proxy = TestProxy::from_yaml(&yaml).await;
        let mut c = H1::connect(proxy.addr).await;
        let got = c.get("/a/x").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("server"), answer, "{server} {route}: backend's");
        let got = c.get("/nowhere").await;
        assert_eq!(got.status, 404);
        assert_eq!(got.header("server"), own, "{server} {route}: proxyd's 404");
    }
}

#[test]
fn check_names_each_mistake() {
    const TOP: &str =
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app: { servers: [\"127.0.0.1:9\"] }\n";
    let table: &[(&str, &str)] = &[
        (
            "headers:\n  response: { set: { \"Bad Name\": x } }\n",
            "proxy.yaml:6:22: headers.response.set: \"Bad Name\" is not a valid header name",
        ),
        (
            "headers:\n  request: { set: { Transfer-Encoding: chunked } }\n",
            "proxy.yaml:6:21: headers.request.set: Transfer-Encoding is set by proxyd itself",
        ),
        (
            "routes:\n  - { path: /, upstream: app, headers: { response: { remove: [Content-Length] } } }\n",
            "proxy.yaml:6:63: routes: headers.response.remove: Content-Length is set by proxyd itself",
        ),
        (
            "routes:\n  - { path: /, upstream: app, headers: { request: { set: { X-A: \"{clientip}\" } } } }\n",
            "proxy.yaml:6:65: template \"{clientip}\": unknown variable {clientip}",
        ),
        (
            "routes:\n  - { path: /, upstream: app, rewrite: [{ from: \"(a\", to: /b }] }\n",
            "proxy.yaml:6:49: routes: rewrite.from: not a valid regex: unclosed group",
        ),
        (
            "routes:\n  - { path: /, upstream: app, rewrite: [{ from: \"^/(a)$\", to: /b/$2 }] }\n",
            "proxy.yaml:6:63: routes: rewrite.to: \"/b/$2\": $2 names no group of the regex",
        ),
        (
            "routes:\n  - { path: /, upstream: app, strip_prefix: true }\n",
            "proxy.yaml:6:26: routes: strip_prefix on path \"/\" takes nothing off",
        ),
        (
            "headers: { server: \"\" }\n",
            "proxy.yaml:5:20: headers.server: an empty Server header",
        ),
    ];
    let mut failures = Vec::new();
    for (rest, want) in table {
        let (ok, out) = check(&format!("{TOP}{rest}"));
        if ok || !out.contains(want) {
            failures.push(format!("{rest}\n  got: {out}\n want: {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
