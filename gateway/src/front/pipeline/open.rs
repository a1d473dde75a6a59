//! Opening a session: the `initialize` checks, the per-caller and global session limits, and
//! the gateway's own capabilities and identity (the same in every era's answer).

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};

use super::Refusal;
use crate::front::Front;
use crate::front::response;
use crate::mcp::{Message, codes, methods};
use crate::policy::Identity;
use crate::session::{Refused, Session};
use crate::upstream::Hello;

/// What the gateway serves, whichever upstreams are behind it (it merges their lists and
/// passes their changes on).
pub(in crate::front) fn capabilities() -> Value {
    json!({
        "tools": { "listChanged": true },
        "prompts": { "listChanged": true },
        "resources": { "subscribe": true, "listChanged": true },
        "logging": {},
        "completions": {},
        // Tasks pass through to the upstream that created them (session/tasks.rs).
        "extensions": { methods::TASKS_EXTENSION: {} },
    })
}

/// The gateway's `serverInfo`.
pub(in crate::front) fn server_info() -> Value {
    json!({
        "name": "portcullis",
        "title": "Portcullis MCP gateway",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// What is wrong with a client's `clientInfo` / `capabilities` when either is larger than
/// `limit` bytes as JSON.
pub(in crate::front) fn oversized_hello(
    limit: usize,
    client_info: Option<&Value>,
    capabilities: Option<&Value>,
) -> Option<String> {
    [("clientInfo", client_info), ("capabilities", capabilities)]
        .into_iter()
        .find_map(|(field, value)| {
            let size = json_size(value?);
            (size > limit).then(|| {
                format!("Invalid params: {field} is {size} bytes, over the gateway's limit of {limit} (server.max-client-info-bytes)")
            })
        })
}

/// Bytes of `value` as compact JSON, without writing it anywhere.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl Front {
    /// `Err`: the JSON-RPC error for an `initialize` whose `clientInfo` or `capabilities` is
    /// over `server.max-client-info-bytes` (both are kept for the session's life and sent to
    /// every upstream, so they are refused rather than stored).
    pub(in crate::front) fn check_hello(&self, msg: &Message) -> Result<(), Message> {
        let params = msg.params();
        match oversized_hello(
            self.config.max_client_info_bytes,
            params.and_then(|p| p.get("clientInfo")),
            params.and_then(|p| p.get("capabilities")),
        ) {
            Some(text) => Err(Message::error(
                msg.id().cloned().unwrap_or(Value::Null),
                codes::INVALID_PARAMS,
                &text,
                None,
            )),
            None => Ok(()),
        }
    }

    /// Creates the session an `initialize` request asks for (owned by the caller, when authn
    /// established one) and the answer to send; `negotiate` picks the protocol revision.
    /// With sealed ids this opens the upstream sessions the id carries first (bounded by
    /// each upstream's `list-timeout`).
    /// Sessions are counted per caller: the subject authn established, else `peer`.
    pub(in crate::front) async fn open_session(
        &self,
        msg: Message,
        caller: Option<&Identity>,
        peer: Option<std::net::IpAddr>,
        negotiate: fn(Option<&str>) -> &'static str,
        resumable: bool,
    ) -> Result<(Arc<Session>, Message), Refusal> {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let params = msg.params().cloned().unwrap_or_default();
        let version = negotiate(params["protocolVersion"].as_str());
        let hello = Hello {
            capabilities: params
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({})),
            client_info: params
                .get("clientInfo")
                .cloned()
                .unwrap_or_else(|| json!({ "name": "unknown", "version": "0" })),
        };
        let quota = match (caller, peer) {
            (Some(c), _) => Some(format!("subject {}", c.subject)),
            (None, Some(ip)) => Some(format!("address {ip}")),
            (None, None) => None,
        };
        let owner = caller.map(|c| c.subject.as_str());
        let session = match self
            .sessions
            .open_as(version, hello, quota.as_deref(), owner, resumable)
            .await
        {
            Ok(s) => s,
            Err(Refused::Full) => {
                tracing::warn!(
                    max = self.config.max_sessions,
                    "session limit reached; refusing initialize"
                );
                return Err(Refusal::TooManySessions);
            }
            Err(Refused::Caller) => {
                let max = self.config.max_sessions_per_caller;
                // The subject is not a secret, but a log line needs no more than the address.
                tracing::warn!(max, peer = ?peer, authenticated = caller.is_some(), "per-caller session limit reached; refusing initialize");
                return Err(Refusal::Http(response::json(
                    StatusCode::TOO_MANY_REQUESTS,
                    &Message::error(
                        id,
                        codes::INVALID_REQUEST,
                        &format!(
                            "Too Many Requests: this caller already holds {max} sessions (server.max-sessions-per-caller); end one with DELETE first"
                        ),
                        None,
                    ),
                )));
            }
        };
        if let Some(caller) = caller {
            let _ = session.owner.set(caller.subject.clone());
        }
        session.remember_caller(caller);
        let client = params["clientInfo"]["name"].as_str().unwrap_or("?");
        tracing::info!(session = %session.tag, version, client = %crate::observe::clip(client), "session started");
        let result = json!({
            "protocolVersion": version,
            "capabilities": capabilities(),
            "serverInfo": server_info(),
        });
        Ok((session, Message::result(id, result)))
    }

    /// The internal session of a stateless caller (created on its first request).
    pub(in crate::front) fn caller_session(
        &self,
        caller: &str,
        hello: Hello,
    ) -> Result<Arc<Session>, Refusal> {
        self.sessions
            .for_caller(caller, || hello)
            .ok_or(Refusal::TooManySessions)
    }
}
