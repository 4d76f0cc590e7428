//! Floods and slow clients: each is bounded by a configured time-out or limit, other clients
//! are served normally throughout (their success is counted, not timed), and memory stays
//! within a bound per connection.
//!
//! - slowloris: heads trickled a byte at a time get 408 once `timeouts.client_header` is
//!   over, however steadily the bytes come;
//! - slow bodies: 408 after `timeouts.client_body` without a byte, and they never hold a
//!   backend slot (bodies are read before a backend is picked);
//! - a client that stops reading a large unbuffered response is dropped after
//!   `timeouts.client_send`, freeing its backend slot;
//! - thousands of idle connections held open (10,000 where the fd limit allows) against the
//!   real binary, whose RSS per connection is printed and bounded;
//! - connection churn: thousands of connect/close cycles while a normal client is served.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The heavy tests (thousands of sockets) run one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sequential GETs on fresh connections until `done`; returns (attempts, successes).
async fn normal_client(addr: SocketAddr, done: Arc<AtomicBool>, at_least: usize) -> (usize, usize) {
    let (mut attempts, mut ok) = (0, 0);
    while attempts < at_least || !done.load(Ordering::Acquire) {
        attempts += 1;
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            let stream = TcpStream::connect(addr).await.ok()?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            let req = http::Request::get("/normal")
                .header("host", "test.local")
                .body(full(""))
                .ok()?;
            let resp = send.send_request(req).await.ok()?;
            let status = resp.status();
            resp.into_body().collect().await.ok()?;
            Some(status)
        })
        .await;
        if matches!(status, Ok(Some(s)) if s == 200) {
            ok += 1;
        }
    }
    (attempts, ok)
}

/// Reads until the peer closes (or errors); everything read.
async fn drain(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 20 s: {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slowloris_trickled_heads_get_408_while_others_are_served() {
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let proxy = TestProxy::to(&[backend.addr], "timeouts: { client_header: 600ms }\n").await;
    let done = Arc::new(AtomicBool::new(false));
    let normal = tokio::spawn(normal_client(proxy.addr, done.clone(), 20));

    let mut lorises = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        lorises.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (r, mut w) = stream.into_split();
            let closed = Arc::new(AtomicBool::new(false));
            let closed2 = closed.clone();
            // One byte every 40 ms: each gap is far below the time-out, the head never ends.
            let writer = tokio::spawn(async move {
                let head = format!("GET /loris{i} HTTP/1.1\r\nHost: a\r\nX-Slow: ");
                let bytes = head.bytes().chain(std::iter::repeat(b'a'));
                for b in bytes.take(2000) {
                    if closed2.load(Ordering::Acquire) || w.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            });
            let reply = drain(r).await;
            closed.store(true, Ordering::Release);
            let _ = writer.await;
            reply
        }));
    }
    for l in lorises {
        let reply = l.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
        assert!(
            reply.contains("proxyd-error: client-header-timeout"),
            "{reply}"
        );
    }
    done.store(true, Ordering::Release);
    let (attempts, ok) = normal.await.unwrap();
    println!("slowloris: normal client {ok}/{attempts} served during 50 trickled heads");
    assert_eq!(ok, attempts);
    assert!(backend.requests().iter().all(|r| r.uri.path() == "/normal"));
}

#[tokio::test]
async fn slow_bodies_get_408_and_hold_no_backend_slot() {
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    // One request at a time to the backend: a slow upload holding it would starve the rest.
    let yaml = yaml_to(&[backend.addr], "timeouts: { client_body: 500ms }\n")
        .replace("    servers:", "    concurrency: 1\n    servers:");
    let proxy = TestProxy::from_yaml(&yaml).await;
    let done = Arc::new(AtomicBool::new(false));
    let normal = tokio::spawn(normal_client(proxy.addr, done.clone(), 20));
    let mut slow = Vec::new();
    for _ in 0..30 {
        let addr = proxy.addr;
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
                .await
                .unwrap();
            // A few bytes, steadily, then nothing.
            for _ in 0..5 {
                s.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drain(s).await
        }));
    }
    for s in slow {
        let reply = s.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
        assert!(
            reply.contains("proxyd-error: client-body-timeout"),
            "{reply}"
        );
    }
    done.store(true, Ordering::Release);
    let (attempts, ok) = normal.await.unwrap();
    println!("slow bodies: normal client {ok}/{attempts} served during 30 stalled uploads");
    assert_eq!(ok, attempts);
    assert!(backend.requests().iter().all(|r| r.uri.path() == "/normal"));
}

/// A backend answering `/big` with 64 MiB and anything else with "small".
async fn big_backend() -> TestBackend {
    let big = Bytes::from(vec![b'x'; 64 * 1024 * 1024]);
    TestBackend::start(move |seen| {
        if seen.uri.path() == "/big" {
            http::Response::new(full(big.clone()))
        } else {
            http::Response::new(full("small"))
        }
    })
    .await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_frees_its_backend_slot() {
    let backend = big_backend().await;
    // servers: responses stream unbuffered, and the one slot is held while they do.
    let yaml = yaml_to(&[backend.addr], "timeouts: { client_send: 500ms }\n").replace(
        "    servers:",
        "    concurrency: 1\n    queue: { timeout: 60s }\n    servers:",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stuck = socket.connect(proxy.addr).await.unwrap();
    stuck
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stuck.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // It reads nothing more. Another client's request waits for the one slot, which the
    // stuck client gives up once its writes have made no progress for client_send.
    let other = get(proxy.addr, "/small").await;
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(other.text(), "small");
    // The stuck client's connection was closed short of the 64 MiB.
    let mut got = 12usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stuck.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the stuck connection is still open"),
        }
    }
    assert!(got < 64 * 1024 * 1024, "read {got} bytes");
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Raises this process's open-file limit to its hard limit (proxyd started from here
/// inherits it); returns the new soft limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The admin address from proxyd's "admin listening addr=Some(..)" line (polled).
async fn admin_addr(p: &ProxydProcess) -> SocketAddr {
    for _ in 0..500 {
        let lines = p.stderr_lines.lock().unwrap().clone();
        let found = lines.iter().find_map(|l| {
            let rest = l.split("admin listening").nth(1)?;
            let inner = rest.split("Some(").nth(1)?.split(')').next()?;
            inner.parse().ok()
        });
        if let Some(a) = found {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no admin address in proxyd's log");
}

async fn open_connections(admin: SocketAddr) -> Option<u64> {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("proxyd_client_connections_open "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn ten_thousand_idle_connections_cost_little_and_block_no_one() {
    let _one = HEAVY.lock().await;
    let limit = raise_nofile();
    // This process holds one end of each connection, proxyd (another process) the other.
    let n = 10_000usize.min(limit.saturating_sub(512) as usize);
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nadmin: {{ addr: \"127.0.0.1:0\" }}\nlimits: {{ max_connections: 20000 }}\ntimeouts: {{ client_header: 300s, keepalive: 300s }}\nthreads: 2\nupstreams:\n  app:\n    servers: [\"{}\"]\n",
        backend.addr
    );
    let proxyd = ProxydProcess::start(&yaml);
    let addr = proxyd.addr;
    let pid = proxyd.child.id();
    let admin = admin_addr(&proxyd).await;
    // Warm up (the first requests allocate what every later one reuses).
    for _ in 0..20 {
        assert_eq!(get(addr, "/").await.status, 200);
    }
    let before = rss(pid);

    // Half never send a byte; half send one request and then sit idle on keep-alive.
    let conns: Vec<TcpStream> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            }
            s
        })
        .buffer_unordered(256)
        .collect()
        .await;
    // proxyd has them all open (polled, bounded).
    let mut open = None;
    for _ in 0..600 {
        open = open_connections(admin).await;
        if open.is_some_and(|o| o >= n as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open.is_some_and(|o| o >= n as u64),
        "proxyd holds {open:?} of {n}"
    );

    // A normal client is served while they are all open.
    for i in 0..200 {
        let got = get(addr, "/").await;
        assert_eq!(got.status, 200, "request {i}");
    }
    let after = rss(pid);
    let per_conn = after.saturating_sub(before) / n as u64;
    println!(
        "idle connections: {n} held open; proxyd RSS {:.1} MiB -> {:.1} MiB, {per_conn} bytes ({:.1} KiB) per connection",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_conn as f64 / 1024.0
    );
    assert!(
        per_conn < 64 * 1024,
        "{per_conn} bytes per idle connection (bound: 64 KiB)"
    );
    assert!(
        n >= 2000 || limit < 3000,
        "only {n} connections with a limit of {limit}"
    );
    drop(conns);
    let lines = proxyd.stderr_lines.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:#?}");
}

#[tokio::test]
async fn connection_churn_leaves_normal_clients_served() {
    let _one = HEAVY.lock().await;
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let proxy = TestProxy::to(
        &[backend.addr],
        "admin: { addr: \"127.0.0.1:0\" }\ntimeouts: { client_header: 2s }\n",
    )
    .await;
    let admin = proxy.admin.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let normal = tokio::spawn(normal_client(proxy.addr, done.clone(), 50));

    let cycles = Arc::new(AtomicUsize::new(0));
    let churners: Vec<_> = (0..8)
        .map(|t| {
            let (addr, cycles) = (proxy.addr, cycles.clone());
            tokio::spawn(async move {
                for i in 0..500 {
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        continue;
                    };
                    match (t + i) % 4 {
                        // Connect and close at once.
                        0 => {}
                        // Half a head, then gone.
                        1 => {
                            let _ = s.write_all(b"GET /churn HTTP/1.1\r\nHo").await;
                        }
                        // A whole request, gone before the answer.
                        2 => {
                            let _ = s.write_all(b"GET /churn HTTP/1.1\r\nHost: a\r\n\r\n").await;
                        }
                        // A reset instead of a FIN.
                        _ => {
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        }
                    }
                    drop(s);
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in churners {
        c.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let (attempts, ok) = normal.await.unwrap();
    println!(
        "churn: {} connect/close cycles; normal client {ok}/{attempts} served",
        cycles.load(Ordering::Relaxed)
    );
    assert_eq!(ok, attempts);
    assert!(cycles.load(Ordering::Relaxed) >= 3900);
    // Nothing leaks: every churned connection is closed on proxyd's side too.
    let mut open = None;
    for _ in 0..500 {
        open = open_connections(admin).await;
        // The scrape's own connection goes to the admin listener, not counted here.
        if open == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, Some(0));
}
