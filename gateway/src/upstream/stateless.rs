//! MCP 2026-07-28 toward an upstream: which era to speak, and how to speak the stateless one.
//!
//! With `protocol = auto`, the first link to an upstream asks `server/discover` (over stdio
//! before anything else, as the spec's backward-compatibility probe says). An upstream that
//! speaks both eras is given `initialize` for session-era clients (per-client upstream
//! sessions keep server→client requests, subscriptions and log levels exact) and spoken to
//! statelessly for 2026-07-28 clients (its own `input_required` results reach them as they
//! are). One that advertises only 2026-07-28 is spoken to statelessly for 2026-07-28
//! clients; for a session-era client it is tried with `initialize` first (many such servers
//! serve both eras and keep sampling, elicitation and `resources/subscribe` that way) and
//! spoken to statelessly only if it refuses. One that does not know `server/discover` is a
//! session-era server. The answers are remembered on the [`Upstream`]; a link that later
//! fails to connect forgets them, so a changed upstream is probed again.
//!
//! A stateless link ([`Stateless`]) puts the 2026 `_meta` (version, the client's identity and
//! capabilities, the log level) on every request — over HTTP also the headers
//! (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`; `http/stateless.rs`) — answers what
//! 2026-07-28 removed (`ping`, `logging/setLevel`) itself, refuses `resources/subscribe` with a clear error, and
//! keeps a `subscriptions/listen` request open for list changes. `input_required` results
//! pass through to the session, which bridges them for session-era clients
//! (`session/handle.rs`).

use std::future::Future;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::{Era, Hello, Upstream, UpstreamError};
use crate::config::UpstreamProtocol;
use crate::mcp::methods::{self, meta};
use crate::mcp::{Message, codes, version};

/// What a link needs to speak 2026-07-28: the client's hello, sent as `_meta` on every
/// request, and the log level the client set.
pub(super) struct Stateless {
    upstream: std::sync::Arc<str>,
    hello: Hello,
    log_level: Mutex<Option<Value>>,
}

impl Stateless {
    pub(super) fn new(upstream: std::sync::Arc<str>, hello: Hello) -> Self {
        Stateless {
            upstream,
            hello,
            log_level: Mutex::new(None),
        }
    }

    /// `server/discover`, with the `_meta` every 2026-07-28 request carries.
    pub(super) fn discover_request(&self, id: Value) -> Message {
        let mut msg = Message::request(id, methods::SERVER_DISCOVER, Some(json!({})));
        self.add_meta(&mut msg);
        msg
    }

    /// `subscriptions/listen` for the list changes (what the GET stream is to a session-era
    /// upstream).
    pub(super) fn listen_request(&self, id: Value) -> Message {
        let mut msg = Message::request(
            id,
            methods::SUBSCRIPTIONS_LISTEN,
            Some(json!({ "notifications": {
                "toolsListChanged": true,
                "promptsListChanged": true,
                "resourcesListChanged": true,
            } })),
        );
        self.add_meta(&mut msg);
        msg
    }

    /// Answers what 2026-07-28 removed, or refuses what it has no equivalent for.
    pub(super) fn answer_locally(&self, msg: &Message) -> Option<Message> {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        match msg.method() {
            methods::PING => Some(Message::result(id, json!({}))),
            methods::LOGGING_SET_LEVEL => {
                // Becomes `_meta` logLevel on every later request.
                let level = msg.params().and_then(|p| p.get("level")).cloned();
                *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = level;
                Some(Message::result(id, json!({})))
            }
            methods::RESOURCES_SUBSCRIBE | methods::RESOURCES_UNSUBSCRIBE => Some(Message::error(
                id,
                codes::METHOD_NOT_FOUND,
                &format!(
                    "upstream '{}' speaks MCP 2026-07-28, which has no {}: its resource updates reach 2026-07-28 clients through subscriptions/listen",
                    self.upstream,
                    msg.method()
                ),
                None,
            )),
            _ => None,
        }
    }

    /// The per-request `_meta` of 2026-07-28, from the client's own hello.
    pub(super) fn add_meta(&self, msg: &mut Message) {
        let level = self
            .log_level
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let params = msg.params_mut();
        let meta = params
            .entry("_meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            // A 2026-07-28 client's own per-request values win over the session's.
            m.insert(meta::PROTOCOL_VERSION.into(), json!(version::STATELESS));
            m.entry(meta::CLIENT_INFO)
                .or_insert_with(|| self.hello.client_info.clone());
            m.entry(meta::CLIENT_CAPABILITIES)
                .or_insert_with(|| self.hello.capabilities.clone());
            if let Some(level) = level {
                m.entry(meta::LOG_LEVEL).or_insert(level);
            }
        }
    }
}

/// The result of `server/discover`, or why there is none.
pub(super) fn discover_result(
    upstream: &std::sync::Arc<str>,
    mut reply: Message,
) -> Result<Value, UpstreamError> {
    let protocol = |detail: String| UpstreamError::Protocol {
        upstream: upstream.clone(),
        detail,
    };
    if let Some(err) = reply.error_value() {
        return Err(protocol(format!("server/discover failed: {err}")));
    }
    let result = reply.take_result().unwrap_or_default();
    if !result["capabilities"].is_object() {
        return Err(protocol(
            "server/discover result has no capabilities".into(),
        ));
    }
    Ok(result)
}

/// What a new link opens with.
pub(super) enum Choice {
    /// `initialize` and an upstream session.
    Initialize,
    /// MCP 2026-07-28, with the upstream's `server/discover` result.
    Stateless(Value),
    /// The upstream advertises only 2026-07-28 but the client speaks the session era: try
    /// `initialize` (dual-era servers accept it and keep sampling, elicitation and
    /// `resources/subscribe` for that client); if it is refused, speak 2026-07-28 with this
    /// `server/discover` result.
    TryInitialize(Value),
}

/// Decides the era for a new link of a client that speaks the session era
/// (`session_client`) or 2026-07-28. `discover` asks the upstream; an error it gives for
/// which `unreachable` is true says nothing about the era (the link fails as `initialize`
/// would), any other means the upstream does not know `server/discover`.
pub(super) async fn choose_era<F>(
    upstream: &Upstream,
    session_client: bool,
    discover: impl FnOnce() -> F,
    unreachable: fn(&UpstreamError) -> bool,
) -> Result<Choice, UpstreamError>
where
    F: Future<Output = Result<Value, UpstreamError>>,
{
    // A 2026-07-28-only advertisement: a session-era client tries `initialize` unless the
    // upstream was seen refusing it.
    let only_stateless = |discovered: Value| match (session_client, upstream.accepts_initialize()) {
        (true, Some(false)) | (false, _) => Choice::Stateless(discovered),
        (true, _) => Choice::TryInitialize(discovered),
    };
    match (upstream.config.protocol, upstream.era()) {
        (UpstreamProtocol::Session, _) | (UpstreamProtocol::Auto, Era::Session) => {
            return Ok(Choice::Initialize);
        }
        (UpstreamProtocol::Auto, Era::Stateless)
            if session_client && upstream.accepts_initialize() == Some(true) =>
        {
            return Ok(Choice::Initialize);
        }
        (UpstreamProtocol::Auto, Era::Dual) if session_client => {
            return Ok(Choice::Initialize);
        }
        (UpstreamProtocol::Auto, Era::Dual) => {
            let discovered = discover().await.inspect_err(|_| {
                upstream.set_era(Era::Unknown);
            })?;
            return Ok(Choice::Stateless(discovered));
        }
        (UpstreamProtocol::Stateless, _) => {
            return discover().await.map(Choice::Stateless);
        }
        (UpstreamProtocol::Auto, Era::Stateless) => {
            let discovered = discover().await.inspect_err(|_| {
                upstream.set_era(Era::Unknown);
            })?;
            return Ok(only_stateless(discovered));
        }
        (UpstreamProtocol::Auto, Era::Unknown) => {}
    }
    let discovered = match discover().await {
        Ok(d) => d,
        Err(e) if unreachable(&e) => return Err(e),
        Err(e) => {
            tracing::debug!(upstream = %upstream.name, error = %e, "no server/discover; using initialize");
            upstream.set_era(Era::Session);
            return Ok(Choice::Initialize);
        }
    };
    let speaks = |v: &str| {
        discovered["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(v)))
    };
    let era = match (
        version::SUPPORTED.iter().any(|v| speaks(v)),
        speaks(version::STATELESS),
    ) {
        (true, true) => Era::Dual,
        (false, true) => Era::Stateless,
        _ => Era::Session,
    };
    tracing::info!(upstream = %upstream.name, ?era, versions = %discovered["supportedVersions"], "upstream discovered");
    upstream.set_era(era);
    Ok(match era {
        Era::Stateless => only_stateless(discovered),
        Era::Dual if !session_client => Choice::Stateless(discovered),
        _ => Choice::Initialize,
    })
}

/// Whether an upstream's failure to `initialize` is a refusal (it answered, and said no),
/// rather than being unreachable.
pub(super) fn refused(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Protocol { .. }
            | UpstreamError::Http { .. }
            | UpstreamError::NotStreamable { .. }
    )
}
