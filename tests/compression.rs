//! Compression on the fly (`compression:`): every coding decoded and compared byte for byte
//! with what the backend sent, Accept-Encoding negotiation, the responses that must go as
//! they are, the head's changes, and a server-sent event stream whose first event arrives
//! (decoded) while the backend still holds the stream open.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{full, BoxBody, Got, TestBackend, TestProxy};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A body worth compressing: varied text, repeated enough to compress well.
fn page(len: usize) -> Bytes {
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "<p class=\"row-{}\">item {} of the list: {}</p>\n",
            i % 7,
            i,
            i.wrapping_mul(2654435761) % 100_000
        ));
        i += 1;
    }
    s.truncate(len);
    Bytes::from(s)
}

type Events = Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>;

/// A streamed body: each message the test sends is one chunk; it ends when the test drops
/// the sender.
struct EventBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|data| Ok(http_body::Frame::data(data))))
    }
}

/// The backend: a response per path; `/sse` streams what the test sends into `events`.
async fn backend(events: Events) -> TestBackend {
    TestBackend::start(move |seen| {
        let path = seen.uri.path();
        let name = path.rsplit('/').next().unwrap_or("");
        let text = |ty: &str, body: Bytes| {
            Response::builder()
                .header("content-type", ty)
                .body(full(body))
                .unwrap()
        };
        match name {
            "sse" => {
                let rx = events.lock().unwrap().take().expect("one /sse request");
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("cache-control", "no-cache")
                    .body(BodyExt::boxed(EventBody(rx)))
                    .unwrap()
            }
            "json" => text("application/json", page(5000)),
            "png" => text("image/png", page(5000)),
            "small" => text("text/plain", page(1000)),
            "headers" => Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("etag", "\"v1\"")
                .header("vary", "Origin")
                .header("accept-ranges", "bytes")
                .body(full(page(20_000)))
                .unwrap(),
            "weak" => Response::builder()
                .header("content-type", "text/html")
                .header("etag", "W/\"v1\"")
                .header("vary", "accept-encoding")
                .body(full(page(20_000)))
                .unwrap(),
            "encoded" => Response::builder()
                .header("content-type", "text/plain")
                .header("content-encoding", "gzip")
                .body(full(page(5000)))
                .unwrap(),
            "no-transform" => Response::builder()
                .header("content-type", "text/plain")
                .header("cache-control", "public, no-transform")
                .body(full(page(5000)))
                .unwrap(),
            "204" => Response::builder()
                .status(204)
                .header("content-type", "text/plain")
                .body(full(""))
                .unwrap(),
            "304" => Response::builder()
                .status(304)
                .header("content-type", "text/plain")
                .header("etag", "\"v1\"")
                .body(full(""))
                .unwrap(),
            "206" => Response::builder()
                .status(206)
                .header("content-type", "text/plain")
                .header("content-range", "bytes 0-4999/10000")
                .body(full(page(5000)))
                .unwrap(),
            _ => text("text/plain", page(50_000)),
        }
    })
    .await
}

const ROUTES: &str = "\
compression: { algorithms: [zstd, br, gzip], min_length: \"2KiB\" }
routes:
  - { path: /, upstream: app }
  - { path: /plain/, upstream: app, compression: false }
  - path: /gz/
    upstream: app
    compression: { algorithms: [gzip], min_length: 10, types: [text/*] }
";

struct Setup {
    proxy: TestProxy,
    backend: TestBackend,
    events: mpsc::UnboundedSender<Bytes>,
}

async fn setup(extra: &str) -> Setup {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = backend(Arc::new(Mutex::new(Some(rx)))).await;
    let proxy = TestProxy::to(&[backend.addr], &format!("{ROUTES}{extra}")).await;
    Setup {
        proxy,
        backend,
        events: tx,
    }
}

async fn send(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local");
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    common::H1::connect(addr)
        .await
        .send(req.body(full("")).unwrap())
        .await
}

fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            let mut d = flate2::write::GzDecoder::new(&mut out);
            d.write_all(data).unwrap();
            d.finish().unwrap();
        }
        "br" => {
            let mut d = brotli::DecompressorWriter::new(&mut out, 4096);
            d.write_all(data).unwrap();
            d.close().unwrap();
        }
        "zstd" => out = zstd::decode_all(data).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

#[tokio::test]
async fn each_coding_decodes_to_the_backends_bytes() {
    let s = setup("").await;
    for (encoding, path) in [
        ("zstd", "/page"),
        ("br", "/page"),
        ("gzip", "/page"),
        ("gzip", "/json"),
        ("br", "/json"),
    ] {
        let got = send(s.proxy.addr, "GET", path, Some(encoding)).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("content-encoding"), Some(encoding), "{path}");
        assert!(got.header("content-length").is_none());
        let want = if path == "/json" {
            page(5000)
        } else {
            page(50_000)
        };
        assert!(got.body.len() < want.len() / 2, "{encoding}: compressed");
        assert_eq!(decode(encoding, &got.body), want, "{encoding} {path}");
    }
    // Over HTTP/2 as well.
    let mut h2 = common::H2::connect(s.proxy.addr).await;
    let got = h2
        .send(
            Request::get(s.proxy.url("/page"))
                .header("accept-encoding", "br")
                .body(full(""))
                .unwrap(),
        )
        .await;
    assert_eq!(got.header("content-encoding"), Some("br"));
    assert_eq!(decode("br", &got.body), page(50_000));
    assert_eq!(s.backend.request_count(), 6);
}

#[tokio::test]
async fn accept_encoding_q_values_pick_the_coding() {
    let s = setup("").await;
    for (accept, want) in [
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip;q=0.5, br;q=1"), Some("br")),
        (Some("gzip, br;q=0.9"), Some("gzip")),
        (Some("*"), Some("zstd")),
        (Some("zstd;q=0, *;q=0.5"), Some("br")),
        (Some("zstd;q=0, br;q=0, gzip;q=0"), None),
        (Some("*;q=0"), None),
        (Some("identity"), None),
        (Some("deflate"), None),
        (None, None),
    ] {
        let got = send(s.proxy.addr, "GET", "/page", accept).await;
        assert_eq!(got.header("content-encoding"), want, "{accept:?}");
        // Compressed or not, the answer depended on Accept-Encoding (nginx's gzip_vary).
        assert_eq!(got.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        match want {
            Some(e) => assert_eq!(decode(e, &got.body), page(50_000)),
            None => {
                assert_eq!(got.body, page(50_000), "{accept:?}");
                assert_eq!(got.header("content-length"), Some("50000"));
            }
        }
    }
    // A route's own algorithms: only gzip there.
    let got = send(s.proxy.addr, "GET", "/gz/page", Some("zstd, br")).await;
    assert_eq!(got.header("content-encoding"), None);
    let got = send(
        s.proxy.addr,
        "GET",
        "/gz/page",
        Some("zstd, br, gzip;q=0.1"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
}

#[tokio::test]
async fn what_must_go_as_it_is() {
    let s = setup("").await;
    let all = Some("zstd, br, gzip");
    // (method, path, status, body the client must get as the backend sent it)
    for (method, path, status, body) in [
        ("GET", "/png", 200, page(5000)),
        ("GET", "/small", 200, page(1000)),
        ("GET", "/encoded", 200, page(5000)),
        ("GET", "/no-transform", 200, page(5000)),
        ("GET", "/204", 204, Bytes::new()),
        ("GET", "/304", 304, Bytes::new()),
        ("GET", "/206", 206, page(5000)),
        ("GET", "/plain/page", 200, page(50_000)),
        ("HEAD", "/page", 200, Bytes::new()),
    ] {
        let got = send(s.proxy.addr, method, path, all).await;
        assert_eq!(got.status.as_u16(), status, "{method} {path}");
        assert_eq!(got.body, body, "{method} {path}");
        let encoding = got.header("content-encoding");
        if path == "/encoded" {
            assert_eq!(encoding, Some("gzip"), "the backend's own, kept");
        } else {
            assert_eq!(encoding, None, "{method} {path}");
        }
        if status == 200 {
            assert_eq!(
                got.header("content-length"),
                Some(body.len().max(if method == "HEAD" { 50_000 } else { 0 }))
                    .map(|n| n.to_string())
                    .as_deref(),
                "{method} {path}"
            );
        }
        assert!(got.header("vary").is_none(), "{method} {path}");
    }
    // The small body compresses on a route whose min_length it passes.
    let got = send(s.proxy.addr, "GET", "/gz/small", all).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &got.body), page(1000));
}

#[tokio::test]
async fn the_head_says_it_is_compressed() {
    let s = setup("").await;
    let got = send(s.proxy.addr, "GET", "/headers", Some("gzip")).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    assert!(got.header("content-length").is_none());
    assert!(got.header("accept-ranges").is_none());
    assert_eq!(got.header("etag"), Some("W/\"v1\""));
    let vary: Vec<&str> = got
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, ["Origin", "Accept-Encoding"]);
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert_eq!(decode("gzip", &got.body), page(20_000));

    // A weak ETag and a Vary that names Accept-Encoding already stay as they are.
    let got = send(s.proxy.addr, "GET", "/weak", Some("gzip")).await;
    assert_eq!(got.header("etag"), Some("W/\"v1\""));
    assert_eq!(got.headers.get_all("vary").iter().count(), 1);
    assert_eq!(got.header("vary"), Some("accept-encoding"));
}

/// A streaming decoder of one coding, fed the compressed frames as they arrive.
enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl Decoder {
    fn new(encoding: &str) -> Decoder {
        match encoding {
            "gzip" => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new()))),
            "br" => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            _ => Decoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap()),
        }
    }

    /// Feeds `data`; everything decoded so far.
    fn feed(&mut self, data: &[u8]) -> &[u8] {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Decoder::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            Decoder::Zstd(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    for encoding in ["gzip", "br", "zstd"] {
        let s = setup("").await;
        let stream = TcpStream::connect(s.proxy.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, BoxBody>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/sse")
            .header("host", "test.local")
            .header("accept-encoding", encoding)
            .body(full(""))
            .unwrap();
        let first = Bytes::from_static(b"event: tick\ndata: one\n\n");
        let second = Bytes::from_static(b"event: tick\ndata: two\n\n");
        s.events.send(first.clone()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["content-encoding"], encoding);
        let mut body = resp.into_body();
        let mut decoder = Decoder::new(encoding);
        // The first event decodes whole while the backend holds the stream open.
        loop {
            let frame = body.frame().await.expect("the stream ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                if decoder.feed(&data) == &first[..] {
                    break;
                }
            }
        }
        s.events.send(second.clone()).unwrap();
        let mut both = first.to_vec();
        both.extend_from_slice(&second);
        loop {
            let frame = body.frame().await.expect("the stream ended early").unwrap();
            if let Ok(data) = frame.into_data() {
                if decoder.feed(&data) == &both[..] {
                    break;
                }
            }
        }
        // The backend ends the stream: the coding's end arrives, then the body's.
        drop(s.events);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                assert_eq!(decoder.feed(&data), &both[..], "{encoding}");
            }
        }
    }
}

#[tokio::test]
async fn metrics_count_what_compression_saved() {
    let s = setup("admin: { addr: \"127.0.0.1:0\" }\n").await;
    let got = send(s.proxy.addr, "GET", "/page", Some("gzip")).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    let admin = s.proxy.admin.unwrap();
    let want_in = "proxyd_compression_in_bytes_total{encoding=\"gzip\"} 50000";
    let want_out = format!(
        "proxyd_compression_out_bytes_total{{encoding=\"gzip\"}} {}",
        got.body.len()
    );
    // The outcome is recorded once the body is sent: poll the scrape until it is there.
    let mut text = String::new();
    for _ in 0..500 {
        text = common::get(admin, "/metrics").await.text();
        if text.contains(want_in) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(text.contains(want_in), "{text}");
    assert!(text.contains(&want_out), "{text}");
    assert!(text.contains("proxyd_compressed_responses_total{encoding=\"gzip\"} 1"));
    assert!(text.contains("proxyd_compressed_responses_total{encoding=\"br\"} 0"));
}

/// A worker's response read ahead (into memory, and past `buffer_response` into a temp file)
/// is compressed as it goes to the client, and decodes to what the worker wrote.
#[tokio::test]
async fn a_workers_read_ahead_response_is_compressed() {
    use common::procs::{python, Marker};
    use common::workers::{wait_for, workers, APP, HEAD};
    let marker = Marker::new("compressed-worker");
    let yaml = format!(
        "{HEAD}limits: {{ buffer_response: 64KiB }}\ncompression: {{ algorithms: [gzip, br] }}\nupstreams:\n  app:\n{}",
        workers(&marker, &[python(), APP], 1, &[])
    );
    let proxy = TestProxy::from_yaml(&yaml).await;
    let up = proxy.upstream("app");
    wait_for("a ready worker", || !up.backends().is_empty()).await;
    let size = 300_000;
    let got = send(
        proxy.addr,
        "GET",
        &format!("/half?bytes={size}"),
        Some("br, gzip"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    let mut want = vec![b'a'; size / 2];
    want.extend(std::iter::repeat_n(b'b', size - size / 2));
    assert_eq!(decode("gzip", &got.body), want);
    assert!(got.body.len() < 10_000, "{}", got.body.len());
    proxy.shutdown().await;
    marker.wait_none_left().await;
}
