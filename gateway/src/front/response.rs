//! Building HTTP responses: JSON, SSE and errors.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use crate::mcp::Message;
use crate::session::stream::Frames;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A comment line every so often keeps idle SSE connections open through proxies and lets
/// the gateway notice a client that went away.
const KEEPALIVE: Duration = Duration::from_secs(20);

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().boxed_unsync());
    *r.status_mut() = status;
    r
}

pub fn json(status: StatusCode, msg: &Message) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.to_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An HTTP error carrying a JSON-RPC error object without id, as the transport spec allows.
pub fn error(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    json(
        status,
        &Message::error(serde_json::Value::Null, code, message, None),
    )
}

pub fn sse(frames: Frames) -> Response<Body> {
    let stream = futures_util::stream::unfold(frames, |mut frames| async move {
        let next = tokio::select! {
            f = frames.recv() => f,
            _ = tokio::time::sleep(KEEPALIVE) => Some(Bytes::from_static(b": keepalive\n\n")),
        };
        next.map(|b| (Ok::<_, Infallible>(Frame::data(b)), frames))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    error(status, crate::mcp::codes::INVALID_REQUEST, message)
}
