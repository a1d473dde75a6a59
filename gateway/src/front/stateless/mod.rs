//! MCP 2026-07-28 on the same endpoint as the session era: stateless requests, told apart
//! per request by `MCP-Protocol-Version: 2026-07-28` (which `_meta` must repeat).
//!
//! A stateless client has no session, but most upstreams behind the gateway do (they speak
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

mod answer;
mod listen;
mod park;
mod remote;
mod validate;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{Value, json};

use super::Front;
use super::era::request_meta;
use super::pipeline::{self, Admitted, Refusal, server_info};
use super::response::{self, Body};
use crate::mcp::headers::PARAM_PREFIX;
use crate::mcp::methods::{self, meta};
use crate::mcp::{Kind, Message, codes, version};
use crate::policy::{Call, Chain, Phase};
use crate::upstream::Hello;
pub(super) use park::Parked;
pub(super) use remote::serve_forwarded;
use validate::{check_param_headers, validate};

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
    // The tasks extension (the session answers -32021 when the request does not declare
    // it); 2025-11-25's tasks/result and tasks/list are not part of it.
    methods::TASKS_GET,
    methods::TASKS_UPDATE,
    methods::TASKS_CANCEL,
];

/// The requests that may answer `input_required`; `Mcp-Name` is required on the same three.
pub(super) const NAMED: &[&str] = &[
    methods::TOOLS_CALL,
    methods::PROMPTS_GET,
    methods::RESOURCES_READ,
];

/// The tasks-extension requests that name their task in `Mcp-Name` (`params.taskId`).
pub(super) const NAMED_TASK: &[&str] = &[
    methods::TASKS_GET,
    methods::TASKS_UPDATE,
    methods::TASKS_CANCEL,
];

/// Results a client may cache (`CacheableResult`): they carry `ttlMs` and `cacheScope`.
pub(super) const CACHEABLE: &[&str] = &[
    methods::TOOLS_LIST,
    methods::PROMPTS_LIST,
    methods::RESOURCES_LIST,
    methods::RESOURCES_TEMPLATES_LIST,
    methods::RESOURCES_READ,
];

/// What a stateless request is, for shaping its answers.
pub(super) struct Shape {
    pub(super) client_id: Value,
    pub(super) method: String,
    pub(super) target: Option<String>,
    pub(super) caller: String,
    pub(super) wants_logs: bool,
    /// Client capabilities of this request (which input requests it can take).
    pub(super) capabilities: Value,
    /// Policies ran: list results may differ per caller.
    pub(super) private: bool,
    /// When the POST arrived (for the audit trail and the metrics).
    pub(super) started: Instant,
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

/// An SSE frame without an id: 2026-07-28 streams are not resumable.
pub(super) use response::message_event as frame;

/// 2026-07-28 has neither the GET stream (`subscriptions/listen` replaces it) nor sessions.
pub(super) fn no_get_or_delete() -> Response<Body> {
    let mut r = response::status_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed: 2026-07-28 uses POST only (subscriptions/listen for notifications)",
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// The answer for a refusal of the pipeline: the request's id on a denial, always.
fn refuse(refusal: Refusal, client_id: &Value) -> Response<Body> {
    match refusal {
        Refusal::Denied(d, _) => response::denied(&d, Some(client_id.clone())),
        other => other.into_response(),
    }
}

impl Front {
    /// A 2026-07-28 POST: read and parsed by the pipeline, validated, run through the policy
    /// chain, and served through the caller's internal session.
    pub(super) async fn stateless_post(
        self: &Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
    ) -> Response<Body> {
        let started = Instant::now();
        if let Err(r) = pipeline::check_post_headers(req.headers()) {
            return r;
        }
        let chain = self.policies.chain();
        // Kept whatever the chain: the era's header rules read them.
        let headers = pipeline::headers_for(&chain, req.headers(), true);
        let msg = match self.read_message(req).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        crate::observe::on_message(&msg, None, Some(version::STATELESS));
        // An Mcp-Session-Id header is ignored: 2026-07-28 has no sessions.
        self.stateless(headers, msg, chain, started).await
    }

    /// A parsed 2026-07-28 message.
    async fn stateless(
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
        if let Some(text) = pipeline::oversized_hello(
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
                let param = name.as_str().strip_prefix(PARAM_PREFIX)?;
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
            let protocol = Some(version::STATELESS);
            let refusal = self.refused(started, protocol, None, call, d, None);
            return refuse(refusal, &client_id);
        }
        let caller = call
            .as_ref()
            .and_then(|c| c.identity())
            .map(|i| i.subject.clone())
            .unwrap_or_default();
        let session = match self.caller_session(&caller, hello) {
            Ok(s) => s,
            Err(refusal) => return refuse(refusal, &client_id),
        };
        session.touch();
        // The caller's token, now that authn accepted it, for token-exchange upstreams.
        session.subject.remember(call.as_ref().map(|c| c.view()));
        if method == methods::TOOLS_CALL
            && let Err(r) = check_param_headers(&session, &param_headers, &msg).await
        {
            return r;
        }
        // The target is resolved once, in the caller's catalog: the chain sees it, the
        // session forwards to it.
        let mut resolved = None;
        if let Some(call) = call.as_mut() {
            resolved = session.resolve(&msg).await;
            call.set_destination(session.named(resolved.as_ref()));
            if let Err(d) = chain.after_authn(call).await {
                let protocol = Some(version::STATELESS);
                let refusal = self.refused(started, protocol, Some(&session.id), call, d, None);
                return refuse(refusal, &client_id);
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
        // In a cluster, a state the gateway issued names the replica holding the call.
        if let Some(state) = msg.param_str("requestState")
            && let Some(bus) = self.bus.as_ref()
            && let Some(owner) = bus.state_owner(state)
        {
            return match owner {
                Some(replica) => self.forward_retry(bus, &replica, state, &msg, shape).await,
                // Ours, but no longer parked: expired or used.
                None => self.resume(state, &msg, shape).await,
            };
        }
        let mut msg = match call.as_mut() {
            Some(c) => {
                drop(msg);
                c.take_request(chain.wants(Phase::Response))
            }
            None => Arc::unwrap_or_clone(msg),
        };
        strip_stateless_meta(&mut msg);
        if shape.method == methods::SUBSCRIPTIONS_LISTEN {
            return self.listen(session, msg, shape).await;
        }
        if resolved.is_none() {
            resolved = session.resolve(&msg).await;
        }
        let admitted = Admitted {
            msg,
            call,
            resolved,
        };
        self.start(session, admitted, chain, shape).await
    }
}

/// Removes the protocol version from the request's `_meta` before it goes upstream: the
/// upstream link says which version it speaks (a session-era upstream that also knows
/// 2026-07-28 would otherwise treat the request as 2026-07-28 — and, for one, refuse to ask
/// its client anything). The client's capabilities and identity stay, so a 2026-07-28
/// upstream sees what this very request declared; other keys (`progressToken`, trace
/// context, vendor keys) pass unchanged.
pub(super) fn strip_stateless_meta(msg: &mut Message) {
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
pub(super) fn discover() -> Value {
    json!({
        "resultType": "complete",
        "supportedVersions": version::ALL,
        "capabilities": pipeline::capabilities(),
        "_meta": { meta::SERVER_INFO: server_info() },
        // Versions and capabilities change only with the gateway's binary or configuration.
        "ttlMs": 3_600_000,
        "cacheScope": "public",
    })
}
