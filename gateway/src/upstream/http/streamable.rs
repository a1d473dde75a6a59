//! Streamable HTTP upstreams (MCP 2025-03-26 … 2025-11-25 session era).
//!
//! Each link holds its own `Mcp-Session-Id`; all links of one upstream share one keep-alive
//! connection pool. A request's response may be JSON or an SSE stream; notifications and
//! requests on that stream belong to the request and go to its client stream. The upstream's
//! GET stream (if it offers one) carries everything else. An expired upstream session (HTTP
//! 404) is re-initialized once, transparently, and the request retried. That covers a link
//! attached to an upstream session another replica opened (sealed into the client's session
//! id, [`HttpLink::attach`]) which the upstream has forgotten.
//!
//! An upstream that speaks only MCP 2026-07-28 (or is pinned to it) is spoken to statelessly
//! instead (`stateless.rs` here and in `upstream/`): no `initialize`, no session id, the
//! 2026 `_meta` and headers on every request, and a `subscriptions/listen` stream in place of
//! the GET stream.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::sync::Mutex;

use super::listen::{Listen, Opened};
use super::{Client, Sent, stateless as http_stateless};
use crate::mcp::headers::{LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID};
use crate::mcp::{Kind, Message, methods, version};
use crate::upstream::pending::RequestIds;
use crate::upstream::stateless::{self, Stateless};
use crate::upstream::transport::{Call, Transport};
use crate::upstream::{Era, Hello, InboundHandler, Related, Upstream, UpstreamError, bounds};

pub struct HttpLink {
    pub(super) upstream: Arc<Upstream>,
    client: Client,
    pub(super) handler: Weak<dyn InboundHandler>,
    pub(super) hello: Hello,
    ids: RequestIds,
    state: RwLock<SessionState>,
    /// Serialises re-initialization after the upstream session expired.
    reinit: Mutex<()>,
    pub(super) listener: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// Spoken to as MCP 2026-07-28 (stateless) rather than with a session.
    pub(super) stateless: Option<Stateless>,
    /// 2026-07-28: tool name → its `x-mcp-header` arguments, from `tools/list` results.
    pub(super) tool_params:
        std::sync::Mutex<std::collections::HashMap<String, crate::mcp::headers::ParamHeaders>>,
    /// The upstream session id sealed into the client's session id: other replicas may use
    /// it, so dropping the link does not end it (`Transport::keep_open`).
    kept: std::sync::Mutex<Option<HeaderValue>>,
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
        let mut link = HttpLink::new(upstream, client, hello, handler, SessionState::default());
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
                upstream.set_era(Era::Unknown);
            }
        })?;
        Ok((link, init))
    }

    fn new(
        upstream: &Arc<Upstream>,
        client: Client,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        state: SessionState,
    ) -> Self {
        HttpLink {
            upstream: upstream.clone(),
            client,
            handler,
            hello: hello.clone(),
            ids: RequestIds::default(),
            state: RwLock::new(state),
            reinit: Mutex::new(()),
            listener: std::sync::Mutex::new(None),
            stateless: None,
            tool_params: Default::default(),
            kept: std::sync::Mutex::new(None),
        }
    }

    /// A link on an upstream session another replica opened: no `initialize`; the GET
    /// stream is opened as after one. An upstream that forgot the session answers 404 to
    /// the first request, which re-initializes (`call`).
    pub fn attach(
        upstream: &Arc<Upstream>,
        client: Client,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        resumed: &crate::upstream::UpstreamSession,
    ) -> Result<(Self, Value), UpstreamError> {
        let bad = |what: &str| UpstreamError::Protocol {
            upstream: upstream.name.clone(),
            detail: format!("sealed upstream session has an unusable {what}"),
        };
        let id = HeaderValue::from_str(&resumed.id).map_err(|_| bad("session id"))?;
        let state = SessionState {
            session_id: Some(id.clone()),
            version: Some(HeaderValue::from_str(&resumed.version).map_err(|_| bad("version"))?),
        };
        let link = HttpLink::new(upstream, client, hello, handler, state.clone());
        *link.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        link.listen(state);
        let init = serde_json::json!({
            "protocolVersion": resumed.version,
            "capabilities": resumed.capabilities,
        });
        Ok((link, init))
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
        let result = crate::upstream::initialize_result(&self.name(), reply)?;
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

    /// Posts a request; an expired upstream session is re-initialized once and the request
    /// posted again.
    async fn call(
        &self,
        mut msg: Message,
        related: Option<Related>,
    ) -> Result<Message, UpstreamError> {
        if let Some(stateless) = &self.stateless {
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

    /// Posts a notification or a response.
    async fn notify(&self, msg: Message) -> Result<(), UpstreamError> {
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

    pub(super) fn builder(
        &self,
        method: reqwest::Method,
        state: &SessionState,
    ) -> reqwest::RequestBuilder {
        let mut headers = HeaderMap::new();
        if let Some(v) = &state.session_id {
            headers.insert(SESSION_ID, v.clone());
        }
        if let Some(v) = &state.version {
            headers.insert(PROTOCOL_VERSION, v.clone());
        }
        self.client
            .request(method, &self.client.url)
            .headers(headers)
    }

    /// The POST that carries `msg`: the client's fixed headers, the session's, the trace
    /// context, the caller's exchanged credential and, for 2026-07-28, the request headers.
    async fn post_request(
        &self,
        msg: &Message,
        body: &Bytes,
        state: &SessionState,
    ) -> Result<http::Request<Bytes>, UpstreamError> {
        let mut req = self.client.post_request(body.clone());
        let headers = req.headers_mut();
        if let Some(v) = &state.session_id {
            headers.insert(SESSION_ID, v.clone());
        }
        if let Some(v) = &state.version {
            headers.insert(PROTOCOL_VERSION, v.clone());
        }
        super::trace_headers(headers);
        if let Some(credential) =
            crate::upstream::credential::authorization(&self.upstream, &self.handler).await?
        {
            req.headers_mut().insert(AUTHORIZATION, credential);
        }
        if self.stateless.is_some() || msg.method() == methods::SERVER_DISCOVER {
            let params = self.param_annotations(msg);
            http_stateless::add_request_headers(req.headers_mut(), msg, &params);
        }
        Ok(req)
    }

    pub(super) async fn post(
        &self,
        msg: &Message,
        related: Option<&Related>,
        state: &SessionState,
    ) -> Result<(Posted, HeaderMap), UpstreamError> {
        let body = Bytes::from(msg.to_bytes());
        let req = self.post_request(msg, &body, state).await?;
        let resp = match self.client.send(&self.upstream, req).await? {
            Sent::Answer(resp) => resp,
            Sent::Redirected => {
                let req = self.post_request(msg, &body, state).await?;
                match self.client.send(&self.upstream, req).await? {
                    Sent::Answer(resp) => resp,
                    Sent::Redirected => return Err(self.protocol("redirected twice")),
                }
            }
        };
        let (
            http::response::Parts {
                status, headers, ..
            },
            body,
        ) = resp.into_parts();
        if status == http::StatusCode::NOT_FOUND && state.session_id.is_some() {
            return Err(UpstreamError::SessionExpired {
                upstream: self.name(),
            });
        }
        if status == http::StatusCode::ACCEPTED {
            return Ok((Posted::Accepted, headers));
        }
        if !status.is_success() {
            // An error body too large to read is no answer: the HTTP status is.
            let body = bounds::read_body(&self.upstream, body)
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
        let is_sse = super::is_event_stream(&headers);
        if msg.kind() != Kind::Request {
            return Ok((Posted::Accepted, headers));
        }
        if !is_sse {
            let bytes = bounds::read_body(&self.upstream, body).await?;
            let m = Message::parse(&bytes).map_err(|e| self.protocol(&e.to_string()))?;
            return Ok((Posted::Response(m), headers));
        }
        let mut events = bounds::sse_events(&self.upstream, body);
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
            let Some(m) = super::event_message(&self.upstream, event) else {
                continue;
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
        self.set_listener(
            Listen {
                upstream: self.upstream.clone(),
                handler: self.handler.clone(),
                what: "GET stream",
                open: move |last_event: Option<&str>| {
                    let mut req = builder.try_clone()?.header(ACCEPT, "text/event-stream");
                    if let Some(id) = last_event {
                        req = req.header(LAST_EVENT_ID, id);
                    }
                    Some(req)
                },
                opened: |resp| match resp.status().as_u16() {
                    _ if resp.status().is_success() => Opened::Stream,
                    // 405: the upstream offers no GET stream; 404: its session is gone (the next
                    // request re-initializes and opens a new listener).
                    404 | 405 => Opened::Stop,
                    _ => Opened::Retry,
                },
                keep: |_| true,
            }
            .spawn(),
        );
    }

    /// Makes `task` the link's listening stream, ending the one before.
    pub(super) fn set_listener(&self, task: tokio::task::AbortHandle) {
        let old = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Ends the upstream session: stops listening and sends DELETE (best effort), unless it
    /// is the one sealed into the client's session id and still kept open for other
    /// replicas.
    fn close(&self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
        let state = self.session();
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if state.session_id.is_some() && state.session_id == kept {
            tracing::debug!(upstream = %self.upstream.name, "upstream session left open: the client's session id carries it");
            return;
        }
        if state.session_id.is_some() {
            let req = self.builder(reqwest::Method::DELETE, &state);
            let (upstream, handler) = (self.upstream.clone(), self.handler.clone());
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(req) =
                        crate::upstream::credential::authorize(&upstream, &handler, req).await
                    {
                        let _ = req.timeout(Duration::from_secs(5)).send().await;
                    }
                });
            }
        }
    }
}

impl Transport for HttpLink {
    fn kind(&self) -> &'static str {
        "streamable-http"
    }

    fn stateless(&self) -> Option<&Stateless> {
        self.stateless.as_ref()
    }

    fn ids(&self) -> &RequestIds {
        &self.ids
    }

    fn session_id(&self) -> Option<String> {
        if self.stateless.is_some() {
            return None;
        }
        let id = self.session().session_id?;
        id.to_str().ok().map(str::to_string)
    }

    fn keep_open(&self, keep: bool) {
        let id = keep.then(|| self.session().session_id).flatten();
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = id;
    }

    /// The answer comes on the POST itself (as JSON, or on the request's SSE stream, which
    /// also carries what belongs to it); dropping the call closes it.
    fn request(&self, _id: u64, msg: Message, related: Option<Related>) -> Call<'_> {
        Box::pin(self.call(msg, related))
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<(), UpstreamError>> {
        Box::pin(self.notify(msg))
    }
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.close();
    }
}
