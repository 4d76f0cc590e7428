//! Protocol paths through proxyd: h2c clients, 100-continue, 1xx from backends, WebSocket
//! upgrades, IPv6 and unix-socket backends, and real curl.

mod common;
use common::*;

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const DEBUG: &str = "headers: { debug: true }\n";

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 prior knowledge

/// An h2c connection whose sender can be cloned for concurrent streams.
#[tokio::test]
async fn h2_get_and_post_reach_an_http11_backend() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H2::connect(proxy.addr).await;

    let got = within(
        "h2 GET",
        client.send(
            Request::get("http://test.local/get?x=1")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.header("x-echo-uri"), Some("/get?x=1"));

    let body = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let got = within(
        "h2 POST",
        client.send(
            Request::post("http://test.local/post")
                .body(full(body.clone()))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-method"), Some("POST"));
    assert!(got.body == body, "h2 POST body came back changed");

    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_11);
        assert_eq!(header(&s.headers, "host"), Some("test.local"));
        assert_eq!(header(&s.headers, "x-forwarded-host"), Some("test.local"));
    }
    assert_eq!(seen[0].uri, "/get?x=1");
    assert!(seen[1].body == body, "backend got a changed h2 POST body");
}

#[tokio::test]
async fn h2_concurrent_streams_on_one_connection() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let client = H2::connect(proxy.addr).await;
    let streams = (0..16).map(|i| {
        let mut client = client.clone();
        async move {
            let body = format!("stream {i} body");
            let req = Request::post(format!("http://test.local/s/{i}"))
                .body(full(body.clone()))
                .unwrap();
            let got = client.send(req).await;
            assert_eq!(got.status, 200);
            assert_eq!(got.header("x-echo-uri"), Some(format!("/s/{i}").as_str()));
            assert_eq!(got.text(), body);
        }
    });
    within("16 streams", futures_util::future::join_all(streams)).await;
    assert_eq!(backend.request_count(), 16);
}

#[tokio::test]
async fn h2_cookie_fields_are_joined_for_the_backend() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H2::connect(proxy.addr).await;
    let got = within(
        "cookies",
        client.send(
            Request::get("http://test.local/c")
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .header("cookie", "c=3")
                .body(full(""))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = backend.requests().pop().unwrap();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
}

// ---------------------------------------------------------------------------------------------
// Interim responses

/// Reads from `stream` until `needle` has arrived; returns all that was read.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&got, needle).is_none() {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before {:?}: {}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = within("100 Continue", read_until(&mut stream, b"\r\n\r\n")).await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    assert_eq!(backend.request_count(), 0, "the body was not sent yet");
    stream.write_all(b"hello world").await.unwrap();
    let rest = within("final response", read_until(&mut stream, b"hello world")).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    let seen = backend.requests().pop().unwrap();
    assert_eq!(seen.body, "hello world");
    assert!(!seen.headers.contains_key("expect"), "{:?}", seen.headers);
}

#[tokio::test]
async fn informational_103_from_the_backend_then_the_final_response() {
    let backend = RawBackend::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Final: yes\r\n\r\nfinal body!",
    )
    .await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let mut client = H1::connect(proxy.addr).await;
    for _ in 0..2 {
        let got = within("103 then 200", client.get("/hints")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-final"), Some("yes"));
        assert_eq!(got.text(), "final body!");
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let handshake_headers = Arc::new(Mutex::new(None::<HeaderMap>));
    let saved = handshake_headers.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // tungstenite's server Callback fixes the (large) error type.
        #[allow(clippy::result_large_err)]
        let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            *saved.lock().unwrap() = Some(req.headers().clone());
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    let proxy = TestProxy::to(&[backend], DEBUG).await;

    let (mut ws, resp) = within(
        "ws handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let messages = [
        Message::text("hello through proxyd"),
        Message::binary(binary),
        Message::text("second"),
    ];
    for msg in messages {
        ws.send(msg.clone()).await.unwrap();
        let back = within("ws echo", ws.next())
            .await
            .expect("websocket closed")
            .unwrap();
        assert_eq!(back, msg);
    }
    ws.close(None).await.unwrap();

    let h = handshake_headers
        .lock()
        .unwrap()
        .clone()
        .expect("backend saw the handshake");
    assert!(header(&h, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(header(&h, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    assert!(h.contains_key("sec-websocket-key"));
}

/// A WebSocket that stays quiet for a while (longer than nothing; proxyd's client-side clocks
/// must not treat the tunnel as an HTTP connection) keeps working.
#[tokio::test]
async fn websocket_survives_a_pause_between_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    // A short client_header time-out: a tunnel judged as a slow request head would be cut.
    let proxy = TestProxy::to(
        &[backend],
        "headers: { debug: true }\ntimeouts: { client_header: 200ms }\n",
    )
    .await;
    let (mut ws, _) = within(
        "ws handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/", proxy.addr)),
    )
    .await
    .unwrap();
    for i in 0..2 {
        let msg = Message::text(format!("message {i}"));
        ws.send(msg.clone()).await.unwrap();
        let back = within("ws echo", ws.next()).await.expect("closed").unwrap();
        assert_eq!(back, msg);
        // The pause is the scenario under test, not a readiness wait.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Backend addresses

/// Serves one hyper HTTP/1.1 connection: echoes the body, reports the Host it got.
fn serve_echo<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(|req: Request<Incoming>| async move {
        let host = req.headers().get("host").cloned();
        let body = req.into_body().collect().await.map(|c| c.to_bytes());
        let mut resp = Response::new(full(body.unwrap_or_default()));
        if let Some(h) = host {
            resp.headers_mut().insert("x-seen-host", h);
        }
        Ok::<_, Infallible>(resp)
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
    );
}

/// Two requests on one client connection: the second must reuse the pooled connection.
async fn check_backend(proxy: &TestProxy, label: &str) {
    let mut client = H1::connect(proxy.addr).await;
    for i in 0..2 {
        let body = format!("to {label}, #{i}");
        let got = within(
            label,
            client.send(
                Request::post("/echo")
                    .header("host", "test.local")
                    .body(full(body.clone()))
                    .unwrap(),
            ),
        )
        .await;
        assert_eq!(got.status, 200, "{label}: {:?}", got.header("proxyd-error"));
        assert_eq!(got.text(), body);
        assert_eq!(got.header("proxyd-backend"), Some(label));
        assert_eq!(got.header("x-seen-host"), Some("test.local"));
        let reused = if i == 0 { "0" } else { "1" };
        assert_eq!(got.header("proxyd-reused"), Some(reused), "{label}");
    }
}

#[tokio::test]
async fn ipv6_backend() {
    let listener = match TcpListener::bind("[::1]:0").await {
        Ok(l) => l,
        Err(e) => {
            let what = format!("ipv6_backend (cannot bind [::1]:0: {e})");
            common::tools::require(false, &what, "IPv6 loopback", "enable IPv6 on lo");
            return;
        }
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_echo(stream);
        }
    });
    let proxy = TestProxy::to(&[addr], DEBUG).await;
    check_backend(&proxy, &addr.to_string()).await;
}

#[tokio::test]
async fn unix_socket_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_echo(stream);
        }
    });
    let server = format!("unix:{}", path.display());
    let proxy = TestProxy::from_yaml(&format!(
        "listen:\n  - addr: \"127.0.0.1:0\"\nupstreams:\n  app:\n    servers: [\"{server}\"]\n{DEBUG}"
    ))
    .await;
    check_backend(&proxy, &server).await;
}

// ---------------------------------------------------------------------------------------------
// curl

/// Runs curl with `args`; None (after saying why) when curl is not installed.
async fn curl(args: Vec<String>) -> Option<std::process::Output> {
    const CURL: &str = "/usr/bin/curl";
    if !common::tools::require_tool("curl against proxyd", CURL, "apt-get install curl") {
        return None;
    }
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(CURL)
            .args(["--silent", "--show-error", "--include", "--max-time", "10"])
            .args(&args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    Some(out)
}

fn curl_has_http2() -> bool {
    std::process::Command::new("/usr/bin/curl")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"))
        .unwrap_or(false)
}

#[tokio::test]
async fn curl_http11_get() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    let Some(out) = curl(vec![proxy.url("/curl?plain=1")]).await else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-echo-uri: /curl?plain=1\r\n"), "{text}");
    assert!(text.contains("proxyd-reused: 0\r\n"), "{text}");
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn curl_http2_prior_knowledge_get() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], DEBUG).await;
    if std::path::Path::new("/usr/bin/curl").exists()
        && !common::tools::require(
            curl_has_http2(),
            "curl over h2c",
            "curl with HTTP2",
            "apt-get install curl (Debian's has HTTP2)",
        )
    {
        return;
    }
    // One URL per run: curl 7.88 fails reusing a prior-knowledge connection for a second URL
    // ("Error in the HTTP2 framing layer" before it sends anything; curl/curl#10634).
    for i in 1..=2 {
        let Some(out) = curl(vec![
            "--http2-prior-knowledge".into(),
            proxy.url(&format!("/curl?h2={i}")),
        ])
        .await
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("HTTP/2 200"), "{text}");
        assert!(
            text.contains(&format!("x-echo-uri: /curl?h2={i}\r\n")),
            "{text}"
        );
    }
    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.version == Version::HTTP_11));
    assert_eq!(
        header(&seen[0].headers, "host"),
        Some(proxy.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn h2_shutdown_sends_goaway_and_finishes_open_streams() {
    // A backend that answers once told to.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (r, a) = (release.clone(), arrived.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (r, a) = (r.clone(), a.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let (r, a) = (r.clone(), a.clone());
                    async move {
                        a.notify_one();
                        r.notified().await;
                        Ok::<_, Infallible>(Response::new(full("finished")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let proxy = TestProxy::to(&[addr], "").await;
    let mut client = H2::connect(proxy.addr).await;
    let late = client.clone();
    let open = tokio::spawn(async move {
        client
            .send(Request::get("http://x/slow").body(full("")).unwrap())
            .await
    });
    arrived.notified().await;
    let stopping = tokio::spawn(proxy.shutdown());
    // The drain waits for the open stream.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the open stream"
    );
    // GOAWAY went out: the connection takes no new stream.
    let refused = tokio::spawn(async move {
        let mut late = late;
        late.try_send(Request::get("http://x/late").body(full("")).unwrap())
            .await
    });
    assert!(
        refused.await.unwrap().is_err(),
        "a new stream was accepted after GOAWAY"
    );
    release.notify_one();
    let got = open.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "finished");
    stopping.await.unwrap();
}
