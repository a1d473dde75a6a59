//! The Streamable HTTP endpoint (MCP 2025-03-26 … 2025-11-25): POST, GET and DELETE.
//!
//! A request's answer is JSON when the upstream answers without anything in between, and an
//! SSE stream (priming event first, resumable) as soon as anything related arrives first:
//! progress, a log message, a sampling or elicitation request. So plain calls pay nothing
//! for streaming, and streaming calls get it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::response::{self, Body};
use super::{Front, modern, relay};
use crate::mcp::{Kind, Message, codes, methods, version};
use crate::policy::{Call, Chain, Denial, Identity, Phase};
use crate::session::{Refused, Route, STANDALONE_STREAM, Session, stream::parse_event_id};
use crate::upstream::Hello;

pub const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// 404 for a session that does not exist — or that belongs to someone else (the caller must
/// not learn which).
pub(super) fn session_not_found() -> Response<Body> {
    response::error(
        StatusCode::NOT_FOUND,
        codes::INVALID_REQUEST,
        "Session not found; initialize a new session",
    )
}

/// The answer for a message a policy refused: the plugin's JSON-RPC error, with its HTTP
/// status and headers when it gave them (e.g. 401 + `WWW-Authenticate` from authn).
pub(super) fn denied(denial: &Denial, id: Option<Value>) -> Response<Body> {
    crate::observe::record_denial(&denial.plugin, denial.code);
    let status = denial
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(if id.is_some() {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        });
    let mut r = response::json(status, &denial.to_response(id.unwrap_or(Value::Null)));
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

/// An `MCP-Protocol-Version` header naming a revision we do not speak gets 400 with
/// `-32022` and the revisions we do, on every method (a missing header means 2025-03-26, per
/// the spec).
pub(super) fn check_protocol_version(headers: &HeaderMap) -> Result<(), Response<Body>> {
    match headers.get(PROTOCOL_VERSION) {
        Some(v) if !v.to_str().is_ok_and(version::is_supported) => Err(
            super::modern::unsupported_version(&String::from_utf8_lossy(v.as_bytes()), None),
        ),
        _ => Ok(()),
    }
}

/// A route policy asked for a copy of this `tools/call` to go to another upstream too
/// (attributes `shadow` and optionally `shadow-target`).
pub(super) fn shadow(session: &Arc<Session>, msg: &Message, call: &Call) {
    let attributes = &call.view().attributes;
    if msg.method() == methods::TOOLS_CALL
        && let Some(upstream) = attributes.get("shadow")
    {
        session.shadow(
            msg,
            upstream,
            attributes.get("shadow-target").map(String::as_str),
        );
    }
}

/// 2026-07-28 has neither the GET stream (`subscriptions/listen` replaces it) nor sessions.
fn modern_has_no_get_or_delete() -> Response<Body> {
    let mut r = response::status_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed: 2026-07-28 uses POST only (subscriptions/listen for notifications)",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// The request phase of the policy chain for one client message. Gives the message as the
/// chain left it and the call to run the response phase on; on a denial, the call as far as
/// it got (for the audit trail).
///
/// An answer to a server→client request passes the `authn` stage only, as the pseudo-message
/// `session/answer`: who sends it decides whether it may reach the session (its owner's).
pub(super) async fn screen(
    chain: &Chain,
    msg: Message,
    headers: HeaderMap,
    session: Option<&Session>,
    session_id: Option<String>,
) -> Result<(Message, Option<Call>), (Box<Denial>, Call)> {
    if chain.is_empty() {
        return Ok((msg, None));
    }
    if msg.kind() == Kind::Response {
        let answer = Message::notification("session/answer", None);
        let mut call = Call::new(answer, headers, session_id, None);
        if let Err(denial) = chain.authenticate(&mut call).await {
            return Err((denial, call));
        }
        return Ok((msg, Some(call)));
    }
    let hint = match session {
        Some(s) if msg.kind() == Kind::Request => s.resolve_named(&msg).await,
        _ => None,
    };
    let mut call = Call::new(msg, headers, session_id, hint);
    if let Err(denial) = chain.on_request(&mut call).await {
        return Err((denial, call));
    }
    let keep_request = chain.wants(Phase::Response);
    Ok((call.take_request(keep_request), Some(call)))
}

/// For requests without an MCP message (GET streams, DELETE): the authn stage runs on a
/// pseudo-message named `method`. Gives the caller's subject, if authn established one.
pub(super) async fn identify(
    chain: &Chain,
    headers: &HeaderMap,
    method: &str,
    session_id: Option<&str>,
) -> Result<Option<String>, Response<Body>> {
    let mut call = Call::new(
        Message::notification(method, None),
        headers.clone(),
        session_id.map(str::to_string),
        None,
    );
    if let Err(denial) = chain.authenticate(&mut call).await {
        return Err(denied(&denial, None));
    }
    Ok(call.identity().map(|i| i.subject.clone()))
}

/// What is wrong with a client's `clientInfo` / `capabilities` when either is larger than
/// `limit` bytes as JSON.
pub(super) fn oversized_hello(
    limit: usize,
    client_info: Option<&Value>,
    capabilities: Option<&Value>,
) -> Option<String> {
    [("clientInfo", client_info), ("capabilities", capabilities)]
        .into_iter()
        .find_map(|(field, value)| {
            let size = json_size(value?);
            (size > limit).then(|| {
                format!("Invalid params: {field} is {size} bytes, over the gateway's limit of {limit} (server.max-client-info-bytes)")
            })
        })
}

/// Bytes of `value` as compact JSON, without writing it anywhere.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|part| {
                let t = part.split(';').next().unwrap_or("").trim();
                t.eq_ignore_ascii_case(wanted) || t == "*/*"
            })
        })
}

impl Front {
    pub(super) async fn post(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let headers = req.headers();
        if !(accepts(headers, "application/json") && accepts(headers, "text/event-stream")) {
            return response::status_error(
                StatusCode::NOT_ACCEPTABLE,
                "Not Acceptable: Accept must list application/json and text/event-stream",
            );
        }
        let json_body = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        if !json_body {
            return response::status_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type: Content-Type must be application/json",
            );
        }
        let session_id = headers
            .get(&SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let modern = modern::is_modern(headers);
        let peer = req.extensions().get::<super::Peer>().map(|p| p.0.ip());
        let version_header = headers.contains_key(PROTOCOL_VERSION);
        let unsupported = headers
            .get(PROTOCOL_VERSION)
            .filter(|v| !v.to_str().is_ok_and(version::is_supported))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let chain = self.policies.chain();
        let headers = if chain.is_empty() && !modern {
            HeaderMap::new()
        } else {
            headers.clone()
        };
        let body = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let msg = match Message::parse(&body) {
            Ok(m) => m,
            Err(e) => return response::json(StatusCode::BAD_REQUEST, &e.to_response()),
        };
        crate::observe::on_message(
            &msg,
            session_id.as_deref().filter(|_| !modern),
            modern.then_some(version::MODERN),
        );
        if let Some(v) = &unsupported {
            // Now with the request's id, as the 2026-07-28 error shape has it.
            return modern::unsupported_version(v, msg.id());
        }
        if modern {
            // 2026-07-28: stateless; an Mcp-Session-Id header is ignored.
            return self.modern(headers, msg, chain, started).await;
        }
        if !version_header && session_id.is_none() && modern::has_modern_meta(&msg) {
            return modern::mismatch(msg.id(), "the MCP-Protocol-Version header is required");
        }

        let initialize = msg.kind() == Kind::Request && msg.method() == methods::INITIALIZE;
        let session = if initialize {
            None
        } else {
            match self.session(session_id.as_deref()) {
                Ok(s) => Some(s),
                Err(r) => return r,
            }
        };

        let id = msg.id().cloned();
        let (msg, call) = match screen(&chain, msg, headers, session.as_deref(), session_id).await {
            Ok(screened) => screened,
            Err((denial, call)) => {
                let protocol = session.as_ref().map(|s| s.version);
                let sid = call.view().session.as_deref();
                self.recorder.denied(started, protocol, sid, &call, &denial);
                return denied(&denial, id);
            }
        };

        let caller = call.as_ref().and_then(|c| c.identity());
        let subject = caller.map(|i| i.subject.clone());
        let Some(session) = session else {
            return self.initialize(msg, caller, peer);
        };
        if !session.admits(subject.as_deref()) {
            tracing::warn!(session = %session.id, "session used by a caller other than its owner; refused");
            return session_not_found();
        }
        match msg.kind() {
            Kind::Notification => {
                session.handle_notification(msg).await;
                response::empty(StatusCode::ACCEPTED)
            }
            Kind::Response => {
                session.handle_response(msg).await;
                response::empty(StatusCode::ACCEPTED)
            }
            Kind::Request => self.request(session, msg, call, chain, started).await,
        }
    }

    pub(super) async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
        let limit = self.config.max_body_bytes;
        let too_large = || {
            response::status_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Payload Too Large: the limit is {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let read = Limited::new(req.into_body(), limit).collect();
        match tokio::time::timeout(self.config.request_timeout, read).await {
            Err(_) => Err(response::status_error(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout: body not received in time",
            )),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(_)) => Err(response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: the body could not be read",
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    fn session(&self, id: Option<&str>) -> Result<Arc<Session>, Response<Body>> {
        let Some(id) = id else {
            return Err(response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            ));
        };
        self.sessions.get(id).ok_or_else(|| {
            response::error(
                StatusCode::NOT_FOUND,
                codes::INVALID_REQUEST,
                "Session not found; initialize a new session",
            )
        })
    }

    fn initialize(
        &self,
        msg: Message,
        caller: Option<&Identity>,
        peer: Option<std::net::IpAddr>,
    ) -> Response<Body> {
        if let Err(refused) = self.check_hello(&msg) {
            return response::json(StatusCode::OK, &refused);
        }
        let (session, answer) = match self.open_session(msg, caller, peer, version::negotiate) {
            Ok(opened) => opened,
            Err(r) => return r,
        };
        let mut r = response::json(StatusCode::OK, &answer);
        if let Ok(v) = HeaderValue::from_str(&session.id) {
            r.headers_mut().insert(SESSION_ID, v);
        }
        r
    }

    /// `Err`: the JSON-RPC error for an `initialize` whose `clientInfo` or `capabilities` is
    /// over `server.max-client-info-bytes` (both are kept for the session's life and sent to
    /// every upstream, so they are refused rather than stored).
    pub(super) fn check_hello(&self, msg: &Message) -> Result<(), Message> {
        let params = msg.params();
        match oversized_hello(
            self.config.max_client_info_bytes,
            params.and_then(|p| p.get("clientInfo")),
            params.and_then(|p| p.get("capabilities")),
        ) {
            Some(text) => Err(Message::error(
                msg.id().cloned().unwrap_or(Value::Null),
                codes::INVALID_PARAMS,
                &text,
                None,
            )),
            None => Ok(()),
        }
    }

    /// Creates the session an `initialize` request asks for (owned by the caller, when authn
    /// established one) and the answer to send; `negotiate` picks the protocol revision.
    /// Sessions are counted per caller: the subject authn established, else `peer`.
    pub(super) fn open_session(
        &self,
        msg: Message,
        caller: Option<&Identity>,
        peer: Option<std::net::IpAddr>,
        negotiate: fn(Option<&str>) -> &'static str,
    ) -> Result<(Arc<Session>, Message), Response<Body>> {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let params = msg.params().cloned().unwrap_or_default();
        let version = negotiate(params["protocolVersion"].as_str());
        let hello = Hello {
            capabilities: params
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({})),
            client_info: params
                .get("clientInfo")
                .cloned()
                .unwrap_or_else(|| json!({ "name": "unknown", "version": "0" })),
        };
        let quota = match (caller, peer) {
            (Some(c), _) => Some(format!("subject {}", c.subject)),
            (None, Some(ip)) => Some(format!("address {ip}")),
            (None, None) => None,
        };
        let owner = caller.map(|c| c.subject.as_str());
        let session = match self
            .sessions
            .open_as(version, hello, quota.as_deref(), owner)
        {
            Ok(s) => s,
            Err(Refused::Full) => {
                tracing::warn!(
                    max = self.config.max_sessions,
                    "session limit reached; refusing initialize"
                );
                return Err(response::status_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: too many sessions",
                ));
            }
            Err(Refused::Caller) => {
                let max = self.config.max_sessions_per_caller;
                // The subject is not a secret, but a log line needs no more than the address.
                tracing::warn!(max, peer = ?peer, authenticated = caller.is_some(), "per-caller session limit reached; refusing initialize");
                return Err(response::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &Message::error(
                        id,
                        codes::INVALID_REQUEST,
                        &format!(
                            "Too Many Requests: this caller already holds {max} sessions (server.max-sessions-per-caller); end one with DELETE first"
                        ),
                        None,
                    ),
                ));
            }
        };
        if let Some(caller) = caller {
            let _ = session.owner.set(caller.subject.clone());
        }
        session.remember_caller(caller);
        let client = params["clientInfo"]["name"].as_str().unwrap_or("?");
        tracing::info!(session = %session.id, version, client = %crate::observe::clip(client), "session started");
        let result = json!({
            "protocolVersion": version,
            "capabilities": {
                "tools": { "listChanged": true },
                "prompts": { "listChanged": true },
                "resources": { "subscribe": true, "listChanged": true },
                "logging": {},
                "completions": {},
            },
            "serverInfo": {
                "name": "portcullis",
                "title": "Portcullis MCP gateway",
                "version": env!("CARGO_PKG_VERSION"),
            },
        });
        Ok((session, Message::result(id, result)))
    }

    /// Runs a request in its own task (a client disconnecting does not cancel it) and answers
    /// with JSON or, once anything related comes first, with a resumable SSE stream.
    ///
    /// The policy chain's response phase runs on the final answer, whichever way it is sent.
    async fn request(
        self: &Arc<Self>,
        session: Arc<Session>,
        msg: Message,
        call: Option<Call>,
        chain: Arc<Chain>,
        started: Instant,
    ) -> Response<Body> {
        let mut rx = self.spawn_request(session.clone(), msg, call, chain, started);
        let Some(first) = rx.recv().await else {
            return response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL_ERROR,
                "request handler failed",
            );
        };
        if first.kind() == Kind::Response {
            return response::json(StatusCode::OK, &first);
        }
        let stream = session.open_stream();
        stream.prime();
        stream.push(&first);
        let frames = stream.attach(None);
        self.tasks.spawn(async move {
            while let Some(m) = rx.recv().await {
                stream.push(&m);
                if m.kind() == Kind::Response {
                    break;
                }
            }
            stream.finish();
        });
        response::sse(frames)
    }

    /// Runs a request in its own task (a client disconnecting does not cancel it). Related
    /// messages, then the answer (after the chain's response phase), arrive on the channel.
    /// The task ends by telling the audit trail and the metrics how it went.
    pub(super) fn spawn_request(
        &self,
        session: Arc<Session>,
        msg: Message,
        mut call: Option<Call>,
        chain: Arc<Chain>,
        started: Instant,
    ) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel::<Message>();
        let recorder = self.recorder.clone();
        let span = tracing::Span::current();
        let task = async move {
            let id = msg.id().cloned().unwrap_or(Value::Null);
            let route = call.as_ref().filter(|c| c.routed).map(|c| Route {
                upstream: c.view().upstream.clone(),
                target: c.view().upstream_target.clone(),
            });
            if let Some(call) = &call {
                shadow(&session, &msg, call);
            }
            let pending = recorder.begin(started, &session, &msg, call.as_ref()).await;
            let asked = Instant::now();
            let (mut response, relayed) = match call.as_ref() {
                Some(call) if chain.wants(Phase::Response) => {
                    session.remember_caller(call.identity());
                    relay::handle_screened(&session, msg, route.as_ref(), &chain, call.view(), &tx)
                        .await
                }
                _ => {
                    let response = session
                        .handle_request(msg, tx.clone(), route.as_ref())
                        .await;
                    (response, Default::default())
                }
            };
            let upstream_time = asked.elapsed();
            let mut refused = None;
            if let Some(call) = call.as_mut()
                && chain.wants(Phase::Response)
            {
                response = match chain.on_response(call, response).await {
                    Ok(r) => r,
                    Err(denial) => {
                        let answer = denial.to_response(id);
                        refused = Some(denial);
                        answer
                    }
                };
                call.merge_relayed(relayed);
            }
            crate::observe::record_response(&tracing::Span::current(), &response);
            recorder.finish(
                pending,
                &session,
                call.as_ref(),
                &response,
                refused.as_deref(),
                upstream_time,
            );
            let _ = tx.send(response);
        };
        // The request's span (export on) goes with it into its task.
        self.tasks
            .spawn(tracing::Instrument::instrument(task, span));
        rx
    }

    /// GET: the standalone stream for messages not tied to a request, or the resumption of
    /// any stream of the session with `Last-Event-ID`.
    pub(super) async fn get(&self, req: Request<Incoming>) -> Response<Body> {
        let headers = req.headers();
        if modern::is_modern(headers) {
            return modern_has_no_get_or_delete();
        }
        if !accepts(headers, "text/event-stream") {
            return response::status_error(
                StatusCode::NOT_ACCEPTABLE,
                "Not Acceptable: Accept must list text/event-stream",
            );
        }
        let id = headers.get(&SESSION_ID).and_then(|v| v.to_str().ok());
        let session = match self.session(id) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(r) = self.check_owner(&session, headers, "session/listen").await {
            return r;
        }
        session.touch();
        let resume = headers
            .get(&LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_event_id);
        let frames = match resume {
            Some((stream, seq)) if stream != STANDALONE_STREAM => match session.stream(stream) {
                Some(s) => s.attach(Some(seq)),
                None => session.standalone.attach(None),
            },
            Some((_, seq)) => session.standalone.attach(Some(seq)),
            None => {
                session.standalone.prime();
                session.standalone.attach(None)
            }
        };
        response::sse(frames)
    }

    pub(super) async fn delete(&self, req: Request<Incoming>) -> Response<Body> {
        if modern::is_modern(req.headers()) {
            return modern_has_no_get_or_delete();
        }
        let Some(id) = req.headers().get(&SESSION_ID).and_then(|v| v.to_str().ok()) else {
            return response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            );
        };
        let session = match self.session(Some(id)) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(r) = self
            .check_owner(&session, req.headers(), "session/delete")
            .await
        {
            return r;
        }
        self.sessions.remove(id);
        tracing::info!(session = %id, "session ended by the client");
        response::empty(StatusCode::OK)
    }

    /// For requests without an MCP message (the GET stream, DELETE): the authn stage runs on
    /// a pseudo-message named `method`, and the caller must be the session's owner.
    async fn check_owner(
        &self,
        session: &Session,
        headers: &HeaderMap,
        method: &str,
    ) -> Result<(), Response<Body>> {
        let chain = self.policies.chain();
        if chain.is_empty() {
            return Ok(());
        }
        let subject = identify(&chain, headers, method, Some(&session.id)).await?;
        if !session.admits(subject.as_deref()) {
            tracing::warn!(session = %session.id, "session used by a caller other than its owner; refused");
            return Err(session_not_found());
        }
        Ok(())
    }
}
