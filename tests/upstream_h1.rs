//! proxyd's own HTTP/1.1 client, byte by byte against raw TCP backends: response framings
//! (chunked with trailers, close-delimited, bodiless with a Content-Length), 1xx before the
//! final answer, malformed answers, and the keep-alive pool (reuse counted, a connection the
//! backend closed while idle replaced without the client noticing).

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A hang guard, not a timing assertion.
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

async fn proxy_to(backend: &ScriptedBackend) -> TestProxy {
    TestProxy::to(&[backend.addr], "headers: { debug: true }\n").await
}

/// The request line of a head the backend received.
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

fn pool_counts(proxy: &TestProxy) -> (u64, u64) {
    let up = proxy.upstream("app");
    let backends = up.backends();
    let pool = &backends[0].pool;
    (
        pool.opened.load(Ordering::Relaxed),
        pool.reused.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn a_chunked_response_with_trailers_arrives_whole_and_frees_the_connection() {
    let backend = ScriptedBackend::start(|_| {
        let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                     5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 11\r\n\r\n";
        (reply.as_bytes().to_vec(), false)
    })
    .await;
    let proxy = proxy_to(&backend).await;

    // h2 carries trailers to any client.
    let mut h2 = H2::connect(proxy.addr).await;
    let req = Request::get("http://test.local/t").body(full("")).unwrap();
    let got = within("h2 GET", h2.send(req)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello world");
    let trailers = got.trailers.clone().expect("the trailers were passed on");
    assert_eq!(trailers["x-sum"], "11");
    assert_eq!(got.header("proxyd-reused"), Some("0"));

    // An HTTP/1.1 client that asks for trailers gets them too, on the same upstream
    // connection: the body's clean end returned it to the pool.
    let mut h1 = H1::connect(proxy.addr).await;
    let req = Request::get("/t")
        .header("host", "test.local")
        .header("te", "trailers")
        .body(full(""))
        .unwrap();
    let got = within("h1 GET", h1.send(req)).await;
    assert_eq!(got.text(), "hello world");
    assert_eq!(got.trailers.clone().expect("h1 trailers")["x-sum"], "11");
    assert_eq!(got.header("proxyd-reused"), Some("1"));
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn a_close_delimited_response_is_read_to_the_close_and_not_reused() {
    let big: String = (0..100_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let body = big.clone();
    let backend = ScriptedBackend::start(move |head| {
        let reply = match target(head) {
            "/old" => {
                "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nfrom an old server".into()
            }
            _ => format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}"),
        };
        (reply.into_bytes(), true)
    })
    .await;
    let proxy = proxy_to(&backend).await;
    let mut client = H1::connect(proxy.addr).await;
    let got = within("close-delimited", client.get("/big")).await;
    assert_eq!(got.status, 200);
    assert!(got.text() == big, "{} of 100000 bytes came", got.body.len());
    let got = within("HTTP/1.0", client.get("/old")).await;
    assert_eq!(got.text(), "from an old server");
    assert_eq!(got.header("proxyd-reused"), Some("0"));
    assert_eq!(backend.connections(), 2);
    assert_eq!(pool_counts(&proxy), (2, 0));
}

#[tokio::test]
async fn head_304_and_204_answers_have_no_body_whatever_their_content_length() {
    let backend = ScriptedBackend::start(|head| {
        let reply: &str = match target(head) {
            "/head" => "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            "/304" => "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 1000\r\n\r\n",
            "/204" => "HTTP/1.1 204 No Content\r\n\r\n",
            _ => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter",
        };
        (reply.as_bytes().to_vec(), false)
    })
    .await;
    let proxy = proxy_to(&backend).await;
    let mut client = H1::connect(proxy.addr).await;
    let head = Request::head("/head")
        .header("host", "test.local")
        .body(full(""))
        .unwrap();
    let got = within("HEAD", client.send(head)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("1000"));
    assert!(got.body.is_empty());
    let got = within("304", client.get("/304")).await;
    assert_eq!(got.status, 304);
    assert!(got.body.is_empty());
    assert_eq!(got.header("proxyd-reused"), Some("1"));
    let got = within("204", client.get("/204")).await;
    assert_eq!(got.status, 204);
    assert!(got.body.is_empty());
    // Had proxyd waited for a body, this would be read as one, or hang.
    let got = within("after", client.get("/after")).await;
    assert_eq!(got.text(), "after");
    assert_eq!(got.header("proxyd-reused"), Some("1"));
    assert_eq!(backend.connections(), 1);
    assert_eq!(pool_counts(&proxy), (1, 3));
}

#[tokio::test]
async fn informational_answers_before_the_final_one_are_skipped() {
    let backend = ScriptedBackend::start(|_| {
        let reply = "HTTP/1.1 100 Continue\r\n\r\n\
                     HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
                     HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        (reply.as_bytes().to_vec(), false)
    })
    .await;
    let proxy = proxy_to(&backend).await;
    let mut client = H1::connect(proxy.addr).await;
    for reused in ["0", "1"] {
        let got = within("1xx then 200", client.get("/")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "ok");
        assert!(got.header("link").is_none(), "the 103's fields leaked");
        assert_eq!(got.header("proxyd-reused"), Some(reused));
    }
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn a_malformed_response_is_a_502_and_nothing_of_it_reaches_the_client() {
    let cases: [(&str, &str); 5] = [
        (
            "both framings",
            "HTTP/1.1 200 OK\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\nSECRET",
        ),
        (
            "two lengths",
            "HTTP/1.1 200 OK\r\ncontent-length: 6\r\ncontent-length: 7\r\n\r\nSECRET",
        ),
        ("bare LF", "HTTP/1.1 200 OK\ncontent-length: 6\n\nSECRET"),
        ("not HTTP", "SECRET SECRET SECRET\r\n\r\n"),
        (
            "a coding proxyd would drop",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n6\r\nSECRET\r\n0\r\n\r\n",
        ),
    ];
    for (what, reply) in cases {
        let backend = ScriptedBackend::start(move |_| (reply.as_bytes().to_vec(), false)).await;
        let proxy = proxy_to(&backend).await;
        let answer = within(
            what,
            raw(
                proxy.addr,
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{what}: {answer:?}");
        assert!(
            answer.contains("proxyd-error: upstream-bad-response"),
            "{what}: {answer:?}"
        );
        assert!(!answer.contains("SECRET"), "{what}: {answer:?}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{what}: {answer:?}");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_replaced_unseen() {
    let mut backend = ScriptedBackend::start(|head| {
        // No `Connection: close`: proxyd keeps the connection, which the backend then closes
        // (as a server whose keep-alive time-out is shorter than proxyd's would).
        let close = target(head) == "/first";
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            close,
        )
    })
    .await;
    let proxy = proxy_to(&backend).await;
    let mut client = H1::connect(proxy.addr).await;
    let got = within("first", client.get("/first")).await;
    assert_eq!(got.text(), "ok");
    backend.wait_closed().await;
    // A POST, which proxyd would not send twice: the stale connection must be found out
    // before the request goes on it.
    let post = Request::post("/second")
        .header("host", "test.local")
        .body(full("payload"))
        .unwrap();
    let got = within("second", client.send(post)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "ok");
    assert_eq!(got.header("proxyd-reused"), Some("0"));
    assert_eq!(backend.connections(), 2);
    assert_eq!(pool_counts(&proxy), (2, 0));
    let stats = &proxy.upstream("app").stats;
    assert_eq!(stats.retried_unsent.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn connections_are_reused_across_clients_and_counted() {
    let backend = ScriptedBackend::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            false,
        )
    })
    .await;
    let proxy = proxy_to(&backend).await;
    for (i, reused) in ["0", "1", "1"].iter().enumerate() {
        // A new client connection each time: the pool belongs to the backend.
        let got = within("GET", get(proxy.addr, "/")).await;
        assert_eq!(got.text(), "ok");
        assert_eq!(got.header("proxyd-reused"), Some(*reused), "request {i}");
    }
    assert_eq!(backend.connections(), 1);
    assert_eq!(pool_counts(&proxy), (1, 2));
}

/// A backend that answers 413 as soon as it has a request head, then reads and drops the
/// body; its connection count.
async fn answers_before_the_body() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                while find(&got, b"\r\n\r\n").is_none() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
                if s.write_all(reply).await.is_err() {
                    return;
                }
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn an_answer_before_the_body_is_all_sent_goes_to_the_client() {
    let (backend, connections) = answers_before_the_body().await;
    // Past buffer_body the body streams: proxyd is still sending it when the answer comes.
    let proxy = TestProxy::to(
        &[backend],
        "headers: { debug: true }\nlimits: { buffer_body: 1KiB, max_body: 64MiB }\n",
    )
    .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // The client sends its body meanwhile (proxyd may stop reading it once answered), and
    // keeps its side open: a client that half-closes is cut off by the server.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        std::future::pending::<()>().await;
        drop(write);
    });
    let mut answer = Vec::new();
    let _ = within("the early answer", read.read_to_end(&mut answer)).await;
    writer.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.ends_with("big!"), "{answer:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}
