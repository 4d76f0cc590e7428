//! The exporter's HTTP/1.1 client: one POST at a time over a plain TCP connection kept open
//! between batches. Small on purpose: proxyd's HTTP/1.1 is its own (hyper's is a
//! dev-dependency) and obs may not use upstream's transport; an OTLP answer only needs its
//! status, `Retry-After` and a `Content-Length` body to skip.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer's head at most.
const MAX_HEAD: usize = 16 * 1024;
/// A body longer than this is not read: the connection is closed instead.
const MAX_BODY: usize = 64 * 1024;

/// Where spans go: `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host and port to connect to.
    pub host: String,
    pub port: u16,
    /// The `Host` header: as the URL says it.
    pub authority: String,
    pub path: String,
}

impl Endpoint {
    /// Parses the `tracing.otlp` URL; `/v1/traces` when it has no path.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// collectors are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = match path {
            "" | "/" => "/v1/traces".to_owned(),
            p => p.to_owned(),
        };
        // An IPv6 address is in brackets: `[::1]:4318`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return Err(format!("{url}: expected :port after ]")),
                },
                None => return Err(format!("{url}: no closing ] in the host")),
            },
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// What the collector answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After` in seconds, when given as such.
    pub retry_after: Option<Duration>,
}

/// One connection to the collector, opened when needed and kept while it answers.
#[derive(Default)]
pub struct Client {
    conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    /// POSTs `body`; a kept connection the collector closed meanwhile is replaced once.
    /// The caller bounds the time.
    pub async fn post(&mut self, to: &Endpoint, body: &[u8]) -> io::Result<Answer> {
        if let Some(conn) = self.conn.take() {
            match self.exchange(conn, to, body).await {
                Ok(answer) => return Ok(answer),
                // Stale: it was closed while idle (the request was not answered).
                Err(e) if stale(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let conn = TcpStream::connect((to.host.as_str(), to.port)).await?;
        let _ = conn.set_nodelay(true);
        self.exchange(conn, to, body).await
    }

    async fn exchange(
        &mut self,
        mut conn: TcpStream,
        to: &Endpoint,
        body: &[u8],
    ) -> io::Result<Answer> {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nUser-Agent: proxyd/{}\r\n\r\n",
            to.path,
            to.authority,
            body.len(),
            env!("CARGO_PKG_VERSION"),
        );
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body).await?;
        self.buf.clear();
        let Head {
            answer,
            len: head_len,
            body: body_len,
            keep,
        } = loop {
            if self.buf.len() >= MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "answer head too large",
                ));
            }
            let start = self.buf.len();
            self.buf.resize(start + 4096, 0);
            let n = conn.read(&mut self.buf[start..]).await?;
            self.buf.truncate(start + n);
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before answering",
                ));
            }
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
        };
        // Skip the body (an ExportTraceServiceResponse, usually empty) to reuse the
        // connection; without a length the connection is not kept.
        if let (Some(len), true) = (body_len, keep) {
            if len <= MAX_BODY {
                let mut left = (head_len + len).saturating_sub(self.buf.len());
                let mut scratch = [0u8; 4096];
                while left > 0 {
                    let want = left.min(scratch.len());
                    let n = conn.read(&mut scratch[..want]).await?;
                    if n == 0 {
                        return Ok(answer);
                    }
                    left -= n;
                }
                // Anything past the body is not ours: the connection is not reused.
                if self.buf.len() <= head_len + len {
                    self.conn = Some(conn);
                }
            }
        }
        Ok(answer)
    }
}

fn stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// An answer's head as read.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    answer: Answer,
    /// Bytes of the head.
    len: usize,
    /// The body's length, when framed by Content-Length.
    body: Option<usize>,
    /// The connection may be kept for the next request.
    keep: bool,
}

/// None while the head is incomplete.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep = resp.version == Some(1);
    let mut body_len = None;
    let mut retry_after = None;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            keep = false;
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep = false;
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse().ok().map(Duration::from_secs);
        }
    }
    // 1xx answers are not expected (no Expect: 100-continue is sent); a 204 or 304 has no body.
    if matches!(status, 204 | 304) {
        body_len = Some(0);
    }
    Ok(Some(Head {
        answer: Answer {
            status,
            retry_after,
        },
        len: head_len,
        body: body_len,
        keep,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_path_and_port() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        let e = Endpoint::parse("http://collector/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("collector", 80));
        assert_eq!(e.path, "/v1/traces");
        let e = Endpoint::parse("http://otel:4318/custom/traces").unwrap();
        assert_eq!(e.path, "/custom/traces");
        assert_eq!(e.authority, "otel:4318");
        let e = Endpoint::parse("http://[::1]:4318").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 4318));
        let e = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert!(Endpoint::parse("https://otel:4318").is_err());
        assert!(Endpoint::parse("http://otel:x").is_err());
        assert!(Endpoint::parse("http://:4318").is_err());
    }

    #[test]
    fn answer_heads_say_status_length_and_keep_alive() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.answer.status, h.len, h.body, h.keep),
            (200, 38, Some(2), true)
        );
        let h = parse_head(
            b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.answer.retry_after, Some(Duration::from_secs(3)));
        assert!(!h.keep);
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }
}
