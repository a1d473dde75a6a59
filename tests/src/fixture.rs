//! The conformance fixture: an upstream MCP server with everything the official MCP
//! conformance suite's server scenarios call, plus a few tools for gateway tests.
//!
//! The suite calls fixed names, so this server exposes them exactly (see
//! `tests/conformance/README.md` for the run against the suite itself):
//!
//! - tools `test_simple_text`, `test_image_content`, `test_audio_content`,
//!   `test_embedded_resource`, `test_multiple_content_types`, `test_tool_with_logging`,
//!   `test_tool_with_progress`, `test_error_handling`, `test_sampling(prompt)`,
//!   `test_elicitation(message)`, `test_elicitation_sep1034_defaults`,
//!   `test_elicitation_sep1330_enums`, `json_schema_2020_12_tool`, and `test_dynamic_tool`,
//!   which is absent until switched on (see below);
//! - resources `test://static-text`, `test://static-binary`, the subscribable
//!   `test://watched-resource`, and the template `test://template/{id}/data`;
//! - prompts `test_simple_prompt`, `test_prompt_with_arguments(arg1, arg2)`,
//!   `test_prompt_with_embedded_resource(resourceUri)`, `test_prompt_with_image`, and
//!   `test_dynamic_prompt` while switched on;
//! - `logging/setLevel` (filters the log lines tools send), `completion/complete` for
//!   `test_prompt_with_arguments` and the template's `id`, and
//!   `resources/subscribe`/`unsubscribe`.
//!
//! For the 2026-07-28 (stateless) scenarios of the suite's draft suite it also has the
//! diagnostic tools `test_missing_capability`, `test_streaming_elicitation`,
//! `test_logging_tool`, `test_trigger_tool_change`, `test_trigger_prompt_change` and
//! `test_header_param` (an `x-mcp-header` parameter), `subscriptions/listen`, and the
//! multi-round-trip (`InputRequiredResult`) tools and prompt in [`mrtr`], and it declares the
//! tasks extension (`io.modelcontextprotocol/tasks`) with the task tools the suite's
//! `tasks-*` scenarios call (`greet`, `slow_compute`, `failing_job`, `protocol_error_job`,
//! `confirm_delete`, `multi_input`, `test_tool_with_task`; see `fixture/tasks.rs`), its tasks
//! shared by every session of the process.
//!
//! Tools for gateway tests:
//!
//! - `echo(text)` returns `text`;
//! - `whoami` returns, as JSON text and as structured content, the server name, its process
//!   id, the transport, the client's `clientInfo` and — over HTTP — the request headers it received
//!   (lower-case names; repeated headers joined with `", "`), so a test can prove which
//!   headers a gateway forwards, and how many `initialize` requests the process answered
//!   (`initializations`: how many sessions clients opened);
//! - `sleep(ms)` sleeps (at most ten minutes), ending early if the call is cancelled;
//! - `crash(code?)` exits the whole process at once with `code` (default 1);
//! - `set_dynamic_tool(enabled)` adds or removes `test_dynamic_tool`; every session hears
//!   `notifications/tools/list_changed` when that changes the list;
//! - `touch_watched_resource` changes `test://watched-resource`; sessions subscribed to it
//!   hear `notifications/resources/updated`;
//! - `report(text)` sends `text` as progress (given a token) and as a log line while it runs,
//!   and `later: text` as a log line after it answered (outside any request).
//!
//! The tool and prompt lists and the watched resource are shared by every session of a
//! process; the log level and `resources/subscribe` subscriptions belong to one session.
//! While a session is subscribed to `test://watched-resource` the resource also changes on
//! its own every three seconds. With [`Options::dynamic_tool_after`] set,
//! `test_dynamic_tool` appears that long after an `initialize` (like the suite's reference
//! server) unless `set_dynamic_tool` was called first.

// Logging, sampling and resources/subscribe are deprecated by SEP-2577 for the 2026-07-28
// protocol, but the conformance scenarios for the earlier revisions exercise all three.
#![allow(deprecated)]

mod content;
mod http;
pub mod mrtr;
mod tasks;
mod tools;

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use rmcp::{
    ErrorData as McpError, Peer, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, CompleteRequestParams,
        CompleteResult, GetPromptRequestParams, GetPromptResponse, GetTaskParams, GetTaskResult,
        Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
        ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, RequestStateCodec,
        ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SetLevelRequestParams,
        SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
        UpdateTaskParams,
    },
    service::{NotificationContext, RequestContext, SubscriptionContext},
    task_manager::TaskManager,
};
use tokio::sync::broadcast;

pub use http::{MCP_PATH, serve_http};

/// How often a subscribed `test://watched-resource` changes on its own.
const WATCH_INTERVAL: Duration = Duration::from_secs(3);
/// How often a session's change forwarder checks whether its client has gone.
const PEER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How a fixture process presents itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// `serverInfo.name` (tests that run two fixtures tell them apart by it).
    pub name: String,
    /// Add `test_dynamic_tool` this long after `initialize`, unless `set_dynamic_tool`
    /// was called first. `None`: only `set_dynamic_tool` adds it.
    pub dynamic_tool_after: Option<Duration>,
    /// Over stdio, behave like a session-era SDK that takes nothing before `initialize`:
    /// exit at once if the first message is anything else (the `server/discover` probe).
    pub initialize_first: bool,
    /// Which protocol eras it serves, and what `server/discover` says.
    pub era: EraShape,
}

/// The era shapes real servers have, for era negotiation and the conformance differential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EraShape {
    /// Both eras, and `server/discover` says so (every version rmcp knows).
    #[default]
    Dual,
    /// The session era only: `server/discover` is an unknown method.
    Session,
    /// MCP 2026-07-28 only: `initialize` is refused.
    Stateless,
    /// Both eras, but `server/discover` advertises only 2026-07-28 (as the conformance
    /// repository's reference server does).
    DualAdvertisingStateless,
}

impl std::str::FromStr for EraShape {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "dual" => EraShape::Dual,
            "session" => EraShape::Session,
            "stateless" => EraShape::Stateless,
            "dual-advertising-stateless" => EraShape::DualAdvertisingStateless,
            other => anyhow::bail!(
                "unknown era shape {other:?} (dual, session, stateless, dual-advertising-stateless)"
            ),
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            name: "portcullis-fixture".to_owned(),
            dynamic_tool_after: None,
            initialize_first: false,
            era: EraShape::Dual,
        }
    }
}

/// The fixture MCP server. One value serves one session (on the stateless 2026-07-28
/// wire, one request); values made with [`Fixture::session`] share the process-wide state.
#[derive(Clone)]
pub struct Fixture {
    options: Arc<Options>,
    shared: Arc<Shared>,
    session: Arc<Session>,
}

/// A change that sessions and `subscriptions/listen` streams are told about.
#[derive(Debug, Clone)]
enum Change {
    Tools,
    Prompts,
    Resource(String),
}

/// State every session of the process sees.
struct Shared {
    dynamic_tool: AtomicBool,
    /// Set once `set_dynamic_tool` ran, so the `dynamic_tool_after` timer stands down.
    dynamic_tool_chosen: AtomicBool,
    dynamic_prompt: AtomicBool,
    /// Bumped whenever `test://watched-resource` changes.
    watched_version: AtomicU64,
    changes: broadcast::Sender<Change>,
    /// Seals the `requestState` of multi-round-trip results against tampering.
    request_state: RequestStateCodec,
    /// Tasks of the tasks extension ([`tasks`]), for every session of the process.
    tasks: TaskManager,
    /// `initialize` requests answered: the session-era sessions clients opened.
    initializations: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        // A fresh key per process: sealed states only need to survive this process.
        let random = RandomState::new();
        let key: Vec<u8> = (0u64..4)
            .flat_map(|i| random.hash_one(i).to_le_bytes())
            .collect();
        Self {
            dynamic_tool: AtomicBool::new(false),
            dynamic_tool_chosen: AtomicBool::new(false),
            dynamic_prompt: AtomicBool::new(false),
            watched_version: AtomicU64::new(0),
            changes: broadcast::channel(64).0,
            request_state: RequestStateCodec::new_unchecked(key),
            tasks: TaskManager::new(),
            initializations: AtomicU64::new(0),
        }
    }
}

/// What one session has chosen.
#[derive(Default)]
struct Session {
    /// Severity rank of the least severe log level the client wants (`logging/setLevel`).
    min_log_level: AtomicU8,
    subscriptions: Mutex<Subscriptions>,
}

#[derive(Default)]
struct Subscriptions {
    uris: HashSet<String>,
    /// Whether the task that changes the watched resource every few seconds is running.
    ticking: bool,
}

impl Fixture {
    /// A fixture with its own process-wide state (for one stdio client, or in-process use).
    pub fn new(options: Options) -> Self {
        Self {
            options: Arc::new(options),
            shared: Arc::new(Shared::new()),
            session: Arc::new(Session::default()),
        }
    }

    /// A fixture for one more session, sharing this one's tool and prompt lists.
    pub fn session(&self) -> Self {
        Self {
            options: self.options.clone(),
            shared: self.shared.clone(),
            session: Arc::new(Session::default()),
        }
    }

    fn dynamic_tool_listed(&self) -> bool {
        self.shared.dynamic_tool.load(Ordering::SeqCst)
    }

    fn dynamic_prompt_listed(&self) -> bool {
        self.shared.dynamic_prompt.load(Ordering::SeqCst)
    }

    fn announce(&self, change: Change) {
        // No receiver (no session listening) is fine.
        let _ = self.shared.changes.send(change);
    }

    /// Lists or unlists `test_dynamic_tool`, announcing a change of the list.
    fn set_dynamic_tool(&self, enabled: bool) {
        self.shared
            .dynamic_tool_chosen
            .store(true, Ordering::SeqCst);
        if self.shared.dynamic_tool.swap(enabled, Ordering::SeqCst) != enabled {
            self.announce(Change::Tools);
        }
    }

    /// Flips whether `test_dynamic_tool` is listed; returns the new state.
    fn toggle_dynamic_tool(&self) -> bool {
        let enabled = !self.shared.dynamic_tool.fetch_xor(true, Ordering::SeqCst);
        self.shared
            .dynamic_tool_chosen
            .store(true, Ordering::SeqCst);
        self.announce(Change::Tools);
        enabled
    }

    /// Flips whether `test_dynamic_prompt` is listed; returns the new state.
    fn toggle_dynamic_prompt(&self) -> bool {
        let enabled = !self.shared.dynamic_prompt.fetch_xor(true, Ordering::SeqCst);
        self.announce(Change::Prompts);
        enabled
    }

    /// Changes `test://watched-resource`; returns its new version.
    fn touch_watched(&self) -> u64 {
        let version = self.shared.watched_version.fetch_add(1, Ordering::SeqCst) + 1;
        self.announce(Change::Resource(content::WATCHED_URI.to_owned()));
        version
    }

    /// Sends a `notifications/message` if the client asked for `level` or more severe: by
    /// `_meta` log level on the 2026-07-28 wire (no level, no log lines), by
    /// `logging/setLevel` before it.
    async fn log(&self, context: &RequestContext<RoleServer>, level: LoggingLevel, message: &str) {
        let threshold = match context.meta.log_level() {
            Some(requested) => level_rank(requested),
            None if is_stateless(context) => return,
            None => self.session.min_log_level.load(Ordering::SeqCst),
        };
        if level_rank(level) < threshold {
            return;
        }
        let param = LoggingMessageNotificationParam::new(level, message.into())
            .with_logger(self.options.name.clone());
        // Best effort: a gone client is noticed by the request that is logging.
        let _ = context.peer.notify_logging_message(param).await;
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        // The guarded data stays consistent even if a holder panicked.
        self.session
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions().uris.contains(uri)
    }

    /// Starts the task that changes the watched resource every few seconds while this
    /// session is subscribed to it, unless that task already runs.
    fn start_watch_ticker(&self, peer: Peer<RoleServer>) {
        {
            let mut subscriptions = self.subscriptions();
            if subscriptions.ticking {
                return;
            }
            subscriptions.ticking = true;
        }
        let fixture = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                {
                    let mut subscriptions = fixture.subscriptions();
                    if !subscriptions.uris.contains(content::WATCHED_URI)
                        || peer.is_transport_closed()
                    {
                        subscriptions.ticking = false;
                        return;
                    }
                }
                fixture.touch_watched();
            }
        });
    }

    /// Relays announced changes to a session's client until the client goes away.
    fn forward_changes(&self, peer: Peer<RoleServer>) {
        let mut changes = self.shared.changes.subscribe();
        let fixture = self.clone();
        tokio::spawn(async move {
            let mut check = tokio::time::interval(PEER_CHECK_INTERVAL);
            loop {
                let change = tokio::select! {
                    change = changes.recv() => change,
                    _ = check.tick() => {
                        if peer.is_transport_closed() {
                            return;
                        }
                        continue;
                    }
                };
                let sent = match change {
                    Ok(Change::Tools) => peer.notify_tool_list_changed().await,
                    Ok(Change::Prompts) => peer.notify_prompt_list_changed().await,
                    Ok(Change::Resource(uri)) if fixture.is_subscribed(&uri) => {
                        peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                            .await
                    }
                    Ok(Change::Resource(_)) | Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
    }
}

/// Whether the request is on the 2026-07-28 (stateless, per-request `_meta`) wire.
fn is_stateless(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|version| version >= ProtocolVersion::V_2026_07_28)
}

/// Serves one client on stdin/stdout until EOF.
pub async fn serve_stdio(options: Options) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut first = Vec::new();
    if options.initialize_first {
        stdin.read_until(b'\n', &mut first).await?;
        let method = serde_json::from_slice::<serde_json::Value>(&first)
            .ok()
            .and_then(|m| m["method"].as_str().map(str::to_owned));
        if method.as_deref() != Some("initialize") {
            anyhow::bail!("the first message must be initialize, not {method:?}");
        }
    }
    // The line read above goes first, then the rest of stdin.
    let input = std::io::Cursor::new(first).chain(stdin);
    let running = Fixture::new(options)
        .serve((input, tokio::io::stdout()))
        .await?;
    running.waiting().await?;
    Ok(())
}

impl ServerHandler for Fixture {
    /// Any method the fixture does not know is answered with what arrived, so tests can see
    /// that a proxy forwarded it intact — but for `tasks/result` and `tasks/list`, which the
    /// tasks extension removed (`-32601`).
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, McpError> {
        // The tasks extension removed these (its result is inlined in tasks/get).
        if matches!(request.method.as_str(), "tasks/result" | "tasks/list") {
            return Err(McpError::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!("Method not found: {}", request.method),
                None,
            ));
        }
        // rmcp moves `params._meta` into the context, so report it separately.
        Ok(rmcp::model::CustomResult::new(serde_json::json!({
            "method": request.method,
            "params": request.params,
            "meta": serde_json::to_value(&context.meta).unwrap_or_default(),
        })))
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        match self.options.era {
            EraShape::Session => std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(
                &ProtocolVersion::V_2025_11_25,
            )),
            EraShape::Stateless => std::borrow::Cow::Owned(vec![ProtocolVersion::V_2026_07_28]),
            EraShape::Dual | EraShape::DualAdvertisingStateless => {
                std::borrow::Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
            }
        }
    }

    async fn discover(
        &self,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::DiscoverResult, McpError> {
        let versions = match self.options.era {
            EraShape::Session => {
                return Err(McpError::new(
                    rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                    "Method not found: server/discover",
                    None,
                ));
            }
            EraShape::DualAdvertisingStateless => vec![ProtocolVersion::V_2026_07_28],
            EraShape::Dual | EraShape::Stateless => self.supported_protocol_versions().into_owned(),
        };
        Ok(rmcp::model::DiscoverResult::from_server_info(
            versions,
            self.get_info(),
        ))
    }

    async fn initialize(
        &self,
        request: rmcp::model::InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::InitializeResult, McpError> {
        if self.options.era == EraShape::Stateless {
            return Err(McpError::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                "Method not found: initialize (this server speaks MCP 2026-07-28 only)",
                None,
            ));
        }
        context.peer.set_peer_info(request.clone());
        self.shared.initializations.fetch_add(1, Ordering::SeqCst);
        // Subscribed here, not in `on_initialized`: rmcp runs handlers concurrently, so a
        // call right after `notifications/initialized` may change a list before that
        // handler ran, and its change would be lost.
        self.forward_changes(context.peer.clone());
        self.negotiate_initialize(&request)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_resources()
                .enable_tools()
                .enable_prompts_list_changed()
                .enable_resources_list_changed()
                .enable_resources_subscribe()
                .enable_tool_list_changed()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new(
            self.options.name.clone(),
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions("Conformance fixture for Portcullis tests.")
    }

    async fn on_initialized(&self, _context: NotificationContext<RoleServer>) {
        let Some(after) = self.options.dynamic_tool_after else {
            return;
        };
        let fixture = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let shared = &fixture.shared;
            if !shared.dynamic_tool_chosen.load(Ordering::SeqCst)
                && !shared.dynamic_tool.swap(true, Ordering::SeqCst)
            {
                fixture.announce(Change::Tools);
            }
        });
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.session
            .min_log_level
            .store(level_rank(request.level), Ordering::SeqCst);
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::list(
            self.dynamic_tool_listed(),
        )))
    }

    /// Lets rmcp check `Mcp-Param-*` headers against the called tool's `x-mcp-header`
    /// parameters.
    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::list(self.dynamic_tool_listed())
            .into_iter()
            .find(|tool| tool.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        tools::call(self, request, context).await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        self.shared
            .tasks
            .get_task(&request.task_id)
            .map(GetTaskResult::new)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared
            .tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.shared.tasks.cancel_task(&request.task_id)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(content::resources()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(
            content::resource_templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let version = self.shared.watched_version.load(Ordering::SeqCst);
        content::read(&request.uri, version).map(Into::into)
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if !content::is_resource(&request.uri) {
            return Err(content::not_found(&request.uri));
        }
        let watched = request.uri == content::WATCHED_URI;
        self.subscriptions().uris.insert(request.uri);
        if watched {
            self.start_watch_ticker(context.peer);
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscriptions().uris.remove(&request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        // Everything asked for; rmcp narrows it to what get_info advertises.
        Some(requested.clone())
    }

    /// A `subscriptions/listen` stream (2026-07-28): relays the changes it accepted
    /// until the client cancels it.
    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let mut changes = self.shared.changes.subscribe();
        loop {
            let change = tokio::select! {
                () = context.cancelled() => return Ok(()),
                change = changes.recv() => change,
            };
            let sink = context.sink();
            // A change the stream did not ask for is refused by the sink; that is the point.
            let _ = match change {
                Ok(Change::Tools) => sink.notify_tool_list_changed().await,
                Ok(Change::Prompts) => sink.notify_prompt_list_changed().await,
                Ok(Change::Resource(uri)) => sink.notify_resource_updated(uri).await,
                Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let mut prompts = content::prompts();
        prompts.push(mrtr::prompt());
        if self.dynamic_prompt_listed() {
            prompts.push(content::dynamic_prompt());
        }
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        match request.name.as_str() {
            mrtr::PROMPT => mrtr::get_prompt(request, &context),
            content::DYNAMIC_PROMPT if self.dynamic_prompt_listed() => {
                Ok(content::get_dynamic_prompt().into())
            }
            name => content::get_prompt(name, request.arguments.as_ref()).map(Into::into),
        }
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        content::complete(&request)
    }
}

/// Severity rank of a log level: debug is 0, emergency 7.
fn level_rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}
