//! Request smuggling: a byte-level catalogue of requests that a front end and a back end could
//! frame differently, sent through proxyd to a raw recording backend.
//!
//! For every case the client must get a refusal (400 with the `proxyd-error` cause, or the
//! connection closed, or for h2 the stream reset) and the backend nothing; or, where the request
//! is legitimately normalisable, the backend receives exactly one well-formed request. "Well
//! formed" is judged by a strict parser here, stricter than any server proxyd fronts: CRLF line
//! endings, origin-form target, one Host, at most one of Content-Length or chunked, a body that
//! matches its framing, no framing headers in trailers, nothing left over on the connection.
//!
//! Each family is one test over a table of cases; `the_catalogue_never_panics_the_real_binary`
//! runs every family again against the proxyd binary and reads its stderr for panics.

mod common;
mod hpack;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{find, ProxydProcess, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any one read may take before the case fails (nothing here waits on purpose).
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The recording backend and its strict parser

/// A request as the strict parser read it.
#[derive(Debug, Clone)]
struct Msg {
    method: String,
    target: String,
    /// Names lowercased, in order.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
}

impl Msg {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

/// What the backend saw, in order.
#[derive(Debug, Clone)]
enum Event {
    Request(Msg),
    /// Bytes the strict parser refused: a backend could read them some other way.
    Malformed {
        why: String,
        bytes: Vec<u8>,
    },
    /// The connection closed in the middle of a message (an aborted request).
    Truncated {
        bytes: Vec<u8>,
    },
}

enum Parsed {
    Complete(Msg, usize),
    Partial,
    Bad(String),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One request at the start of `buf`, read strictly.
fn parse_message(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Bad(format!("head: {e}")),
    };
    let head = &buf[..head_len];
    for (i, &b) in head.iter().enumerate() {
        if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
            return Parsed::Bad(format!("bare LF at {i}"));
        }
        if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
            return Parsed::Bad(format!("bare CR at {i}"));
        }
    }
    if req.version != Some(1) {
        return Parsed::Bad(format!("version {:?}", req.version));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Parsed::Bad(format!("target {target:?} is not origin-form"));
    }
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let values = |name: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    if values("host").len() != 1 {
        return Parsed::Bad(format!("{} Host headers", values("host").len()));
    }
    let cl = values("content-length");
    let te = values("transfer-encoding");
    if cl.len() > 1 || te.len() > 1 || (!cl.is_empty() && !te.is_empty()) {
        return Parsed::Bad(format!("framing: {} CL, {} TE", cl.len(), te.len()));
    }
    let mut msg = Msg {
        method,
        target,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    if let Some(te) = te.first() {
        if *te != b"chunked" {
            return Parsed::Bad(format!("TE {:?}", String::from_utf8_lossy(te)));
        }
        return match parse_chunked(&buf[head_len..]) {
            Parsed::Complete(body, used) => {
                msg.body = body.body;
                msg.trailers = body.trailers;
                Parsed::Complete(msg, head_len + used)
            }
            Parsed::Partial => Parsed::Partial,
            Parsed::Bad(why) => Parsed::Bad(why),
        };
    }
    if let Some(cl) = cl.first() {
        if cl.is_empty() || !cl.iter().all(u8::is_ascii_digit) || cl.len() > 18 {
            return Parsed::Bad(format!("CL {:?}", String::from_utf8_lossy(cl)));
        }
        let n: usize = String::from_utf8_lossy(cl).parse().unwrap_or(usize::MAX);
        if buf.len() - head_len < n {
            return Parsed::Partial;
        }
        msg.body = buf[head_len..head_len + n].to_vec();
        return Parsed::Complete(msg, head_len + n);
    }
    Parsed::Complete(msg, head_len)
}

/// `hex-size [;ext] CRLF data CRLF ... 0 CRLF trailers CRLF`, nothing looser; the body and
/// trailers are returned in a `Msg` for convenience.
fn parse_chunked(b: &[u8]) -> Parsed {
    let mut out = Msg {
        method: String::new(),
        target: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let mut i = 0;
    let line = |i: usize| -> Result<Option<&[u8]>, String> {
        match find(&b[i..], b"\r\n") {
            Some(n) if b[i..i + n].contains(&b'\n') || b[i..i + n].contains(&b'\r') => {
                Err("bare CR or LF in a chunk line".into())
            }
            Some(n) => Ok(Some(&b[i..i + n])),
            None if b[i..].contains(&b'\n') => Err("bare LF in a chunk line".into()),
            None => Ok(None),
        }
    };
    loop {
        let size_line = match line(i) {
            Err(why) => return Parsed::Bad(why),
            Ok(None) => return Parsed::Partial,
            Ok(Some(l)) => l,
        };
        let size = size_line.split(|c| *c == b';').next().unwrap_or_default();
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Parsed::Bad(format!(
                "chunk size {:?}",
                String::from_utf8_lossy(size_line)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16).unwrap_or(0);
        i += size_line.len() + 2;
        if size == 0 {
            loop {
                let l = match line(i) {
                    Err(why) => return Parsed::Bad(why),
                    Ok(None) => return Parsed::Partial,
                    Ok(Some(l)) => l,
                };
                i += l.len() + 2;
                if l.is_empty() {
                    return Parsed::Complete(out, i);
                }
                let Some(colon) = l.iter().position(|c| *c == b':') else {
                    return Parsed::Bad("trailer without a colon".into());
                };
                let name = &l[..colon];
                if name.is_empty() || !name.iter().all(|c| is_tchar(*c)) {
                    return Parsed::Bad("bad trailer name".into());
                }
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                if ["content-length", "transfer-encoding", "host"].contains(&name.as_str()) {
                    return Parsed::Bad(format!("framing header {name} in trailers"));
                }
                out.trailers
                    .push((name, l[colon + 1..].trim_ascii().to_vec()));
            }
        }
        if b.len() < i + size + 2 {
            return Parsed::Partial;
        }
        out.body.extend_from_slice(&b[i..i + size]);
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Parsed::Bad("chunk data not followed by CRLF".into());
        }
        i += size + 2;
    }
}

const BACKEND_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-recorded: 1\r\n\r\nok";
const BACKEND_BAD: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// A raw TCP backend that reads each connection with the strict parser, records every message
/// (and anything it cannot read), and answers 200 to each well-formed request.
struct Recorder {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    /// Bytes received so far, on all connections.
    bytes: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (events2, bytes2) = (events.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(record_connection(stream, events2.clone(), bytes2.clone()));
            }
        });
        Recorder {
            addr,
            events,
            bytes,
        }
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the backend has received more than `seen` bytes.
    async fn wait_bytes(&self, seen: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.bytes() <= seen {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the backend got nothing of the streamed request"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What was recorded since the last call.
    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }

    /// Waits (bounded) until an event satisfying `f` was recorded; the events so far either way.
    async fn wait_for(&self, f: impl Fn(&Event) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            if self.events.lock().unwrap().iter().any(&f) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.take()
    }
}

async fn record_connection(
    mut s: TcpStream,
    events: Arc<Mutex<Vec<Event>>>,
    bytes: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        loop {
            match parse_message(&buf) {
                Parsed::Complete(msg, n) => {
                    buf.drain(..n);
                    events.lock().unwrap().push(Event::Request(msg));
                    if s.write_all(BACKEND_OK).await.is_err() {
                        return;
                    }
                }
                Parsed::Partial => break,
                Parsed::Bad(why) => {
                    events
                        .lock()
                        .unwrap()
                        .push(Event::Malformed { why, bytes: buf });
                    let _ = s.write_all(BACKEND_BAD).await;
                    return;
                }
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    events.lock().unwrap().push(Event::Truncated { bytes: buf });
                }
                return;
            }
            Ok(n) => {
                bytes.fetch_add(n, Ordering::SeqCst);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases and what is expected of them

type Check = fn(&Msg) -> Result<(), String>;

#[derive(Clone, Copy)]
enum Expect {
    /// 400 with this `proxyd-error`, `connection: close`, the connection closed; nothing
    /// reached the backend.
    Refused(&'static str),
    /// This status and `proxyd-error`; nothing reached the backend.
    Answered(u16, &'static str),
    /// Closed or reset (h2: the stream reset or the connection ended), or any 4xx; nothing
    /// reached the backend.
    Closed,
    /// Exactly one well-formed request reached the backend and the client got its 200 (any
    /// answer after that is a 400 and the connection closes); the check holds on that request.
    One(Check),
    /// The client's request failed part way (a streamed body that turned out malformed): the
    /// backend got no complete request, only an aborted one.
    Aborted,
}

/// An HTTP/1.1 case: raw bytes in one write.
struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Sent once the backend has started receiving the request (a streamed body that goes
    /// wrong after it began to flow).
    then: Option<Vec<u8>>,
    /// Half-close the connection right after sending (for requests that end too early).
    eof: bool,
    expect: Expect,
}

fn case(name: impl Into<String>, bytes: impl AsRef<[u8]>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        bytes: bytes.as_ref().to_vec(),
        then: None,
        eof: false,
        expect,
    }
}

impl Case {
    fn eof(mut self) -> Case {
        self.eof = true;
        self
    }

    fn then(mut self, bytes: impl AsRef<[u8]>) -> Case {
        self.then = Some(bytes.as_ref().to_vec());
        self
    }
}

/// An h2c case: one stream on a fresh prior-knowledge connection, its header block sent as
/// literal fields (so anything at all can be in it), then DATA frames.
struct H2Case {
    name: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    data: Vec<Vec<u8>>,
    /// DATA frames sent once the backend has started receiving the request.
    later: Vec<Vec<u8>>,
    expect: Expect,
}

fn h2case(name: &str, headers: &[(&str, &str)], data: &[&[u8]], expect: Expect) -> H2Case {
    h2case_bytes(
        name,
        &headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect::<Vec<_>>(),
        data,
        expect,
    )
}

fn h2case_bytes(name: &str, headers: &[(&[u8], &[u8])], data: &[&[u8]], expect: Expect) -> H2Case {
    H2Case {
        name: name.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect(),
        data: data.iter().map(|d| d.to_vec()).collect(),
        later: Vec::new(),
        expect,
    }
}

impl H2Case {
    fn later(mut self, frames: &[&[u8]]) -> H2Case {
        self.later = frames.iter().map(|d| d.to_vec()).collect();
        self
    }
}

/// A family of cases run against one proxy with `extra` config.
struct Family {
    name: &'static str,
    extra: &'static str,
    cases: Vec<Case>,
    h2: Vec<H2Case>,
}

// ---- checks on the one forwarded request ----

fn any(_: &Msg) -> Result<(), String> {
    Ok(())
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn body_is(m: &Msg, want: &[u8]) -> Result<(), String> {
    ensure(m.body == want, || {
        format!(
            "body {:?}, expected {:?}",
            String::from_utf8_lossy(&m.body),
            String::from_utf8_lossy(want)
        )
    })
}

fn body_abc(m: &Msg) -> Result<(), String> {
    body_is(m, b"abc")
}

fn body_hello(m: &Msg) -> Result<(), String> {
    body_is(m, b"hello")
}

fn body_empty(m: &Msg) -> Result<(), String> {
    body_is(m, b"")
}

/// The one request's target was not rewritten into something else.
fn target_is(m: &Msg, want: &str) -> Result<(), String> {
    ensure(m.target == want, || format!("target {:?}", m.target))
}

fn host_is(m: &Msg, want: &str) -> Result<(), String> {
    ensure(
        m.count("host") == 1 && m.header("host").as_deref() == Some(want),
        || format!("host {:?}", m.header("host")),
    )
}

// ---------------------------------------------------------------------------------------------
// Running a case

/// One response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a client connection got: the complete responses, the bytes, and how it ended.
#[derive(Debug)]
struct Reply {
    answers: Vec<Answer>,
    bytes: Vec<u8>,
    /// Reset rather than closed cleanly.
    reset: bool,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// The complete responses at the start of `bytes` (framed by Content-Length, or empty).
fn parse_answers(bytes: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return out,
        };
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if rest.len() < n + len {
            return out;
        }
        rest = &rest[n + len..];
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            continue; // 100 Continue: interim, not an answer
        }
        out.push(Answer { status, headers });
    }
}

/// Sends the case's bytes on a new connection; once a complete response is in (or right
/// away, for `eof` cases) half-closes, then reads until proxyd closes.
async fn exchange(addr: SocketAddr, backend: &Recorder, c: &Case, what: &str) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut shut = false;
    let before = backend.bytes();
    let mut failed = s.write_all(&c.bytes).await.is_err();
    if let Some(then) = &c.then {
        backend.wait_bytes(before, what).await;
        failed = failed || s.write_all(then).await.is_err();
    }
    if failed || c.eof {
        let _ = s.shutdown().await;
        shut = true;
    }
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut reset = false;
    loop {
        if !shut && !parse_answers(&bytes).is_empty() {
            let _ = s.shutdown().await;
            shut = true;
        }
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!(
                "{what}: connection still open after {PATIENCE:?}; got {:?} (reset: {reset})",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(Ok(0)) => break,
            Ok(Err(_)) => {
                reset = true;
                break;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    Reply {
        answers: parse_answers(&bytes),
        bytes,
        reset,
    }
}

/// Requests that reached the backend; panics on anything malformed or left over.
#[track_caller]
fn requests(events: &[Event], what: &str) -> Vec<Msg> {
    events
        .iter()
        .map(|e| match e {
            Event::Request(m) => m.clone(),
            Event::Malformed { why, bytes } => panic!(
                "{what}: the backend got a malformed message ({why}): {:?}",
                String::from_utf8_lossy(bytes)
            ),
            Event::Truncated { bytes } => panic!(
                "{what}: the backend got a truncated message: {:?}",
                String::from_utf8_lossy(bytes)
            ),
        })
        .collect()
}

#[track_caller]
fn assert_nothing_upstream(events: &[Event], what: &str) {
    let got = requests(events, what);
    assert!(
        got.is_empty(),
        "{what}: {} request(s) reached the backend: {got:?}",
        got.len()
    );
}

#[track_caller]
fn assert_one_upstream(events: &[Event], check: Check, what: &str) {
    let got = requests(events, what);
    assert_eq!(
        got.len(),
        1,
        "{what}: expected exactly one request at the backend, got {got:?}"
    );
    if let Err(e) = check(&got[0]) {
        panic!("{what}: the forwarded request: {e}: {:?}", got[0]);
    }
}

async fn run_h1(addr: SocketAddr, backend: &Recorder, c: &Case, family: &str) {
    let what = format!("{family}/{}", c.name);
    let started = backend.bytes();
    let reply = exchange(addr, backend, c, &what).await;
    let text = reply.text();
    if !matches!(c.expect, Expect::Aborted) {
        // What the backend got is judged first: it is what matters most.
        let events = backend.take();
        match c.expect {
            Expect::One(check) => assert_one_upstream(&events, check, &what),
            _ => assert_nothing_upstream(&events, &what),
        }
    }
    match c.expect {
        Expect::Refused(code) | Expect::Answered(_, code) => {
            let status = match c.expect {
                Expect::Answered(s, _) => s,
                _ => 400,
            };
            assert_eq!(
                reply.answers.len(),
                1,
                "{what}: expected one {status} {code}, got {text:?}"
            );
            let a = &reply.answers[0];
            assert_eq!(a.status, status, "{what}: {text:?}");
            assert_eq!(a.header("proxyd-error"), Some(code), "{what}: {text:?}");
            if status == 400 {
                assert_eq!(a.header("connection"), Some("close"), "{what}: {text:?}");
            }
        }
        Expect::Closed => {
            assert!(
                reply.answers.iter().all(|a| (400..500).contains(&a.status)),
                "{what}: expected a refusal or a close, got {text:?} (reset: {})",
                reply.reset
            );
            assert!(reply.answers.len() <= 1, "{what}: {text:?}");
        }
        Expect::One(_) => {
            let first = reply
                .answers
                .first()
                .unwrap_or_else(|| panic!("{what}: no response: {text:?}"));
            assert_eq!(first.status, 200, "{what}: {text:?}");
            assert_eq!(first.header("x-recorded"), Some("1"), "{what}: {text:?}");
            for later in &reply.answers[1..] {
                assert_eq!(later.status, 400, "{what}: a second answer {text:?}");
            }
        }
        Expect::Aborted => {
            assert!(
                reply.answers.iter().all(|a| a.status != 200),
                "{what}: an aborted request was answered 200: {text:?}"
            );
            assert_aborted(backend, started, &what).await;
        }
    }
}

/// The backend got no complete request: nothing at all, or (when bytes had reached it) a
/// message cut off by the connection closing.
async fn assert_aborted(backend: &Recorder, started: usize, what: &str) {
    let events = if backend.bytes() == started {
        backend.take()
    } else {
        backend
            .wait_for(|e| matches!(e, Event::Truncated { .. }))
            .await
    };
    let complete: Vec<&Event> = events
        .iter()
        .filter(|e| !matches!(e, Event::Truncated { .. }))
        .collect();
    assert!(
        complete.is_empty(),
        "{what}: the backend got more than an aborted request: {complete:?}"
    );
    if backend.bytes() != started {
        assert!(
            !events.is_empty(),
            "{what}: the backend's connection was left open mid-request"
        );
    }
}

// ---- h2c by hand ----

fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// How an h2 stream ended for the client.
#[derive(Debug, Default)]
struct H2Reply {
    status: Option<u16>,
    proxyd_error: Option<String>,
    /// RST_STREAM on the stream, or GOAWAY, or the connection ended without an answer.
    reset: Option<String>,
}

/// One frame off the wire: type, flags, stream, payload.
async fn read_frame(r: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

/// A payload without its padding (and, for HEADERS, its priority fields).
fn unpad(flags: u8, payload: &[u8], priority: bool) -> &[u8] {
    let mut p = payload;
    let mut pad = 0;
    if flags & 0x8 != 0 && !p.is_empty() {
        pad = usize::from(p[0]);
        p = &p[1..];
    }
    if priority && flags & 0x20 != 0 {
        p = p.get(5..).unwrap_or_default();
    }
    &p[..p.len().saturating_sub(pad)]
}

const ERROR_CODES: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

fn error_code(payload: &[u8]) -> String {
    let code = payload
        .get(..4)
        .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    usize::try_from(code)
        .ok()
        .and_then(|c| ERROR_CODES.get(c))
        .map_or_else(|| format!("error {code}"), |s| s.to_string())
}

async fn h2_exchange(addr: SocketAddr, backend: &Recorder, c: &H2Case, what: &str) -> H2Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    let mut block = Vec::new();
    for (n, v) in &c.headers {
        hpack::literal(&mut block, n, v);
    }
    let ends = |last: bool| if last { END_STREAM } else { 0 };
    let flags = END_HEADERS | ends(c.data.is_empty() && c.later.is_empty());
    out.extend(h2_frame(0x1, flags, 1, &block));
    for (i, d) in c.data.iter().enumerate() {
        let last = i + 1 == c.data.len() && c.later.is_empty();
        out.extend(h2_frame(0x0, ends(last), 1, d));
    }
    let before = backend.bytes();
    let _ = s.write_all(&out).await;
    if !c.later.is_empty() {
        backend.wait_bytes(before, what).await;
        let mut out = Vec::new();
        for (i, d) in c.later.iter().enumerate() {
            out.extend(h2_frame(0x0, ends(i + 1 == c.later.len()), 1, d));
        }
        let _ = s.write_all(&out).await;
    }
    let mut decoder = hpack::Decoder::new();
    let mut reply = H2Reply::default();
    let mut block: Vec<u8> = Vec::new();
    let mut block_ends_stream = false;
    loop {
        let (ty, flags, stream, payload) =
            match tokio::time::timeout(PATIENCE, read_frame(&mut s)).await {
                Err(_) => panic!("{what}: no end to the h2 stream after {PATIENCE:?}: {reply:?}"),
                Ok(Err(e)) => {
                    if reply.status.is_none() {
                        reply.reset.get_or_insert(format!("connection ended: {e}"));
                    }
                    return reply;
                }
                Ok(Ok(f)) => f,
            };
        match (ty, stream) {
            // SETTINGS, PING: acknowledged.
            (0x4, 0) if flags & 0x1 == 0 => {
                let _ = s.write_all(&h2_frame(0x4, 0x1, 0, &[])).await;
            }
            (0x6, 0) if flags & 0x1 == 0 => {
                let _ = s.write_all(&h2_frame(0x6, 0x1, 0, &payload)).await;
            }
            // HEADERS and CONTINUATION on the stream.
            (0x1 | 0x9, 1) => {
                if ty == 0x1 {
                    block = unpad(flags, &payload, true).to_vec();
                    block_ends_stream = flags & END_STREAM != 0;
                } else {
                    block.extend_from_slice(&payload);
                }
                if flags & END_HEADERS == 0 {
                    continue;
                }
                let fields = decoder
                    .decode(&block)
                    .unwrap_or_else(|e| panic!("{what}: undecodable header block: {e}"));
                let field = |name: &[u8]| {
                    fields
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                };
                if let Some(st) = field(b":status") {
                    reply.status = st.parse().ok();
                    reply.proxyd_error = field(b"proxyd-error");
                }
                if block_ends_stream {
                    return reply;
                }
            }
            (0x0, 1) if flags & END_STREAM != 0 => return reply,
            (0x3, 1) => {
                reply.reset = Some(format!("RST_STREAM {}", error_code(&payload)));
                return reply;
            }
            (0x7, 0) => {
                reply.reset = Some(format!(
                    "GOAWAY {}",
                    error_code(payload.get(4..).unwrap_or_default())
                ));
                // Streams up to its last id may still be answered; read on to the end.
            }
            _ => {}
        }
    }
}

async fn run_h2(addr: SocketAddr, backend: &Recorder, c: &H2Case, family: &str) {
    let what = format!("{family}/h2 {}", c.name);
    let started = backend.bytes();
    let reply = h2_exchange(addr, backend, c, &what).await;
    match c.expect {
        Expect::Refused(code) | Expect::Answered(_, code) => {
            let status = match c.expect {
                Expect::Answered(s, _) => s,
                _ => 400,
            };
            assert_eq!(reply.status, Some(status), "{what}: {reply:?}");
            assert_eq!(
                reply.proxyd_error.as_deref(),
                Some(code),
                "{what}: {reply:?}"
            );
            assert_nothing_upstream(&backend.take(), &what);
        }
        Expect::Closed => {
            assert!(
                reply.reset.is_some() || reply.status.is_some_and(|s| (400..500).contains(&s)),
                "{what}: expected a reset or a refusal: {reply:?}"
            );
            assert_ne!(reply.status, Some(200), "{what}: {reply:?}");
            assert_nothing_upstream(&backend.take(), &what);
        }
        Expect::One(check) => {
            assert_eq!(reply.status, Some(200), "{what}: {reply:?}");
            assert_one_upstream(&backend.take(), check, &what);
        }
        Expect::Aborted => {
            assert_ne!(reply.status, Some(200), "{what}: {reply:?}");
            assert_aborted(backend, started, &what).await;
        }
    }
}

/// Runs every case of `family` (each one's failure is printed as it happens), then fails
/// with the list of failed cases.
async fn run_cases(addr: SocketAddr, backend: &Recorder, family: &Family) {
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;
    let mut failed = Vec::new();
    for c in &family.cases {
        let run = AssertUnwindSafe(run_h1(addr, backend, c, family.name));
        if run.catch_unwind().await.is_err() {
            failed.push(c.name.clone());
            backend.take();
        }
    }
    for c in &family.h2 {
        let run = AssertUnwindSafe(run_h2(addr, backend, c, family.name));
        if run.catch_unwind().await.is_err() {
            failed.push(format!("h2 {}", c.name));
            backend.take();
        }
    }
    assert!(
        failed.is_empty(),
        "{}: {} of {} cases failed: {failed:#?}",
        family.name,
        failed.len(),
        family.cases.len() + family.h2.len()
    );
}

/// Runs a family against proxyd in this process.
async fn run_family(family: Family) {
    let backend = Recorder::start().await;
    let proxy = TestProxy::to(&[backend.addr], family.extra).await;
    run_cases(proxy.addr, &backend, &family).await;
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The catalogue

const H: &str = "Host: a\r\n";

fn post(headers: &str, body: &str) -> String {
    format!("POST /p HTTP/1.1\r\n{H}{headers}\r\n{body}")
}

/// A request that, framed the other way, hides a second one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

fn cl_te() -> Family {
    let chunked_hiding = format!("0\r\n\r\n{SMUGGLED}");
    let te_cl_body = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let clte = "content-length-with-transfer-encoding";
    let cases = vec![
        // CL.TE: a front end reading Content-Length forwards the smuggled request as body.
        case(
            "CL.TE, CL first",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    chunked_hiding.len()
                ),
                &chunked_hiding,
            ),
            Expect::Refused(clte),
        ),
        case(
            "CL.TE, TE first",
            post(
                &format!(
                    "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                    chunked_hiding.len()
                ),
                &chunked_hiding,
            ),
            Expect::Refused(clte),
        ),
        case(
            "CL.TE, TE name in capitals",
            post(
                &format!(
                    "Content-Length: {}\r\nTRANSFER-ENCODING: chunked\r\n",
                    chunked_hiding.len()
                ),
                &chunked_hiding,
            ),
            Expect::Refused(clte),
        ),
        case(
            "CL.TE, TE value obfuscated by a tab",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding:\tchunked\r\n",
                    chunked_hiding.len()
                ),
                &chunked_hiding,
            ),
            Expect::Refused(clte),
        ),
        // TE.CL: a back end reading Content-Length takes the chunk size as the body.
        case(
            "TE.CL, CL shorter than the chunked body",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                &te_cl_body,
            ),
            Expect::Refused(clte),
        ),
        case(
            "TE.CL, CL 0",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
                &te_cl_body,
            ),
            Expect::Refused(clte),
        ),
        // TE.TE: two Transfer-Encodings, one of them something the other side ignores.
        case(
            "TE.TE, chunked then identity",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &te_cl_body,
            ),
            Expect::Refused("bad-transfer-encoding"),
        ),
        case(
            "TE.TE, chunked then cow",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n",
                &te_cl_body,
            ),
            Expect::Refused("bad-transfer-encoding"),
        ),
        case(
            "TE.TE, xchunked then chunked",
            post(
                "Transfer-Encoding: xchunked\r\nTransfer-Encoding: chunked\r\n",
                &te_cl_body,
            ),
            Expect::Refused("bad-transfer-encoding"),
        ),
        // CL.CL: two lengths, each side taking a different one.
        case(
            "CL.CL, different",
            post("Content-Length: 0\r\nContent-Length: 35\r\n", SMUGGLED),
            Expect::Refused("duplicate-content-length"),
        ),
        case(
            "CL.CL, one line each, same value",
            post("Content-Length: 35\r\nContent-Length: 35\r\n", SMUGGLED),
            Expect::Refused("duplicate-content-length"),
        ),
        // The body looks like a request but is framed: exactly one request upstream.
        case(
            "a smuggled-looking body with Content-Length only",
            post(&format!("Content-Length: {}\r\n", SMUGGLED.len()), SMUGGLED),
            Expect::One(|m| body_is(m, SMUGGLED.as_bytes())),
        ),
        case(
            "a smuggled-looking body chunked only",
            post("Transfer-Encoding: chunked\r\n", &te_cl_body),
            Expect::One(|m| {
                body_is(m, SMUGGLED.as_bytes())?;
                ensure(m.header("content-length").as_deref() == Some("35"), || {
                    "the buffered body went without its length".into()
                })
            }),
        ),
    ];
    Family {
        name: "cl_te",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn te_obfuscations() -> Family {
    let body = "3\r\nabc\r\n0\r\n\r\n";
    let refused = |name: &str, te: &str, code: &'static str| {
        case(
            name,
            post(&format!("{te}\r\n"), body),
            Expect::Refused(code),
        )
    };
    let accepted = |name: &str, te: &str| {
        case(
            name,
            post(&format!("{te}\r\n"), body),
            Expect::One(body_abc),
        )
    };
    let bte = "bad-transfer-encoding";
    let cases = vec![
        // Normalisable: names and the coding are case-insensitive, OWS around a value is not
        // part of it.
        accepted("value Chunked", "Transfer-Encoding: Chunked"),
        accepted("value CHUNKED", "Transfer-Encoding: CHUNKED"),
        accepted("name in lower case", "transfer-encoding: chunked"),
        accepted("name in capitals", "TRANSFER-ENCODING: chunked"),
        accepted("no space after the colon", "Transfer-Encoding:chunked"),
        accepted("tab before the value", "Transfer-Encoding:\tchunked"),
        accepted("two spaces before the value", "Transfer-Encoding:  chunked"),
        accepted("trailing space", "Transfer-Encoding: chunked "),
        accepted("trailing tab", "Transfer-Encoding: chunked\t"),
        // Refused.
        refused(
            "chunked, chunked",
            "Transfer-Encoding: chunked, chunked",
            bte,
        ),
        refused("gzip, chunked", "Transfer-Encoding: gzip, chunked", bte),
        refused("chunked, gzip", "Transfer-Encoding: chunked, gzip", bte),
        refused(
            "identity, chunked",
            "Transfer-Encoding: identity, chunked",
            bte,
        ),
        refused("chunked;x", "Transfer-Encoding: chunked;x", bte),
        refused(
            "chunked with a parameter",
            "Transfer-Encoding: chunked; q=1",
            bte,
        ),
        refused("xchunked", "Transfer-Encoding: xchunked", bte),
        refused("chunkedx", "Transfer-Encoding: chunkedx", bte),
        refused("chunk", "Transfer-Encoding: chunk", bte),
        refused("quoted", "Transfer-Encoding: \"chunked\"", bte),
        refused("trailing comma", "Transfer-Encoding: chunked,", bte),
        refused("leading comma", "Transfer-Encoding: ,chunked", bte),
        refused("empty", "Transfer-Encoding: ", bte),
        refused("a space inside", "Transfer-Encoding: chun ked", bte),
        refused(
            "two lines, both chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            bte,
        ),
        refused(
            "two lines, gzip then chunked",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            bte,
        ),
        refused(
            "two lines, the second empty",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: ",
            bte,
        ),
        refused(
            "vertical tab before chunked",
            "Transfer-Encoding: \x0bchunked",
            "bad-header-value",
        ),
        refused(
            "form feed before chunked",
            "Transfer-Encoding: \x0cchunked",
            "bad-header-value",
        ),
        refused(
            "vertical tab after chunked",
            "Transfer-Encoding: chunked\x0b",
            "bad-header-value",
        ),
        refused(
            "NUL after chunked",
            "Transfer-Encoding: chunked\x00",
            "bad-header-value",
        ),
        refused(
            "bare CR after chunked",
            "Transfer-Encoding: chunked\r",
            "bad-header-value",
        ),
        refused(
            "ESC before chunked",
            "Transfer-Encoding: \x1bchunked",
            "bad-header-value",
        ),
        refused(
            "space before the colon",
            "Transfer-Encoding : chunked",
            "bad-header-name",
        ),
        refused(
            "tab before the colon",
            "Transfer-Encoding\t: chunked",
            "bad-header-name",
        ),
        refused(
            "folded value",
            "Transfer-Encoding:\r\n chunked",
            "bad-header-name",
        ),
        refused(
            "folded after another header",
            "X-A: b\r\n Transfer-Encoding: chunked",
            "bad-header-name",
        ),
        refused(
            "vertical tab in the name",
            "Transfer-Encoding\x0b: chunked",
            "bad-header-name",
        ),
        refused(
            "NUL in the name",
            "Transfer-\x00Encoding: chunked",
            "bad-header-name",
        ),
        refused(
            "HT-prefixed name",
            "\tTransfer-Encoding: chunked",
            "bad-header-name",
        ),
        // Not the Transfer-Encoding header at all: the request has no body, and what follows
        // its head is the next head, which is not a request.
        case(
            "Transfer_Encoding (underscore)",
            post("Transfer_Encoding: chunked\r\n", body),
            Expect::One(|m| {
                body_empty(m)?;
                ensure(m.header("transfer_encoding").is_none(), || {
                    "the Transfer_Encoding lookalike went upstream".into()
                })
            }),
        ),
        case(
            "Transfer-Encoding on HTTP/1.0",
            format!("POST /p HTTP/1.0\r\n{H}Transfer-Encoding: chunked\r\n\r\n{body}"),
            Expect::Refused(bte),
        ),
    ];
    Family {
        name: "te_obfuscations",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn content_lengths() -> Family {
    let refused = |name: &str, cl: &str, code: &'static str| {
        case(
            name,
            post(&format!("{cl}\r\n"), "hello"),
            Expect::Refused(code),
        )
    };
    let bcl = "bad-content-length";
    let cases = vec![
        refused(
            "duplicate, same value",
            "Content-Length: 5\r\nContent-Length: 5",
            "duplicate-content-length",
        ),
        refused(
            "duplicate, different values",
            "Content-Length: 5\r\nContent-Length: 6",
            "duplicate-content-length",
        ),
        refused(
            "duplicate, names in different case",
            "Content-Length: 5\r\ncontent-LENGTH: 5",
            "duplicate-content-length",
        ),
        refused("signed +5", "Content-Length: +5", bcl),
        refused("signed -1", "Content-Length: -1", bcl),
        refused("hex 0x5", "Content-Length: 0x5", bcl),
        refused("hex digits", "Content-Length: 5a", bcl),
        refused("decimal point", "Content-Length: 5.0", bcl),
        refused("exponent", "Content-Length: 5e0", bcl),
        refused("comma-listed 5, 5", "Content-Length: 5, 5", bcl),
        refused("comma-listed 5,5", "Content-Length: 5,5", bcl),
        refused("space inside", "Content-Length: 5 5", bcl),
        refused("empty", "Content-Length: ", bcl),
        refused(
            "overflow past i64",
            "Content-Length: 9223372036854775808",
            bcl,
        ),
        refused(
            "overflow past u64",
            "Content-Length: 18446744073709551616",
            bcl,
        ),
        refused(
            "overflow, many digits",
            "Content-Length: 99999999999999999999999999999999",
            bcl,
        ),
        refused(
            "unicode digit",
            "Content-Length: \u{0665}",
            "bad-content-length",
        ),
        refused("vertical tab", "Content-Length: \x0b5", "bad-header-value"),
        refused(
            "space before the colon",
            "Content-Length : 5",
            "bad-header-name",
        ),
        // Normalisable: 1*DIGIT with leading zeros, OWS around the value.
        case(
            "leading zeros",
            post("Content-Length: 0005\r\n", "hello"),
            Expect::One(|m| {
                body_hello(m)?;
                ensure(m.header("content-length").as_deref() == Some("5"), || {
                    format!("forwarded length {:?}", m.header("content-length"))
                })
            }),
        ),
        case(
            "trailing whitespace",
            post("Content-Length: 5 \r\n", "hello"),
            Expect::One(body_hello),
        ),
        case(
            "a body on GET",
            format!("GET /g HTTP/1.1\r\n{H}Content-Length: 5\r\n\r\nhello"),
            Expect::One(|m| {
                body_hello(m)?;
                ensure(m.method == "GET", || format!("method {}", m.method))
            }),
        ),
        case(
            "Content-Length: 0 then a non-request",
            post("Content-Length: 0\r\n", "\x00GET / HTTP/1.1\r\n\r\n"),
            Expect::One(body_empty),
        ),
        // Shorter than declared: the request never completes.
        case(
            "body shorter than declared, then EOF",
            post("Content-Length: 10\r\n", "hello"),
            Expect::Refused("bad-body"),
        )
        .eof(),
    ];
    Family {
        name: "content_lengths",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn chunked_bodies() -> Family {
    let head = format!("POST /c HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n");
    let bad =
        |name: &str, body: &str| case(name, format!("{head}{body}"), Expect::Refused("bad-body"));
    let good = |name: &str, body: &str, check: Check| {
        case(name, format!("{head}{body}"), Expect::One(check))
    };
    let huge_ext = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(20_000));
    let many_ext = format!("{}0\r\n\r\n", "1;aaaaaaaa=b\r\nx\r\n".repeat(3000));
    let cases = vec![
        bad("empty chunk size", "\r\nabc\r\n0\r\n\r\n"),
        bad("chunk size of spaces", "  \r\nabc\r\n0\r\n\r\n"),
        bad("leading space before the size", " 3\r\nabc\r\n0\r\n\r\n"),
        bad("0x prefix", "0x3\r\nabc\r\n0\r\n\r\n"),
        bad("negative", "-3\r\nabc\r\n0\r\n\r\n"),
        bad("plus sign", "+3\r\nabc\r\n0\r\n\r\n"),
        bad(
            "size overflow, 2^64",
            "10000000000000000\r\nabc\r\n0\r\n\r\n",
        ),
        bad(
            "size overflow, many f",
            "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        ),
        bad("bare LF after the size", "3\nabc\r\n0\r\n\r\n"),
        bad("bare LF after the data", "3\r\nabc\n0\r\n\r\n"),
        bad("bare CR after the size", "3\rabc\r\n0\r\n\r\n"),
        bad("bare LF in an extension", "3;a\nb\r\nabc\r\n0\r\n\r\n"),
        bad("data longer than the size", "3\r\nabcdef\r\n0\r\n\r\n"),
        bad("data shorter than the size", "5\r\nabc\r\n0\r\n\r\n"),
        bad("huge chunk extension", &huge_ext),
        bad("many small extensions adding up", &many_ext),
        bad("last chunk size without CRLF, EOF", "3\r\nabc\r\n0").eof(),
        bad("missing final CRLF, EOF", "3\r\nabc\r\n0\r\n").eof(),
        bad("final CR without LF, EOF", "3\r\nabc\r\n0\r\n\r").eof(),
        bad("no last chunk, EOF", "3\r\nabc\r\n").eof(),
        bad("stops mid-chunk, EOF", "a\r\nabc").eof(),
        good(
            "chunk extension",
            "3;name=value\r\nabc\r\n0\r\n\r\n",
            body_abc,
        ),
        good(
            "quoted chunk extension",
            "3;n=\"a;b\"\r\nabc\r\n0\r\n\r\n",
            body_abc,
        ),
        good(
            "extension on the last chunk",
            "3\r\nabc\r\n0;last\r\n\r\n",
            body_abc,
        ),
        good("space after the size", "3 \r\nabc\r\n0\r\n\r\n", body_abc),
        good(
            "leading zeros in the size",
            "0003\r\nabc\r\n000\r\n\r\n",
            body_abc,
        ),
        good("upper-case hex", "A\r\nabcdefghij\r\n0\r\n\r\n", |m| {
            body_is(m, b"abcdefghij")
        }),
        good("a zero-size body", "0\r\n\r\n", body_empty),
        good("trailer", "3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n", body_abc),
        good(
            "Content-Length in the trailer",
            "3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n",
            |m| {
                body_abc(m)?;
                ensure(m.count("content-length") <= 1, || "two lengths".into())
            },
        ),
        good(
            "Transfer-Encoding in the trailer",
            "3\r\nabc\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
            body_abc,
        ),
        good(
            "Host in the trailer",
            "3\r\nabc\r\n0\r\nHost: evil\r\n\r\n",
            |m| {
                body_abc(m)?;
                host_is(m, "a")
            },
        ),
        // A smuggled request after a bad chunk is never judged: the connection is over.
        case(
            "bad chunk then a smuggled request",
            format!("{head}zz\r\n\r\n{SMUGGLED}"),
            Expect::Refused("bad-body"),
        ),
    ];
    // Declared trailers are forwarded only when allowed; framing ones never.
    let declared = format!(
        "POST /c HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTrailer: Content-Length, X-Sum\r\n\r\n\
         3\r\nabc\r\n0\r\nContent-Length: 50\r\nX-Sum: 1\r\n\r\n"
    );
    let mut cases = cases;
    cases.push(case(
        "declared Content-Length trailer",
        declared,
        Expect::One(|m| {
            body_abc(m)?;
            ensure(m.count("content-length") <= 1, || "two lengths".into())
        }),
    ));
    Family {
        name: "chunked_bodies",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn line_endings_and_control_bytes() -> Family {
    let cases = vec![
        // RFC 9112 2.2: a recipient MAY take a bare LF as a line terminator; hyper does, and the
        // request goes upstream with CRLFs.
        case(
            "bare LF line endings",
            "GET /lf HTTP/1.1\nHost: a\n\n",
            Expect::One(|m| target_is(m, "/lf")),
        ),
        case(
            "bare LF after the request line only",
            "GET /lf HTTP/1.1\nHost: a\r\n\r\n",
            Expect::One(|m| target_is(m, "/lf")),
        ),
        case(
            "bare LF ending a CL header, TE on the next",
            post(
                "Content-Length: 3\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Expect::Refused("content-length-with-transfer-encoding"),
        ),
        case(
            "bare CR ending the request line",
            "GET / HTTP/1.1\rHost: a\r\n\r\n",
            Expect::Refused("bad-line-ending"),
        ),
        case(
            "bare CR ending a header line",
            "GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n",
            Expect::Refused("bad-header-value"),
        ),
        case(
            "bare CR ending the head",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
            Expect::Refused("bad-line-ending"),
        ),
        case(
            "bare CR hiding Content-Length",
            post("X-A: b\rContent-Length: 5\r\n", "hello"),
            Expect::Refused("bad-header-value"),
        ),
        case(
            "CR CR LF",
            "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-line-ending"),
        ),
        case(
            "NUL in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
            Expect::Refused("bad-header-value"),
        ),
        case(
            "NUL in the Host value",
            "GET / HTTP/1.1\r\nHost: a\x00.evil\r\n\r\n",
            Expect::Refused("bad-header-value"),
        ),
        case(
            "NUL in the target",
            "GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-target"),
        ),
        case(
            "NUL in the method",
            "GE\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-method"),
        ),
        case(
            "NUL in the version",
            "GET / HTTP/1.1\x00\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        case(
            "NUL before the request",
            "\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-method"),
        ),
        case(
            "DEL in the target",
            "GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-target"),
        ),
        case(
            "tab in the target",
            "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-target"),
        ),
        case(
            "space in the target",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        case(
            "two spaces after the method",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-target"),
        ),
        case(
            "trailing space after the version",
            "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        // Empty lines before a request line are allowed (RFC 9112 2.2) and dropped.
        case(
            "CRLF before the request line",
            "\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::One(|m| target_is(m, "/after")),
        ),
    ];
    Family {
        name: "line_endings_and_control_bytes",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn header_names_and_folding() -> Family {
    let name = |what: &str, line: &str| {
        case(
            what,
            format!("GET / HTTP/1.1\r\n{H}{line}\r\n\r\n"),
            Expect::Refused("bad-header-name"),
        )
    };
    let cases = vec![
        name("obs-fold with a space", "X-A: b\r\n c"),
        name("obs-fold with a tab", "X-A: b\r\n\tc"),
        name("obs-fold of Content-Length", "Content-Length: 0\r\n 5"),
        name("space before the colon", "X-A : b"),
        name("space inside the name", "X A: b"),
        name("parenthesis in the name", "X(A): b"),
        name("quote in the name", "X\"A: b"),
        name("slash in the name", "X/A: b"),
        name("brackets in the name", "[X]: b"),
        name("at in the name", "X@A: b"),
        name("comma in the name", "X,A: b"),
        name("equals in the name", "X=A: b"),
        name("non-ASCII in the name", "X\u{e9}: b"),
        name("empty name", ": b"),
        name("no colon", "X-A b"),
        name("only a colon", ":"),
        case(
            "a header line before Host with a leading space",
            "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            Expect::Refused("bad-header-name"),
        ),
        // A header value may hold obs-text, and a colon.
        case(
            "obs-text and colons in a value",
            format!("GET / HTTP/1.1\r\n{H}X-A: caf\u{e9}: b:c\r\n\r\n"),
            Expect::One(|m| ensure(m.header("x-a").is_some(), || "x-a was dropped".into())),
        ),
        case(
            "an empty value",
            format!("GET / HTTP/1.1\r\n{H}X-A:\r\n\r\n"),
            Expect::One(any),
        ),
        // Host.
        case(
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            Expect::Refused("duplicate-host"),
        ),
        case(
            "Host with a space",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            Expect::Refused("bad-host"),
        ),
        case(
            "Host with userinfo",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            Expect::Refused("bad-host"),
        ),
        case(
            "Host with a path",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            Expect::Refused("bad-host"),
        ),
        case(
            "Host comma-listed",
            "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
            Expect::Refused("bad-host"),
        ),
        case(
            "Host with a port out of range",
            "GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",
            Expect::Refused("bad-host"),
        ),
        case(
            "Host with an empty port",
            "GET / HTTP/1.1\r\nHost: a:\r\n\r\n",
            Expect::Refused("bad-host"),
        ),
        case(
            "Host with a port, IPv6",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            Expect::One(|m| host_is(m, "[::1]:8080")),
        ),
        case(
            "empty Host",
            "GET / HTTP/1.1\r\nHost: \r\n\r\n",
            Expect::Refused("bad-host"),
        ),
    ];
    Family {
        name: "header_names_and_folding",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn request_targets() -> Family {
    let get = |target: &str, host: &str| format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let cases = vec![
        // Absolute-form: its authority wins over Host and the backend gets origin-form and one
        // Host.
        case(
            "absolute-form, a different Host",
            get("http://b.example/x?y", "a.example"),
            Expect::One(|m| {
                target_is(m, "/x?y")?;
                host_is(m, "b.example")
            }),
        ),
        case(
            "absolute-form without a path",
            get("http://b.example", "a.example"),
            Expect::One(|m| {
                target_is(m, "/")?;
                host_is(m, "b.example")
            }),
        ),
        case(
            "absolute-form with a query and no path",
            get("http://b.example?q=1", "a.example"),
            Expect::One(|m| {
                target_is(m, "/?q=1")?;
                host_is(m, "b.example")
            }),
        ),
        case(
            "absolute-form https on a plain listener",
            get("https://b.example/x", "a.example"),
            Expect::One(|m| {
                target_is(m, "/x")?;
                host_is(m, "b.example")
            }),
        ),
        case(
            "absolute-form without Host",
            "GET http://b.example/x HTTP/1.1\r\n\r\n",
            Expect::One(|m| host_is(m, "b.example")),
        ),
        case(
            "absolute-form with userinfo",
            get("http://user@b.example/", "b.example"),
            Expect::Refused("bad-host"),
        ),
        case(
            "absolute-form with an unknown scheme",
            get("ftp://b.example/x", "a.example"),
            Expect::Refused("bad-target"),
        ),
        case(
            "absolute-form with a bad authority",
            get("http://b.example:99999/x", "a.example"),
            Expect::Refused("bad-target"),
        ),
        // Authority-form is for CONNECT only.
        case(
            "CONNECT host:port",
            "CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n",
            Expect::Refused("connect-not-supported"),
        ),
        case(
            "CONNECT with a body",
            "CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("connect-not-supported"),
        ),
        case(
            "CONNECT with an origin-form target",
            "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("connect-not-supported"),
        ),
        case(
            "authority-form on GET",
            get("b.example:80", "b.example"),
            Expect::Refused("bad-target"),
        ),
        case(
            "authority-form on POST",
            "POST b.example:80 HTTP/1.1\r\nHost: b.example\r\nContent-Length: 0\r\n\r\n",
            Expect::Refused("bad-target"),
        ),
        case(
            "a bare host as the target",
            get("b.example", "b.example"),
            Expect::Refused("bad-target"),
        ),
        // Asterisk-form is for OPTIONS only.
        case(
            "asterisk-form on GET",
            get("*", "a"),
            Expect::Refused("bad-target"),
        ),
        case(
            "asterisk-form on POST",
            "POST * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            Expect::Refused("bad-target"),
        ),
        case(
            "asterisk-form on OPTIONS",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            Expect::Answered(404, "no-route"),
        ),
        // A path is passed on as sent; no decoding that would route it elsewhere.
        case(
            "dot segments and encoded slashes",
            get("/a/../b/%2e%2e/%2Fc", "a"),
            Expect::One(|m| target_is(m, "/a/../b/%2e%2e/%2Fc")),
        ),
        case(
            "a path starting with //",
            get("//b.example/x", "a"),
            Expect::One(|m| {
                target_is(m, "//b.example/x")?;
                host_is(m, "a")
            }),
        ),
        case(
            "a fragment in the target",
            get("/x#frag", "a"),
            Expect::Refused("bad-target"),
        ),
        case(
            "a backslash in the target",
            get("/x\\y", "a"),
            Expect::One(|m| target_is(m, "/x\\y")),
        ),
    ];
    Family {
        name: "request_targets",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn versions() -> Family {
    let cases = vec![
        case("HTTP/0.9 request line", "GET /\r\n\r\n", Expect::Refused("bad-version")),
        case("HTTP/0.9 request line, EOF", "GET /\r\n", Expect::Closed).eof(),
        case(
            "HTTP/2.0 in an HTTP/1 request line",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        case(
            "HTTP/1.2",
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        case(
            "HTTP/1.10",
            "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        case(
            "lower-case http/1.1",
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            Expect::Refused("bad-version"),
        ),
        case(
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\n\r\n",
            Expect::Refused("missing-host"),
        ),
        case(
            "HTTP/1.0 without Host",
            "GET /ten HTTP/1.0\r\n\r\n",
            Expect::One(|m| target_is(m, "/ten")),
        ),
        case(
            "HTTP/1.0 keep-alive",
            "GET /ten HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            Expect::One(|m| {
                target_is(m, "/ten")?;
                ensure(m.header("keep-alive").is_none(), || "keep-alive passed".into())
            }),
        ),
        // No Content-Length and no chunked: no body, whatever the version. What follows is the
        // next head, and it is not one.
        case(
            "HTTP/1.0 keep-alive POST with a body and no length",
            "POST /ten HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nhello=world",
            Expect::One(body_empty),
        )
        .eof(),
        case(
            "HTTP/1.0 POST with a body and no length",
            "POST /ten HTTP/1.0\r\nHost: a\r\n\r\nhello=world",
            Expect::One(body_empty),
        ),
        case(
            "HTTP/1.0 keep-alive with Content-Length",
            "POST /ten HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
            Expect::One(body_hello),
        ),
        case(
            "HTTP/1.1 POST with a body and no length",
            "POST /p HTTP/1.1\r\nHost: a\r\n\r\nhello=world",
            Expect::One(body_empty),
        )
        .eof(),
        case(
            "h2 preface on an HTTP/1.1 connection after a request",
            format!("GET /one HTTP/1.1\r\n{H}\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Expect::One(|m| target_is(m, "/one")),
        ),
    ];
    Family {
        name: "versions",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

fn hop_by_hop() -> Family {
    let cases = vec![
        // Headers named in Connection go; the framing proxyd writes stays.
        case(
            "Connection: Content-Length",
            post("Connection: Content-Length\r\nContent-Length: 5\r\n", "hello"),
            Expect::One(|m| {
                body_hello(m)?;
                ensure(m.header("content-length").as_deref() == Some("5"), || {
                    "the body went without its length".into()
                })
            }),
        ),
        case(
            "Connection: Transfer-Encoding",
            post("Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
            Expect::One(body_abc),
        ),
        case(
            "Connection: Host",
            format!("GET / HTTP/1.1\r\n{H}Connection: Host\r\n\r\n"),
            Expect::One(|m| host_is(m, "a")),
        ),
        case(
            "Connection: X-Forwarded-For",
            format!("GET / HTTP/1.1\r\n{H}Connection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"),
            Expect::One(|m| {
                ensure(m.header("x-forwarded-for").as_deref() == Some("127.0.0.1"), || {
                    format!("x-forwarded-for {:?}", m.header("x-forwarded-for"))
                })
            }),
        ),
        // CGI and WSGI read `X_Forwarded_For` as `X-Forwarded-For`.
        case(
            "X_Forwarded_For (underscore)",
            format!("GET / HTTP/1.1\r\n{H}X_Forwarded_For: 6.6.6.6\r\nX_Client_Subject: CN=admin\r\nX_Other: 1\r\n\r\n"),
            Expect::One(|m| {
                ensure(m.header("x_forwarded_for").is_none(), || {
                    "X_Forwarded_For went upstream".into()
                })?;
                ensure(m.header("x_client_subject").is_none(), || {
                    "X_Client_Subject went upstream".into()
                })?;
                ensure(m.header("x_other").is_some(), || "X_Other was dropped".into())
            }),
        ),
        // h2c upgrade through a proxy lets a client talk to the backend directly, past
        // every per-request rule: proxyd does not pass it on.
        case(
            "Upgrade: h2c",
            format!(
                "GET / HTTP/1.1\r\n{H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                 HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
            ),
            Expect::One(|m| {
                ensure(m.header("upgrade").is_none(), || "Upgrade: h2c went upstream".into())?;
                ensure(m.header("http2-settings").is_none(), || {
                    "HTTP2-Settings went upstream".into()
                })
            }),
        ),
        case(
            "Upgrade: h2c without Connection",
            format!("GET / HTTP/1.1\r\n{H}Upgrade: h2c\r\n\r\n"),
            Expect::One(|m| ensure(m.header("upgrade").is_none(), || "Upgrade went upstream".into())),
        ),
        case(
            "Expect: 100-continue with the body sent at once",
            post("Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"),
            Expect::One(|m| {
                body_hello(m)?;
                ensure(m.header("expect").is_none(), || "Expect went upstream".into())
            }),
        ),
    ];
    Family {
        name: "hop_by_hop",
        extra: "",
        cases,
        h2: Vec::new(),
    }
}

/// Bodies past `buffer_body` stream to the backend; one that turns out malformed is cut off
/// (the backend's connection closed mid-body), never completed or followed by anything. Sent
/// at once, the error is found before anything goes upstream; sent in two parts, the second
/// after the backend began receiving, the backend has part of the body when it goes wrong.
fn streamed_bodies() -> Family {
    let big = "x".repeat(3000);
    let sized_head = format!("POST /s HTTP/1.1\r\n{H}Content-Length: 5000\r\n\r\n");
    let chunked_head = format!("POST /s HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n");
    let first_chunk = format!("{chunked_head}bb8\r\n{big}\r\n");
    let cases = vec![
        case(
            "Content-Length body ends early",
            format!("{sized_head}{big}"),
            Expect::Aborted,
        )
        .eof(),
        case(
            "Content-Length body ends early, after it began to flow",
            format!("{sized_head}{big}"),
            Expect::Aborted,
        )
        .then("")
        .eof(),
        case(
            "chunked body turns bad",
            format!("{first_chunk}zz\r\n{SMUGGLED}"),
            Expect::Aborted,
        ),
        case(
            "chunked body turns bad, after it began to flow",
            &first_chunk,
            Expect::Aborted,
        )
        .then(format!("zz\r\n{SMUGGLED}")),
        case(
            "chunked body: a chunk longer than its size, after it began to flow",
            &first_chunk,
            Expect::Aborted,
        )
        .then(format!("3\r\nabcdef\r\n0\r\n\r\n{SMUGGLED}")),
        case(
            "chunked body without its last chunk",
            &first_chunk,
            Expect::Aborted,
        )
        .eof(),
        case(
            "chunked body without its last chunk, after it began to flow",
            &first_chunk,
            Expect::Aborted,
        )
        .then("")
        .eof(),
        case(
            "chunked body then garbage",
            format!("{first_chunk}0\r\n\r\nG(ET / HTTP/1.1\r\n\r\n"),
            Expect::One(|m| {
                ensure(m.body.len() == 3000, || {
                    format!("{} body bytes", m.body.len())
                })
            }),
        ),
    ];
    let streamed = "x".repeat(3000);
    let head = |len: &'static [u8]| -> Vec<(&'static [u8], &'static [u8])> {
        vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/s"),
            (b":authority", b"a"),
            (b"content-length", len),
        ]
    };
    let h2 = vec![
        h2case_bytes(
            "body longer than its content-length",
            &head(b"2000"),
            &[streamed.as_bytes()],
            Expect::Aborted,
        ),
        h2case_bytes(
            "body longer than its content-length, after it began to flow",
            &head(b"4000"),
            &[streamed.as_bytes()],
            Expect::Aborted,
        )
        .later(&[streamed.as_bytes()]),
        h2case_bytes(
            "body shorter than its content-length",
            &head(b"4000"),
            &[streamed.as_bytes()],
            Expect::Aborted,
        ),
        h2case_bytes(
            "body shorter than its content-length, after it began to flow",
            &head(b"4000"),
            &[streamed.as_bytes()],
            Expect::Aborted,
        )
        .later(&[b""]),
    ];
    Family {
        name: "streamed_bodies",
        extra: "limits: { buffer_body: 1KiB }\n",
        cases,
        h2,
    }
}

type Field = (&'static str, &'static str);

fn h2_downgrade() -> Family {
    let base: &[Field] = &[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/h2"),
        (":authority", "a"),
    ];
    let with = |extra: &[Field]| -> Vec<Field> { base.iter().chain(extra).copied().collect() };
    let get: &[Field] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/h2"),
        (":authority", "a"),
    ];
    let get_with = |extra: &[Field]| -> Vec<Field> { get.iter().chain(extra).copied().collect() };
    let h2 = vec![
        h2case("plain GET", get, &[], Expect::One(|m| host_is(m, "a"))),
        h2case(
            "content-length matching DATA",
            &with(&[("content-length", "5")]),
            &[b"hello"],
            Expect::One(|m| {
                body_hello(m)?;
                ensure(m.header("content-length").as_deref() == Some("5"), || {
                    "length not forwarded".into()
                })
            }),
        ),
        h2case(
            "no content-length: the backend gets one",
            base,
            &[b"hel", b"lo"],
            Expect::One(|m| {
                body_hello(m)?;
                ensure(m.header("content-length").as_deref() == Some("5"), || {
                    "length not set".into()
                })
            }),
        ),
        h2case(
            "content-length shorter than DATA",
            &with(&[("content-length", "3")]),
            &[b"hello"],
            Expect::Closed,
        ),
        h2case(
            "content-length longer than DATA",
            &with(&[("content-length", "10")]),
            &[b"hello"],
            Expect::Closed,
        ),
        h2case(
            "content-length with DATA split",
            &with(&[("content-length", "4")]),
            &[b"he", b"llo"],
            Expect::Closed,
        ),
        h2case(
            "content-length 0 with DATA",
            &with(&[("content-length", "0")]),
            &[b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"],
            Expect::Closed,
        ),
        h2case(
            "content-length on GET without DATA",
            &get_with(&[("content-length", "35")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "two content-lengths",
            &with(&[("content-length", "5"), ("content-length", "6")]),
            &[b"hello"],
            Expect::Closed,
        ),
        h2case(
            "signed content-length",
            &with(&[("content-length", "+5")]),
            &[b"hello"],
            Expect::Closed,
        ),
        h2case(
            "comma-listed content-length",
            &with(&[("content-length", "5, 5")]),
            &[b"hello"],
            Expect::Closed,
        ),
        // Connection-specific headers are malformed in h2 (RFC 9113 8.2.2).
        h2case(
            "transfer-encoding: chunked",
            &with(&[("transfer-encoding", "chunked")]),
            &[b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"],
            Expect::Closed,
        ),
        h2case(
            "connection: keep-alive",
            &get_with(&[("connection", "keep-alive")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "connection: close",
            &get_with(&[("connection", "close")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "keep-alive",
            &get_with(&[("keep-alive", "timeout=5")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "proxy-connection",
            &get_with(&[("proxy-connection", "keep-alive")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "upgrade: websocket",
            &get_with(&[("upgrade", "websocket")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "upgrade: h2c",
            &get_with(&[("upgrade", "h2c")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "te: gzip",
            &get_with(&[("te", "gzip")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "te: trailers, gzip",
            &get_with(&[("te", "trailers, gzip")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "te: trailers",
            &get_with(&[("te", "trailers")]),
            &[],
            Expect::One(|m| {
                ensure(m.header("te").as_deref() == Some("trailers"), || {
                    format!("te {:?}", m.header("te"))
                })
            }),
        ),
        // Header injection into the HTTP/1.1 request.
        h2case(
            "CRLF in a header value",
            &get_with(&[("x-a", "b\r\nTransfer-Encoding: chunked")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "LF in a header value",
            &get_with(&[("x-a", "b\nContent-Length: 5")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "NUL in a header value",
            &get_with(&[("x-a", "b\0c")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "space in a header name",
            &get_with(&[("x a", "b")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "colon in a header name",
            &get_with(&[("x:a", "b")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "upper case in a header name",
            &get_with(&[("X-A", "b")]),
            &[],
            Expect::Closed,
        ),
        h2case(
            "CRLF in :path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/ HTTP/1.1\r\nHost: evil\r\n\r\nGET /x"),
                (":authority", "a"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "space in :path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/a b"),
                (":authority", "a"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "space in :method",
            &[
                (":method", "GET /x HTTP/1.1\r\nHost: evil\r\n\r\nGET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "a"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "CRLF in :authority",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "a\r\nX-Injected: 1"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "empty :path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", ""),
                (":authority", "a"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "no :path",
            &[(":method", "GET"), (":scheme", "http"), (":authority", "a")],
            &[],
            Expect::Closed,
        ),
        h2case(
            "pseudo-header after a regular one",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                ("x-a", "b"),
                (":path", "/"),
                (":authority", "a"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "two :path",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/a"),
                (":path", "/b"),
                (":authority", "a"),
            ],
            &[],
            Expect::Closed,
        ),
        h2case(
            "unknown pseudo-header",
            &get_with(&[(":smuggle", "1")]),
            &[],
            Expect::Closed,
        ),
        // :authority and host disagree: the authority wins, one Host goes upstream.
        h2case(
            ":authority and a different host",
            &get_with(&[("host", "b")]),
            &[],
            Expect::One(|m| host_is(m, "a")),
        ),
        h2case(
            "host only, no :authority",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("host", "b"),
            ],
            &[],
            Expect::One(|m| host_is(m, "b")),
        ),
        h2case(
            "two host headers, no :authority",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                ("host", "b"),
                ("host", "c"),
            ],
            &[],
            Expect::Refused("duplicate-host"),
        ),
        h2case(
            "CONNECT",
            &[(":method", "CONNECT"), (":authority", "b.example:443")],
            &[],
            Expect::Refused("connect-not-supported"),
        ),
        h2case(
            "asterisk :path on GET",
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "*"),
                (":authority", "a"),
            ],
            &[],
            Expect::Refused("bad-target"),
        ),
    ];
    Family {
        name: "h2_downgrade",
        extra: "",
        cases: Vec::new(),
        h2,
    }
}

fn all_families() -> Vec<Family> {
    vec![
        cl_te(),
        te_obfuscations(),
        content_lengths(),
        chunked_bodies(),
        line_endings_and_control_bytes(),
        header_names_and_folding(),
        request_targets(),
        versions(),
        hop_by_hop(),
        streamed_bodies(),
        h2_downgrade(),
    ]
}

// ---------------------------------------------------------------------------------------------
// One test per family

#[tokio::test]
async fn cl_te_te_cl_te_te_and_cl_cl() {
    run_family(cl_te()).await;
}

#[tokio::test]
async fn transfer_encoding_obfuscations() {
    run_family(te_obfuscations()).await;
}

#[tokio::test]
async fn content_length_variants() {
    run_family(content_lengths()).await;
}

#[tokio::test]
async fn chunked_body_abuse() {
    run_family(chunked_bodies()).await;
}

#[tokio::test]
async fn bare_cr_lf_and_nul_bytes() {
    run_family(line_endings_and_control_bytes()).await;
}

#[tokio::test]
async fn obs_fold_and_invalid_header_names() {
    run_family(header_names_and_folding()).await;
}

#[tokio::test]
async fn absolute_authority_and_asterisk_form_targets() {
    run_family(request_targets()).await;
}

#[tokio::test]
async fn http_09_and_10_requests() {
    run_family(versions()).await;
}

#[tokio::test]
async fn hop_by_hop_framing_and_h2c_upgrade() {
    run_family(hop_by_hop()).await;
}

#[tokio::test]
async fn malformed_streamed_bodies_are_cut_off() {
    run_family(streamed_bodies()).await;
}

#[tokio::test]
async fn h2_to_h1_downgrade_smuggling() {
    run_family(h2_downgrade()).await;
}

/// The whole catalogue against the real binary, each family with its own config, then
/// proxyd's stderr is read: nothing panicked, and proxyd is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_never_panics_the_real_binary() {
    let backend = Recorder::start().await;
    let mut total = 0;
    for family in all_families() {
        let yaml = common::yaml_to(&[backend.addr], family.extra);
        let mut proxyd = ProxydProcess::start(&yaml);
        run_cases(proxyd.addr, &backend, &family).await;
        total += family.cases.len() + family.h2.len();
        assert!(
            proxyd.child.try_wait().unwrap().is_none(),
            "{}: proxyd exited",
            family.name
        );
        let lines = proxyd.stderr_lines.lock().unwrap().clone();
        let panics: Vec<&String> = lines.iter().filter(|l| l.contains("panicked")).collect();
        assert!(
            panics.is_empty(),
            "{}: proxyd panicked: {panics:?}",
            family.name
        );
        proxyd.signal("TERM");
        assert_eq!(
            proxyd.wait_exit(),
            Some(0),
            "{}: exit after TERM",
            family.name
        );
        let lines = proxyd.stderr_lines.lock().unwrap().clone();
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "{}: {lines:?}",
            family.name
        );
    }
    println!("{total} cases through the proxyd binary");
    assert!(total > 200, "the catalogue shrank to {total} cases");
}
