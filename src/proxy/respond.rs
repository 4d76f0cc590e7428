//! The respond phase: a backend's answer as the client gets it. `receive` takes it in during
//! an attempt (reading a worker's body ahead, so a worker that fails before then is a failed
//! attempt); `respond` makes the head the client gets.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Response, StatusCode, Version};
use http_body::Body as _;

use super::body::ResponseBody;
use super::compress::{self, Asked, Compressed};
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers;
use super::spool::{BodyTimer, OnTimeout, SpooledResponse};
use crate::upstream::pool::UpstreamBody;
use crate::upstream::transport;
use crate::upstream::{Backend, InFlight, Upstream, WorkerEvent};

/// What a backend answered: the head, and the body as the client will get it.
pub struct Answer {
    pub head: http::response::Parts,
    /// A 101's body holds the backend's switched connection: the server joins it to the
    /// client's (`UpstreamBody::take_upgrade`).
    pub body: ResponseBody,
    pub backend: Arc<Backend>,
    /// It came on a pooled connection.
    pub reused: bool,
}

/// The response as the client will get it. A worker's body is read ahead before the head
/// is committed, until it ends or fills `buffer_response` (the rest goes on by a task), all
/// of it within `request_timeout` of sending: a worker that dies or hangs before then is a
/// failed attempt the client never sees. A stream from a worker (server-sent events,
/// `X-Accel-Buffering: no`) goes out as it comes, and may be silent at most
/// `request_timeout` at a time. A server's body streams.
pub async fn receive(
    upstream: &Upstream,
    sent: transport::Sent,
    flight: InFlight,
    started: tokio::time::Instant,
    attempt: &super::forward::Attempt,
) -> Result<Answer, ProxyError> {
    let (buffer_response, response_timeout) = (attempt.buffer_response, attempt.response_timeout);
    let backend = flight.backend().clone();
    let reused = sent.reused;
    let mut head = sent.head;
    let body = UpstreamBody::new(sent.body, flight);
    let buffered = upstream.buffer_bodies
        && !body.is_end_stream()
        && head.status != StatusCode::SWITCHING_PROTOCOLS;
    let body = if !buffered {
        ResponseBody::Upstream(body)
    } else {
        let hung = backend.clone();
        let on_timeout: OnTimeout = Box::new(move || hung.report(WorkerEvent::Hung));
        if headers::take_stream_hint(&mut head.headers) {
            let silence = BodyTimer::Silence(response_timeout);
            ResponseBody::Spooled(SpooledResponse::start(
                body,
                buffer_response,
                silence,
                on_timeout,
            ))
        } else {
            let deadline = started + response_timeout;
            let read = SpooledResponse::read_ahead(body, buffer_response, deadline, on_timeout);
            let spooled = Box::pin(read).await.map_err(|e| {
                ProxyError::new(e.cause, format_args!("{}: {}", backend.label, e.detail))
            })?;
            ResponseBody::Spooled(spooled)
        }
    };
    Ok(Answer {
        head,
        body,
        backend,
        reused,
    })
}

/// The respond phase: the answer in the client's `version`, without the backend's
/// hop-by-hop headers, compressed when the request `asked` for a coding and the response may
/// be (`compress::compressible`), and with `headers.debug` naming the backend and whether
/// its connection was reused.
pub fn respond(
    ctx: &mut RequestCtx<'_>,
    answer: Answer,
    version: Version,
    asked: Option<Asked<'_>>,
) -> Response<ResponseBody> {
    let mut head = answer.head;
    head.version = version;
    headers::prepare_response(&mut head);
    let mut body = answer.body;
    if let Some(a) = asked.filter(|a| compress::compressible(&head, &body, a.policy)) {
        match a.encoding {
            Some(e) => match Compressed::start(body, e) {
                Ok((compressed, tally)) => {
                    compress::mark(&mut head, e);
                    ctx.compressed = Some((e, tally));
                    body = compressed;
                }
                Err(plain) => body = plain,
            },
            None => compress::vary(&mut head),
        }
    }
    if ctx.snap.debug_headers {
        if let Ok(v) = HeaderValue::from_str(&answer.backend.label) {
            head.headers.insert("proxyd-backend", v);
        }
        head.headers.insert(
            "proxyd-reused",
            HeaderValue::from_static(if answer.reused { "1" } else { "0" }),
        );
    }
    Response::from_parts(head, body)
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::super::ctx::testing::{conn, snapshot};
    use super::*;

    fn answer(snap: &crate::state::Snapshot, reused: bool) -> Answer {
        let resp = Response::builder()
            .version(Version::HTTP_11)
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("x-accel-buffering", "no")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        Answer {
            head: resp.into_parts().0,
            body: ResponseBody::empty(),
            backend: snap.upstreams[0].backends()[0].clone(),
            reused,
        }
    }

    #[test]
    fn the_clients_head() {
        let snap = snapshot("upstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n");
        let conn = conn("192.0.2.1:1");
        let mut req = Request::new(());
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);
        let resp = respond(&mut ctx, answer(&snap, true), Version::HTTP_2, None);
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        for gone in ["connection", "keep-alive", "x-accel-buffering"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["content-type"], "text/plain");
        assert!(!h.contains_key("proxyd-backend"), "only with headers.debug");
    }

    #[test]
    fn debug_headers_name_the_backend() {
        let snap = snapshot(
            "headers: { debug: true }\nupstreams:\n  app:\n    servers: [\"127.0.0.1:9\"]\n",
        );
        let conn = conn("192.0.2.1:1");
        let mut req = Request::new(());
        let mut ctx = RequestCtx::new(&mut req, &snap, &conn);
        let resp = respond(&mut ctx, answer(&snap, true), Version::HTTP_11, None);
        assert_eq!(resp.headers()["proxyd-backend"], "127.0.0.1:9");
        assert_eq!(resp.headers()["proxyd-reused"], "1");
        let resp = respond(&mut ctx, answer(&snap, false), Version::HTTP_11, None);
        assert_eq!(resp.headers()["proxyd-reused"], "0");
    }
}
