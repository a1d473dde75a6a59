//! MCP over HTTP: the header names both sides of the gateway use, how 2026-07-28 request
//! values are encoded into them and decoded out of them, and which tool arguments a tool's
//! schema asks to mirror (`x-mcp-header`).

use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use serde_json::Value;

/// The session-era session id, given by the server at `initialize` (both sides of the gateway).
pub const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The revision a request speaks; `2026-07-28` marks a stateless request.
pub const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// Where a client resumes an SSE stream (`<stream>-<seq>`).
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// 2026-07-28: the request's method, mirrored from the body.
pub const METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// 2026-07-28: the tool or prompt name or resource URI, mirrored from the body.
pub const NAME: HeaderName = HeaderName::from_static("mcp-name");
/// 2026-07-28: the prefix of the headers mirroring annotated tool arguments.
pub const PARAM_PREFIX: &str = "mcp-param-";
/// What a browser client may send cross-origin (`Access-Control-Allow-Headers`): the
/// session-era headers above, with the request's content type, accepted types and token.
pub const CORS_ALLOWED: &str =
    "content-type, accept, authorization, mcp-session-id, mcp-protocol-version, last-event-id";

/// A value as the transport spec wants it in a header: as is when plain visible ASCII,
/// otherwise (or when it looks like the sentinel itself) `=?base64?…?=`.
pub fn encode(value: &str) -> String {
    let sentinel = value.starts_with("=?base64?") && value.ends_with("?=");
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !sentinel;
    if plain {
        value.to_string()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(value)
        )
    }
}

/// A header value, decoded from the `=?base64?…?=` form when used. `None` when it is not
/// valid (not visible ASCII, bad base64, not UTF-8).
pub fn decode(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(text.to_string()),
    }
}

/// Arguments a tool mirrors into headers: `(header name in lowercase, property path)`.
pub type ParamHeaders = Vec<(String, Vec<String>)>;

/// The `x-mcp-header` annotations of a tool's input schema, following only chains of
/// `properties` keys, as the spec allows.
pub fn annotated_params(schema: &Value) -> ParamHeaders {
    fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, prop) in props {
            path.push(key.clone());
            if let Some(name) = prop.get("x-mcp-header").and_then(Value::as_str) {
                out.push((name.to_ascii_lowercase(), path.clone()));
            }
            walk(prop, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

/// The argument at `path`, as header text (strings as they are, integers in decimal,
/// booleans lowercase); `None` when absent or null.
pub fn argument_text(arguments: Option<&Value>, path: &[String]) -> Option<String> {
    let value = path
        .iter()
        .try_fold(arguments?, |v, key| v.get(key))
        .filter(|v| !v.is_null())?;
    Some(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn browsers_may_send_the_session_era_headers() {
        let allowed: Vec<&str> = CORS_ALLOWED.split(", ").collect();
        for h in [SESSION_ID, PROTOCOL_VERSION, LAST_EVENT_ID] {
            assert!(
                allowed.contains(&h.as_str()),
                "{h} missing from {CORS_ALLOWED}"
            );
        }
    }

    #[test]
    fn encodes_what_is_not_plain_ascii_and_decodes_it_back() {
        for (value, encoded) in [
            ("us-west1", "us-west1"),
            ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
            (" padded ", "=?base64?IHBhZGRlZCA=?="),
            ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
            ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
        ] {
            assert_eq!(encode(value), encoded);
            let header = HeaderValue::from_str(encoded).unwrap();
            assert_eq!(decode(&header).as_deref(), Some(value));
        }
    }

    #[test]
    fn finds_annotations_through_properties_only() {
        let schema = json!({ "type": "object", "properties": {
            "region": { "type": "string", "x-mcp-header": "Region" },
            "opts": { "type": "object", "properties": { "dry": { "type": "boolean", "x-mcp-header": "Dry" } } },
            "list": { "type": "array", "items": { "x-mcp-header": "Nope" } },
        }});
        let mut found = annotated_params(&schema);
        found.sort();
        assert_eq!(
            found,
            [
                (
                    "dry".to_string(),
                    vec!["opts".to_string(), "dry".to_string()]
                ),
                ("region".to_string(), vec!["region".to_string()]),
            ]
        );
        let args = json!({ "region": "eu", "opts": { "dry": true } });
        assert_eq!(
            argument_text(Some(&args), &found[0].1).as_deref(),
            Some("true")
        );
        assert_eq!(
            argument_text(Some(&args), &found[1].1).as_deref(),
            Some("eu")
        );
    }
}
