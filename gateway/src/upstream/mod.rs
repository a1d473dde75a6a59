//! Upstream MCP servers: how the gateway talks to them.
//!
//! An [`Upstream`] is one configured server, shared by all client sessions. A [`Link`] is one
//! initialized MCP session with it, owned by one client session (see `session/`): a stdio
//! upstream gets its own child process per client session, an HTTP upstream its own
//! `Mcp-Session-Id`. Per-client links are what make server→client requests (sampling,
//! elicitation, roots), subscriptions, log levels and roots correct: the upstream's notion of
//! "its client" is exactly one gateway client. The price is one process per active client
//! session for stdio upstreams; links are created lazily, on the first message a client sends
//! to that upstream, so idle sessions cost nothing upstream. A stdio upstream configured with
//! `share = "shared"` serves all sessions from one child (or `pool` children) instead; each
//! session's link is then a handle onto it (`shared.rs`).
//!
//! An HTTP upstream speaks Streamable HTTP or, if it predates it, the legacy HTTP+SSE
//! transport: pinned in its config or detected on first contact (`http/detect.rs`).
//!
//! Messages are forwarded as raw JSON ([`Message`]); only the JSON-RPC id is rewritten.
//!
//! One job a file: `link.rs` the [`Link`]; `transport.rs` the `Transport` every kind of
//! upstream implements; `stdio.rs` and `child.rs` stdio upstreams; `shared.rs` stdio
//! children shared by many sessions; `http/` HTTP upstreams; `credential.rs` per-caller
//! credentials by token exchange; `stateless.rs` which protocol era a link speaks and how MCP 2026-07-28 is spoken;
//! `pending.rs` request ids and requests awaiting their answer; `slot.rs` a session's link
//! to one upstream and its restart backoff; `bounds.rs` the bounds on what an upstream
//! sends; `health.rs` what traffic says about an upstream; `error.rs` [`UpstreamError`];
//! `recorded.rs` an upstream that answers from a recording (`plugin test`).

mod bounds;
mod child;
pub mod credential;
mod error;
mod health;
mod http;
mod link;
mod pending;
mod recorded;
mod shared;
mod slot;
mod stateless;
mod stdin;
mod stdio;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::{HttpTransport, TransportKind, UpstreamConfig};
use crate::mcp::{Message, methods};

pub use credential::{Subject, SubjectSlot};
pub use error::UpstreamError;
pub use health::{Health, LeftOut, UpstreamStatus};
pub use link::Link;
pub use recorded::{NOT_RECORDED, Recording};
pub use slot::{Fresh, Slot};

/// Where messages related to one client request go (progress, logs, server→client requests
/// sent while that request runs): the client's stream for that request.
pub type Related = mpsc::UnboundedSender<Message>;

/// Receives what an upstream sends on its own initiative (notifications and requests).
pub trait InboundHandler: Send + Sync {
    /// `related` is the stream of the client request this message belongs to, when known.
    fn on_message(&self, upstream: &Arc<Upstream>, msg: Message, related: Option<&Related>);

    /// The bearer token the caller behind this handler presented and authn accepted: what
    /// a token-exchange upstream's credential is exchanged for (`credential.rs`).
    fn subject(&self) -> Option<Arc<Subject>> {
        None
    }
}

/// One configured upstream server.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    /// Shared connection pool for HTTP upstreams (keep-alive, `TCP_NODELAY`).
    http: Option<http::Client>,
    /// `auth.kind = "token-exchange"`: the per-caller credential (`credential.rs`).
    credential: Option<credential::Exchange>,
    /// An HTTP upstream speaks the legacy HTTP+SSE transport: pinned, or found out once.
    speaks_sse: AtomicBool,
    /// The protocol era found by `server/discover` (an [`Era`] as u8), for `protocol = auto`.
    era: AtomicU8,
    /// Whether an upstream that advertises only 2026-07-28 accepted `initialize`: 0 unknown,
    /// 1 yes, 2 no (see `stateless::Choice::TryInitialize`).
    initialize: AtomicU8,
    /// The tasks that wait for this upstream's child processes, so shutdown can see them
    /// reaped.
    children: tokio_util::task::TaskTracker,
    /// One permit per running child process (`max-children`); a child holds its permit
    /// until it has been reaped.
    child_slots: Arc<tokio::sync::Semaphore>,
    /// What real traffic says about it, for the admin API.
    health: Health,
    /// `share = "shared"`: the children every client session shares (`shared.rs`).
    shared: Option<shared::Pool>,
    /// Answers from a recording, not a server (`plugin test`, `recorded.rs`).
    recorded: Option<Arc<Recording>>,
}

impl Upstream {
    pub fn new(name: &str, config: UpstreamConfig) -> Result<Arc<Self>, UpstreamError> {
        Self::build(name, config, None)
    }

    /// An upstream named `name` that answers from `recording` (`recorded.rs`), for
    /// `plugin test`: the pipeline runs as with a server, nothing is started or contacted.
    pub fn recorded(name: &str, recording: Arc<Recording>) -> Result<Arc<Self>, UpstreamError> {
        let config: UpstreamConfig =
            toml::from_str("").map_err(|e| UpstreamError::Unavailable {
                upstream: name.into(),
                reason: e.to_string(),
            })?;
        Self::build(name, config, Some(recording))
    }

    fn build(
        name: &str,
        config: UpstreamConfig,
        recorded: Option<Arc<Recording>>,
    ) -> Result<Arc<Self>, UpstreamError> {
        let http = match config.transport() {
            // A recorded upstream has neither a `url` nor a `command`.
            TransportKind::Http if recorded.is_none() => Some(http::Client::new(name, &config)?),
            TransportKind::Http | TransportKind::Stdio => None,
        };
        let credential = match &config.auth {
            Some(auth) if auth.kind == crate::config::AuthKind::TokenExchange => {
                Some(credential::Exchange::new(auth).map_err(|reason| {
                    UpstreamError::Unavailable {
                        upstream: name.into(),
                        reason,
                    }
                })?)
            }
            _ => None,
        };
        let speaks_sse = AtomicBool::new(config.transport == HttpTransport::Sse);
        let child_slots = Arc::new(tokio::sync::Semaphore::new(config.max_children()));
        let shared = (http.is_none() && config.share == crate::config::Share::Shared)
            .then(|| shared::Pool::new(config.pool()));
        Ok(Arc::new(Upstream {
            name: name.into(),
            config,
            http,
            credential,
            speaks_sse,
            era: AtomicU8::new(Era::Unknown as u8),
            initialize: AtomicU8::new(0),
            children: Default::default(),
            child_slots,
            health: Health::default(),
            shared,
            recorded,
        }))
    }

    /// The era an earlier link found this upstream to speak.
    pub(crate) fn era(&self) -> Era {
        match self.era.load(Ordering::Relaxed) {
            1 => Era::Session,
            2 => Era::Stateless,
            3 => Era::Dual,
            _ => Era::Unknown,
        }
    }

    pub(crate) fn set_era(&self, era: Era) {
        self.era.store(era as u8, Ordering::Relaxed);
        if era == Era::Unknown {
            self.initialize.store(0, Ordering::Relaxed);
        }
    }

    /// Whether this upstream, advertising only 2026-07-28, accepted `initialize` when a
    /// session-era client's link tried it; `None` until one tried.
    pub(crate) fn accepts_initialize(&self) -> Option<bool> {
        match self.initialize.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    pub(crate) fn set_accepts_initialize(&self, accepts: bool) {
        let first = self.accepts_initialize().is_none();
        self.initialize
            .store(if accepts { 1 } else { 2 }, Ordering::Relaxed);
        if first {
            tracing::info!(upstream = %self.name, accepts, "upstream advertises only MCP 2026-07-28; session-era clients tried initialize");
        }
    }

    /// Whether a client session's link to this upstream may be opened at `initialize` and its
    /// upstream session sealed into the client's session id, for other replicas to resume:
    /// a Streamable HTTP upstream that may speak the session era, without a per-caller
    /// credential (the caller's token is not known yet at `initialize`). Stdio children,
    /// legacy HTTP+SSE streams and 2026-07-28 upstreams (no session) stay per replica.
    pub fn seals_sessions(&self) -> bool {
        self.http.is_some()
            && self.credential.is_none()
            && self.config.transport != HttpTransport::Sse
            && !self.speaks_sse.load(Ordering::Relaxed)
            && self.config.protocol != crate::config::UpstreamProtocol::Stateless
            && self.era() != Era::Stateless
    }

    /// Token exchanges of this upstream since start (`None`: it has none configured).
    pub fn token_exchange_counts(&self) -> Option<&credential::Counts> {
        self.credential.as_ref().map(|c| &c.counts)
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Waits (up to `limit`) until every child process of this upstream has exited and been
    /// reaped. Call after the links are dropped.
    pub async fn wait_children(&self, limit: Duration) {
        self.children.close();
        if tokio::time::timeout(limit, self.children.wait())
            .await
            .is_err()
        {
            tracing::warn!(upstream = %self.name, "child processes still running after shutdown");
        }
    }
}

/// Which protocol era an HTTP upstream is spoken to in (`protocol = auto` finds out once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Era {
    Unknown = 0,
    /// `initialize` and an upstream session.
    Session = 1,
    /// MCP 2026-07-28: stateless requests.
    Stateless = 2,
    /// Both: `server/discover` lists session-era versions and 2026-07-28. Each client gets a
    /// link in its own era.
    Dual = 3,
}

/// An upstream session as another replica needs it to go on using it without `initialize`
/// (sealed into the client's session id: `session/seal.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSession {
    /// The upstream's `Mcp-Session-Id`.
    pub id: String,
    /// The protocol revision it negotiated.
    pub version: String,
    /// Its capabilities (what the gateway reads of them: which lists it has, logging, tasks).
    pub capabilities: Value,
}

/// What the gateway tells an upstream about the client in `initialize`: the client's own
/// capabilities and identity, so the upstream knows whether it may sample, elicit or ask for
/// roots.
#[derive(Debug, Clone)]
pub struct Hello {
    pub capabilities: Value,
    pub client_info: Value,
}

impl Hello {
    /// The `initialize` request a session-era link opens with (id 0; requests count up
    /// from 1), offering the latest revision.
    fn initialize_request(&self) -> Message {
        Message::request(
            Value::from(0),
            methods::INITIALIZE,
            Some(json!({
                "protocolVersion": crate::mcp::version::LATEST,
                "capabilities": self.capabilities,
                "clientInfo": self.client_info,
            })),
        )
    }
}

/// The result of an upstream's answer to `initialize`, or why it refused.
fn initialize_result(upstream: &Arc<str>, mut reply: Message) -> Result<Value, UpstreamError> {
    if let Some(err) = reply.error_value() {
        return Err(UpstreamError::Protocol {
            upstream: upstream.clone(),
            detail: format!("initialize failed: {err}"),
        });
    }
    Ok(reply.take_result().unwrap_or_default())
}
