//! What each MCP method is about, for authorization.

/// Kinds of things a rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tool (`tools/call`).
    Tool,
    /// A prompt (`prompts/get`, completion of its arguments).
    Prompt,
    /// A resource or resource template (`resources/read`, subscriptions, completion).
    Resource,
}

impl Kind {
    /// The method a list item of this kind is judged by: "may the caller use it?".
    pub fn primary_method(self) -> &'static str {
        match self {
            Kind::Tool => "tools/call",
            Kind::Prompt => "prompts/get",
            Kind::Resource => "resources/read",
        }
    }
}

/// A `*/list` method: the kind of its items, the result key holding them, and the item key
/// holding each item's client-facing name or URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKind {
    pub kind: Kind,
    pub items_key: &'static str,
    pub name_key: &'static str,
}

/// The list a method asks for, if it is one.
pub fn list_kind(method: &str) -> Option<ListKind> {
    let (kind, items_key, name_key) = match method {
        "tools/list" => (Kind::Tool, "tools", "name"),
        "prompts/list" => (Kind::Prompt, "prompts", "name"),
        "resources/list" => (Kind::Resource, "resources", "uri"),
        "resources/templates/list" => (Kind::Resource, "resourceTemplates", "uriTemplate"),
        _ => return None,
    };
    Some(ListKind {
        kind,
        items_key,
        name_key,
    })
}

/// Session plumbing every caller with an identity may use: `initialize`, `ping`,
/// `logging/setLevel` (it only sets what the session's own log stream carries), every
/// notification, and their 2026-07-28 counterparts `server/discover` and
/// `subscriptions/listen` (change notifications; list results stay filtered).
pub fn is_lifecycle(method: &str) -> bool {
    matches!(
        method,
        "initialize" | "ping" | "logging/setLevel" | "server/discover" | "subscriptions/listen"
    ) || method.starts_with("notifications/")
}

/// The kind a method acts on by name or URI (completion is resolved from its `ref`).
pub fn target_kind(method: &str) -> Option<Kind> {
    match method {
        "tools/call" => Some(Kind::Tool),
        "prompts/get" => Some(Kind::Prompt),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some(Kind::Resource),
        _ => None,
    }
}

/// The completion method, governed by the prompt or resource its `ref` names.
pub const COMPLETE: &str = "completion/complete";
