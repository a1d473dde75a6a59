//! OAuth 2.0 protected-resource metadata (RFC 9728), served at
//! `/.well-known/oauth-protected-resource` and at the path-suffixed form for the MCP endpoint
//! (`/.well-known/oauth-protected-resource/mcp`), which is where MCP clients look first.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::response::Body;
use crate::config::OAuthConfig;

pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The document, built once from configuration.
pub fn document(oauth: &OAuthConfig, mcp_path: &str) -> Bytes {
    let resource = format!("{}{}", oauth.public_url.trim_end_matches('/'), mcp_path);
    let mut doc = json!({
        "resource": resource,
        "authorization_servers": oauth.authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !oauth.scopes_supported.is_empty() {
        doc["scopes_supported"] = json!(oauth.scopes_supported);
    }
    if let Some(name) = &oauth.resource_name {
        doc["resource_name"] = json!(name);
    }
    if let Some(docs) = &oauth.resource_documentation {
        doc["resource_documentation"] = json!(docs);
    }
    Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default())
}

/// Whether `path` asks for the metadata (bare or suffixed with the MCP endpoint's path).
pub fn is_metadata_path(path: &str, mcp_path: &str) -> bool {
    path == WELL_KNOWN || path.strip_prefix(WELL_KNOWN) == Some(mcp_path)
}

pub fn respond(doc: &Bytes) -> Response<Body> {
    let mut r = Response::new(super::response::full(doc.clone()));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}
