//! The legacy HTTP+SSE transport (MCP 2024-11-05), for clients that predate Streamable HTTP.
//!
//! `GET <legacy-sse-path>` opens a stream whose first event is `endpoint`, naming
//! `<legacy-message-path>?sessionId=<id>`. The client POSTs every message there and gets 202;
//! everything the gateway sends back — answers, notifications, server→client requests —
//! arrives as a `message` event on that one stream.
//!
//! A legacy connection maps onto the same [`Session`] a Streamable HTTP client gets: its
//! `initialize` creates it, every message runs through the same policy chain (the same
//! functions as `streamable.rs`), is routed the same way and is refused the same way when the
//! caller is not the session's owner. The session's standalone stream is the connection's
//! stream: with no per-request streams in this transport, every message goes there.
//!
//! Stream and session live and die together: the client closing the stream ends the session
//! (its in-flight requests are cancelled, its upstream links closed), and the session ending
//! (gateway shutdown) closes the stream once everything queued on it was sent. A stream that
//! sends no `initialize` within `session-idle-timeout` is closed.
//!
//! The `sessionId` in the URL names the connection, not the session: the session id is never
//! shown to a legacy client, so nobody can attach to its stream through the Streamable HTTP
//! endpoint.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use http::header::ALLOW;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::oneshot;

use super::Front;
use super::pipeline::{self, Delivered, Refusal, identify};
use super::response::{self, Body, message_event, session_not_found};
use crate::mcp::{Kind, Message, methods, version};
use crate::policy::{Denial, Identity};
use crate::session::Session;
use crate::session::stream::{self, Feed, Frames};

/// The revision of this transport; a client asking for it gets it.
const LEGACY_VERSION: &str = "2024-11-05";

/// Which of the two legacy endpoints a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Stream,
    Message,
}

/// The open legacy connections, by the id their endpoint URL carries.
#[derive(Default)]
pub(super) struct Connections {
    map: DashMap<Arc<str>, Arc<Connection>>,
    /// Ids of the sessions legacy connections own: their standalone stream is the
    /// connection, so shutdown closes it only after in-flight requests answered.
    sessions: DashMap<Arc<str>, ()>,
}

struct Connection {
    id: Arc<str>,
    /// The subject of the identity that opened the stream, when authn established one; only
    /// that caller may post to it.
    owner: Option<String>,
    session: OnceLock<Arc<Session>>,
    /// Hands the session's stream to the connection's pump, once initialized.
    attach: Mutex<Option<oneshot::Sender<Frames>>>,
    /// The stream itself, for what must reach the client before a session exists.
    out: Arc<Feed>,
    /// The client's address, for `max-sessions-per-caller` without authn.
    peer: Option<std::net::IpAddr>,
}

impl Connections {
    fn get(&self, id: &str) -> Option<Arc<Connection>> {
        self.map.get(id).map(|c| c.clone())
    }

    /// Whether this session belongs to a legacy connection.
    pub(super) fn owns(&self, session_id: &str) -> bool {
        self.sessions.contains_key(session_id)
    }

    /// Shutdown: closes every stream once what is queued on it was sent. Call after in-flight
    /// requests finished, so their answers are among it.
    pub(super) fn close_all(&self) {
        for conn in self.map.iter() {
            drop(conn.attach.lock().unwrap_or_else(|p| p.into_inner()).take());
            if let Some(s) = conn.session.get() {
                s.standalone.finish();
            }
        }
    }
}

/// The revision a legacy client gets: 2024-11-05 if it asks for it, else what the Streamable
/// HTTP endpoint would give it (current SDKs speak new revisions over the old transport).
fn negotiate(requested: Option<&str>) -> &'static str {
    match requested {
        Some(LEGACY_VERSION) => LEGACY_VERSION,
        other => version::negotiate(other),
    }
}

/// A frame of the session's stream (`id: …\ndata: …`) as a `message` event, the type this
/// transport names (it is also SSE's default, so this is for clients that match on it).
fn as_message_event(frame: Bytes) -> Bytes {
    if frame.starts_with(b":") {
        return frame; // a comment
    }
    let mut out = Vec::with_capacity(frame.len() + 15);
    out.extend_from_slice(b"event: message\n");
    out.extend_from_slice(&frame);
    Bytes::from(out)
}

/// The connection id from `sessionId=…` in a query string.
fn connection_id(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("sessionId="))
        .filter(|id| !id.is_empty())
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = response::status_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

impl Front {
    /// Which legacy endpoint `path` is, when the legacy transport is on.
    pub(super) fn legacy_endpoint(&self, path: &str) -> Option<Endpoint> {
        let c = &self.config;
        if !c.legacy_sse {
            None
        } else if path == c.legacy_sse_path {
            Some(Endpoint::Stream)
        } else if path == c.legacy_message_path {
            Some(Endpoint::Message)
        } else {
            None
        }
    }

    /// A request to a legacy endpoint (Host/Origin already checked).
    pub(super) async fn legacy(
        self: &Arc<Self>,
        endpoint: Endpoint,
        req: Request<Incoming>,
    ) -> Response<Body> {
        match (endpoint, req.method()) {
            (_, &Method::OPTIONS) => response::empty(StatusCode::NO_CONTENT),
            (Endpoint::Stream, &Method::GET) => self.legacy_open(req).await,
            (Endpoint::Message, &Method::POST) => self.legacy_post(req).await,
            (Endpoint::Stream, _) => not_allowed("GET, OPTIONS"),
            (Endpoint::Message, _) => not_allowed("POST, OPTIONS"),
        }
    }

    /// `GET <legacy-sse-path>`: authenticates the caller (as the Streamable HTTP GET stream
    /// does), opens the stream and announces where to post.
    async fn legacy_open(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let chain = self.policies.chain();
        let owner = if chain.is_empty() {
            None
        } else {
            match identify(&chain, req.headers(), "session/listen", None).await {
                Ok(subject) => subject,
                Err(r) => return r.into_response(),
            }
        };
        if self.legacy.map.len() >= self.config.max_sessions {
            tracing::warn!(
                max = self.config.max_sessions,
                "session limit reached; refusing a legacy SSE stream"
            );
            return response::too_many_sessions();
        }
        let id: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
        let peer = req.extensions().get::<super::Peer>().map(|p| p.0.ip());
        let cap = self.sessions.bounds().stream_buffer;
        let tag: Arc<str> = crate::observe::session_tag(&id).into();
        let (out, frames) = stream::channel(cap, tag.clone());
        let out = Arc::new(out);
        let endpoint = format!(
            "event: endpoint\ndata: {}?sessionId={id}\n\n",
            self.config.legacy_message_path
        );
        let _ = out.send(Bytes::from(endpoint));
        let (attach, attached) = oneshot::channel();
        let conn = Arc::new(Connection {
            id: id.clone(),
            owner,
            session: OnceLock::new(),
            attach: Mutex::new(Some(attach)),
            out: out.clone(),
            peer,
        });
        self.legacy.map.insert(id.clone(), conn);
        tokio::spawn(self.clone().pump(id.clone(), tag.clone(), attached, out));
        tracing::info!(connection = %tag, "legacy SSE stream opened");
        response::sse(frames)
    }

    /// Moves the session's stream onto the connection until either ends, then ends the
    /// other: a client that goes away ends its session, a session that ends closes the stream.
    async fn pump(
        self: Arc<Self>,
        id: Arc<str>,
        tag: Arc<str>,
        attached: oneshot::Receiver<Frames>,
        out: Arc<Feed>,
    ) {
        let frames = tokio::select! {
            f = attached => f.ok(),
            _ = out.closed() => None,
            _ = tokio::time::sleep(self.config.session_idle_timeout) => {
                tracing::info!(connection = %tag, "legacy SSE stream sent no initialize; closing");
                None
            }
        };
        if let Some(mut frames) = frames {
            loop {
                tokio::select! {
                    f = frames.recv() => match f {
                        Some(Ok(f)) => if out.send(as_message_event(f)).is_err() { break },
                        // Cut off (logged where it happened): the connection goes too.
                        Some(Err(_)) | None => break,
                    },
                    _ = out.closed() => break,
                }
            }
        }
        if let Some((_, conn)) = self.legacy.map.remove(&id)
            && let Some(session) = conn.session.get()
        {
            self.legacy.sessions.remove(&session.id);
            if self.sessions.remove(&session.id) {
                tracing::info!(connection = %tag, session = %session.tag, "legacy SSE stream closed; session ended");
            }
        }
    }

    /// `POST <legacy-message-path>?sessionId=…`: one client message. Answers 202 and sends
    /// what follows on the connection's stream; refusals the client must see at once (bad
    /// input, unknown connection, a policy's HTTP-level denial) are HTTP errors as on the
    /// Streamable HTTP endpoint.
    async fn legacy_post(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = std::time::Instant::now();
        let Some(conn_id) = connection_id(req.uri().query()) else {
            return response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: the sessionId query parameter is required",
            );
        };
        let Some(conn) = self.legacy.get(conn_id) else {
            return session_not_found();
        };
        if let Err(r) = pipeline::require_json(req.headers()) {
            return r;
        }
        let chain = self.policies.chain();
        let headers = pipeline::headers_for(&chain, req.headers(), false);
        let msg = match self.read_message(req).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        let session = conn.session.get().cloned();
        crate::observe::on_message(&msg, session.as_ref().map(|s| &*s.id), None);
        let initialize = msg.kind() == Kind::Request && msg.method() == methods::INITIALIZE;
        if session.is_none() && !initialize {
            return response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: the session is not initialized; send initialize first",
            );
        }

        let session_id = session.as_ref().map(|s| s.id.to_string());
        let admitted = match self
            .admit(&chain, msg, headers, session.as_ref(), session_id, started)
            .await
        {
            Ok(a) => a,
            Err(refusal) => return conn.refuse(refusal),
        };
        let Some(session) = session else {
            let caller = admitted.call.as_ref().and_then(|c| c.identity());
            return self.legacy_initialize(&conn, admitted.msg, caller).await;
        };
        if let Delivered::Request(mut rx) = self
            .deliver(session.clone(), admitted, chain, started)
            .await
        {
            // No per-request streams in this transport: related messages and the answer go
            // on the connection's stream.
            self.tasks.spawn(async move {
                while let Some(m) = rx.recv().await {
                    session.standalone.push(&m);
                    if m.kind() == Kind::Response {
                        break;
                    }
                }
            });
        }
        response::empty(StatusCode::ACCEPTED)
    }

    /// `initialize` on a fresh connection: the session is created as on the Streamable HTTP
    /// endpoint, owned by the caller, and its stream becomes the connection's.
    async fn legacy_initialize(
        &self,
        conn: &Connection,
        msg: Message,
        caller: Option<&Identity>,
    ) -> Response<Body> {
        let subject = caller.map(|i| i.subject.clone());
        if conn.owner.is_some() && subject != conn.owner {
            tracing::warn!(connection = %crate::observe::session_tag(&conn.id), "legacy stream used by a caller other than its owner; refused");
            return session_not_found();
        }
        if let Err(refused) = self.check_hello(&msg) {
            // Its answer goes where the client waits for it: on the stream.
            return match conn.out.send(message_event(&refused)) {
                Ok(()) => response::empty(StatusCode::ACCEPTED),
                Err(_) => session_not_found(),
            };
        }
        // Its client never sees the session id (only the connection's): no replica resumes it.
        let opened = self
            .open_session(msg, caller, conn.peer, negotiate, false)
            .await;
        let (session, answer) = match opened {
            Ok(opened) => opened,
            Err(r) => return r.into_response(),
        };
        if conn.session.set(session.clone()).is_err() {
            // Another initialize on this connection won the race.
            self.sessions.remove(&session.id);
            return response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: the session is already initialized",
            );
        }
        self.legacy.sessions.insert(session.id.clone(), ());
        session.standalone.push(&answer);
        let attach = conn.attach.lock().unwrap_or_else(|p| p.into_inner()).take();
        let attached = attach.is_some_and(|a| a.send(session.standalone.attach(None)).is_ok());
        if !attached {
            // The stream closed meanwhile.
            self.legacy.sessions.remove(&session.id);
            self.sessions.remove(&session.id);
            return session_not_found();
        }
        tracing::info!(connection = %crate::observe::session_tag(&conn.id), session = %session.tag, "legacy SSE session started");
        response::empty(StatusCode::ACCEPTED)
    }
}

impl Connection {
    /// The pipeline refused a message. A plain JSON-RPC denial of a request goes on the
    /// stream, where the client waits for its answer; an HTTP-level one (e.g. 401 from
    /// authn) and the denial of a notification are the POST's answer, as on the Streamable
    /// HTTP endpoint; other refusals too.
    fn refuse(&self, refusal: Refusal) -> Response<Body> {
        match refusal {
            Refusal::Denied(denial, id) => self.refuse_denied(&denial, id),
            other => other.into_response(),
        }
    }

    fn refuse_denied(&self, denial: &Denial, id: Option<Value>) -> Response<Body> {
        crate::observe::record_denial(&denial.plugin, denial.code);
        match id {
            Some(id) if denial.http_status.is_none() => {
                let answer = denial.to_response(id);
                let sent = match self.session.get() {
                    Some(s) => {
                        s.standalone.push(&answer);
                        true
                    }
                    None => self.out.send(message_event(&answer)).is_ok(),
                };
                if sent {
                    response::empty(StatusCode::ACCEPTED)
                } else {
                    session_not_found()
                }
            }
            id => response::denied(denial, id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_connection_id_in_the_query() {
        assert_eq!(connection_id(Some("sessionId=abc")), Some("abc"));
        assert_eq!(connection_id(Some("x=1&sessionId=abc&y=2")), Some("abc"));
        assert_eq!(connection_id(Some("sessionId=")), None);
        assert_eq!(connection_id(Some("session=abc")), None);
        assert_eq!(connection_id(None), None);
    }

    #[test]
    fn negotiates_the_legacy_revision_or_a_current_one() {
        assert_eq!(negotiate(Some("2024-11-05")), "2024-11-05");
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(None), version::LATEST);
    }

    #[test]
    fn stream_frames_become_message_events() {
        let f = as_message_event(Bytes::from_static(b"id: 0-3\ndata: {}\n\n"));
        assert_eq!(&f[..], b"event: message\nid: 0-3\ndata: {}\n\n");
        let e = message_event(&Message::notification("x", None));
        assert!(e.starts_with(b"event: message\ndata: {"), "{e:?}");
        assert!(e.ends_with(b"}\n\n"));
    }
}
