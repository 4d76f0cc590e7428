//! Access logs end to end: known requests through proxyd, then every format read back and
//! checked field by field; the healthd file per UTC hour; SIGUSR1 reopening moved files; the
//! config's errors.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{full, get, raw, Got, ProxydProcess, TestBackend, TestProxy, H1};
use http::Request;
use regex::Regex;

/// A request the test sends, and what came back.
struct Sent {
    method: &'static str,
    target: &'static str,
    xff: Option<&'static str>,
    ua: Option<&'static str>,
    referer: Option<&'static str>,
    got: Got,
}

impl Sent {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// Polls `path` until it holds `n` lines (the writer flushes on its own thread).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            assert_eq!(lines.len(), n, "{}: {text}", path.display());
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{}: never held {n} lines: {:?}",
        path.display(),
        std::fs::read_to_string(path)
    );
}

/// `YYYY-MM-DD-HH` of `t`'s UTC hour, from humantime (independent of proxyd's date code).
fn hour_name(t: SystemTime) -> String {
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}-{}", &rfc[..10], &rfc[11..13])
}

fn epoch_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// An address nothing listens on.
async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn send(client: &mut H1, mut s: Sent, body: &'static str) -> Sent {
    let mut req = Request::builder()
        .method(s.method)
        .uri(s.target)
        .header("host", "logs.test");
    for (name, value) in [
        ("x-forwarded-for", s.xff),
        ("user-agent", s.ua),
        ("referer", s.referer),
    ] {
        if let Some(v) = value {
            req = req.header(name, v);
        }
    }
    s.got = client.send(req.body(full(body)).unwrap()).await;
    s
}

fn sent(method: &'static str, target: &'static str) -> Sent {
    Sent {
        method,
        target,
        xff: None,
        ua: None,
        referer: None,
        got: Got {
            status: http::StatusCode::IM_A_TEAPOT,
            version: http::Version::HTTP_11,
            headers: Default::default(),
            body: Default::default(),
            trailers: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_json_and_healthd_field_by_field() {
    let app = TestBackend::echo().await;
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n\
         upstreams:\n  app:\n    servers: [\"{}\"]\n  dead:\n    servers: [\"{dead}\"]\n\
         routes:\n  - {{ path: \"/app/\", upstream: app }}\n  - {{ path: \"/dead/\", upstream: dead }}\n\
         access_log:\n  - {{ format: combined, path: \"{d}/access.log\" }}\n\
         \x20 - {{ format: json, path: \"{d}/access.json\" }}\n\
         \x20 - {{ format: healthd, path: \"{d}/healthd/application.log\" }}\n",
        app.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let mut client = H1::connect(proxy.addr).await;

    let start = SystemTime::now();
    let mut reqs = Vec::new();
    let mut first = sent("GET", "/app/hello?x=1&y=two");
    first.xff = Some("177.72.242.17");
    first.ua = Some("test-agent/1.0 \"quoted\"");
    first.referer = Some("http://ref.example/page");
    reqs.push(send(&mut client, first, "").await);
    reqs.push(send(&mut client, sent("POST", "/app/submit"), "hello body").await);
    reqs.push(send(&mut client, sent("GET", "/nowhere?q=1"), "").await);
    reqs.push(send(&mut client, sent("GET", "/dead/x"), "").await);
    let statuses: Vec<u16> = reqs.iter().map(|r| r.got.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 404, 502]);
    assert_eq!(reqs[1].got.text(), "hello body");

    let combined = wait_lines(&dir.path().join("access.log"), 4);
    let json = wait_lines(&dir.path().join("access.json"), 4);
    // Every line is in a file by now, so each was logged before this instant.
    let mut healthd = Vec::new();
    let mut files = Vec::new();
    for _ in 0..500 {
        files = std::fs::read_dir(dir.path().join("healthd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        healthd = files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(dir.path().join("healthd").join(f))
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        if healthd.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = SystemTime::now();
    assert_eq!(healthd.len(), 4, "{healthd:?}");
    let names = [
        format!("application.log.{}", hour_name(start)),
        format!("application.log.{}", hour_name(end)),
    ];
    assert!(
        files.iter().all(|f| names.contains(f)),
        "{files:?} not in {names:?}"
    );

    check_combined(&reqs, &combined, start, end);
    check_json(&reqs, &json, start, end, app.addr, dead);
    check_healthd(&reqs, &healthd, start, end);
    proxy.shutdown().await;
}

/// A raw response's status, `proxyd-error` and body length.
fn raw_parts(resp: &str) -> (&str, String, usize) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let error = head
        .lines()
        .find_map(|l| l.strip_prefix("proxyd-error: "))
        .unwrap_or_default()
        .to_string();
    (&resp[9..12], error, body.len())
}

/// The value of the one `name` sample carrying every label of `labels`, if there is one.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A request head proxyd refuses before any route runs (malformed, or too slow to arrive) is
/// answered by the server itself; it is logged and counted like every other request, with
/// what nginx logs for a bad request: the request line as far as it was read.
#[tokio::test(flavor = "multi_thread")]
async fn refused_request_heads_are_logged_and_counted() {
    let app = TestBackend::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\n\
         admin: {{ addr: \"127.0.0.1:0\" }}\n\
         timeouts: {{ client_header: \"300ms\" }}\n\
         upstreams:\n  app:\n    servers: [\"{}\"]\n\
         access_log:\n  - {{ format: combined, path: \"{d}/access.log\" }}\n\
         \x20 - {{ format: json, path: \"{d}/access.json\" }}\n",
        app.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let admin = proxy.admin.unwrap();
    let start = SystemTime::now();

    // A space in a header name.
    let bad_name = raw(
        proxy.addr,
        b"GET /space?in=name HTTP/1.1\r\nHost: logs.test\r\nBad Header: 1\r\n\r\n",
    )
    .await;
    // Not HTTP at all (a TLS hello on a plain port, say).
    let garbage = raw(proxy.addr, b"\x16\x03\x01\x00\x05hello\r\n\r\n").await;
    // Half a head, then nothing.
    let slow = raw(proxy.addr, b"GET /slow HTTP/1.1\r\nHost: logs.test\r\n").await;
    // Refused after the head was parsed whole (the Host rules): still logged with its line.
    let no_host = raw(proxy.addr, b"DELETE /nohost HTTP/1.1\r\n\r\n").await;
    let (bad_name, garbage, slow) = (raw_parts(&bad_name), raw_parts(&garbage), raw_parts(&slow));
    let no_host = raw_parts(&no_host);
    assert_eq!(no_host.0, "400", "{no_host:?}");
    assert_eq!(bad_name.0, "400", "{bad_name:?}");
    assert_eq!(garbage.0, "400", "{garbage:?}");
    assert_eq!(slow.0, "408", "{slow:?}");
    assert!(!bad_name.1.is_empty() && !garbage.1.is_empty() && !slow.1.is_empty());
    assert_eq!(no_host.1, "missing-host");
    assert_eq!(app.request_count(), 0);

    let combined = wait_lines(&dir.path().join("access.log"), 4);
    let json = wait_lines(&dir.path().join("access.json"), 4);
    let end = SystemTime::now();
    let expected = [
        (r#""GET /space?in=name HTTP/1.1" 400"#, &bad_name),
        (r#""- \x16\x03\x01\x00\x05hello HTTP/1.1" 400"#, &garbage),
        (r#""GET /slow HTTP/1.1" 408"#, &slow),
        (r#""DELETE /nohost HTTP/1.1" 400"#, &no_host),
    ];
    for (request, (_, _, body)) in expected {
        let line = combined
            .iter()
            .find(|l| l.contains(request))
            .unwrap_or_else(|| panic!("no {request} in {combined:#?}"));
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.ends_with(&format!("{request} {body} \"-\" \"-\"")),
            "{line}"
        );
    }
    let mut by_target: HashMap<String, serde_json::Value> = json
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["target"].as_str().unwrap().to_string(), v)
        })
        .collect();
    for (target, method, (status, error, body)) in [
        ("/space?in=name", "GET", &bad_name),
        ("\u{16}\u{3}\u{1}\u{0}\u{5}hello", "-", &garbage),
        ("/slow", "GET", &slow),
        ("/nohost", "DELETE", &no_host),
    ] {
        let v = by_target
            .remove(target)
            .unwrap_or_else(|| panic!("no {target:?} in {json:#?}"));
        assert_eq!(v["method"], method);
        assert_eq!(v["status"].as_u64().unwrap().to_string(), *status);
        assert_eq!(v["error"], error.as_str());
        assert_eq!(v["bytes"], *body as u64);
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        let t = humantime::parse_rfc3339(v["time"].as_str().unwrap()).unwrap();
        assert!(epoch_ms(start) <= epoch_ms(t) + 1 && t <= end, "{v}");
    }

    // Counted under no route and no upstream, by method and code.
    let wanted = [
        ("GET", "400"),
        ("OTHER", "400"),
        ("GET", "408"),
        ("DELETE", "400"),
    ];
    let mut scrape = String::new();
    for _ in 0..500 {
        scrape = get(admin, "/metrics").await.text();
        if wanted.iter().all(|(m, c)| {
            sample(
                &scrape,
                "proxyd_requests_total",
                &[
                    ("route", "-"),
                    ("upstream", "-"),
                    ("method", m),
                    ("code", c),
                ],
            ) == Some(1.0)
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (method, code) in wanted {
        let labels = [("method", method), ("code", code), ("status_class", "4xx")];
        assert_eq!(
            sample(&scrape, "proxyd_requests_total", &labels),
            Some(1.0),
            "{method} {code}:\n{scrape}"
        );
    }
    proxy.shutdown().await;
}

fn check_combined(reqs: &[Sent], lines: &[String], start: SystemTime, end: SystemTime) {
    let re = Regex::new(
        r#"^(\S+) - - \[(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) \+0000\] "(\S+) (\S+) (HTTP/1\.1)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$"#,
    )
    .unwrap();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let by_target: HashMap<String, regex::Captures> = lines
        .iter()
        .map(|l| {
            let c = re
                .captures(l)
                .unwrap_or_else(|| panic!("not combined: {l}"));
            (c[9].to_string(), c)
        })
        .collect();
    for r in reqs {
        let c = &by_target[r.target];
        assert_eq!(&c[1], "127.0.0.1");
        let month = MONTHS.iter().position(|m| *m == &c[3]).unwrap() + 1;
        let t = humantime::parse_rfc3339(&format!(
            "{}-{month:02}-{}T{}:{}:{}Z",
            &c[4], &c[2], &c[5], &c[6], &c[7]
        ))
        .unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(
            epoch_ms(start) / 1000 <= secs as u128 && secs as u128 <= epoch_ms(end) / 1000,
            "{t:?} outside the test"
        );
        assert_eq!(&c[8], r.method);
        assert_eq!(&c[11], r.got.status.as_str());
        assert_eq!(c[12].parse::<usize>().unwrap(), r.got.body.len());
        assert_eq!(&c[13], r.referer.unwrap_or("-"));
        let ua = r.ua.map(|u| u.replace('"', "\\x22"));
        assert_eq!(&c[14], ua.as_deref().unwrap_or("-"));
    }
}

fn check_json(
    reqs: &[Sent],
    lines: &[String],
    start: SystemTime,
    end: SystemTime,
    app: SocketAddr,
    dead: SocketAddr,
) {
    let by_target: HashMap<String, serde_json::Value> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["target"].as_str().unwrap().to_string(), v)
        })
        .collect();
    for r in reqs {
        let v = &by_target[r.target];
        let t = humantime::parse_rfc3339(v["time"].as_str().unwrap()).unwrap();
        assert!(
            start - Duration::from_millis(1) <= t && t <= end,
            "{v}: outside the test"
        );
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["method"], r.method);
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], r.got.status.as_u16());
        assert_eq!(v["bytes"], r.got.body.len());
        let total = v["duration_ms"].as_f64().unwrap();
        assert!((0.0..10_000.0).contains(&total), "{v}");
        assert!(v["queue_ms"].as_f64().unwrap() >= 0.0, "{v}");
        assert!(v["retries"].is_u64(), "{v}");
        assert_eq!(v["host"], "logs.test");
        assert_eq!(v["request_id"], r.got.header("x-request-id").unwrap());
        assert_eq!(v["error"].as_str(), r.got.header("proxyd-error"), "{v}");
        assert_eq!(v["user_agent"].as_str(), r.ua);
        assert_eq!(v["referer"].as_str(), r.referer);
        assert_eq!(v["forwarded_for"].as_str(), r.xff);
        let (upstream, addr, timed) = match r.path() {
            p if p.starts_with("/app/") => (Some("app"), Some(app.to_string()), true),
            p if p.starts_with("/dead/") => (Some("dead"), Some(dead.to_string()), false),
            _ => (None, None, false),
        };
        assert_eq!(v["upstream"].as_str(), upstream, "{v}");
        assert_eq!(v["upstream_addr"].as_str(), addr.as_deref(), "{v}");
        match v["upstream_time_ms"].as_f64() {
            Some(ms) => assert!(timed && ms >= 0.0 && ms <= total, "{v}"),
            None => assert!(!timed, "{v}"),
        }
    }
    assert_eq!(by_target["/dead/x"]["error"], "upstream-connect-refused");
    assert_eq!(by_target["/nowhere?q=1"]["error"], "no-route");
    assert!(by_target["/app/submit"]["error"].is_null());
}

fn check_healthd(reqs: &[Sent], lines: &[String], start: SystemTime, end: SystemTime) {
    let secs3 = Regex::new(r"^\d+\.\d{3}$").unwrap();
    let by_uri: HashMap<&str, Vec<&str>> = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('"').collect();
            assert_eq!(f.len(), 6, "healthd needs 6 fields: {l}");
            (f[1], f)
        })
        .collect();
    assert_eq!(by_uri.len(), 4, "{lines:?}");
    for r in reqs {
        let f = &by_uri[r.path()];
        assert!(secs3.is_match(f[0]), "msec: {f:?}");
        let ms: u128 = f[0].replace('.', "").parse().unwrap();
        assert!(
            epoch_ms(start) <= ms && ms <= epoch_ms(end),
            "{ms} outside {start:?}..{end:?}"
        );
        assert_eq!(f[2], r.got.status.as_str());
        assert!(secs3.is_match(f[3]), "request_time: {f:?}");
        let request_time: f64 = f[3].parse().unwrap();
        assert!(request_time <= (end.duration_since(start).unwrap().as_secs_f64() + 0.001));
        if r.path().starts_with("/app/") {
            assert!(secs3.is_match(f[4]), "upstream time: {f:?}");
            assert!(f[4].parse::<f64>().unwrap() <= request_time, "{f:?}");
        } else {
            assert_eq!(f[4], "-", "no upstream response: {f:?}");
        }
        assert_eq!(f[5], r.xff.unwrap_or("-"));
    }
}

#[test]
fn sigusr1_reopens_moved_files() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(TestBackend::echo());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    // Relative paths: resolved against the config file's directory.
    std::fs::write(
        &config,
        format!(
            "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{}\"]\n\
             access_log:\n  - {{ format: combined, path: logs/access.log }}\n\
             \x20 - {{ format: healthd, path: healthd/application.log }}\n",
            app.addr
        ),
    )
    .unwrap();
    let proxy = ProxydProcess::start_file(&config);
    let log = dir.path().join("logs/access.log");
    let healthd_dir = dir.path().join("healthd");
    let get = |path: &'static str| {
        rt.block_on(async {
            let got = common::get(proxy.addr, path).await;
            assert_eq!(got.status, 200);
        })
    };

    get("/one");
    assert!(wait_lines(&log, 1)[0].contains("\"GET /one HTTP/1.1\" 200"));
    let healthd_file = only_file(&healthd_dir);
    let moved = dir.path().join("logs/access.log.1");
    std::fs::rename(&log, &moved).unwrap();
    let healthd_moved = healthd_dir.join("moved-by-logrotate");
    std::fs::rename(&healthd_file, &healthd_moved).unwrap();
    // Until told, proxyd keeps writing to the file it has open (now moved).
    get("/two");
    assert!(wait_lines(&moved, 2)[1].contains("/two"));

    proxy.signal("USR1");
    for _ in 0..500 {
        if log.exists() && healthd_file.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.exists(), "SIGUSR1 did not recreate {}", log.display());
    get("/three");
    assert!(wait_lines(&log, 1)[0].contains("\"GET /three HTTP/1.1\" 200"));
    assert_eq!(
        wait_lines(&moved, 2).len(),
        2,
        "nothing more in the moved file"
    );
    // The healthd file is recreated too (unless the hour turned meanwhile: then a new one).
    let lines = wait_hourly(&healthd_dir, "/three");
    assert!(lines.ends_with("\"-"), "{lines}");
    let old = std::fs::read_to_string(&healthd_moved).unwrap();
    assert!(old.contains("\"/one\"") && old.contains("\"/two\"") && !old.contains("/three"));
}

/// The one healthd file in `dir` (waits for it: the writer opens it at startup).
fn only_file(dir: &Path) -> PathBuf {
    for _ in 0..500 {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if let [one] = files.as_slice() {
            if std::fs::read_to_string(one).unwrap().contains("/one") {
                return one.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no single healthd file in {}", dir.display());
}

/// The healthd line for `uri` in a current `application.log.*` file.
fn wait_hourly(dir: &Path, uri: &str) -> String {
    for _ in 0..500 {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("application.log.") {
                let text = std::fs::read_to_string(&p).unwrap();
                if let Some(l) = text.lines().find(|l| l.contains(&format!("\"{uri}\""))) {
                    return l.to_string();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no healthd line for {uri}");
}

#[test]
fn config_errors_name_the_place() {
    let base =
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"127.0.0.1:1\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let load = |extra: &str| {
        proxyd::config::load_str(&format!("{base}{extra}"), "t.yaml", dir.path().into())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let e = load("access_log:\n  - { format: json }\n").unwrap_err();
    assert!(
        e.starts_with("t.yaml:7:15: access_log: path: needed"),
        "{e}"
    );
    let e = load("access_log:\n  - { format: apache, path: a.log }\n").unwrap_err();
    assert!(e.starts_with("t.yaml:7:"), "{e}");
    let e = load("access_log:\n  - { format: json, path: a.log, level: x }\n").unwrap_err();
    assert!(e.contains("unknown field `level`"), "{e}");
    std::fs::write(dir.path().join("file"), "").unwrap();
    let e = load("access_log:\n  - { format: combined, path: file/sub/a.log }\n").unwrap_err();
    assert!(
        e.starts_with("t.yaml:7:31: access_log:") && e.contains("is not a directory"),
        "{e}"
    );
    let e = load(
        "access_log:\n  - { format: json, path: a.log }\n  - { format: combined, path: a.log }\n",
    )
    .unwrap_err();
    assert!(e.contains("written by two logs"), "{e}");
    // A directory that does not exist yet is fine (created at startup); so is stderr.
    load("access_log:\n  - { format: json, path: new/dir/a.log }\n  - { format: healthd, path: \"-\" }\n")
        .unwrap();
    assert!(
        !dir.path().join("new").exists(),
        "validation creates nothing"
    );
    // `proxyd check` says the same, with the config file's name.
    let (ok, out) = common::check(&format!("{base}access_log:\n  - {{ format: combined }}\n"));
    assert!(
        !ok && out.contains("proxy.yaml:7:") && out.contains("access_log"),
        "{out}"
    );
}
