//! The 2026-07-28 checks on a request: `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*` and the
//! per-request `_meta`.

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::Value;

use crate::front::era::{mismatch, request_meta};
use crate::front::response::{self, Body};
use crate::mcp::headers::{self, METHOD as MCP_METHOD, NAME as MCP_NAME};
use crate::mcp::methods::{self, meta};
use crate::mcp::{Message, codes, version};
use crate::session::Session;

/// The checks the transport spec asks of a server that reads the body: `Mcp-Method`,
/// `Mcp-Name` and the `_meta` version must be present and match.
pub(super) fn validate(headers: &HeaderMap, msg: &Message) -> Result<(), Response<Body>> {
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
    let named = super::NAMED.contains(&method) || super::NAMED_TASK.contains(&method);
    if named {
        let key = if method == methods::RESOURCES_READ {
            "uri"
        } else if super::NAMED_TASK.contains(&method) {
            "taskId"
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
        Some(v) if v != version::STATELESS => {
            return Err(mismatch(
                id,
                &format!(
                    "MCP-Protocol-Version header value '{}' does not match _meta value '{v}'",
                    version::STATELESS
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
pub(super) async fn check_param_headers(
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
