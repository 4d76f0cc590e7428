//! Client connection limits and time-outs, and the upstream connect time-out.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&out, b"\r\n\r\n").is_none() || !out.ends_with(b"hi") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn max_connections_pauses_accepting_until_one_closes() {
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let proxy = TestProxy::to(&[backend.addr], "limits: { max_connections: 1 }\n").await;

    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first.write_all(GET).await.unwrap();
    assert!(read_response(&mut first).await.starts_with("HTTP/1.1 200"));

    // The kernel completes the second handshake, but proxyd does not serve it yet.
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    second.write_all(GET).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "second connection was served while the first was open"
    );

    drop(first);
    assert!(read_response(&mut second).await.starts_with("HTTP/1.1 200"));
    assert_eq!(backend.request_count(), 2);
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed() {
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let proxy = TestProxy::to(&[backend.addr], "timeouts: { keepalive: 200ms }\n").await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
    // Nothing more is sent: proxyd closes the connection quietly (EOF, no 408).
    let rest = read_until_close(&mut conn).await;
    assert_eq!(rest, "");
}

#[tokio::test]
async fn connection_that_never_sends_gets_closed() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "timeouts: { client_header: 200ms }\n").await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_until_close(&mut conn).await, "");
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn upstream_connect_timeout_is_502() {
    // A listener with a full accept queue that never accepts: further SYNs go unanswered.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let yaml = format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{addr}\"]\n    connect_timeout: 300ms\n"
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let got = get(proxy.addr, "/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("proxyd-error"), Some("upstream-connect-timeout"));
    drop(fillers);
}

#[tokio::test]
async fn pooled_connections_expire_after_idle_timeout() {
    let backend = TestBackend::start(|_| http::Response::new(full("hi"))).await;
    let extra = "headers: { debug: true }\n";
    let yaml = yaml_to(&[backend.addr], extra).replace(
        "    servers:",
        "    pool: { idle_timeout: 100ms }\n    servers:",
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let mut client = H1::connect(proxy.addr).await;
    assert_eq!(client.get("/").await.header("proxyd-reused"), Some("0"));
    assert_eq!(client.get("/").await.header("proxyd-reused"), Some("1"));
    // Let the idle connection outlive the pool's idle_timeout (not a readiness wait).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.get("/").await.header("proxyd-reused"), Some("0"));
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

/// A backend that answers only once `n` requests are in flight together, so a burst of `n`
/// needs `n` upstream connections.
async fn burst_backend(n: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let barrier = barrier.clone();
                    async move {
                        barrier.wait().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(full("hi")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, conns)
}

async fn burst(addr: std::net::SocketAddr, n: usize) {
    let all = (0..n).map(|_| tokio::spawn(async move { get(addr, "/").await.status }));
    for status in futures_util::future::join_all(all).await {
        assert_eq!(status.unwrap(), 200);
    }
}

#[tokio::test]
async fn pool_keeps_at_most_max_idle_connections() {
    for (max_idle, expected) in [(1, 4 + 3), (8, 4)] {
        let (backend, conns) = burst_backend(4).await;
        let yaml = yaml_to(&[backend], "").replace(
            "    servers:",
            &format!("    pool: {{ max_idle: {max_idle} }}\n    servers:"),
        );
        let proxy = TestProxy::from_yaml(&yaml).await;
        burst(proxy.addr, 4).await;
        // The second burst finds max_idle pooled connections and opens the rest.
        burst(proxy.addr, 4).await;
        assert_eq!(
            conns.load(Ordering::SeqCst),
            expected,
            "max_idle {max_idle}"
        );
    }
}
