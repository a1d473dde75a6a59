//! Streamable HTTP upstreams (MCP 2025-03-26 … 2025-11-25 session era).
//!
//! Each link holds its own `Mcp-Session-Id`; all links of one upstream share one keep-alive
//! connection pool. A request's response may be JSON or an SSE stream; notifications and
//! requests on that stream belong to the request and go to its client stream. The upstream's
//! GET stream (if it offers one) carries everything else. An expired upstream session (HTTP
//! 404) is re-initialized once, transparently, and the request retried.
//!
//! An upstream that speaks only MCP 2026-07-28 (or is pinned to it) is spoken to statelessly
//! instead (see `stateless.rs`): no `initialize`, no session id, the 2026 `_meta` and headers
//! on every request, and a `subscriptions/listen` stream in place of the GET stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::sync::Mutex;

use super::bounds;
use super::stateless::{self, Stateless};
use super::{Hello, InboundHandler, Related, Upstream, UpstreamError};
use crate::config::UpstreamConfig;
use crate::mcp::{Kind, Message, methods, version};

use crate::mcp::headers::{LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID};

/// Longest wait before a listening stream (GET, `subscriptions/listen`) is opened again; also
/// the wait after a stream broke a bound, so a hostile stream costs little.
pub(super) const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(30);

/// The per-upstream HTTP client: pool, URL and static headers.
#[derive(Clone, Debug)]
pub struct Client {
    pub(super) http: reqwest::Client,
    pub(super) url: reqwest::Url,
    /// Configured headers and bearer token, marked sensitive.
    pub(super) headers: HeaderMap,
}

impl Client {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::Unavailable {
            upstream: name.into(),
            reason,
        };
        let url = reqwest::Url::parse(cfg.url.as_deref().unwrap_or_default())
            .map_err(|e| bad(format!("invalid URL: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let k = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let mut v = HeaderValue::from_str(v).map_err(|_| bad("invalid header value".into()))?;
            v.set_sensitive(true);
            headers.insert(k, v);
        }
        if let Some(token) = &cfg.bearer_token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| bad("invalid bearer token".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            // Nagle + delayed ACK stalls small SSE events by ~40 ms on loopback.
            .tcp_nodelay(true)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Client { http, url, headers })
    }
}

pub struct HttpLink {
    pub(super) upstream: Arc<Upstream>,
    client: Client,
    pub(super) handler: Weak<dyn InboundHandler>,
    pub(super) hello: Hello,
    next_id: AtomicU64,
    state: RwLock<SessionState>,
    /// Serialises re-initialization after the upstream session expired.
    reinit: Mutex<()>,
    pub(super) listener: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Spoken to as MCP 2026-07-28 (stateless) rather than with a session.
    pub(super) stateless: Option<Stateless>,
    /// 2026-07-28: tool name → its `x-mcp-header` arguments, from `tools/list` results.
    pub(super) tool_params:
        std::sync::Mutex<std::collections::HashMap<String, crate::mcp::headers::ParamHeaders>>,
}

#[derive(Clone, Default)]
pub(super) struct SessionState {
    session_id: Option<HeaderValue>,
    version: Option<HeaderValue>,
}

/// What one POST produced.
pub(super) enum Posted {
    Accepted,
    Response(Message),
}

impl HttpLink {
    pub async fn start(
        upstream: &Arc<Upstream>,
        client: Client,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        session_client: bool,
    ) -> Result<(Self, Value), UpstreamError> {
        let mut link = HttpLink {
            upstream: upstream.clone(),
            client,
            handler,
            hello: hello.clone(),
            next_id: AtomicU64::new(0),
            state: RwLock::new(SessionState::default()),
            reinit: Mutex::new(()),
            listener: std::sync::Mutex::new(None),
            stateless: None,
            tool_params: Default::default(),
        };
        let stateless = Stateless::new(upstream.name.clone(), hello.clone());
        let unreachable = |e: &UpstreamError| {
            // A caller without a credential learns nothing about the upstream's era either.
            matches!(
                e,
                UpstreamError::Unavailable { .. }
                    | UpstreamError::Timeout { .. }
                    | UpstreamError::Credential { .. }
            )
        };
        let choice = stateless::choose_era(
            upstream,
            session_client,
            || link.discover(&stateless),
            unreachable,
        )
        .await?;
        let discovered = match choice {
            stateless::Choice::Initialize => None,
            stateless::Choice::Stateless(d) => Some(d),
            stateless::Choice::TryInitialize(d) => match link.initialize().await {
                Ok(init) => {
                    upstream.set_accepts_initialize(true);
                    return Ok((link, init));
                }
                Err(e) if stateless::refused(&e) => {
                    tracing::debug!(upstream = %upstream.name, error = %e, "initialize refused; speaking MCP 2026-07-28");
                    upstream.set_accepts_initialize(false);
                    Some(d)
                }
                Err(e) => return Err(e),
            },
        };
        if let Some(discovered) = discovered {
            link.listen_for_changes(&stateless);
            link.stateless = Some(stateless);
            return Ok((link, discovered));
        }
        let init = link.initialize().await.inspect_err(|_| {
            // Perhaps it changed era: the next link asks again.
            if upstream.config.protocol == crate::config::UpstreamProtocol::Auto {
                upstream.set_era(super::Era::Unknown);
            }
        })?;
        Ok((link, init))
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn name(&self) -> Arc<str> {
        self.upstream.name.clone()
    }

    fn session(&self) -> SessionState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn initialize(&self) -> Result<Value, UpstreamError> {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = SessionState::default();
        let init = self.hello.initialize_request();
        let (posted, headers) = self.post(&init, None, &SessionState::default()).await?;
        let Posted::Response(reply) = posted else {
            return Err(self.protocol("initialize was answered with 202"));
        };
        let result = super::initialize_result(&self.name(), reply)?;
        let negotiated = result["protocolVersion"]
            .as_str()
            .unwrap_or(version::LATEST);
        let state = SessionState {
            session_id: headers.get(&SESSION_ID).cloned(),
            version: HeaderValue::from_str(negotiated).ok(),
        };
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        self.post(
            &Message::notification(methods::INITIALIZED, None),
            None,
            &state,
        )
        .await?;
        self.listen(state);
        Ok(result)
    }

    pub async fn request(
        &self,
        mut msg: Message,
        related: Option<Related>,
    ) -> Result<Message, UpstreamError> {
        if let Some(stateless) = &self.stateless {
            if let Some(answer) = stateless.answer_locally(&msg) {
                return Ok(answer);
            }
            stateless.add_meta(&mut msg);
        }
        let state = self.session();
        if self.stateless.is_some() && msg.method() == methods::TOOLS_LIST {
            let answer =
                self.expect_response(self.post(&msg, related.as_ref(), &state).await?.0)?;
            self.learn_tools(&answer);
            return Ok(answer);
        }
        match self.post(&msg, related.as_ref(), &state).await {
            Err(UpstreamError::SessionExpired { .. }) => {
                self.reinitialize(&state).await?;
                let state = self.session();
                self.expect_response(self.post(&msg, related.as_ref(), &state).await?.0)
            }
            other => self.expect_response(other?.0),
        }
    }

    pub async fn send(&self, msg: Message) -> Result<(), UpstreamError> {
        if self.stateless.is_some() {
            // 2026-07-28 defines no client notifications over HTTP (closing a request's
            // stream cancels it) and its servers ask nothing of the client.
            tracing::debug!(upstream = %self.upstream.name, method = msg.method(), "not sent to a 2026-07-28 upstream");
            return Ok(());
        }
        let state = self.session();
        self.post(&msg, None, &state).await.map(|_| ())
    }

    fn expect_response(&self, posted: Posted) -> Result<Message, UpstreamError> {
        match posted {
            Posted::Response(m) => Ok(m),
            Posted::Accepted => Err(self.protocol("a request was answered with 202")),
        }
    }

    async fn reinitialize(&self, failed: &SessionState) -> Result<(), UpstreamError> {
        let _guard = self.reinit.lock().await;
        if self.session().session_id != failed.session_id {
            return Ok(()); // another request already did it
        }
        tracing::info!(upstream = %self.upstream.name, "upstream session expired; re-initializing");
        self.initialize().await.map(|_| ())
    }

    pub(super) fn protocol(&self, detail: &str) -> UpstreamError {
        UpstreamError::Protocol {
            upstream: self.name(),
            detail: detail.into(),
        }
    }

    fn unavailable(&self, e: reqwest::Error) -> UpstreamError {
        // reqwest errors may contain the URL but never our headers.
        UpstreamError::Unavailable {
            upstream: self.name(),
            reason: super::cause(e),
        }
    }

    pub(super) fn builder(
        &self,
        method: reqwest::Method,
        state: &SessionState,
    ) -> reqwest::RequestBuilder {
        let mut headers = self.client.headers.clone();
        if let Some(v) = &state.session_id {
            headers.insert(SESSION_ID, v.clone());
        }
        if let Some(v) = &state.version {
            headers.insert(PROTOCOL_VERSION, v.clone());
        }
        self.client
            .http
            .request(method, self.client.url.clone())
            .headers(headers)
    }

    pub(super) async fn post(
        &self,
        msg: &Message,
        related: Option<&Related>,
        state: &SessionState,
    ) -> Result<(Posted, HeaderMap), UpstreamError> {
        let mut builder = self.builder(reqwest::Method::POST, state);
        builder = super::credential::authorize(&self.upstream, &self.handler, builder).await?;
        if crate::observe::enabled() {
            let mut trace = HeaderMap::new();
            crate::observe::inject_headers(&mut trace);
            builder = builder.headers(trace);
        }
        if self.stateless.is_some() || msg.method() == methods::SERVER_DISCOVER {
            let params = self.param_annotations(msg);
            builder = builder.headers(super::stateless::request_headers(msg, &params));
        }
        let resp = builder
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(msg.to_bytes())
            .send()
            .await
            .map_err(|e| self.unavailable(e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && state.session_id.is_some() {
            return Err(UpstreamError::SessionExpired {
                upstream: self.name(),
            });
        }
        if status == reqwest::StatusCode::ACCEPTED {
            return Ok((Posted::Accepted, resp.headers().clone()));
        }
        if !status.is_success() {
            // An error body too large to read is no answer: the HTTP status is.
            let body = bounds::read_body(&self.upstream, resp)
                .await
                .unwrap_or_default();
            let answer = Message::parse(&body)
                .ok()
                .filter(|m| m.kind() == Kind::Response);
            match answer {
                // A JSON-RPC error body (e.g. for an invalid request) is still an answer.
                Some(m) if msg.kind() == Kind::Request && m.id().is_some_and(|i| !i.is_null()) => {
                    return Ok((Posted::Response(m), HeaderMap::new()));
                }
                // How a server that predates Streamable HTTP refuses it (see `legacy_sse`).
                None if msg.method() == methods::INITIALIZE
                    && matches!(status.as_u16(), 400 | 404 | 405) =>
                {
                    return Err(UpstreamError::NotStreamable {
                        upstream: self.name(),
                        status: status.as_u16(),
                    });
                }
                _ => {}
            }
            return Err(UpstreamError::Http {
                upstream: self.name(),
                status: status.as_u16(),
            });
        }
        let headers = resp.headers().clone();
        let is_sse = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if msg.kind() != Kind::Request {
            return Ok((Posted::Accepted, headers));
        }
        if !is_sse {
            let bytes = bounds::read_body(&self.upstream, resp).await?;
            let m = Message::parse(&bytes).map_err(|e| self.protocol(&e.to_string()))?;
            return Ok((Posted::Response(m), headers));
        }
        let mut events = bounds::sse_events(&self.upstream, resp);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    let failure = bounds::sse_failure(&self.upstream, &e);
                    if bounds::is_breach(&e) {
                        crate::memory::give_back(events);
                    }
                    return Err(failure);
                }
            };
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                continue;
            };
            let m = match Message::parse(data.as_bytes()) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(upstream = %self.upstream.name, error = %e, "ignoring a bad SSE event");
                    continue;
                }
            };
            if m.kind() == Kind::Response && m.id() == msg.id() {
                return Ok((Posted::Response(m), headers));
            }
            self.deliver(m, related);
        }
        Err(self.protocol("the SSE stream ended before the response"))
    }

    pub(super) fn deliver(&self, msg: Message, related: Option<&Related>) {
        if let Some(h) = self.handler.upgrade() {
            h.on_message(&self.upstream, msg, related);
        }
    }

    /// Opens the upstream's GET stream for messages it sends on its own initiative, and keeps
    /// it open (reconnecting with `Last-Event-ID`) until the link closes.
    fn listen(&self, state: SessionState) {
        let builder = self.builder(reqwest::Method::GET, &state);
        let (upstream, handler) = (self.upstream.clone(), self.handler.clone());
        let task = tokio::spawn(async move {
            let mut last_event: Option<String> = None;
            let mut backoff = Duration::from_millis(250);
            loop {
                let Some(mut req) = builder.try_clone() else {
                    return;
                };
                req = req.header(ACCEPT, "text/event-stream");
                if let Some(id) = &last_event {
                    req = req.header(LAST_EVENT_ID, id.as_str());
                }
                let sent = match super::credential::authorize(&upstream, &handler, req).await {
                    Ok(req) => req.send().await,
                    Err(e) => {
                        tracing::debug!(upstream = %upstream.name, error = %e, "GET stream not opened");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
                        continue;
                    }
                };
                match sent {
                    Ok(resp) if resp.status().is_success() => {
                        backoff = Duration::from_millis(250);
                        let mut events = bounds::sse_events(&upstream, resp);
                        while let Some(event) = events.next().await {
                            let event = match event {
                                Ok(e) => e,
                                Err(e) => {
                                    if bounds::is_breach(&e) {
                                        // Logged; a stream that does it again waits longest.
                                        let _ = bounds::sse_failure(&upstream, &e);
                                        backoff = MAX_LISTEN_BACKOFF;
                                        crate::memory::give_back(events);
                                    }
                                    break;
                                }
                            };
                            if event.id.is_some() {
                                last_event = event.id.clone();
                            }
                            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                                continue;
                            };
                            match Message::parse(data.as_bytes()) {
                                Ok(m) => match handler.upgrade() {
                                    Some(h) => h.on_message(&upstream, m, None),
                                    None => return,
                                },
                                Err(e) => {
                                    tracing::warn!(upstream = %upstream.name, error = %e, "ignoring a bad SSE event")
                                }
                            }
                        }
                    }
                    // 405: the upstream offers no GET stream; 404: its session is gone (the
                    // next request re-initializes and opens a new listener).
                    Ok(resp) if matches!(resp.status().as_u16(), 404 | 405) => return,
                    Ok(resp) => {
                        tracing::debug!(upstream = %upstream.name, status = %resp.status(), "GET stream refused")
                    }
                    Err(e) => {
                        tracing::debug!(upstream = %upstream.name, error = %e.without_url(), "GET stream failed")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
            }
        });
        let old = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Ends the upstream session: stops listening and sends DELETE (best effort).
    pub fn close(&self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        let state = self.session();
        if state.session_id.is_some() {
            let req = self.builder(reqwest::Method::DELETE, &state);
            let (upstream, handler) = (self.upstream.clone(), self.handler.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(req) = super::credential::authorize(&upstream, &handler, req).await {
                        let _ = req.timeout(Duration::from_secs(5)).send().await;
                    }
                });
            }
        }
    }
}
