use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::mcp::{Message, codes};

/// Why a message could not be delivered to, or answered by, an upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream '{upstream}' could not be started: {reason}")]
    Spawn { upstream: Arc<str>, reason: String },
    #[error("upstream '{upstream}' is unavailable: {reason}")]
    Unavailable { upstream: Arc<str>, reason: String },
    #[error("upstream '{upstream}' did not answer within {after:?}")]
    Timeout { upstream: Arc<str>, after: Duration },
    #[error("upstream '{upstream}' exited")]
    Exited { upstream: Arc<str> },
    #[error("upstream '{upstream}' answered with HTTP {status}")]
    Http { upstream: Arc<str>, status: u16 },
    #[error("upstream '{upstream}' broke the protocol: {detail}")]
    Protocol { upstream: Arc<str>, detail: String },
    #[error("upstream '{upstream}' session expired")]
    SessionExpired { upstream: Arc<str> },
    /// `initialize` was refused the way a server without Streamable HTTP refuses it (400,
    /// 404 or 405 and no JSON-RPC error): it may speak the legacy HTTP+SSE transport.
    #[error(
        "upstream '{upstream}' refused the Streamable HTTP POST with HTTP {status} and no JSON-RPC error"
    )]
    NotStreamable { upstream: Arc<str>, status: u16 },
    /// The upstream sent more than a configured bound allows; what it sent was dropped.
    #[error(
        "upstream '{upstream}' sent {what} over the limit of {limit_mib} MiB (upstreams.{upstream}.{key})"
    )]
    TooLarge {
        upstream: Arc<str>,
        /// What was too large: "a response body", "an SSE event", "a line".
        what: String,
        limit_mib: usize,
        /// The config key that sets the bound.
        key: &'static str,
    },
    /// A stdio upstream already runs `max-children` child processes (one per client session).
    #[error(
        "upstream '{upstream}' already runs {limit} child processes, its limit (upstreams.{upstream}.max-children); try again when another client session ends"
    )]
    TooManyChildren { upstream: Arc<str>, limit: usize },
    /// The upstream takes a credential made for the caller (token exchange) and none could
    /// be had; nothing was sent to it. `reason` never holds a token.
    #[error("upstream '{upstream}' got no credential for this caller: {reason}")]
    Credential { upstream: Arc<str>, reason: String },
    #[error("request cancelled")]
    Cancelled,
}

impl UpstreamError {
    fn upstream(&self) -> Option<&str> {
        match self {
            UpstreamError::Spawn { upstream, .. }
            | UpstreamError::Unavailable { upstream, .. }
            | UpstreamError::Timeout { upstream, .. }
            | UpstreamError::Exited { upstream }
            | UpstreamError::Http { upstream, .. }
            | UpstreamError::Protocol { upstream, .. }
            | UpstreamError::SessionExpired { upstream }
            | UpstreamError::NotStreamable { upstream, .. }
            | UpstreamError::TooLarge { upstream, .. }
            | UpstreamError::TooManyChildren { upstream, .. }
            | UpstreamError::Credential { upstream, .. } => Some(upstream),
            UpstreamError::Cancelled => None,
        }
    }

    /// The JSON-RPC error a client gets, naming the upstream.
    pub fn to_response(&self, id: serde_json::Value) -> Message {
        let code = match self {
            UpstreamError::Cancelled => codes::REQUEST_CANCELLED,
            _ => codes::INTERNAL_ERROR,
        };
        let data = self.upstream().map(|u| json!({ "upstream": u }));
        Message::error(id, code, &self.to_string(), data)
    }
}
/// The `error.type` of a failed upstream request's span (`observe/trace.rs`).
impl crate::observe::Failure for UpstreamError {
    fn error_type(&self) -> &'static str {
        match self {
            UpstreamError::Spawn { .. } => "spawn_failed",
            UpstreamError::Unavailable { .. } => "unavailable",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Exited { .. } => "exited",
            UpstreamError::Http { .. } => "http_error",
            UpstreamError::Protocol { .. } => "protocol_error",
            UpstreamError::SessionExpired { .. } => "session_expired",
            UpstreamError::NotStreamable { .. } => "not_streamable",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::TooManyChildren { .. } => "too_many_children",
            UpstreamError::Credential { .. } => "no_credential",
            UpstreamError::Cancelled => "cancelled",
        }
    }
}
