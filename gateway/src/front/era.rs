//! Which era a request speaks, told from its `MCP-Protocol-Version` header: the session era
//! (2025-03-26 … 2025-11-25, Streamable HTTP with `Mcp-Session-Id`) or the stateless era
//! (2026-07-28). The router picks the transport adapter from this; the version errors both
//! eras answer with live here too.

use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::response::{self, Body};
use crate::mcp::headers::PROTOCOL_VERSION;
use crate::mcp::methods::meta;
use crate::mcp::{Message, codes, version};

/// Whether a request speaks 2026-07-28 (stateless): its `MCP-Protocol-Version` says so.
pub(super) fn is_stateless(headers: &HeaderMap) -> bool {
    headers
        .get(PROTOCOL_VERSION)
        .is_some_and(|v| v.as_bytes() == version::STATELESS.as_bytes())
}

/// Whether a request carries 2026-07-28 `_meta` (a stateless client that left out the header).
pub(super) fn has_stateless_meta(msg: &Message) -> bool {
    request_meta(msg).is_some_and(|m| m.contains_key(meta::PROTOCOL_VERSION))
}

/// The request's `params._meta`, when it is an object.
pub(super) fn request_meta(msg: &Message) -> Option<&Map<String, Value>> {
    msg.params()?.get("_meta")?.as_object()
}

/// An `MCP-Protocol-Version` header naming a revision we do not speak gets 400 with
/// `-32022` and the revisions we do, on every method (a missing header means 2025-03-26, per
/// the spec). `Err` carries the revision asked for.
pub(super) fn unsupported(headers: &HeaderMap) -> Option<String> {
    headers
        .get(PROTOCOL_VERSION)
        .filter(|v| !v.to_str().is_ok_and(version::is_supported))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
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
