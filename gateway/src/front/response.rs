//! Building HTTP responses: JSON, SSE and errors.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use crate::mcp::{Message, codes};
use crate::policy::Denial;
use crate::session::stream::Frames;

/// Why a response body failed; the connection ends at once (an SSE consumer cut off).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A body of these bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A comment line every so often keeps idle SSE connections open through proxies and lets
/// the gateway notice a client that went away.
const KEEPALIVE: Duration = Duration::from_secs(20);

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

pub fn json(status: StatusCode, msg: &Message) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(msg.to_bytes())));
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

/// An SSE stream of `frames`. The response carries the frames' [`CutHook`](crate::session::stream::CutHook) in its extensions,
/// for the connection to register itself: a consumer cut off for falling behind
/// (`max-stream-buffer-kib`) has its connection closed, which a body error alone cannot do
/// while the socket is full.
pub fn sse(frames: Frames) -> Response<Body> {
    let hook = frames.cut_hook();
    let stream = futures_util::stream::unfold(Some(frames), |frames| async move {
        let mut frames = frames?;
        let next = tokio::select! {
            f = frames.recv() => f,
            _ = tokio::time::sleep(KEEPALIVE) => Some(Ok(Bytes::from_static(b": keepalive\n\n"))),
        };
        match next? {
            Ok(b) => Some((Ok::<_, BodyError>(Frame::data(b)), Some(frames))),
            // The error aborts the connection; the frames (and their queue) go now.
            Err(cut) => Some((Err(Box::new(cut) as BodyError), None)),
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.extensions_mut().insert(hook);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    error(status, crate::mcp::codes::INVALID_REQUEST, message)
}

/// 404 for a session that does not exist — or that belongs to someone else (the caller must
/// not learn which).
pub fn session_not_found() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        codes::INVALID_REQUEST,
        "Session not found; initialize a new session",
    )
}

/// 503 when `server.max-sessions` is reached, whichever transport asked for the session.
pub fn too_many_sessions() -> Response<Body> {
    status_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable: too many sessions",
    )
}

/// The answer for a message a policy refused: the plugin's JSON-RPC error, with its HTTP
/// status and headers when it gave them (e.g. 401 + `WWW-Authenticate` from authn).
pub fn denied(denial: &Denial, id: Option<serde_json::Value>) -> Response<Body> {
    crate::observe::record_denial(&denial.plugin, denial.code);
    let status = denial
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(if id.is_some() {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        });
    let mut r = json(
        status,
        &denial.to_response(id.unwrap_or(serde_json::Value::Null)),
    );
    for (name, value) in &denial.http_headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                r.headers_mut().append(n, v);
            }
            _ => {
                tracing::warn!(plugin = %denial.plugin, header = %name, "policy gave an invalid header; dropped")
            }
        }
    }
    r
}

/// One SSE `message` event carrying `msg`, without an id (legacy pre-session answers and
/// 2026-07-28 streams, which are not resumable).
pub fn message_event(msg: &Message) -> Bytes {
    let json = msg.to_bytes();
    let mut frame = Vec::with_capacity(json.len() + 24);
    frame.extend_from_slice(b"event: message\ndata: ");
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}
