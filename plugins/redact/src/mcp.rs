//! Where content lives in MCP messages, and only there: the text of tool results, their
//! embedded resources and `structuredContent`; `resources/read` contents; `prompts/get`
//! messages; tool arguments; progress and log notifications; upstream errors; what upstreams
//! ask the client (sampling messages and system prompt, elicitation messages).
//!
//! Protocol fields (`type`, `uri`, `mimeType`, `isError`, cursors, `_meta`) and binary data
//! (`blob`, image and audio `data`) are never touched, so a redacted message is still the
//! same valid MCP message.

use serde_json::Value;

use crate::scan::Scanner;

/// Redacts the string `obj[key]`, if there is one.
fn field(obj: &mut Value, key: &str, scan: &mut Scanner) -> bool {
    match obj.get_mut(key) {
        Some(Value::String(s)) => match scan.string(s) {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// The text a content block carries: `text` blocks' `text`, embedded `resource` blocks'
/// `resource.text`.
fn block_text(b: &mut Value) -> Option<&mut String> {
    let embedded = match b.get("type").and_then(Value::as_str) {
        Some("text") => false,
        Some("resource") => true,
        _ => return None,
    };
    let holder = if embedded { b.get_mut("resource")? } else { b };
    match holder.get_mut("text") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The text of a `resources/read` contents item (not its `blob`).
fn contents_text(item: &mut Value) -> Option<&mut String> {
    match item.get_mut("text") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Redacts a list's texts, each run of adjacent ones together (a block without text, an
/// image, breaks the run).
fn adjacent<'v>(
    items: impl Iterator<Item = &'v mut Value>,
    text: fn(&mut Value) -> Option<&mut String>,
    scan: &mut Scanner,
) -> bool {
    let mut changed = false;
    let mut group: Vec<&mut String> = Vec::new();
    for item in items {
        match text(item) {
            Some(s) => group.push(s),
            None if !group.is_empty() => {
                changed |= scan.strings(&mut group);
                group.clear();
            }
            None => {}
        }
    }
    if !group.is_empty() {
        changed |= scan.strings(&mut group);
    }
    changed
}

/// A block or a list of blocks (prompt messages carry one; newer revisions allow a list).
fn blocks(v: Option<&mut Value>, scan: &mut Scanner) -> bool {
    match v {
        Some(Value::Array(items)) => adjacent(items.iter_mut(), block_text, scan),
        Some(b @ Value::Object(_)) => adjacent(std::iter::once(b), block_text, scan),
        _ => false,
    }
}

/// The `content` of each of `obj.messages` (prompt messages, sampling messages).
fn messages(obj: &mut Value, scan: &mut Scanner) -> bool {
    match obj.get_mut("messages") {
        Some(Value::Array(items)) => items
            .iter_mut()
            .fold(false, |c, m| blocks(m.get_mut("content"), scan) | c),
        _ => false,
    }
}

/// Redacts a result of `method` in place; true when anything changed. Methods that carry no
/// content (lists, completions, `initialize`) are left alone.
pub fn result(method: &str, r: &mut Value, scan: &mut Scanner) -> bool {
    match method {
        "tools/call" => {
            let content = blocks(r.get_mut("content"), scan);
            let structured = r
                .get_mut("structuredContent")
                .is_some_and(|s| scan.value(s));
            content | structured
        }
        "resources/read" => match r.get_mut("contents") {
            Some(Value::Array(items)) => adjacent(items.iter_mut(), contents_text, scan),
            _ => false,
        },
        "prompts/get" => {
            let description = field(r, "description", scan);
            description | messages(r, scan)
        }
        _ => false,
    }
}

/// True for the methods whose results [`result`] redacts.
pub fn has_content(method: &str) -> bool {
    matches!(method, "tools/call" | "resources/read" | "prompts/get")
}

/// Redacts `params.arguments` of a `tools/call` in place.
pub fn arguments(params: &mut Value, scan: &mut Scanner) -> bool {
    params.get_mut("arguments").is_some_and(|a| scan.value(a))
}

/// Redacts a notification's params in place: the `message` of `notifications/progress`, the
/// `data` of `notifications/message`.
pub fn notification(method: &str, params: &mut Value, scan: &mut Scanner) -> bool {
    match method {
        "notifications/progress" => field(params, "message", scan),
        "notifications/message" => params.get_mut("data").is_some_and(|d| scan.value(d)),
        _ => false,
    }
}

/// True for the requests upstreams send the client that [`server_request`] redacts.
pub fn is_server_request(method: &str) -> bool {
    matches!(method, "sampling/createMessage" | "elicitation/create")
}

/// Redacts the params of a request an upstream sends the client, in place: the messages and
/// system prompt of `sampling/createMessage` (what the client's model will read), the
/// `message` of `elicitation/create` (what the user will see). Schemas, model preferences and
/// URLs are protocol, not content.
pub fn server_request(method: &str, params: &mut Value, scan: &mut Scanner) -> bool {
    match method {
        "sampling/createMessage" => {
            let system = field(params, "systemPrompt", scan);
            system | messages(params, scan)
        }
        "elicitation/create" => field(params, "message", scan),
        _ => false,
    }
}

/// Redacts a JSON-RPC error's `message` and `data` in place.
pub fn error(e: &mut Value, scan: &mut Scanner) -> bool {
    let message = field(e, "message", scan);
    let data = e.get_mut("data").is_some_and(|d| scan.value(d));
    message | data
}
