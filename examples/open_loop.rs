//! benches/origin.sh's open-loop load generator: GET `PATH` on 127.0.0.1:`PORT` at a fixed
//! rate for a fixed time, whatever the server's latency (wrk is closed-loop: a slow server
//! slows it down, so it cannot offer more than the server serves). Each request takes an idle
//! keep-alive connection or opens a new one; a request unanswered after `TIMEOUT` seconds is a
//! client time-out (its connection is dropped). Written in Rust because a Python generator
//! cannot offer thousands of requests per second on the two cores it shares with the workers.
//!
//! `cargo run --release --example open_loop -- PORT PATH RATE SECONDS TIMEOUT`
//!
//! Prints one line that origin.sh parses:
//!   RESULT sent=.. rps_offered=.. answered=.. statuses=200:n,503:n ok_per_s=.. window_s=..
//!          connect=.. reset=.. timeout=.. retry_after_503=.. p50_200_ms=.. p99_200_ms=..
//!          max_200_ms=.. p50_other_ms=.. p99_other_ms=..

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Empty<Bytes>>;

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    connect: u64,
    reset: u64,
    timeout: u64,
    retry_after_503: u64,
    ok_ms: Vec<f64>,
    other_ms: Vec<f64>,
    /// When the last 200 arrived, from the start.
    last_ok: Duration,
}

enum Outcome {
    Status {
        status: u16,
        retry_after: bool,
        ms: f64,
    },
    Connect,
    Reset,
    Timeout,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> f64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let port = arg(0) as u16;
    let path = args.get(1).cloned().unwrap_or_else(|| usage());
    let (rate, seconds, timeout) = (arg(2), arg(3), arg(4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run(
        port,
        path,
        rate,
        seconds,
        Duration::from_secs_f64(timeout),
    ));
}

fn usage() -> ! {
    eprintln!("usage: open_loop PORT PATH RATE SECONDS TIMEOUT");
    std::process::exit(2)
}

async fn run(port: u16, path: String, rate: f64, seconds: f64, timeout: Duration) {
    let idle: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let n = (rate * seconds) as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (idle, tally, path) = (idle.clone(), tally.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = match tokio::time::timeout(timeout, one(port, &path, &idle)).await {
                Ok(o) => o,
                Err(_) => Outcome::Timeout,
            };
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(outcome, Outcome::Status { status: 200, .. }) {
                t.last_ok = t.last_ok.max(start.elapsed());
            }
            match outcome {
                Outcome::Status {
                    status,
                    retry_after,
                    ms,
                } => {
                    *t.statuses.entry(status).or_default() += 1;
                    if status == 200 {
                        t.ok_ms.push(ms);
                    } else {
                        t.other_ms.push(ms);
                    }
                    if status == 503 && retry_after {
                        t.retry_after_503 += 1;
                    }
                }
                Outcome::Connect => t.connect += 1,
                Outcome::Reset => t.reset += 1,
                Outcome::Timeout => t.timeout += 1,
            }
        }));
    }
    let offered = n as f64 / start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let answered: u64 = t.statuses.values().sum();
    let statuses = t
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let ok = t.statuses.get(&200).copied().unwrap_or(0);
    // 200s per second over the time they took to come: the sending time, or longer when a
    // backlog kept answering after it.
    let window = t.last_ok.as_secs_f64().max(seconds);
    t.ok_ms.sort_by(f64::total_cmp);
    t.other_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 * p / 100.0) as usize).min(v.len() - 1)]
    };
    println!(
        "RESULT sent={n} rps_offered={offered:.1} answered={answered} statuses={} ok_per_s={:.1} window_s={window:.1} \
         connect={} reset={} timeout={} retry_after_503={} p50_200_ms={:.1} p99_200_ms={:.1} \
         max_200_ms={:.1} p50_other_ms={:.1} p99_other_ms={:.1}",
        if statuses.is_empty() { "none" } else { &statuses },
        ok as f64 / window,
        t.connect,
        t.reset,
        t.timeout,
        t.retry_after_503,
        pct(&t.ok_ms, 50.0),
        pct(&t.ok_ms, 99.0),
        t.ok_ms.last().copied().unwrap_or(0.0),
        pct(&t.other_ms, 50.0),
        pct(&t.other_ms, 99.0),
    );
}

/// One request on an idle connection (a stale one is dropped and the next tried) or a new one.
async fn one(port: u16, path: &str, idle: &Mutex<Vec<Sender>>) -> Outcome {
    let began = Instant::now();
    loop {
        let pooled = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (mut sender, reused) = match pooled {
            Some(s) if !s.is_closed() => (s, true),
            Some(_) => continue,
            None => match connect(port).await {
                Some(s) => (s, false),
                None => return Outcome::Connect,
            },
        };
        if sender.ready().await.is_err() {
            if reused {
                continue;
            }
            return Outcome::Reset;
        }
        let req = hyper::Request::get(path)
            .header("host", format!("127.0.0.1:{port}"))
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            // A reused connection the server had closed: as a browser does, once more on
            // a fresh one.
            Err(e) if reused && e.is_canceled() => continue,
            Err(_) if reused => continue,
            Err(_) => return Outcome::Reset,
        };
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        if resp.into_body().collect().await.is_err() {
            return Outcome::Reset;
        }
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        if !sender.is_closed() {
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
        }
        return Outcome::Status {
            status,
            retry_after,
            ms,
        };
    }
}

async fn connect(port: u16) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}
