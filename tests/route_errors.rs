//! Error pages, `intercept_errors` and the maintenance switch (issue 19), over real sockets:
//! the page for every error status proxyd makes (with its `proxyd-error` kept), a route's own
//! pages, an intercepted upstream error (and what is not intercepted), keep-alive after one,
//! the maintenance switch by the admin API and by a file under load, and `proxyd check`'s
//! errors for a page file.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The statuses with a top-level page in these tests.
const PAGED: [u16; 12] = [400, 401, 403, 404, 405, 408, 413, 429, 431, 502, 503, 504];

fn page(status: u16) -> String {
    format!("<h1>page {status}</h1>\n")
}

/// A directory with a page per status in `PAGED`, a route's own 413, a maintenance page,
/// and an empty static root.
fn page_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for s in PAGED {
        std::fs::write(dir.path().join(format!("{s}.html")), page(s)).unwrap();
    }
    std::fs::write(dir.path().join("own413.html"), "<h1>own 413</h1>\n").unwrap();
    std::fs::write(dir.path().join("maint.html"), "<h1>back soon</h1>\n").unwrap();
    std::fs::create_dir(dir.path().join("static")).unwrap();
    // One user (ann, password "pw", Apache's MD5).
    std::fs::write(
        dir.path().join("htpasswd"),
        "ann:$apr1$salt$dIQSC7CZVMfwYUarWFsjy0\n",
    )
    .unwrap();
    dir
}

/// An address nothing listens on.
async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A backend answering with the status its path ends with (`/x/502` → 502), a body saying
/// it is the upstream's, and a Retry-After on a 503.
async fn status_backend() -> TestBackend {
    TestBackend::start(|seen| {
        let code = seen
            .uri
            .path()
            .rsplit('/')
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(200);
        let mut resp = Response::new(full("the upstream's own body\n"));
        *resp.status_mut() = StatusCode::from_u16(code).unwrap();
        if code == 503 {
            resp.headers_mut()
                .insert("retry-after", "7".parse().unwrap());
        }
        resp
    })
    .await
}

struct Setup {
    proxy: TestProxy,
    ok: TestBackend,
    upstream: TestBackend,
    hang: RawBackend,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = page_dir();
    let d = dir.path().display();
    let ok = TestBackend::echo().await;
    let upstream = status_backend().await;
    // Never answers: the held request of a 1-slot upstream, and the time-out.
    let hang = RawBackend::start(b"").await;
    let dead = refused_addr().await;
    let pages: Vec<String> = PAGED.iter().map(|s| format!("{s}: {d}/{s}.html")).collect();
    let (ok_addr, hang_addr, up_addr) = (ok.addr, hang.addr, upstream.addr);
    let lines = [
        "listen:".to_string(),
        "  - addr: \"127.0.0.1:0\"".into(),
        "admin: { addr: \"127.0.0.1:0\" }".into(),
        "limits: { max_body: 1KiB, buffer_body: 1KiB, max_header_bytes: 8KiB }".into(),
        "timeouts: { client_header: 300ms }".into(),
        format!("error_pages: {{ {} }}", pages.join(", ")),
        format!(
            "maintenance: {{ file: {d}/maintenance-on, page: {d}/maint.html, retry_after: 120s }}"
        ),
        "upstreams:".into(),
        format!("  ok: {{ servers: [\"{ok_addr}\"] }}"),
        format!("  dead: {{ servers: [\"{dead}\"] }}"),
        format!("  held: {{ servers: [\"{hang_addr}\"], concurrency: 1, queue: {{ max: 0 }} }}"),
        format!("  slow: {{ servers: [\"{hang_addr}\"], response_timeout: 300ms }}"),
        format!("  statuses: {{ servers: [\"{up_addr}\"] }}"),
        "routes:".into(),
        "  - { path: /ok/, upstream: ok }".into(),
        "  - { path: /dead/, upstream: dead }".into(),
        "  - { path: /held/, upstream: held }".into(),
        "  - { path: /slow/, upstream: slow }".into(),
        "  - { path: /rate/, upstream: ok, rate: { limit: 1/h, burst: 1 } }".into(),
        format!("  - {{ path: /static/, static: {{ root: {d}/static }} }}"),
        format!("  - {{ path: /own/, upstream: ok, error_pages: {{ 413: {d}/own413.html }} }}"),
        "  - { path: /intercept/, upstream: statuses, intercept_errors: true }".into(),
        "  - { path: /plain/, upstream: statuses }".into(),
        "  - { path: /maint/, upstream: ok, maintenance: true }".into(),
        "  - { path: /denied/, upstream: ok, deny: [\"127.0.0.0/8\"] }".into(),
        format!("  - {{ path: /private/, upstream: ok, basic_auth: {{ htpasswd: {d}/htpasswd, realm: staff }} }}"),
        "  - { path: /only-get/, upstream: ok, methods: [GET] }".into(),
    ];
    let yaml = lines.join("\n") + "\n";
    let proxy = TestProxy::from_yaml(&yaml).await;
    Setup {
        proxy,
        ok,
        upstream,
        hang,
        dir,
    }
}

/// The status line's code, a header's value and the body of a raw HTTP/1.1 answer.
fn parse_raw(text: &str) -> (u16, String, String) {
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (code, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn every_error_proxyd_makes_has_its_page_and_keeps_its_headers() {
    let s = setup().await;
    let addr = s.proxy.addr;

    // Answered in the pipeline: (what, the response, its status, its proxyd-error).
    let mut cases: Vec<(&str, Got, u16, &str)> = Vec::new();
    cases.push(("no route", get(addr, "/nowhere").await, 404, "no-route"));
    cases.push((
        "method on a static route",
        post(addr, "/static/a", "x").await,
        405,
        "method-not-allowed",
    ));
    cases.push((
        "method a route does not take",
        post(addr, "/only-get/", "x").await,
        405,
        "method-not-allowed",
    ));
    cases.push((
        "client address denied",
        get(addr, "/denied/").await,
        403,
        "forbidden",
    ));
    cases.push((
        "no credentials",
        get(addr, "/private/").await,
        401,
        "unauthorized",
    ));
    let big = "x".repeat(2048).leak();
    cases.push((
        "body too large",
        post(addr, "/ok/", big).await,
        413,
        "body-too-large",
    ));
    assert_eq!(get(addr, "/rate/").await.status, StatusCode::OK);
    cases.push((
        "rate limited",
        get(addr, "/rate/").await,
        429,
        "rate-limited",
    ));
    cases.push((
        "upstream refused",
        get(addr, "/dead/").await,
        502,
        "upstream-connect-refused",
    ));
    cases.push((
        "upstream time-out",
        get(addr, "/slow/").await,
        504,
        "upstream-response-timeout",
    ));
    // One request holds the 1-slot upstream, which has no queue: the next is refused.
    let held = tokio::spawn(get(addr, "/held/"));
    while s.hang.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut queue_full = get(addr, "/held/").await;
    // The time-out request above may still hold the hanging backend's other connection:
    // the held upstream's own slot is what refuses here.
    while queue_full.header("proxyd-error") != Some("queue-full") {
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue_full = get(addr, "/held/").await;
    }
    cases.push(("queue full", queue_full, 503, "queue-full"));
    held.abort();

    for (what, got, status, code) in &cases {
        assert_eq!(got.status.as_u16(), *status, "{what}: {}", got.text());
        assert_eq!(got.header("proxyd-error"), Some(*code), "{what}");
        assert_eq!(got.text(), page(*status), "{what}: the page");
        assert_eq!(
            got.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{what}"
        );
        assert!(got.header("x-request-id").is_some(), "{what}");
    }
    let by = |what: &str| &cases.iter().find(|c| c.0 == what).unwrap().1;
    assert_eq!(
        by("method on a static route").header("allow"),
        Some("GET, HEAD")
    );
    assert_eq!(
        by("method a route does not take").header("allow"),
        Some("GET, HEAD")
    );
    assert_eq!(
        by("no credentials").header("www-authenticate"),
        Some("Basic realm=\"staff\"")
    );
    assert!(by("rate limited").header("retry-after").is_some());
    assert_eq!(by("queue full").header("retry-after"), Some("1"));
    assert_eq!(by("body too large").header("connection"), Some("close"));

    // Refused below the pipeline (raw heads): the top level's pages too.
    let huge = format!(
        "GET /ok/ HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(9000)
    );
    let raw_cases: [(&str, String, u16); 3] = [
        ("headers too large", raw(addr, huge.as_bytes()).await, 431),
        (
            "smuggling attempt",
            raw(
                addr,
                b"POST /ok/ HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await,
            400,
        ),
        (
            "head too slow",
            raw_slow_head(addr).await,
            408,
        ),
    ];
    for (what, text, status) in raw_cases {
        let (code, head, body) = parse_raw(&text);
        assert_eq!(code, status, "{what}: {text}");
        assert!(head.contains("proxyd-error: "), "{what}: {text}");
        assert!(head.contains("connection: close"), "{what}: {text}");
        assert!(head.contains("content-type: text/html"), "{what}: {text}");
        assert_eq!(body, page(status), "{what}");
    }
    // Nothing of the refused requests reached a backend.
    assert!(s.ok.requests().iter().all(|r| r.uri.path() == "/rate/"));
}

/// A request head that never ends: proxyd answers 408 once `client_header` has passed.
async fn raw_slow_head(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /ok/ HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    read_until_close(&mut stream).await
}

#[tokio::test]
async fn a_routes_own_page_is_over_the_top_levels() {
    let s = setup().await;
    let big = "x".repeat(2048).leak();
    let got = post(s.proxy.addr, "/own/", big).await;
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(got.header("proxyd-error"), Some("body-too-large"));
    assert_eq!(got.text(), "<h1>own 413</h1>\n");
    // Its other statuses fall back to the top level's pages.
    let got = post(s.proxy.addr, "/ok/", big).await;
    assert_eq!(got.text(), page(413));
}

#[tokio::test]
async fn intercepted_upstream_errors_get_the_page_and_keep_their_status() {
    let s = setup().await;
    let addr = s.proxy.addr;
    // (path, status, proxyd-error, body)
    let table: [(&str, u16, Option<&str>, String); 6] = [
        ("/intercept/502", 502, Some("upstream-status"), page(502)),
        ("/intercept/404", 404, Some("upstream-status"), page(404)),
        // No page for 500: it passes untouched.
        (
            "/intercept/500",
            500,
            None,
            "the upstream's own body\n".into(),
        ),
        (
            "/intercept/200",
            200,
            None,
            "the upstream's own body\n".into(),
        ),
        // Not asked on this route: untouched.
        ("/plain/404", 404, None, "the upstream's own body\n".into()),
        ("/plain/502", 502, None, "the upstream's own body\n".into()),
    ];
    for (path, status, code, body) in &table {
        let got = get(addr, path).await;
        assert_eq!(got.status.as_u16(), *status, "{path}");
        assert_eq!(got.header("proxyd-error"), *code, "{path}");
        assert_eq!(&got.text(), body, "{path}");
    }
    // The upstream's Retry-After stays with its 503.
    let got = get(addr, "/intercept/503").await;
    assert_eq!(
        (got.status.as_u16(), got.header("retry-after")),
        (503, Some("7"))
    );
    assert_eq!(got.text(), page(503));
    assert_eq!(s.upstream.request_count(), table.len() + 1);
}

#[tokio::test]
async fn keep_alive_goes_on_after_an_intercepted_answer() {
    let s = setup().await;
    let mut client = H1::connect(s.proxy.addr).await;
    // The client's connection stays, and the backend's goes back to the pool once its
    // discarded body has been read: a later request comes on the first connection again.
    let mut reused = false;
    for _ in 0..100 {
        let got = client.get("/intercept/502").await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
        assert_eq!(got.text(), page(502));
        let seen = s.upstream.requests();
        if seen.len() > 1 && seen.last().unwrap().conn == 0 {
            reused = true;
            break;
        }
    }
    assert!(reused, "the upstream connection was never reused");
    let got = client.get("/ok/x").await;
    assert_eq!(got.status, StatusCode::OK);
}

/// Requests on `/ok/` from `clients` keep-alive connections until `stop`: (sent, failed).
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut client = H1::connect(addr).await;
                let (mut sent, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let got = client.get("/ok/load").await;
                    sent += 1;
                    if got.status != StatusCode::OK {
                        failed += 1;
                    }
                }
                (sent, failed)
            })
        })
        .collect()
}

/// Polls `/maint/x` until its status is `want` (30 s at most).
async fn maint_until(addr: SocketAddr, want: StatusCode) -> Got {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(addr, "/maint/x").await;
        if got.status == want {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {want}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_maintained(got: &Got) {
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.header("proxyd-error"), Some("maintenance"));
    assert_eq!(got.header("retry-after"), Some("120"));
    assert_eq!(got.text(), "<h1>back soon</h1>\n");
}

#[tokio::test]
async fn maintenance_by_the_admin_api_and_by_a_file_under_load() {
    let s = setup().await;
    let addr = s.proxy.addr;
    let admin = s.proxy.admin.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let loaders = load(addr, 4, stop.clone());
    let before = s.ok.request_count();

    // The admin API.
    assert_eq!(get(addr, "/maint/x").await.status, StatusCode::OK);
    let on = common::admin_post(admin, "/maintenance/on").await;
    assert_eq!(
        (on.status, on.text().as_str()),
        (StatusCode::OK, "maintenance: on\n")
    );
    assert_maintained(&get(addr, "/maint/x").await);
    let st = status(admin).await;
    assert_eq!(st["maintenance"]["on"], true);
    assert_eq!(st["maintenance"]["by_api"], true);
    assert_eq!(st["maintenance"]["routes"], serde_json::json!(["/maint/"]));
    let metrics = get(admin, "/metrics").await.text();
    assert!(metrics.contains("\nproxyd_maintenance 1\n"), "{metrics}");
    // A reload keeps it on.
    let reload = common::admin_post(admin, "/reload").await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
    assert_maintained(&get(addr, "/maint/x").await);
    let off = common::admin_post(admin, "/maintenance/off").await;
    assert_eq!(off.text(), "maintenance: off\n");
    assert_eq!(get(addr, "/maint/x").await.status, StatusCode::OK);

    // The file.
    let flag = s.dir.path().join("maintenance-on");
    std::fs::write(&flag, "").unwrap();
    assert_maintained(&maint_until(addr, StatusCode::SERVICE_UNAVAILABLE).await);
    let st = status(admin).await;
    assert_eq!(st["maintenance"]["by_file"], true);
    // The API's off leaves the file's on.
    let off = common::admin_post(admin, "/maintenance/off").await;
    assert!(
        off.text().starts_with("maintenance: on\n"),
        "{}",
        off.text()
    );
    std::fs::remove_file(&flag).unwrap();
    let got = maint_until(addr, StatusCode::OK).await;
    assert_eq!(got.text(), "");

    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, 0);
    for l in loaders {
        let (s, f) = l.await.unwrap();
        sent += s;
        failed += f;
    }
    assert!(sent > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests on the other route failed"
    );
    assert!(s.ok.request_count() >= before + sent);
    let metrics = get(admin, "/metrics").await.text();
    assert!(metrics.contains("\nproxyd_maintenance 0\n"), "{metrics}");
}

#[tokio::test]
async fn the_admins_maintenance_posts_need_the_token() {
    let backend = TestBackend::echo().await;
    let yaml = yaml_to(
        &[backend.addr],
        "admin: { addr: \"127.0.0.1:0\", token: sekrit }\n",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    let refused = common::admin_post(admin, "/maintenance/on").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(proxy.addr, "/x").await.status, StatusCode::OK);
    let on = H1::connect(admin)
        .await
        .send(
            Request::post("/maintenance/on")
                .header("host", "admin")
                .header("authorization", "Bearer sekrit")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(on.status, StatusCode::OK);
    // No route says `maintenance: true`: the switch covers them all; no page: the text.
    let got = get(proxy.addr, "/x").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.header("proxyd-error"), Some("maintenance"));
    assert_eq!(got.header("retry-after"), Some("30"));
    assert!(got.text().contains("maintenance"), "{}", got.text());
}

/// `proxyd check` on `yaml` with `dir` holding its files: its output.
fn check_in(dir: &Path, yaml: &str) -> (bool, String) {
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    check_path(&path)
}

#[test]
fn check_names_the_key_of_a_bad_page() {
    let dir = page_dir();
    let base =
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n";
    let file = dir.path().join("proxy.yaml").display().to_string();
    let big = vec![b'x'; 1024 * 1024 + 1];
    std::fs::write(dir.path().join("big.html"), big).unwrap();
    // (yaml after base, where, what the message says)
    let table = [
        (
            "error_pages:\n  404: 404.html\n  502: missing.html\n",
            "8:3",
            "missing.html: cannot read the page",
        ),
        (
            "error_pages: { 418: 404.html }\n",
            "6:16",
            "418 is not a status proxyd answers with",
        ),
        (
            "error_pages:\n  503: big.html\n",
            "7:3",
            "larger than 1048576 bytes",
        ),
        (
            "routes:\n  - path: /\n    upstream: app\n    error_pages:\n      504: nope.html\n",
            "10:7",
            "nope.html: cannot read the page",
        ),
        (
            "maintenance: { page: gone.html }\n",
            "6:22",
            "gone.html: cannot read the page",
        ),
    ];
    for (extra, at, says) in table {
        let (ok, out) = check_in(dir.path(), &format!("{base}{extra}"));
        assert!(!ok, "{extra}: accepted");
        assert!(out.contains(&format!("{file}:{at}: ")), "{extra}: {out}");
        assert!(out.contains(says), "{extra}: {out}");
    }
    let good = format!("{base}error_pages: {{ 404: 404.html, 503: maint.html }}\n");
    let (ok, out) = check_in(dir.path(), &good);
    assert!(ok, "{out}");
}
