//! Admission and balancing with real backends: per-backend concurrency, the FIFO queue and
//! its bounds, clients leaving the queue, the retry rules (a sent POST is never replayed),
//! the retry budget, passive ejection and failing open, hashing, weights, least outstanding.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A backend that holds every request until the test lets one through, and records the order
/// of arrival and the most requests it ever had at once.
struct Gated {
    addr: std::net::SocketAddr,
    order: Arc<Mutex<Vec<String>>>,
    max_in_flight: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Gated {
    async fn start() -> Gated {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (o, m, g) = (order.clone(), max_in_flight.clone(), gate.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (o, m, g, f) = (o.clone(), m.clone(), g.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (o, m, g, f) = (o.clone(), m.clone(), g.clone(), f.clone());
                            async move {
                                o.lock().unwrap().push(req.uri().path().to_string());
                                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                                m.fetch_max(now, Ordering::SeqCst);
                                g.acquire().await.unwrap().forget();
                                f.fetch_sub(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(Response::new(full(
                                    req.uri().path().to_string(),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Gated {
            addr,
            order,
            max_in_flight,
            gate,
        }
    }

    fn arrived(&self) -> Vec<String> {
        self.order.lock().unwrap().clone()
    }

    async fn wait_arrived(&self, n: usize) {
        for _ in 0..1000 {
            if self.arrived().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backend got {:?}, expected {n} requests", self.arrived());
    }
}

fn spawn_get(addr: std::net::SocketAddr, path: &'static str) -> tokio::task::JoinHandle<Got> {
    tokio::spawn(async move { get(addr, path).await })
}

#[tokio::test]
async fn concurrency_is_never_exceeded_and_the_queue_is_fifo() {
    let backend = Gated::start().await;
    let yaml =
        yaml_to(&[backend.addr], "").replace("    servers:", "    concurrency: 1\n    servers:");
    let proxy = TestProxy::from_yaml(&yaml).await;
    let first = spawn_get(proxy.addr, "/a");
    backend.wait_arrived(1).await;
    let mut rest = Vec::new();
    for (i, path) in ["/b", "/c", "/d"].into_iter().enumerate() {
        rest.push(spawn_get(proxy.addr, path));
        proxy.wait_queued("app", i + 1).await;
    }
    backend.gate.add_permits(4);
    assert_eq!(first.await.unwrap().text(), "/a");
    for (r, path) in rest.into_iter().zip(["/b", "/c", "/d"]) {
        let got = r.await.unwrap();
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, path));
    }
    assert_eq!(backend.arrived(), ["/a", "/b", "/c", "/d"], "FIFO");
    assert_eq!(backend.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(
        proxy.upstream("app").stats.queued.load(Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn full_queue_and_queue_timeout_answer_503_with_retry_after() {
    let backend = Gated::start().await;
    let yaml = yaml_to(&[backend.addr], "").replace(
        "    servers:",
        "    concurrency: 1\n    queue: { max: 1, timeout: 300ms }\n    servers:",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let held = spawn_get(proxy.addr, "/held");
    backend.wait_arrived(1).await;
    let queued = spawn_get(proxy.addr, "/queued");
    proxy.wait_queued("app", 1).await;

    let full = get(proxy.addr, "/overflow").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.header("proxyd-error"), Some("queue-full"));
    assert_eq!(full.header("retry-after"), Some("1"));

    let timed_out = queued.await.unwrap();
    assert_eq!(timed_out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(timed_out.header("proxyd-error"), Some("queue-timeout"));
    assert!(timed_out.header("retry-after").is_some());

    backend.gate.add_permits(1);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(
        backend.arrived(),
        ["/held"],
        "refused requests never reach the backend"
    );
    let stats = &proxy.upstream("app").stats;
    assert_eq!(stats.queue_full.load(Ordering::Relaxed), 1);
    assert_eq!(stats.queue_timeout.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_is_never_forwarded() {
    let backend = Gated::start().await;
    let yaml =
        yaml_to(&[backend.addr], "").replace("    servers:", "    concurrency: 1\n    servers:");
    let proxy = TestProxy::from_yaml(&yaml).await;
    let held = spawn_get(proxy.addr, "/held");
    backend.wait_arrived(1).await;

    let mut leaver = TcpStream::connect(proxy.addr).await.unwrap();
    leaver
        .write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    proxy.wait_queued("app", 1).await;
    drop(leaver);
    proxy.wait_queued("app", 0).await;

    backend.gate.add_permits(2);
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    let after = get(proxy.addr, "/after").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(backend.arrived(), ["/held", "/after"]);
}

/// A backend that reads each request head and closes without answering.
async fn closes_after_reading() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while find(&buf, b"\r\n\r\n").is_none() {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                // Dropping the socket closes it: the request got in, no answer came out.
            });
        }
    });
    (addr, seen)
}

fn round_robin(servers: &[std::net::SocketAddr], upstream_keys: &str) -> String {
    yaml_to(servers, "headers: { debug: true }\n").replace(
        "    servers:",
        &format!("    balance: round_robin\n{upstream_keys}    servers:"),
    )
}

#[tokio::test]
async fn a_sent_post_is_never_replayed_but_a_get_is() {
    let (bad, bad_seen) = closes_after_reading().await;
    let good = TestBackend::echo().await;
    // No ejection: the failing backend keeps its turns.
    let proxy = TestProxy::from_yaml(&round_robin(
        &[bad, good.addr],
        "    eject: { failures: 0 }\n",
    ))
    .await;

    let mut failed = 0;
    for i in 0..10 {
        let mut c = H1::connect(proxy.addr).await;
        let req = Request::post(format!("/post/{i}"))
            .header("host", "x")
            .body(full("data"))
            .unwrap();
        let got = c.send(req).await;
        match got.status {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => {
                assert_eq!(got.header("proxyd-error"), Some("upstream-closed-early"));
                failed += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        failed,
        bad_seen.load(Ordering::SeqCst),
        "each POST the bad backend took failed"
    );
    assert!(failed > 0);
    assert_eq!(
        good.request_count(),
        10 - failed,
        "no POST reached a second backend"
    );

    let before = good.request_count();
    for i in 0..10 {
        let got = get(proxy.addr, &format!("/get/{i}")).await;
        assert_eq!(got.status, StatusCode::OK, "GET {i} was not replayed");
    }
    assert_eq!(good.request_count() - before, 10);
    let stats = &proxy.upstream("app").stats;
    assert!(stats.retried_replayed.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_refused_connection_is_retried_for_any_method() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let good = TestBackend::echo().await;
    // No ejection, so the refusing backend keeps getting first tries.
    let proxy = TestProxy::from_yaml(&round_robin(
        &[refused, good.addr],
        "    eject: { failures: 0 }\n",
    ))
    .await;
    for i in 0..10 {
        let mut c = H1::connect(proxy.addr).await;
        let req = Request::post(format!("/p/{i}"))
            .header("host", "x")
            .body(full("x"))
            .unwrap();
        assert_eq!(c.send(req).await.status, StatusCode::OK, "POST {i}");
    }
    assert_eq!(good.request_count(), 10);
    assert!(
        proxy
            .upstream("app")
            .stats
            .retried_unsent
            .load(Ordering::Relaxed)
            >= 4
    );
}

#[tokio::test]
async fn the_retry_budget_bounds_retries() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let good = TestBackend::echo().await;
    let keys = "    eject: { failures: 0 }\n    retries: { budget: 0.0, min_per_second: 0 }\n";
    let proxy = TestProxy::from_yaml(&round_robin(&[refused, good.addr], keys)).await;
    let mut refused_answers = 0;
    for i in 0..10 {
        let got = get(proxy.addr, &format!("/g/{i}")).await;
        if got.status == StatusCode::BAD_GATEWAY {
            assert_eq!(got.header("proxyd-error"), Some("upstream-connect-refused"));
            refused_answers += 1;
        }
    }
    assert_eq!(refused_answers, 5, "with no budget, no retry");
    assert_eq!(
        proxy
            .upstream("app")
            .stats
            .retry_budget_exhausted
            .load(Ordering::Relaxed),
        5
    );
}

#[tokio::test]
async fn a_failing_backend_is_ejected_and_an_all_failing_upstream_fails_open() {
    let bad = TestBackend::start(|_| {
        let mut r = Response::new(full("broken"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let good = TestBackend::echo().await;
    let keys = "    eject: { failures: 2, base: 30s }\n";
    let proxy = TestProxy::from_yaml(&round_robin(&[bad.addr, good.addr], keys)).await;
    for _ in 0..20 {
        get(proxy.addr, "/").await;
    }
    assert_eq!(bad.request_count(), 2, "ejected after two 5xx in a row");
    assert_eq!(good.request_count(), 18);
    assert_eq!(
        proxy.upstream("app").stats.ejected.load(Ordering::Relaxed),
        1
    );

    // Only failing backends: proxyd still sends to the least bad, never "no live upstreams".
    let proxy = TestProxy::from_yaml(&round_robin(
        &[bad.addr],
        "    eject: { failures: 1, base: 30s }\n",
    ))
    .await;
    let before = bad.request_count();
    for _ in 0..5 {
        let got = get(proxy.addr, "/").await;
        assert_eq!(
            got.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the backend's own answer"
        );
    }
    assert_eq!(bad.request_count() - before, 5);
    assert!(
        proxy
            .upstream("app")
            .stats
            .failed_open
            .load(Ordering::Relaxed)
            >= 4
    );
}

#[tokio::test]
async fn hash_pins_each_key_to_one_backend() {
    let backends = [
        TestBackend::echo().await,
        TestBackend::echo().await,
        TestBackend::echo().await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let yaml = yaml_to(&addrs, "headers: { debug: true }\n").replace(
        "    servers:",
        "    balance: hash\n    hash_key: \"header:x-user\"\n    servers:",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let mut used = std::collections::HashSet::new();
    for user in 0..12 {
        let mut pinned = None;
        for _ in 0..4 {
            let mut c = H1::connect(proxy.addr).await;
            let req = Request::get("/")
                .header("host", "x")
                .header("x-user", format!("user-{user}"))
                .body(full(""))
                .unwrap();
            let got = c.send(req).await;
            let b = got.header("proxyd-backend").unwrap().to_string();
            assert!(pinned.get_or_insert(b.clone()) == &b, "user-{user} moved");
        }
        used.insert(pinned.unwrap());
    }
    assert!(used.len() >= 2, "keys spread over backends: {used:?}");
}

#[tokio::test]
async fn weights_split_round_robin_traffic() {
    let (a, b) = (TestBackend::echo().await, TestBackend::echo().await);
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    balance: round_robin\n    servers: [\"{} weight=3\", \"{}\"]\n",
        a.addr, b.addr
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    for _ in 0..40 {
        assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
    }
    assert_eq!((a.request_count(), b.request_count()), (30, 10));
}

#[tokio::test]
async fn least_outstanding_avoids_the_busy_backend() {
    let busy = Gated::start().await;
    let idle = TestBackend::echo().await;
    let proxy = TestProxy::to(&[busy.addr, idle.addr], "headers: { debug: true }\n").await;
    // Send until one request is held by the gated backend.
    let mut held = None;
    for _ in 0..4 {
        let h = spawn_get(proxy.addr, "/hold");
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if !busy.arrived().is_empty() || h.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !busy.arrived().is_empty() {
            held = Some(h);
            break;
        }
        h.await.unwrap();
    }
    let held = held.expect("a request reached the gated backend");
    let before = idle.request_count();
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        idle.request_count() - before,
        10,
        "all went to the idle backend"
    );
    busy.gate.add_permits(1);
    held.await.unwrap();
}

#[tokio::test]
async fn h2_stream_resets_free_their_backend_slot() {
    let backend = Gated::start().await;
    let yaml =
        yaml_to(&[backend.addr], "").replace("    servers:", "    concurrency: 1\n    servers:");
    let proxy = TestProxy::from_yaml(&yaml).await;
    let client = H2::connect(proxy.addr).await;

    // A stream that holds the only slot, and one that waits in the queue; both are reset.
    let mut c1 = client.clone();
    let holding = tokio::spawn(async move {
        c1.send(Request::get("http://x/held").body(full("")).unwrap())
            .await
    });
    backend.wait_arrived(1).await;
    let mut c2 = client.clone();
    let queued = tokio::spawn(async move {
        c2.send(Request::get("http://x/queued").body(full("")).unwrap())
            .await
    });
    proxy.wait_queued("app", 1).await;
    holding.abort();
    queued.abort();
    // The queued reset leaves the queue; the held one's slot is freed when it is dropped.
    proxy.wait_queued("app", 0).await;
    let up = proxy.upstream("app");
    for _ in 0..500 {
        if up
            .backends()
            .iter()
            .all(|b| b.in_flight.load(Ordering::SeqCst) == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        up.backends()
            .iter()
            .all(|b| b.in_flight.load(Ordering::SeqCst) == 0),
        "a reset stream kept its slot"
    );

    backend.gate.add_permits(2);
    let mut c3 = client.clone();
    let after = c3
        .send(Request::get("http://x/after").body(full("")).unwrap())
        .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        backend.arrived(),
        ["/held", "/after"],
        "the queued stream was never forwarded"
    );
}

#[tokio::test]
async fn h2_max_concurrent_streams_is_announced_and_kept() {
    let backend = Gated::start().await;
    let proxy = TestProxy::to(&[backend.addr], "limits: { max_concurrent_streams: 2 }\n").await;
    let mut client = H2::connect(proxy.addr).await;
    // One exchange first, so the client has the server's SETTINGS before opening streams
    // (before that it may open more, and gets REFUSED_STREAM, as HTTP/2 allows).
    backend.gate.add_permits(1);
    let warm = client
        .send(Request::get("http://x/warm").body(full("")).unwrap())
        .await;
    assert_eq!(warm.status, StatusCode::OK);
    let streams: Vec<_> = (0..3)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                c.send(
                    Request::get(format!("http://x/{i}"))
                        .body(full(""))
                        .unwrap(),
                )
                .await
            })
        })
        .collect();
    backend.wait_arrived(3).await;
    // The client holds the third stream back: the server announced a limit of two.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.arrived().len(), 3, "{:?}", backend.arrived());
    backend.gate.add_permits(3);
    for s in streams {
        assert_eq!(s.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(backend.arrived().len(), 4);
}
