//! An OTLP/HTTP collector on loopback for the tests: a small hyper server that decodes each
//! POST with prost (message structs derived here from opentelemetry-proto's .proto files,
//! not proxyd's encoder) and records it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

const PATIENCE: Duration = Duration::from_secs(30);

/// opentelemetry/proto/{collector/trace,trace,common,resource}/v1, the fields proxyd sends
/// (and the others of Span as prost would skip them).
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// SpanKind: 1 internal, 2 server, 3 client.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "10")]
        pub dropped_attributes_count: u32,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Any", tags = "1, 2, 3, 4, 7")]
        pub value: Option<Any>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Any {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
        #[prost(bytes, tag = "7")]
        Bytes(Vec<u8>),
    }
}

// ---------------------------------------------------------------------------------------------
// The collector

/// One POST as received.
pub struct Got {
    pub path: String,
    pub content_type: String,
    pub request: pb::ExportTraceServiceRequest,
}

impl Got {
    pub fn spans(&self) -> Vec<pb::Span> {
        self.request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

#[derive(Default)]
pub struct State {
    pub got: Mutex<Vec<Got>>,
    /// The status of the next answers (200 when 0).
    pub status: AtomicU16,
    /// Answers 503 with `Retry-After: 0` this many times first.
    pub busy: AtomicUsize,
    pub connections: AtomicUsize,
}

/// An OTLP/HTTP receiver on loopback.
pub struct Collector {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    /// Spans received so far.
    pub spans: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start() -> Collector {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), None)
    }

    /// Answers only as permits are added to the returned semaphore.
    pub async fn holding() -> (Collector, Arc<Semaphore>) {
        let hold = Arc::new(Semaphore::new(0));
        let c = Self::on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Some(hold.clone()),
        );
        (c, hold)
    }

    pub fn on(listener: TcpListener, hold: Option<Arc<Semaphore>>) -> Collector {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (count_tx, spans) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let st = state.clone();
        // When set, each answer waits for a permit (taken and forgotten).
        let held = hold;
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (st, count_tx, held) = (st.clone(), count_tx.clone(), held.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (st, count_tx, held) = (st.clone(), count_tx.clone(), held.clone());
                        async move { Ok::<_, Infallible>(answer(req, &st, &count_tx, held).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            state,
            spans,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `n` spans were received (or panics after a long patience).
    pub async fn wait_spans(&self, n: usize) {
        let mut rx = self.spans.clone();
        tokio::time::timeout(PATIENCE, rx.wait_for(|got| *got >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} spans never arrived; got {}", *self.spans.borrow()))
            .unwrap();
    }

    pub fn spans(&self) -> Vec<pb::Span> {
        self.state
            .got
            .lock()
            .unwrap()
            .iter()
            .flat_map(Got::spans)
            .collect()
    }
}

async fn answer(
    req: Request<Incoming>,
    st: &State,
    count: &watch::Sender<usize>,
    hold: Option<Arc<Semaphore>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let request = pb::ExportTraceServiceRequest::decode(body).expect("a valid OTLP request");
    let got = Got {
        path,
        content_type,
        request,
    };
    let n = got.spans().len();
    st.got.lock().unwrap().push(got);
    if let Some(hold) = hold {
        hold.acquire().await.unwrap().forget();
    }
    if st
        .busy
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
        .is_ok()
    {
        return Response::builder()
            .status(503)
            .header("retry-after", "0")
            .body(Full::default())
            .unwrap();
    }
    let status = match st.status.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        s => StatusCode::from_u16(s).unwrap(),
    };
    if status.is_success() {
        count.send_modify(|c| *c += n);
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(Full::default())
        .unwrap()
}
