//! MCP 2026-07-28 on the same endpoint as the session era: stateless requests, told apart
//! per request by `MCP-Protocol-Version: 2026-07-28` (which `_meta` must repeat).
//!
//! A modern client has no session, but most upstreams behind the gateway do (they speak
//! 2025-11-25 or older). The gateway keeps one internal [`Session`] per caller — the subject
//! authn established, or one anonymous caller when there is no authn — and serves each of
//! the caller's requests through it: upstream sessions, child processes and the merged
//! catalog are reused by that caller and never shared with another.
//!
//! Server→client requests of an upstream (sampling, elicitation, roots) become
//! `input_required` results (multi round-trip requests): the upstream call is parked under
//! an unguessable `requestState`, and the client's retry carrying `inputResponses` answers
//! the upstream and resumes the parked call. Everything else an upstream sends about a
//! request (progress, logs the client asked for) goes on the request's own SSE stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Front;
use super::response::{self, Body};
use super::streamable::{PROTOCOL_VERSION, denied};
use crate::mcp::methods::{self, meta};
use crate::mcp::{Kind, Message, codes, headers, version};
use crate::policy::{Call, Chain, Phase};
use crate::session::{Session, stream};
use crate::upstream::Hello;

const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// What a 2026-07-28 client may ask of the gateway. Anything else is 404 `-32601`, as the
/// transport spec says (`ping`, `logging/setLevel`, `initialize` and subscribe are gone).
const METHODS: &[&str] = &[
    methods::SERVER_DISCOVER,
    methods::TOOLS_LIST,
    methods::TOOLS_CALL,
    methods::PROMPTS_LIST,
    methods::PROMPTS_GET,
    methods::RESOURCES_LIST,
    methods::RESOURCES_TEMPLATES_LIST,
    methods::RESOURCES_READ,
    methods::COMPLETION_COMPLETE,
    methods::SUBSCRIPTIONS_LISTEN,
];

/// The requests that may answer `input_required`; `Mcp-Name` is required on the same three.
const NAMED: &[&str] = &[
    methods::TOOLS_CALL,
    methods::PROMPTS_GET,
    methods::RESOURCES_READ,
];

/// Results a client may cache (`CacheableResult`): they carry `ttlMs` and `cacheScope`.
const CACHEABLE: &[&str] = &[
    methods::TOOLS_LIST,
    methods::PROMPTS_LIST,
    methods::RESOURCES_LIST,
    methods::RESOURCES_TEMPLATES_LIST,
    methods::RESOURCES_READ,
];

/// How long a parked call waits for the client's retry before it is abandoned (the
/// upstream's pending requests then get an error).
const PARK_TTL: Duration = Duration::from_secs(300);

/// Calls waiting for a client's `inputResponses`, by `requestState`.
#[derive(Default)]
pub(super) struct Parked {
    calls: DashMap<String, ParkedCall>,
    next_id: AtomicU64,
}

/// An upstream call that asked the client something.
struct ParkedCall {
    caller: String,
    method: String,
    target: Option<String>,
    session: Arc<Session>,
    internal_id: Value,
    /// The rest of the call: related messages, then the final response.
    rx: mpsc::UnboundedReceiver<Message>,
    /// The upstream's requests still unanswered: `(input key, gateway id, request)`.
    pending: Vec<(String, Value, Value)>,
    wants_logs: bool,
    expires: Instant,
}

/// What a modern request is, for shaping its answers.
struct Shape {
    client_id: Value,
    method: String,
    target: Option<String>,
    caller: String,
    wants_logs: bool,
    /// Client capabilities of this request (which input requests it can take).
    capabilities: Value,
    /// Policies ran: list results may differ per caller.
    private: bool,
    /// When the POST arrived (for the audit trail and the metrics).
    started: Instant,
}

/// Whether a request speaks 2026-07-28: its `MCP-Protocol-Version` says so.
pub(super) fn is_modern(headers: &HeaderMap) -> bool {
    headers
        .get(PROTOCOL_VERSION)
        .is_some_and(|v| v.as_bytes() == version::MODERN.as_bytes())
}

/// Whether a request carries 2026-07-28 `_meta` (a modern client that left out the header).
pub(super) fn has_modern_meta(msg: &Message) -> bool {
    request_meta(msg).is_some_and(|m| m.contains_key(meta::PROTOCOL_VERSION))
}

fn request_meta(msg: &Message) -> Option<&Map<String, Value>> {
    msg.params()?.get("_meta")?.as_object()
}

/// 400 with `-32020` (HeaderMismatch).
pub(super) fn mismatch(id: Option<&Value>, message: &str) -> Response<Body> {
    response::json(
        StatusCode::BAD_REQUEST,
        &Message::error(
            id.cloned().unwrap_or(Value::Null),
            codes::HEADER_MISMATCH,
            &format!("Header mismatch: {message}"),
            None,
        ),
    )
}

/// 400 with `-32022` (UnsupportedProtocolVersion), listing what the gateway serves.
pub(super) fn unsupported_version(requested: &str, id: Option<&Value>) -> Response<Body> {
    response::json(
        StatusCode::BAD_REQUEST,
        &Message::error(
            id.cloned().unwrap_or(Value::Null),
            codes::UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version",
            Some(json!({ "supported": version::ALL, "requested": requested })),
        ),
    )
}

/// The checks the transport spec asks of a server that reads the body: `Mcp-Method`,
/// `Mcp-Name` and the `_meta` version must be present and match.
fn validate(headers: &HeaderMap, msg: &Message) -> Result<(), Response<Body>> {
    let id = msg.id();
    let method = msg.method();
    match headers.get(MCP_METHOD).and_then(headers::decode) {
        None => return Err(mismatch(id, "the Mcp-Method header is required")),
        Some(h) if h != method => {
            return Err(mismatch(
                id,
                &format!("Mcp-Method header value '{h}' does not match body value '{method}'"),
            ));
        }
        Some(_) => {}
    }
    if NAMED.contains(&method) {
        let key = if method == methods::RESOURCES_READ {
            "uri"
        } else {
            "name"
        };
        let body = msg.param_str(key).unwrap_or_default();
        match headers.get(MCP_NAME).map(headers::decode) {
            None => return Err(mismatch(id, "the Mcp-Name header is required")),
            Some(None) => return Err(mismatch(id, "the Mcp-Name header is malformed")),
            Some(Some(h)) if h != body => {
                return Err(mismatch(
                    id,
                    &format!("Mcp-Name header value '{h}' does not match body value '{body}'"),
                ));
            }
            Some(Some(_)) => {}
        }
    }
    // Then the per-request `_meta` itself: a malformed one is invalid params (400 -32602),
    // a version that disagrees with the header a mismatch (400 -32020).
    let invalid = |what: &str| {
        Err(response::json(
            StatusCode::BAD_REQUEST,
            &Message::error(
                id.cloned().unwrap_or(Value::Null),
                codes::INVALID_PARAMS,
                &format!("Invalid params: {what}"),
                None,
            ),
        ))
    };
    let Some(m) = request_meta(msg) else {
        return invalid("params._meta with the 2026-07-28 request metadata is required");
    };
    match m.get(meta::PROTOCOL_VERSION).and_then(Value::as_str) {
        None => {
            return invalid(&format!(
                "params._meta[\"{}\"] is required",
                meta::PROTOCOL_VERSION
            ));
        }
        Some(v) if v != version::MODERN => {
            return Err(mismatch(
                id,
                &format!(
                    "MCP-Protocol-Version header value '{}' does not match _meta value '{v}'",
                    version::MODERN
                ),
            ));
        }
        Some(_) => {}
    }
    if !m
        .get(meta::CLIENT_CAPABILITIES)
        .is_some_and(Value::is_object)
    {
        return invalid(&format!(
            "params._meta[\"{}\"] must be an object",
            meta::CLIENT_CAPABILITIES
        ));
    }
    if m.get(meta::CLIENT_INFO).is_some_and(|v| !v.is_object()) {
        return invalid(&format!(
            "params._meta[\"{}\"] must be an object",
            meta::CLIENT_INFO
        ));
    }
    Ok(())
}

/// Checks a `tools/call`'s `Mcp-Param-*` headers against the values in its arguments: every
/// annotated argument that is present must come with its header, and the header (decoded)
/// must equal the value (integers compared as numbers). 400 `-32020` otherwise.
async fn check_param_headers(
    session: &Session,
    headers: &[(String, HeaderValue)],
    msg: &Message,
) -> Result<(), Response<Body>> {
    let id = msg.id();
    let Some(tool) = msg.param_str("name") else {
        return Ok(());
    };
    let Some(definition) = session.tool(tool).await else {
        return Ok(());
    };
    let annotated = definition
        .get("inputSchema")
        .map(headers::annotated_params)
        .unwrap_or_default();
    let arguments = msg.params().and_then(|p| p.get("arguments"));
    for (name, path) in annotated {
        let value = arguments
            .and_then(|args| path.iter().try_fold(args, |v, key| v.get(key)))
            .filter(|v| !v.is_null());
        let header = headers.iter().find(|(h, _)| *h == name).map(|(_, v)| v);
        let Some(value) = value else { continue };
        let Some(header) = header else {
            return Err(mismatch(
                id,
                &format!(
                    "the Mcp-Param-{name} header is required for argument '{}'",
                    path.join(".")
                ),
            ));
        };
        let Some(text) = headers::decode(header) else {
            return Err(mismatch(
                id,
                &format!("the Mcp-Param-{name} header is malformed"),
            ));
        };
        let same = match value {
            Value::String(s) => *s == text,
            Value::Bool(b) => text == if *b { "true" } else { "false" },
            Value::Number(n) => text
                .parse::<f64>()
                .ok()
                .zip(n.as_f64())
                .is_some_and(|(a, b)| a == b),
            _ => false,
        };
        if !same {
            return Err(mismatch(
                id,
                &format!(
                    "Mcp-Param-{name} header value '{text}' does not match body value '{value}'"
                ),
            ));
        }
    }
    Ok(())
}

/// The identity a stateless caller's internal session is created with.
fn hello(msg: &Message) -> Hello {
    let m = request_meta(msg);
    Hello {
        capabilities: m
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
            .cloned()
            .unwrap_or_else(|| json!({})),
        client_info: m
            .and_then(|m| m.get(meta::CLIENT_INFO))
            .cloned()
            .unwrap_or_else(|| json!({ "name": "unknown", "version": "0" })),
    }
}

fn server_info() -> Value {
    json!({
        "name": "portcullis",
        "title": "Portcullis MCP gateway",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// The capability an input request needs from the client.
fn needed_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// An SSE frame without an id: 2026-07-28 streams are not resumable.
fn frame(msg: &Message) -> bytes::Bytes {
    let json = msg.to_bytes();
    let mut f = Vec::with_capacity(json.len() + 22);
    f.extend_from_slice(b"event: message\ndata: ");
    f.extend_from_slice(&json);
    f.extend_from_slice(b"\n\n");
    bytes::Bytes::from(f)
}

impl Front {
    /// A 2026-07-28 POST: validated, run through the policy chain, and served through the
    /// caller's internal session.
    pub(super) async fn modern(
        self: &Arc<Self>,
        headers: HeaderMap,
        msg: Message,
        chain: Arc<Chain>,
        started: Instant,
    ) -> Response<Body> {
        match msg.kind() {
            // No client notifications are defined over HTTP in this revision; accept and
            // drop them (cancellation is closing the stream).
            Kind::Notification => return response::empty(StatusCode::ACCEPTED),
            Kind::Response => {
                return response::status_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: a 2026-07-28 client sends no responses; answer input requests with inputResponses on a retry",
                );
            }
            Kind::Request => {}
        }
        if let Err(r) = validate(&headers, &msg) {
            return r;
        }
        let client_id = msg.id().cloned().unwrap_or(Value::Null);
        let method = msg.method().to_string();
        if !METHODS.contains(&method.as_str()) {
            return response::json(
                StatusCode::NOT_FOUND,
                &Message::error(
                    client_id,
                    codes::METHOD_NOT_FOUND,
                    &format!("Method not found: {method}"),
                    None,
                ),
            );
        }
        let meta = request_meta(&msg);
        let wants_logs = meta.is_some_and(|m| m.contains_key(meta::LOG_LEVEL));
        let capabilities = meta
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let hello = hello(&msg);
        if let Some(text) = super::streamable::oversized_hello(
            self.config.max_client_info_bytes,
            Some(&hello.client_info),
            Some(&hello.capabilities),
        ) {
            return response::json(
                StatusCode::BAD_REQUEST,
                &Message::error(client_id.clone(), codes::INVALID_PARAMS, &text, None),
            );
        }
        let target = msg
            .param_str("name")
            .or_else(|| msg.param_str("uri"))
            .map(str::to_string);
        let request_state = msg.param_str("requestState").map(str::to_string);
        if let Some(r) = msg.params().and_then(|p| p.get("inputResponses"))
            && !r
                .as_object()
                .is_some_and(|r| r.values().all(Value::is_object))
        {
            return response::json(
                StatusCode::BAD_REQUEST,
                &Message::error(
                    client_id,
                    codes::INVALID_PARAMS,
                    "Invalid params: inputResponses must map each input key to a result object",
                    None,
                ),
            );
        }

        // `Mcp-Param-*` headers, checked against the tool's `x-mcp-header` annotations once
        // the caller's catalog is known.
        let param_headers: Vec<(String, HeaderValue)> = headers
            .iter()
            .filter_map(|(name, value)| {
                let param = name.as_str().strip_prefix("mcp-param-")?;
                Some((param.to_string(), value.clone()))
            })
            .collect();
        // Who is calling decides which internal session serves the request: authn first,
        // then the rest of the chain with the destination that session's catalog knows.
        // The call shares the request (no copy); it is taken back out below.
        let msg = Arc::new(msg);
        let mut call = (!chain.is_empty()).then(|| Call::new(msg.clone(), headers, None, None));
        if let Some(call) = call.as_mut()
            && let Err(d) = chain.authenticate(call).await
        {
            let protocol = Some(version::MODERN);
            self.recorder.denied(started, protocol, None, call, &d);
            return denied(&d, Some(client_id));
        }
        let caller = call
            .as_ref()
            .and_then(|c| c.identity())
            .map(|i| i.subject.clone())
            .unwrap_or_default();
        let Some(session) = self.sessions.for_caller(&caller, || hello) else {
            return response::status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: too many sessions",
            );
        };
        session.touch();
        if method == methods::TOOLS_CALL
            && let Err(r) = check_param_headers(&session, &param_headers, &msg).await
        {
            return r;
        }
        if let Some(call) = call.as_mut() {
            call.set_destination(session.resolve_named(&msg).await);
            if let Err(d) = chain.after_authn(call).await {
                let protocol = Some(version::MODERN);
                self.recorder
                    .denied(started, protocol, Some(&session.id), call, &d);
                return denied(&d, Some(client_id));
            }
        }
        let shape = Shape {
            client_id,
            method,
            target,
            caller,
            wants_logs,
            capabilities,
            private: !chain.is_empty(),
            started,
        };
        if shape.method == methods::SERVER_DISCOVER {
            return response::json(
                StatusCode::OK,
                &Message::result(shape.client_id, discover()),
            );
        }
        // A state the gateway issued resumes its parked call; any other belongs to a
        // 2026-07-28 upstream, and the retry goes there as it is.
        if let Some(state) = request_state.filter(|s| self.parked.calls.contains_key(s)) {
            return self.resume(&state, &msg, shape).await;
        }
        let mut msg = match call.as_mut() {
            Some(c) => {
                drop(msg);
                c.take_request(chain.wants(Phase::Response))
            }
            None => Arc::unwrap_or_clone(msg),
        };
        strip_modern_meta(&mut msg);
        if shape.method == methods::SUBSCRIPTIONS_LISTEN {
            return self.listen(session, msg, shape).await;
        }
        self.start(session, msg, call, chain, shape).await
    }

    /// Sends the request into the caller's session under an id of the gateway's own (two
    /// clients of one caller may both use id 1) and answers with what comes back.
    async fn start(
        self: &Arc<Self>,
        session: Arc<Session>,
        mut msg: Message,
        call: Option<Call>,
        chain: Arc<Chain>,
        shape: Shape,
    ) -> Response<Body> {
        let n = self.parked.next_id.fetch_add(1, Ordering::Relaxed);
        let internal_id = Value::String(format!("m{n}"));
        msg.set_id(internal_id.clone());
        // The same request task as the session era (routing, shadow, response phase, audit).
        let rx = self.spawn_request(session.clone(), msg, call, chain, shape.started);
        self.answer(session, rx, internal_id, shape).await
    }

    /// Turns what the session sends about one request into the HTTP answer: JSON when the
    /// final response comes first, an SSE stream when related notifications come before
    /// it, and an `input_required` result when the upstream asks the client something.
    async fn answer(
        self: &Arc<Self>,
        session: Arc<Session>,
        mut rx: mpsc::UnboundedReceiver<Message>,
        internal_id: Value,
        shape: Shape,
    ) -> Response<Body> {
        let mut cancel = CancelOnDrop {
            session: session.clone(),
            id: Some(internal_id.clone()),
        };
        // Until the first message worth sending, the answer can still be plain JSON.
        let first = loop {
            match rx.recv().await {
                None => {
                    cancel.disarm();
                    return response::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        codes::INTERNAL_ERROR,
                        "request handler failed",
                    );
                }
                Some(m) => match self.classify(&session, m, &shape).await {
                    Next::Skip => continue,
                    next => break next,
                },
            }
        };
        let first = match first {
            Next::Related(m) => m,
            Next::Final(m) => {
                cancel.disarm();
                // An upstream's own MissingRequiredClientCapability is a 400 too.
                let code = m
                    .error_value()
                    .and_then(|e| e.get("code"))
                    .and_then(Value::as_i64);
                let status = if code == Some(codes::MISSING_REQUIRED_CLIENT_CAPABILITY) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                };
                return response::json(status, &m);
            }
            Next::Ask(requests) => {
                cancel.disarm();
                let m = self.park(session, rx, internal_id, requests, &shape);
                return response::json(StatusCode::OK, &m);
            }
            // The call is cancelled when `cancel` drops.
            Next::Refuse(m) => return response::json(StatusCode::BAD_REQUEST, &m),
            // The loop above never stops on a skip.
            Next::Skip => return response::empty(StatusCode::ACCEPTED),
        };
        let (frames_tx, frames) =
            stream::channel(self.sessions.bounds().stream_buffer, session.id.clone());
        let _ = frames_tx.send(frame(&first));
        let front = self.clone();
        self.tasks.spawn(async move {
            while let Some(m) = rx.recv().await {
                let out = match front.classify(&session, m, &shape).await {
                    Next::Skip => continue,
                    Next::Related(m) => m,
                    Next::Refuse(m) => {
                        let _ = frames_tx.send(frame(&m));
                        return;
                    }
                    Next::Final(m) => {
                        cancel.disarm();
                        let _ = frames_tx.send(frame(&m));
                        return;
                    }
                    Next::Ask(requests) => {
                        cancel.disarm();
                        let m = front.park(session, rx, internal_id, requests, &shape);
                        let _ = frames_tx.send(frame(&m));
                        return;
                    }
                };
                if frames_tx.send(frame(&out)).is_err() {
                    // The client closed the stream: that cancels the request (CancelOnDrop).
                    return;
                }
            }
        });
        response::sse(frames)
    }

    /// What to do with one message the session sent about a modern request.
    async fn classify(&self, session: &Session, mut m: Message, shape: &Shape) -> Next {
        match m.kind() {
            Kind::Response => Next::Final(finish(m, shape)),
            Kind::Notification => {
                if m.method() == methods::MESSAGE && !shape.wants_logs {
                    // 2026-07-28: no log messages for a request that did not ask for them.
                    return Next::Skip;
                }
                Next::Related(m)
            }
            Kind::Request => {
                let gateway_id = m.id().cloned().unwrap_or(Value::Null);
                let needed = needed_capability(m.method());
                let capable = needed.is_some_and(|c| shape.capabilities.get(c).is_some());
                if !NAMED.contains(&shape.method.as_str()) || !capable {
                    // The client cannot take this input request: the upstream gets an error.
                    let why = if capable {
                        format!("{} cannot ask for input", shape.method)
                    } else {
                        format!("the client does not support {}", m.method())
                    };
                    session
                        .handle_response(Message::error(
                            gateway_id,
                            codes::METHOD_NOT_FOUND,
                            &why,
                            None,
                        ))
                        .await;
                    if let Some(cap) = needed.filter(|_| !capable) {
                        // 2026-07-28: the client hears which capability it lacks.
                        return Next::Refuse(Message::error(
                            shape.client_id.clone(),
                            codes::MISSING_REQUIRED_CLIENT_CAPABILITY,
                            &format!("This request needs the client capability '{cap}'"),
                            Some(json!({ "requiredCapabilities": { cap: {} } })),
                        ));
                    }
                    return Next::Skip;
                }
                let key = gateway_id.as_str().unwrap_or_default().to_string();
                let params = m.params_mut().clone();
                Next::Ask(vec![(
                    key,
                    gateway_id,
                    json!({ "method": m.method(), "params": params }),
                )])
            }
        }
    }

    /// Parks the rest of a call and returns the `input_required` result for the client.
    fn park(
        &self,
        session: Arc<Session>,
        rx: mpsc::UnboundedReceiver<Message>,
        internal_id: Value,
        requests: Vec<(String, Value, Value)>,
        shape: &Shape,
    ) -> Message {
        self.parked
            .calls
            .retain(|_, p| p.expires > Instant::now() || abandon(p));
        let state = format!("{:032x}", rand::random::<u128>());
        let input_requests: Map<String, Value> = requests
            .iter()
            .map(|(key, _, request)| (key.clone(), request.clone()))
            .collect();
        let pending = requests;
        self.parked.calls.insert(
            state.clone(),
            ParkedCall {
                caller: shape.caller.clone(),
                method: shape.method.clone(),
                target: shape.target.clone(),
                session,
                internal_id,
                rx,
                pending,
                wants_logs: shape.wants_logs,
                expires: Instant::now() + PARK_TTL,
            },
        );
        Message::result(
            shape.client_id.clone(),
            json!({
                "resultType": "input_required",
                "inputRequests": input_requests,
                "requestState": state,
            }),
        )
    }

    /// A retry carrying `requestState`: answers the parked call's input requests with the
    /// client's `inputResponses` and carries on with it.
    async fn resume(
        self: &Arc<Self>,
        state: &str,
        msg: &Message,
        mut shape: Shape,
    ) -> Response<Body> {
        let stale = || {
            response::json(
                StatusCode::OK,
                &Message::error(
                    shape.client_id.clone(),
                    codes::INVALID_PARAMS,
                    "Unknown or expired requestState; send the request again without it",
                    None,
                ),
            )
        };
        let Some((_, mut parked)) = self.parked.calls.remove(state) else {
            return stale();
        };
        // The state is bound to who asked, for what, and for how long.
        if parked.caller != shape.caller
            || parked.method != shape.method
            || parked.target != shape.target
            || parked.expires < Instant::now()
        {
            tracing::warn!(method = %crate::observe::clip(&shape.method), "requestState presented for another caller or request; refused");
            abandon(&parked);
            return stale();
        }
        // Checked in `modern` already: absent, or an object of result objects.
        let responses = msg
            .params()
            .and_then(|p| p.get("inputResponses"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut still = Vec::new();
        for (key, gateway_id, request) in std::mem::take(&mut parked.pending) {
            match responses.get(&key) {
                Some(result) => {
                    parked
                        .session
                        .handle_response(Message::result(gateway_id, result.clone()))
                        .await
                }
                None => still.push((key, gateway_id, request)),
            }
        }
        shape.wants_logs = parked.wants_logs;
        if !still.is_empty() {
            // Ask again for what is missing, under a fresh state.
            let requests = still;
            let ParkedCall {
                session,
                rx,
                internal_id,
                ..
            } = parked;
            let m = self.park(session, rx, internal_id, requests, &shape);
            return response::json(StatusCode::OK, &m);
        }
        let ParkedCall {
            session,
            rx,
            internal_id,
            ..
        } = parked;
        self.answer(session, rx, internal_id, shape).await
    }

    /// `subscriptions/listen`: an SSE stream that starts with the acknowledgment and carries
    /// the change notifications the client opted in to, each tagged with the subscription id.
    async fn listen(&self, session: Arc<Session>, msg: Message, shape: Shape) -> Response<Body> {
        let wanted = msg
            .params()
            .and_then(|p| p.get("notifications"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let flag = |k: &str| wanted.get(k).and_then(Value::as_bool).unwrap_or(false);
        let (tools, prompts, resources) = (
            flag("toolsListChanged"),
            flag("promptsListChanged"),
            flag("resourcesListChanged"),
        );
        // Resource subscriptions go to the upstreams on the caller's session.
        let mut uris = Vec::new();
        for uri in wanted
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let (tx, _rx) = mpsc::unbounded_channel();
            let n = self.parked.next_id.fetch_add(1, Ordering::Relaxed);
            let sub = Message::request(
                json!(format!("m{n}")),
                methods::RESOURCES_SUBSCRIBE,
                Some(json!({ "uri": uri })),
            );
            let answer = session.handle_request(sub, tx, None).await;
            if answer.is_error() {
                tracing::debug!(uri = %crate::observe::clip(uri), "resource subscription refused upstream");
            } else {
                uris.push(uri.to_string());
            }
        }
        let mut agreed = Map::new();
        for (key, on) in [
            ("toolsListChanged", tools),
            ("promptsListChanged", prompts),
            ("resourcesListChanged", resources),
        ] {
            if on {
                agreed.insert(key.into(), Value::Bool(true));
            }
        }
        if !uris.is_empty() {
            agreed.insert("resourceSubscriptions".into(), json!(uris));
        }
        let sub_id = shape.client_id.clone();
        let tag = move |mut m: Message| {
            let params = m.params_mut();
            let meta = params
                .entry("_meta")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(meta::SUBSCRIPTION_ID.into(), sub_id.clone());
            }
            m
        };
        let mut changes = session.changes.subscribe();
        let (frames_tx, frames) =
            stream::channel(self.sessions.bounds().stream_buffer, session.id.clone());
        let ack = Message::notification(
            methods::SUBSCRIPTIONS_ACKNOWLEDGED,
            Some(json!({ "notifications": agreed })),
        );
        let _ = frames_tx.send(frame(&tag(ack)));
        let closing = self.closing.clone();
        let client_id = shape.client_id.clone();
        self.tasks.spawn(async move {
            loop {
                let m = tokio::select! {
                    m = changes.recv() => m,
                    _ = closing.cancelled() => {
                        // Graceful end: the listen request's own response, then close.
                        let mut done = Message::result(client_id.clone(), json!({ "resultType": "complete" }));
                        if let Some(r) = done.result_mut() {
                            r["_meta"] = json!({ meta::SUBSCRIPTION_ID: client_id });
                        }
                        let _ = frames_tx.send(frame(&done));
                        return;
                    }
                    _ = frames_tx.closed() => return,
                };
                let m = match m {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a subscriptions/listen stream fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let wanted = match m.method() {
                    methods::TOOLS_LIST_CHANGED => tools,
                    methods::PROMPTS_LIST_CHANGED => prompts,
                    methods::RESOURCES_LIST_CHANGED => resources,
                    methods::RESOURCES_UPDATED => m
                        .param_str("uri")
                        .is_some_and(|u| uris.iter().any(|s| s == u)),
                    _ => false,
                };
                if wanted && frames_tx.send(frame(&tag(m))).is_err() {
                    return;
                }
            }
        });
        response::sse(frames)
    }
}

/// One step of a modern request's answer.
enum Next {
    /// Nothing for the client.
    Skip,
    /// A notification about the request (progress, a log message).
    Related(Message),
    /// The final response, shaped for 2026-07-28.
    Final(Message),
    /// The upstream asks the client: `(input key, gateway id, request)`.
    Ask(Vec<(String, Value, Value)>),
    /// The request cannot be served to this client (400): the call is cancelled.
    Refuse(Message),
}

/// Removes the protocol version from the request's `_meta` before it goes upstream: the
/// upstream link says which version it speaks (a session-era upstream that also knows
/// 2026-07-28 would otherwise treat the request as 2026-07-28 — and, for one, refuse to ask
/// its client anything). The client's capabilities and identity stay, so a 2026-07-28
/// upstream sees what this very request declared; other keys (`progressToken`, trace
/// context, vendor keys) pass unchanged.
fn strip_modern_meta(msg: &mut Message) {
    let params = msg.params_mut();
    let now_empty = match params.get_mut("_meta").and_then(Value::as_object_mut) {
        Some(m) => {
            m.remove(meta::PROTOCOL_VERSION);
            m.is_empty()
        }
        None => false,
    };
    if now_empty {
        params.remove("_meta");
    }
}

/// The `server/discover` result.
fn discover() -> Value {
    json!({
        "resultType": "complete",
        "supportedVersions": version::ALL,
        "capabilities": {
            "tools": { "listChanged": true },
            "prompts": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true },
            "completions": {},
            "logging": {},
        },
        "_meta": { meta::SERVER_INFO: server_info() },
        // Versions and capabilities change only with the gateway's binary or configuration.
        "ttlMs": 3_600_000,
        "cacheScope": "public",
    })
}

/// Shapes a final response for a 2026-07-28 client: its own id, `resultType`, caching
/// hints on cacheable results, the gateway's identity, and the 2026 error code for a
/// resource that does not exist.
fn finish(mut m: Message, shape: &Shape) -> Message {
    m.set_id(shape.client_id.clone());
    if let Some(r) = m.result_mut().and_then(Value::as_object_mut) {
        r.entry("resultType")
            .or_insert_with(|| Value::String("complete".into()));
        if CACHEABLE.contains(&shape.method.as_str()) {
            // Lists are merged from upstreams that may change them at any time (the gateway
            // re-fetches on their list_changed), so clients should not assume freshness;
            // a listen stream tells them when to re-fetch.
            r.entry("ttlMs").or_insert(json!(0));
            // With policies in the chain a list (or a read) may be filtered per caller.
            let scope = if shape.private { "private" } else { "public" };
            r.insert("cacheScope".into(), json!(scope));
        }
        let meta = r
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(meta::SERVER_INFO.into(), server_info());
        }
    } else if shape.method == methods::RESOURCES_READ
        && m.error_value()
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            == Some(codes::RESOURCE_NOT_FOUND)
        && let Some(e) = m.error_mut()
    {
        e["code"] = json!(codes::INVALID_PARAMS);
    }
    m
}

/// Gives up on a parked call: its upstream requests get an error (so the upstream does not
/// wait forever) and the call itself is cancelled. Returns false (for `retain`).
fn abandon(p: &ParkedCall) -> bool {
    let session = p.session.clone();
    let pending: Vec<Value> = p.pending.iter().map(|(_, id, _)| id.clone()).collect();
    let id = p.internal_id.clone();
    tokio::spawn(async move {
        for gateway_id in pending {
            session
                .handle_response(Message::error(
                    gateway_id,
                    codes::REQUEST_CANCELLED,
                    "the client did not answer",
                    None,
                ))
                .await;
        }
        cancel(&session, id).await;
    });
    false
}

async fn cancel(session: &Session, id: Value) {
    session
        .handle_notification(Message::notification(
            methods::CANCELLED,
            Some(json!({ "requestId": id, "reason": "the client closed the stream" })),
        ))
        .await;
}

/// Cancels a request whose client went away before its answer (the HTTP response future
/// or the SSE stream was dropped) — closing the stream is cancellation in 2026-07-28.
struct CancelOnDrop {
    session: Arc<Session>,
    id: Option<Value>,
}

impl CancelOnDrop {
    /// The request finished: nothing to cancel.
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let session = self.session.clone();
            tokio::spawn(async move { cancel(&session, id).await });
        }
    }
}
