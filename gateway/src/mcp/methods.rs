//! MCP method names the gateway treats specially. Every other method is forwarded as is.

pub const INITIALIZE: &str = "initialize";
pub const INITIALIZED: &str = "notifications/initialized";
pub const PING: &str = "ping";
/// 2026-07-28: versions, capabilities and identity, without a handshake.
pub const SERVER_DISCOVER: &str = "server/discover";
/// 2026-07-28: the long-lived stream of change notifications (replaces GET and subscribe).
pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";
pub const SUBSCRIPTIONS_ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";

pub const TOOLS_LIST: &str = "tools/list";
pub const TOOLS_CALL: &str = "tools/call";
pub const PROMPTS_LIST: &str = "prompts/list";
pub const PROMPTS_GET: &str = "prompts/get";
/// Every `resources/*` method names a resource URI (or lists them).
pub const RESOURCES_PREFIX: &str = "resources/";
pub const RESOURCES_LIST: &str = "resources/list";
pub const RESOURCES_TEMPLATES_LIST: &str = "resources/templates/list";
pub const RESOURCES_READ: &str = "resources/read";
pub const RESOURCES_SUBSCRIBE: &str = "resources/subscribe";
pub const RESOURCES_UNSUBSCRIBE: &str = "resources/unsubscribe";
pub const COMPLETION_COMPLETE: &str = "completion/complete";
pub const LOGGING_SET_LEVEL: &str = "logging/setLevel";

/// Server→client requests, each needing a client capability ([`client_capability`]).
pub const SAMPLING_CREATE_MESSAGE: &str = "sampling/createMessage";
pub const ELICITATION_CREATE: &str = "elicitation/create";
pub const ROOTS_LIST: &str = "roots/list";

/// The client capability a server→client request needs (`sampling`, `elicitation`,
/// `roots`); `None` for a request every client answers (`ping`) or one the gateway does not
/// know.
pub fn client_capability(method: &str) -> Option<&'static str> {
    match method {
        SAMPLING_CREATE_MESSAGE => Some("sampling"),
        ELICITATION_CREATE => Some("elicitation"),
        ROOTS_LIST => Some("roots"),
        _ => None,
    }
}

/// The tasks extension (`io.modelcontextprotocol/tasks`, 2026-07-28) and the 2025-11-25
/// tasks utility: poll, feed, stop a task the receiver created.
pub const TASKS_GET: &str = "tasks/get";
/// Tasks extension: answers to a task's `inputRequests`.
pub const TASKS_UPDATE: &str = "tasks/update";
pub const TASKS_CANCEL: &str = "tasks/cancel";
/// 2025-11-25 only (the extension inlines the result in `tasks/get`).
pub const TASKS_RESULT: &str = "tasks/result";
/// 2025-11-25 only.
pub const TASKS_LIST: &str = "tasks/list";
/// The extension's id, under `capabilities.extensions`.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

pub const CANCELLED: &str = "notifications/cancelled";
pub const PROGRESS: &str = "notifications/progress";
pub const MESSAGE: &str = "notifications/message";
pub const ROOTS_LIST_CHANGED: &str = "notifications/roots/list_changed";
pub const TOOLS_LIST_CHANGED: &str = "notifications/tools/list_changed";
pub const PROMPTS_LIST_CHANGED: &str = "notifications/prompts/list_changed";
pub const RESOURCES_LIST_CHANGED: &str = "notifications/resources/list_changed";
pub const RESOURCES_UPDATED: &str = "notifications/resources/updated";
/// A task's new status: 2025-11-25 …
pub const TASK_STATUS: &str = "notifications/tasks/status";
/// … and the tasks extension.
pub const TASK_STATUS_EXTENSION: &str = "notifications/tasks";

/// Keys of the 2026-07-28 per-request `_meta`.
pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
    /// The task a message belongs to (`{ "taskId": … }`).
    pub const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";
}
