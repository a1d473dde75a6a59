//! MCP clients (rmcp over Streamable HTTP) for talking to a gateway under test.
//!
//! [`client`] connects with the legacy `initialize` handshake at protocol 2025-11-25 and a
//! [`RecordingClient`] handler, which records every notification and server-to-client
//! request it sees and answers sampling, elicitation and roots requests. See
//! `docs/dev/rmcp-client-notes.md` for how rmcp chooses the protocol era.

// Sampling, roots, logging and resources/subscribe are deprecated by SEP-2577 (2026-07-28)
// but are exactly what the 2025-11-25 era tests exercise.
#![allow(deprecated)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{HeaderName, HeaderValue};
use rmcp::{
    ClientHandler, ClientServiceExt, ErrorData, RoleClient,
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
        ClientCapabilities, ClientInfo, ClientRequest, CreateMessageRequestParams,
        CreateMessageResult, CustomNotification, ElicitRequestParams, ElicitResult,
        ElicitationAction, ElicitationCapability, FormElicitationCapability, Implementation,
        ListRootsResult, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
        ProtocolVersion, ResourceUpdatedNotificationParam, Root, SamplingMessage,
        SamplingMessageContentBlock, ServerResult, UrlElicitationCapability,
    },
    service::{
        ClientCacheConfig, ClientInitializeError, ClientLifecycleMode, NotificationContext, Peer,
        PeerRequestOptions, RequestContext, RunningService, ServiceError,
    },
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::Value;

use super::process::STARTUP_TIMEOUT;

/// What tests get from [`client`]: an rmcp client whose handler is a [`RecordingClient`]
/// (reach it with `.service()`; the client derefs to its [`Peer`] for requests).
pub type McpClient = RunningService<RoleClient, RecordingClient>;

/// Connects to `url` with `initialize` at 2025-11-25 and a default [`RecordingClient`].
///
/// # Panics
///
/// If the connection or handshake fails.
pub async fn client(url: &str) -> McpClient {
    client_with(url, RecordingClient::new()).await
}

/// [`client`] with a given (possibly pre-configured) [`RecordingClient`].
pub async fn client_with(url: &str, handler: RecordingClient) -> McpClient {
    connect(url, handler, &ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect an MCP client to {url}: {e}"))
}

/// How [`connect`] sets up the client.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Handshake: `Initialize` (default; the protocol version sent is the handler's
    /// `get_info().protocol_version`, 2025-11-25 for [`RecordingClient`]), `Discover` or `Auto`.
    pub lifecycle: ClientLifecycleMode,
    /// Extra HTTP headers sent on every request (not `Accept`, `Mcp-Session-Id` or
    /// `Last-Event-Id`, which rmcp rejects).
    pub headers: Vec<(String, String)>,
    /// rmcp's default is to re-initialize silently when the server answers 404 for the
    /// session; tests default to `false` so they see what the gateway does.
    pub reinit_on_expired_session: bool,
    /// rmcp caches list/read results that carry `ttlMs` and serves stale entries on
    /// errors; tests default to `false` (cache disabled).
    pub response_cache: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            lifecycle: ClientLifecycleMode::Initialize,
            headers: Vec::new(),
            reinit_on_expired_session: false,
            response_cache: false,
        }
    }
}

impl ConnectOptions {
    /// Stateless 2026-07-28: `server/discover`, no fallback.
    pub fn discover() -> Self {
        ConnectOptions {
            lifecycle: ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
            ..Default::default()
        }
    }

    /// `server/discover` for 2026-07-28, falling back to `initialize` at 2025-11-25 when the
    /// server answers like a legacy server (or does not answer within 10 s).
    pub fn auto() -> Self {
        ConnectOptions {
            lifecycle: ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(ProtocolVersion::V_2025_11_25),
            },
            ..Default::default()
        }
    }

    /// Adds an HTTP header sent on every request.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Connects any [`ClientHandler`] to `url` over Streamable HTTP and runs the handshake
/// chosen by `options` (bounded by [`STARTUP_TIMEOUT`]).
pub async fn connect<H: ClientHandler>(
    url: &str,
    handler: H,
    options: &ConnectOptions,
) -> Result<RunningService<RoleClient, H>, ClientInitializeError> {
    let mut headers = HashMap::new();
    for (name, value) in &options.headers {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|e| panic!("bad header name {name:?}: {e}")),
            HeaderValue::from_str(value)
                .unwrap_or_else(|e| panic!("bad header value {value:?}: {e}")),
        );
    }
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned())
        .custom_headers(headers)
        .reinit_on_expired_session(options.reinit_on_expired_session);
    super::init_tls();
    let transport = StreamableHttpClientTransport::from_config(config);
    let running = tokio::time::timeout(
        STARTUP_TIMEOUT,
        handler.serve_with_lifecycle(transport, options.lifecycle.clone()),
    )
    .await
    .map_err(|_| {
        ClientInitializeError::ConnectionClosed(format!(
            "handshake with {url} did not finish within {STARTUP_TIMEOUT:?}"
        ))
    })??;
    if !options.response_cache {
        running
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
    }
    Ok(running)
}

/// Calls a tool with JSON arguments (an object, or `Value::Null` for none).
pub async fn call_tool(
    peer: &Peer<RoleClient>,
    name: &str,
    arguments: Value,
) -> Result<CallToolResult, ServiceError> {
    peer.call_tool(tool_params(name, arguments)).await
}

/// Calls a tool and also returns the progress token rmcp attached to the request, so the
/// progress notifications for this call can be picked out with
/// [`RecordingClient::progress_for`].
///
/// rmcp puts a fresh numeric `_meta.progressToken` on *every* request; this just exposes it.
pub async fn call_tool_tracked(
    peer: &Peer<RoleClient>,
    name: &str,
    arguments: Value,
) -> Result<(ProgressToken, CallToolResult), ServiceError> {
    let handle = peer
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(tool_params(name, arguments))),
            PeerRequestOptions::no_options(),
        )
        .await?;
    let token = handle.progress_token.clone();
    match handle.await_response().await? {
        ServerResult::CallToolResult(result) => Ok((token, result)),
        _ => Err(ServiceError::UnexpectedResponse),
    }
}

fn tool_params(name: &str, arguments: Value) -> CallToolRequestParams {
    let params = CallToolRequestParams::new(name.to_owned());
    match arguments {
        Value::Null => params,
        Value::Object(map) => params.with_arguments(map),
        other => panic!("tool arguments must be a JSON object, got {other}"),
    }
}

/// The text of all text content blocks of a tool result, joined with `\n`.
pub fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Something the server sent to a [`RecordingClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    Progress(ProgressNotificationParam),
    Log(LoggingMessageNotificationParam),
    ResourceUpdated(ResourceUpdatedNotificationParam),
    ToolListChanged,
    PromptListChanged,
    ResourceListChanged,
    Cancelled(CancelledNotificationParam),
    CustomNotification(CustomNotification),
    /// A `sampling/createMessage` request (recorded before it is answered).
    Sampling(CreateMessageRequestParams),
    /// An `elicitation/create` request (recorded before it is answered).
    Elicitation(ElicitRequestParams),
    /// A `roots/list` request.
    ListRoots,
    /// A `ping` request.
    Ping,
}

type SamplingFn = Arc<
    dyn Fn(&CreateMessageRequestParams) -> Result<CreateMessageResult, ErrorData> + Send + Sync,
>;
type ElicitationFn =
    Arc<dyn Fn(&ElicitRequestParams) -> Result<ElicitResult, ErrorData> + Send + Sync>;

struct Inner {
    info: Mutex<ClientInfo>,
    events: Mutex<Vec<ClientEvent>>,
    changed: tokio::sync::Notify,
    sampling: Mutex<SamplingFn>,
    elicitation: Mutex<ElicitationFn>,
    roots: Mutex<Vec<Root>>,
}

/// A [`ClientHandler`] for tests: records notifications and server requests as
/// [`ClientEvent`]s and answers server requests with configurable callbacks.
///
/// Cloning shares the state, so a test can keep a clone after handing one to [`connect`]
/// (or use `client.service()`).
///
/// Defaults:
/// - client info `portcullis-tests`, protocol version 2025-11-25, capabilities `roots`
///   (with `listChanged`), `sampling` and `elicitation` (form and url);
/// - sampling answers an assistant text `sampled: <text of the last message>` from
///   model `portcullis-test-model` with stop reason `endTurn`;
/// - elicitation declines;
/// - roots are empty.
#[derive(Clone)]
pub struct RecordingClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RecordingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingClient")
            .field("events", &self.events())
            .finish_non_exhaustive()
    }
}

impl Default for RecordingClient {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RecordingClient {
    pub fn new() -> Self {
        let capabilities = ClientCapabilities::builder()
            .enable_roots()
            .enable_roots_list_changed()
            .enable_sampling()
            .enable_elicitation_with(
                ElicitationCapability::new()
                    .with_form(FormElicitationCapability::new())
                    .with_url(UrlElicitationCapability::new()),
            )
            .build();
        let info = ClientInfo::new(
            capabilities,
            Implementation::new("portcullis-tests", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25);
        RecordingClient {
            inner: Arc::new(Inner {
                info: Mutex::new(info),
                events: Mutex::default(),
                changed: tokio::sync::Notify::new(),
                sampling: Mutex::new(Arc::new(default_sampling)),
                elicitation: Mutex::new(Arc::new(|_: &ElicitRequestParams| {
                    Ok(ElicitResult::new(ElicitationAction::Decline))
                })),
                roots: Mutex::default(),
            }),
        }
    }

    /// Replaces the `initialize` parameters (protocol version, capabilities, client info).
    /// Takes effect for the next handshake.
    pub fn with_info(self, info: ClientInfo) -> Self {
        *lock(&self.inner.info) = info;
        self
    }

    /// Sets the protocol version sent in `initialize`.
    pub fn with_protocol_version(self, version: ProtocolVersion) -> Self {
        lock(&self.inner.info).protocol_version = version;
        self
    }

    /// Answers `sampling/createMessage` with `f`.
    pub fn on_sampling(
        self,
        f: impl Fn(&CreateMessageRequestParams) -> Result<CreateMessageResult, ErrorData>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        *lock(&self.inner.sampling) = Arc::new(f);
        self
    }

    /// Answers `elicitation/create` with `f`.
    pub fn on_elicitation(
        self,
        f: impl Fn(&ElicitRequestParams) -> Result<ElicitResult, ErrorData> + Send + Sync + 'static,
    ) -> Self {
        *lock(&self.inner.elicitation) = Arc::new(f);
        self
    }

    /// Accepts every elicitation with `content`.
    pub fn accept_elicitation(self, content: Value) -> Self {
        self.on_elicitation(move |_| {
            Ok(ElicitResult::new(ElicitationAction::Accept).with_content(content.clone()))
        })
    }

    /// Sets the roots returned by `roots/list` (builder form of [`Self::set_roots`]).
    pub fn with_roots(self, roots: Vec<Root>) -> Self {
        self.set_roots(roots);
        self
    }

    /// Changes the roots returned by `roots/list`. Follow with
    /// `client.notify_roots_list_changed()` to tell the server.
    pub fn set_roots(&self, roots: Vec<Root>) {
        *lock(&self.inner.roots) = roots;
    }

    /// Everything recorded so far, in arrival order.
    pub fn events(&self) -> Vec<ClientEvent> {
        lock(&self.inner.events).clone()
    }

    /// Forgets the recorded events.
    pub fn clear_events(&self) {
        lock(&self.inner.events).clear();
    }

    /// The progress notifications recorded for `token`.
    pub fn progress_for(&self, token: &ProgressToken) -> Vec<ProgressNotificationParam> {
        lock(&self.inner.events)
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Progress(p) if &p.progress_token == token => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// The logging notifications recorded so far.
    pub fn logs(&self) -> Vec<LoggingMessageNotificationParam> {
        lock(&self.inner.events)
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Log(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until an event matching `pred` has been recorded (possibly already) and
    /// returns the first such event.
    ///
    /// # Panics
    ///
    /// After `timeout`, listing the events recorded so far.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> ClientEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(event) = lock(&self.inner.events).iter().find(|e| pred(e)) {
                return event.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no matching client event within {timeout:?}; recorded: {:#?}",
                    self.events()
                );
            }
        }
    }

    /// Waits until at least `n` events match `pred`; returns them.
    pub async fn wait_for_count(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> Vec<ClientEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let matching: Vec<_> = lock(&self.inner.events)
                .iter()
                .filter(|e| pred(e))
                .cloned()
                .collect();
            if matching.len() >= n {
                return matching;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "only {} of {n} matching client events within {timeout:?}; recorded: {:#?}",
                    matching.len(),
                    self.events()
                );
            }
        }
    }

    fn record(&self, event: ClientEvent) {
        lock(&self.inner.events).push(event);
        self.inner.changed.notify_waiters();
    }
}

fn default_sampling(params: &CreateMessageRequestParams) -> Result<CreateMessageResult, ErrorData> {
    let prompt = params
        .messages
        .last()
        .map(|m| {
            m.content
                .clone()
                .into_vec()
                .into_iter()
                .filter_map(|c| match c {
                    SamplingMessageContentBlock::Text(t) => Some(t.text),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    Ok(CreateMessageResult::new(
        SamplingMessage::assistant_text(format!("sampled: {prompt}")),
        "portcullis-test-model".to_owned(),
    )
    .with_stop_reason(CreateMessageResult::STOP_REASON_END_TURN))
}

impl ClientHandler for RecordingClient {
    async fn ping(&self, _context: RequestContext<RoleClient>) -> Result<(), ErrorData> {
        self.record(ClientEvent::Ping);
        Ok(())
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.record(ClientEvent::Sampling(params.clone()));
        let f = lock(&self.inner.sampling).clone();
        f(&params)
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.record(ClientEvent::ListRoots);
        Ok(ListRootsResult::new(lock(&self.inner.roots).clone()))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.record(ClientEvent::Elicitation(request.clone()));
        let f = lock(&self.inner.elicitation).clone();
        f(&request)
    }

    async fn on_cancelled(
        &self,
        params: CancelledNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(ClientEvent::Cancelled(params));
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(ClientEvent::Progress(params));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(ClientEvent::Log(params));
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(ClientEvent::ResourceUpdated(params));
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.record(ClientEvent::ResourceListChanged);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.record(ClientEvent::ToolListChanged);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.record(ClientEvent::PromptListChanged);
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        self.record(ClientEvent::CustomNotification(notification));
    }

    fn get_info(&self) -> ClientInfo {
        lock(&self.inner.info).clone()
    }
}
