//! Static routes (`routes[].static`): real proxyd, real sockets, files in a temp dir.
//! Byte-exact bodies, HEAD, conditionals, ranges, content types, index files, 405, the
//! traversal catalogue, a large file by sendfile and by reads, a file changed between
//! requests, precompressed variants by q-value, a fallback upstream that sees only the
//! misses, and the shipped Flask example.

mod common;

use std::path::{Path, PathBuf};

use common::{check, full, raw, TestBackend, TestProxy, H1};
use http::{Request, StatusCode};

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

/// A temp dir with `root/` (the served files) and a secret file beside it.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
        std::fs::write(root.join("a.css"), "body { color: red }\n").unwrap();
        std::fs::write(root.join("app.js"), "console.log(1);\n").unwrap();
        std::fs::write(root.join("index.html"), "<p>home</p>\n").unwrap();
        std::fs::write(root.join("docs/index.html"), "<p>docs</p>\n").unwrap();
        std::fs::write(root.join("sub/plain.txt"), "plain\n").unwrap();
        std::fs::write(root.join("big.bin"), big()).unwrap();
        Site { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
}

/// 300 KiB that are not a repeating pattern (the large-file path reads in chunks).
fn big() -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..300 * 1024)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

/// proxyd with one static route on /static/ over `root`, plus `more` under `static:`.
async fn proxy(root: &Path, more: &str, backend: Option<std::net::SocketAddr>) -> TestProxy {
    let server = backend.map_or("127.0.0.1:9".to_string(), |a| a.to_string());
    TestProxy::from_yaml(&format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{server}\"]\nroutes:\n  - path: /static/\n    static:\n      root: \"{}\"\n{more}  - path: /\n    upstream: app\n",
        root.display()
    ))
    .await
}

async fn get(p: &TestProxy, path: &str, headers: &[(&str, &str)]) -> common::Got {
    send(p, "GET", path, headers).await
}

async fn send(p: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> common::Got {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    H1::connect(p.addr)
        .await
        .send(req.body(full("")).unwrap())
        .await
}

/// The status of a raw HTTP/1.1 request for `target`, and the whole answer.
async fn raw_get(p: &TestProxy, target: &str) -> (u16, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n");
    let answer = raw(p.addr, req.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn files_are_served_byte_exact_with_their_types() {
    let site = Site::new();
    let p = proxy(&site.root(), "", None).await;
    for (path, file, kind) in [
        ("/static/a.css", "a.css", "text/css"),
        ("/static/app.js", "app.js", "text/javascript"),
        ("/static/big.bin", "big.bin", "application/octet-stream"),
        ("/static/sub/plain.txt", "sub/plain.txt", "text/plain"),
        ("/static/", "index.html", "text/html"),
        ("/static/docs/", "docs/index.html", "text/html"),
        ("/static/docs", "docs/index.html", "text/html"),
    ] {
        let got = get(&p, path, &[]).await;
        let want = std::fs::read(site.file(file)).unwrap();
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert_eq!(got.body, want, "{path}");
        assert_eq!(got.header("content-type"), Some(kind), "{path}");
        assert_eq!(
            got.header("content-length"),
            Some(want.len().to_string().as_str())
        );
        assert!(got.header("etag").is_some_and(|e| e.starts_with('"')));
        assert!(got.header("last-modified").is_some());
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        assert!(got.header("vary").is_none(), "no variants configured");
    }
    // HEAD: the same head, no body.
    let head = send(&p, "HEAD", "/static/big.bin", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("307200"));
    // A directory without an index file, a missing file: 404, no listing.
    for path in ["/static/sub/", "/static/sub", "/static/nothing.css"] {
        let got = get(&p, path, &[]).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(got.header("proxyd-error"), Some("not-found"));
        assert!(
            !got.text().contains("plain.txt"),
            "a listing: {}",
            got.text()
        );
    }
    // Other methods: 405 with Allow.
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let got = send(&p, method, "/static/a.css", &[]).await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(got.header("allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn conditionals_answer_304_and_412() {
    let site = Site::new();
    let p = proxy(
        &site.root(),
        "      cache_control: \"public, max-age=60\"\n",
        None,
    )
    .await;
    let first = get(&p, "/static/a.css", &[]).await;
    assert_eq!(first.header("cache-control"), Some("public, max-age=60"));
    let etag = first.header("etag").unwrap().to_string();
    let modified = first.header("last-modified").unwrap().to_string();
    let weak = format!("W/{etag}");
    let other = "\"nope\"".to_string();
    let old = "Sun, 06 Nov 1994 08:49:37 GMT".to_string();
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        (vec![("if-none-match", &etag)], 304),
        (vec![("if-none-match", &weak)], 304),
        (vec![("if-none-match", "\"x\", *")], 304),
        (vec![("if-none-match", &other)], 200),
        (vec![("if-modified-since", &modified)], 304),
        (vec![("if-modified-since", &old)], 200),
        // If-None-Match wins over If-Modified-Since.
        (
            vec![("if-none-match", &other), ("if-modified-since", &modified)],
            200,
        ),
        (vec![("if-match", &etag)], 200),
        (vec![("if-match", "*")], 200),
        (vec![("if-match", &other)], 412),
        // If-Match compares strongly.
        (vec![("if-match", &weak)], 412),
        (vec![("if-unmodified-since", &old)], 412),
        (vec![("if-unmodified-since", &modified)], 200),
    ];
    for (headers, want) in cases {
        let got = get(&p, "/static/a.css", &headers).await;
        assert_eq!(got.status.as_u16(), want, "{headers:?}");
        if want != 200 {
            assert!(got.body.is_empty(), "{headers:?}");
        }
        if want == 304 {
            assert_eq!(got.header("etag"), Some(etag.as_str()));
            assert_eq!(got.header("cache-control"), Some("public, max-age=60"));
        }
    }
}

#[tokio::test]
async fn one_range_is_206_and_an_unsatisfiable_one_416() {
    let site = Site::new();
    let p = proxy(&site.root(), "", None).await;
    let whole = big();
    let size = whole.len();
    let etag = get(&p, "/static/big.bin", &[])
        .await
        .header("etag")
        .unwrap()
        .to_string();
    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=100000-250000", 100_000, 250_000),
        ("bytes=-5", size - 5, size - 1),
        ("bytes=300000-", 300_000, size - 1),
        ("bytes=307000-999999", 307_000, size - 1),
    ] {
        let got = get(&p, "/static/big.bin", &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(got.body, whole[first..=last], "{range}");
        let want = format!("bytes {first}-{last}/{size}");
        assert_eq!(got.header("content-range"), Some(want.as_str()));
    }
    for range in ["bytes=307200-", "bytes=999999-1000000", "bytes=-0"] {
        let got = get(&p, "/static/big.bin", &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        let want = format!("bytes */{size}");
        assert_eq!(got.header("content-range"), Some(want.as_str()));
        assert!(got.body.is_empty());
    }
    // Several ranges, a malformed one, a stale If-Range: the whole file.
    for headers in [
        vec![("range", "bytes=0-1,5-6")],
        vec![("range", "bytes=9-1")],
        vec![("range", "bytes=0-1"), ("if-range", "\"stale\"")],
    ] {
        let got = get(&p, "/static/big.bin", &headers).await;
        assert_eq!(got.status, StatusCode::OK, "{headers:?}");
        assert_eq!(got.body, whole, "{headers:?}");
    }
    let got = get(
        &p,
        "/static/big.bin",
        &[("range", "bytes=0-1"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.body, whole[..2]);
}

/// Every form of leaving the root is refused; the secret beside the root is never sent.
/// Refused outright (400): `..` segments, encoded or not, encoded slashes, NUL and
/// backslashes. Not found (404): a double-encoded `..` (decoded once it is a name, and there
/// is no such file) and symlinks out of the root (the kernel refuses them, RESOLVE_BENEATH).
/// A symlink that stays beneath the root is followed.
#[tokio::test]
async fn nothing_outside_the_root_is_served() {
    let site = Site::new();
    let root = site.root();
    std::os::unix::fs::symlink("../secret.txt", root.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(site.dir.path().join("secret.txt"), root.join("abs.txt")).unwrap();
    std::os::unix::fs::symlink("..", root.join("up")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root", root.join("proc")).unwrap();
    std::os::unix::fs::symlink("a.css", root.join("inside.css")).unwrap();
    std::os::unix::fs::symlink("../a.css", root.join("sub/up.css")).unwrap();
    let p = proxy(&root, "", None).await;
    let catalogue: &[(&str, u16)] = &[
        ("/static/../secret.txt", 400),
        ("/static/sub/../../secret.txt", 400),
        ("/static/%2e%2e/secret.txt", 400),
        ("/static/%2E%2E/secret.txt", 400),
        ("/static/.%2e/secret.txt", 400),
        ("/static/..%2fsecret.txt", 400),
        ("/static/..%2Fsecret.txt", 400),
        ("/static/sub%2f..%2f..%2fsecret.txt", 400),
        ("/static/%252e%252e/secret.txt", 404),
        ("/static/%252e%252e%252fsecret.txt", 404),
        ("/static/a.css%00.txt", 400),
        ("/static/%00", 400),
        ("/static/..%5csecret.txt", 400),
        ("/static/..\\secret.txt", 400),
        ("/static/escape.txt", 404),
        ("/static/abs.txt", 404),
        ("/static/up/secret.txt", 404),
        ("/static/proc/etc/passwd", 404),
        ("/static//etc/passwd", 404),
    ];
    for (target, want) in catalogue {
        let (status, answer) = raw_get(&p, target).await;
        assert!(!answer.contains(SECRET), "{target} sent the secret");
        assert!(!answer.contains("root:"), "{target} sent /etc/passwd");
        // The client's own parser may refuse a target first (400 too): never a 200.
        assert_eq!(status, *want, "{target}: {answer}");
    }
    for target in ["/static/inside.css", "/static/sub/up.css"] {
        let got = get(&p, target, &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{target}");
        assert_eq!(got.text(), "body { color: red }\n");
    }
}

/// A file larger than the socket's buffers, whole and in part, the same to a plain
/// HTTP/1.1 client (sent with sendfile, each call waiting for the socket to drain) and to an
/// h2c one (read in chunks), and the HTTP/1.1 connection carries the next request after it.
#[tokio::test]
async fn a_large_file_is_the_same_by_sendfile_and_by_reads() {
    let site = Site::new();
    let mut x: u64 = 7;
    let large: Vec<u8> = (0..12 * 1024 * 1024)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(site.file("large.bin"), &large).unwrap();
    let p = proxy(&site.root(), "", None).await;
    let mut h1 = H1::connect(p.addr).await;
    let mut h2 = common::H2::connect(p.addr).await;
    let ask = |range: Option<&str>| {
        let mut req = Request::get("/static/large.bin").header("host", "test.local");
        if let Some(r) = range {
            req = req.header("range", r);
        }
        req.body(full("")).unwrap()
    };
    for (range, want) in [
        (None, &large[..]),
        (Some("bytes=5000000-9999999"), &large[5_000_000..10_000_000]),
        (Some("bytes=-70000"), &large[large.len() - 70_000..]),
        (Some("bytes=3-40"), &large[3..41]),
    ] {
        let by_sendfile = h1.send(ask(range)).await;
        let by_reads = h2.send(ask(range)).await;
        for got in [&by_sendfile, &by_reads] {
            assert!(got.status.is_success(), "{range:?}: {}", got.status);
            assert_eq!(got.body.len(), want.len(), "{range:?}");
            assert!(got.body == want, "{range:?}: the bytes differ");
        }
    }
    let after = h1.get("/static/sub/plain.txt").await;
    assert_eq!(after.text(), "plain\n");
}

#[tokio::test]
async fn a_changed_file_is_served_fresh() {
    let site = Site::new();
    let p = proxy(&site.root(), "", None).await;
    let mut client = H1::connect(p.addr).await;
    let first = client.get("/static/sub/plain.txt").await;
    assert_eq!(first.text(), "plain\n");
    std::fs::write(site.file("sub/plain.txt"), "changed, and longer\n").unwrap();
    let second = client.get("/static/sub/plain.txt").await;
    assert_eq!(second.text(), "changed, and longer\n");
    assert_ne!(first.header("etag"), second.header("etag"));
    // The old ETag no longer validates.
    let etag = first.header("etag").unwrap();
    let got = get(&p, "/static/sub/plain.txt", &[("if-none-match", etag)]).await;
    assert_eq!(got.status, StatusCode::OK);
    // Replaced by a new file (a deploy's rename): the new one.
    let tmp = site.dir.path().join("new.txt");
    std::fs::write(&tmp, "renamed in\n").unwrap();
    std::fs::rename(&tmp, site.file("sub/plain.txt")).unwrap();
    assert_eq!(
        client.get("/static/sub/plain.txt").await.text(),
        "renamed in\n"
    );
}

/// The cache of open files never serves what the path no longer names: a rewrite of the same
/// length, a file deleted, and a file replaced by a symlink that leaves the root (which must
/// not be followed, nor the file it replaced served).
#[tokio::test]
async fn a_cached_file_follows_its_path() {
    let site = Site::new();
    let p = proxy(&site.root(), "", None).await;
    let mut client = H1::connect(p.addr).await;
    let path = site.file("sub/plain.txt");
    assert_eq!(client.get("/static/sub/plain.txt").await.text(), "plain\n");
    // Same length, new bytes (the modification time moves on).
    std::fs::write(&path, "PLAIN\n").unwrap();
    assert_eq!(client.get("/static/sub/plain.txt").await.text(), "PLAIN\n");
    // Gone.
    std::fs::remove_file(&path).unwrap();
    let got = client.get("/static/sub/plain.txt").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    // Back, served, then swapped for a symlink out of the root.
    std::fs::write(&path, "plain\n").unwrap();
    assert_eq!(client.get("/static/sub/plain.txt").await.text(), "plain\n");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(site.dir.path().join("secret.txt"), &path).unwrap();
    let got = client.get("/static/sub/plain.txt").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(!got.text().contains(SECRET) && !got.text().contains("plain"));
}

#[tokio::test]
async fn precompressed_variants_by_q_value() {
    let site = Site::new();
    std::fs::write(site.file("a.css.br"), "BROTLI").unwrap();
    std::fs::write(site.file("a.css.gz"), "GZIP").unwrap();
    // No .zst: a client that prefers zstd gets the next best.
    let p = proxy(
        &site.root(),
        "      precompressed: [br, zstd, gzip]\n",
        None,
    )
    .await;
    for (accept, body, encoding) in [
        (Some("gzip"), "GZIP", Some("gzip")),
        (Some("gzip, br"), "BROTLI", Some("br")),
        (Some("br;q=0.5, gzip"), "GZIP", Some("gzip")),
        (Some("br;q=0.5, gzip;q=0.4"), "BROTLI", Some("br")),
        (Some("zstd, gzip;q=0.9, br;q=0.1"), "GZIP", Some("gzip")),
        (Some("br;q=0, gzip;q=0"), "body { color: red }\n", None),
        (Some("*"), "BROTLI", Some("br")),
        (Some("*, br;q=0"), "GZIP", Some("gzip")),
        (Some("identity"), "body { color: red }\n", None),
        (None, "body { color: red }\n", None),
    ] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept-encoding", *a)).collect();
        let got = get(&p, "/static/a.css", &headers).await;
        assert_eq!(got.status, StatusCode::OK, "{accept:?}");
        assert_eq!(got.text(), body, "{accept:?}");
        assert_eq!(got.header("content-encoding"), encoding, "{accept:?}");
        assert_eq!(got.header("content-type"), Some("text/css"), "{accept:?}");
        assert_eq!(got.header("vary"), Some("accept-encoding"), "{accept:?}");
    }
    // A file without variants: itself, still with Vary.
    let got = get(&p, "/static/app.js", &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(got.text(), "console.log(1);\n");
    assert!(got.header("content-encoding").is_none());
}

#[tokio::test]
async fn a_fallback_upstream_gets_only_the_misses() {
    let site = Site::new();
    let backend = TestBackend::echo().await;
    let p = proxy(&site.root(), "      fallback: app\n", Some(backend.addr)).await;
    for path in ["/static/a.css", "/static/", "/static/big.bin"] {
        let got = get(&p, path, &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert!(got.header("x-echo-uri").is_none(), "{path}");
    }
    let got = get(&p, "/static/a.css", &[("range", "bytes=0-3")]).await;
    assert_eq!(got.text(), "body");
    assert_eq!(backend.request_count(), 0, "a hit reaches no backend");

    let got = get(&p, "/static/missing.css?v=2", &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("x-echo-uri"), Some("/static/missing.css?v=2"));
    assert_eq!(backend.request_count(), 1, "exactly the miss");
    let seen = backend.requests();
    assert_eq!(seen[0].method, http::Method::GET);
    assert_eq!(seen[0].uri.path(), "/static/missing.css");

    // A method files do not take goes to the app too; a refused path does not.
    let got = send(&p, "POST", "/static/a.css", &[]).await;
    assert_eq!(got.header("x-echo-method"), Some("POST"));
    assert_eq!(backend.request_count(), 2);
    let (status, _) = raw_get(&p, "/static/%2e%2e/secret.txt").await;
    assert_eq!(status, 400);
    assert_eq!(
        backend.request_count(),
        2,
        "a refused path reaches no backend"
    );
}

#[test]
fn check_locates_static_route_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let file = dir.path().join("f.txt");
    std::fs::write(&file, "x").unwrap();
    let base = "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\nroutes:\n";
    let cases = [
        (
            "  - path: /s/\n    static: { root: \"/nonexistent/proxyd-test\" }\n".to_string(),
            "proxy.yaml:8:",
            "static.root",
        ),
        (
            format!(
                "  - path: /s/\n    static: {{ root: \"{}\" }}\n",
                file.display()
            ),
            "proxy.yaml:8:",
            "is not a directory",
        ),
        (
            format!("  - path: /s/\n    static: {{ root: \"{root}\", fallback: nope }}\n"),
            "proxy.yaml:8:",
            "unknown upstream \"nope\"",
        ),
        (
            "  - path: /s/\n    name: x\n".to_string(),
            "proxy.yaml",
            "needs upstream (where requests go), static (a directory to serve) or redirect",
        ),
        (
            format!("  - path: /s/\n    upstream: app\n    static: {{ root: \"{root}\" }}\n"),
            "proxy.yaml:8:",
            "upstream or static, not both",
        ),
        (
            format!("  - path: /s/\n    static: {{ root: \"{root}\", precompressed: [br, br] }}\n"),
            "proxy.yaml:8:",
            "br is listed twice",
        ),
        (
            format!("  - path: /s/\n    static: {{ root: \"{root}\", precompressed: [lz4] }}\n"),
            "proxy.yaml:8:",
            "lz4",
        ),
        (
            format!("  - path: /s/\n    static: {{ root: \"{root}\", index: [\"../x\"] }}\n"),
            "proxy.yaml:8:",
            "not a file name",
        ),
    ];
    for (routes, place, words) in cases {
        let (ok, out) = check(&format!("{base}{routes}"));
        assert!(!ok, "{routes}: accepted");
        assert!(
            out.contains(place) && out.contains(words),
            "{routes}: {out}"
        );
    }
    let (ok, out) = check(&format!(
        "{base}  - path: /s/\n    static: {{ root: \"{root}\", fallback: app, precompressed: [gzip] }}\n"
    ));
    assert!(ok, "{out}");
}

/// A file served is counted under its route with upstream "-"; a miss sent to the fallback
/// under the fallback's name.
#[tokio::test]
async fn metrics_count_files_under_their_route() {
    let site = Site::new();
    let backend = TestBackend::echo().await;
    let p = TestProxy::from_yaml(&format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin:\n  addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{}\"]\nroutes:\n  - path: /static/\n    static: {{ root: \"{}\", fallback: app }}\n",
        backend.addr,
        site.root().display()
    ))
    .await;
    let admin = p.admin.unwrap();
    assert_eq!(get(&p, "/static/a.css", &[]).await.status, StatusCode::OK);
    assert_eq!(get(&p, "/static/nope", &[]).await.status, StatusCode::OK);
    let counted = |text: &str, upstream: &str| {
        text.lines().any(|l| {
            l.starts_with("proxyd_requests_total{")
                && l.contains("route=\"/static/\"")
                && l.contains(&format!("upstream=\"{upstream}\""))
                && l.contains("code=\"200\"")
                && l.ends_with(" 1")
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = common::get(admin, "/metrics").await.text();
        if counted(&text, "-") && counted(&text, "app") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not counted:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The shipped Flask example, `config/flask-static.yaml`, as a user runs it: proxyd serves
/// `examples/static` itself and its Flask workers answer the rest; a file that is not there
/// goes to the app (its own 404).
#[tokio::test]
async fn the_flask_example_serves_its_static_files_and_its_app() {
    let flask = std::process::Command::new("python3")
        .args(["-c", "import flask"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !common::tools::require(flask, "the Flask example", "Flask", "pip install flask") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(common::proxyd_bin());
    cmd.arg("-c")
        .arg(repo.join("config/flask-static.yaml"))
        .env("PORT", "0");
    let mut p = common::ProxydProcess::spawn(cmd);
    let css = common::get(p.addr, "/static/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(
        css.body,
        std::fs::read(repo.join("examples/static/style.css")).unwrap()
    );
    assert_eq!(css.header("content-type"), Some("text/css"));
    // The route's header, not Flask's own static handler's (`no-cache`).
    assert_eq!(css.header("cache-control"), Some("public, max-age=3600"));
    let page = common::get(p.addr, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().starts_with("hello from pid"), "{}", page.text());
    let miss = common::get(p.addr, "/static/nothing.css").await;
    assert_eq!(miss.status, StatusCode::NOT_FOUND);
    assert_eq!(
        miss.header("proxyd-error"),
        None,
        "the app's 404, not proxyd's"
    );
    p.signal("TERM");
    assert_eq!(p.wait_exit(), Some(0));
}
