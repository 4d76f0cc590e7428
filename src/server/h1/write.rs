//! Writing a response to an HTTP/1.x client: the head's framing and connection fields, then
//! the body (Content-Length, chunked with trailers, or until the close for an HTTP/1.0
//! client), each piece with one vectored write, every write bounded by
//! `timeouts.client_send`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{response, Method, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::http1::{self, Framing};
use crate::proxy::body::ResponseBody;

/// What the response's framing depends on in its request.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub head: bool,
    pub version: Version,
    /// The client may send another request after this one.
    pub keep_alive: bool,
    /// `TE: trailers`: the client takes trailer fields in a chunked response.
    pub trailers: bool,
}

/// The body's framing, as hyper chose it: none where the status or method has no body (a
/// HEAD response keeps its Content-Length), else the length the head or the body states,
/// else chunked, or close-delimited for an HTTP/1.0 client.
pub fn framing(parts: &mut response::Parts, body: &ResponseBody, asked: &Asked) -> Framing {
    let s = parts.status;
    if asked.head
        || s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::NOT_MODIFIED
    {
        if !asked.head {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        return Framing::None;
    }
    let stated = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| http1::content_length(v.as_bytes()));
    match stated.or(body.size_hint().exact()) {
        Some(n) => Framing::Length(n),
        None if asked.version == Version::HTTP_10 => Framing::Close,
        None => Framing::Chunked,
    }
}

/// Sets the response's `Connection` field for whether the connection stays open after it.
pub fn connection(parts: &mut response::Parts, asked: &Asked, keep: bool) {
    let h = &mut parts.headers;
    if asked.version == Version::HTTP_10 {
        if keep && !http1::connection_has(h, "keep-alive") {
            h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    } else if !keep
        && !http1::connection_has(h, "close")
        && parts.status != StatusCode::SWITCHING_PROTOCOLS
    {
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The client side of writing: the socket's write half and the send time-out.
pub struct Writer<W> {
    pub io: W,
    pub send_timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes all of `bufs`, each write making progress within the send time-out.
    pub async fn write_all(&mut self, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        let mut bufs = bufs;
        // Skips empty slices first, so an all-empty list writes nothing.
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = tokio::time::timeout(self.send_timeout, self.io.write_vectored(bufs))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client-send-timeout"))??;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        tokio::time::timeout(self.send_timeout, self.io.flush())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client-send-timeout"))?
    }

    /// Writes `head` and then `body` framed by `framing`; the body bytes sent. An error
    /// leaves the connection unusable (the client got a visibly cut response).
    pub async fn send(
        &mut self,
        head: Vec<u8>,
        mut body: ResponseBody,
        framing: Framing,
        trailers_ok: bool,
        sent: &mut u64,
    ) -> io::Result<()> {
        if framing == Framing::None {
            self.write_all(&mut [IoSlice::new(&head)]).await?;
            return self.flush().await;
        }
        let mut head = Some(head);
        let mut left = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        loop {
            // The head waits for the first piece of the body when it is ready at once, so
            // both go in one write; otherwise it goes alone (a stream may wait long).
            let frame = if head.is_some() {
                let polled =
                    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                        .await;
                match polled {
                    Poll::Ready(f) => f,
                    Poll::Pending => {
                        if let Some(h) = head.take() {
                            self.write_all(&mut [IoSlice::new(&h)]).await?;
                            self.flush().await?;
                        }
                        continue;
                    }
                }
            } else {
                http_body_util::BodyExt::frame(&mut body).await
            };
            let h = head.take().unwrap_or_default();
            let frame = match frame {
                None => None,
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => {
                    return Err(io::Error::other(format!("response body: {e}")));
                }
            };
            match frame {
                None => {
                    if let Some(n) = left.filter(|n| *n > 0) {
                        self.write_all(&mut [IoSlice::new(&h)]).await?;
                        return Err(io::Error::other(format!(
                            "response body ended {n} bytes short of its length"
                        )));
                    }
                    let mut end = Vec::new();
                    if framing == Framing::Chunked {
                        http1::write_last_chunk(&mut end, None);
                    }
                    self.write_all(&mut [IoSlice::new(&h), IoSlice::new(&end)])
                        .await?;
                    return self.flush().await;
                }
                Some(f) => match f.into_data() {
                    Ok(data) => {
                        let data = self.fit(data, &mut left)?;
                        *sent += data.len() as u64;
                        self.data(h, data, framing).await?;
                    }
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            let mut end = Vec::new();
                            if framing == Framing::Chunked {
                                http1::write_last_chunk(&mut end, trailers_ok.then_some(&t));
                            }
                            self.write_all(&mut [IoSlice::new(&h), IoSlice::new(&end)])
                                .await?;
                            return self.flush().await;
                        }
                    }
                },
            }
        }
    }

    /// A body longer than its stated length is cut there and fails the connection.
    fn fit(&self, data: Bytes, left: &mut Option<u64>) -> io::Result<Bytes> {
        let Some(n) = left else {
            return Ok(data);
        };
        if data.len() as u64 > *n {
            return Err(io::Error::other("response body longer than its length"));
        }
        *n -= data.len() as u64;
        Ok(data)
    }

    async fn data(&mut self, head: Vec<u8>, data: Bytes, framing: Framing) -> io::Result<()> {
        if data.is_empty() {
            if !head.is_empty() {
                self.write_all(&mut [IoSlice::new(&head)]).await?;
            }
            return Ok(());
        }
        if framing == Framing::Chunked {
            let mut size = Vec::with_capacity(18);
            http1::write_chunk_header(&mut size, data.len());
            self.write_all(&mut [
                IoSlice::new(&head),
                IoSlice::new(&size),
                IoSlice::new(&data),
                IoSlice::new(b"\r\n"),
            ])
            .await?;
        } else {
            self.write_all(&mut [IoSlice::new(&head), IoSlice::new(&data)])
                .await?;
        }
        self.flush().await
    }
}

/// The request method as `Asked` wants it.
pub fn is_head(m: &Method) -> bool {
    *m == Method::HEAD
}
