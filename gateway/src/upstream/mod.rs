//! Upstream MCP servers: how the gateway talks to them.
//!
//! An [`Upstream`] is one configured server, shared by all client sessions. A [`Link`] is one
//! initialized MCP session with it, owned by one client session (see `session/`): a stdio
//! upstream gets its own child process per client session, an HTTP upstream its own
//! `Mcp-Session-Id`. Per-client links are what make server→client requests (sampling,
//! elicitation, roots), subscriptions, log levels and roots correct: the upstream's notion of
//! "its client" is exactly one gateway client. The price is one process per active client
//! session for stdio upstreams; links are created lazily, on the first message a client sends
//! to that upstream, so idle sessions cost nothing upstream.
//!
//! An HTTP upstream speaks Streamable HTTP or, if it predates it, the legacy HTTP+SSE
//! transport (`legacy_sse`): pinned in its config or detected on first contact.
//!
//! Messages are forwarded as raw JSON ([`Message`]); only the JSON-RPC id is rewritten.

mod bounds;
mod child;
mod error;
mod health;
mod http;
mod legacy_sse;
mod pending;
mod slot;
mod stateless;
mod stdio;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{HttpTransport, TransportKind, UpstreamConfig};
use crate::mcp::{Kind, Message, methods};

pub use error::UpstreamError;
pub use health::{Health, LeftOut, UpstreamStatus};
pub use slot::{Fresh, Slot};

/// Where messages related to one client request go (progress, logs, server→client requests
/// sent while that request runs): the client's stream for that request.
pub type Related = mpsc::UnboundedSender<Message>;

/// Receives what an upstream sends on its own initiative (notifications and requests).
pub trait InboundHandler: Send + Sync {
    /// `related` is the stream of the client request this message belongs to, when known.
    fn on_message(&self, upstream: &Arc<Upstream>, msg: Message, related: Option<&Related>);
}

/// One configured upstream server.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    /// Shared connection pool for HTTP upstreams (keep-alive, `TCP_NODELAY`).
    http: Option<http::Client>,
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
}

impl Upstream {
    pub fn new(name: &str, config: UpstreamConfig) -> Result<Arc<Self>, UpstreamError> {
        let http = match config.transport() {
            TransportKind::Http => Some(http::Client::new(name, &config)?),
            TransportKind::Stdio => None,
        };
        let speaks_sse = AtomicBool::new(config.transport == HttpTransport::Sse);
        let child_slots = Arc::new(tokio::sync::Semaphore::new(config.max_children()));
        Ok(Arc::new(Upstream {
            name: name.into(),
            config,
            http,
            speaks_sse,
            era: AtomicU8::new(Era::Unknown as u8),
            initialize: AtomicU8::new(0),
            children: Default::default(),
            child_slots,
            health: Health::default(),
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

/// An initialized MCP session with one upstream, owned by one client session.
pub struct Link {
    pub upstream: Arc<Upstream>,
    transport: Transport,
    /// The upstream's `initialize` result (capabilities, serverInfo, instructions).
    pub init: Value,
}

enum Transport {
    Stdio(stdio::StdioLink),
    Http(Box<http::HttpLink>),
    Sse(Box<legacy_sse::SseLink>),
}

impl Link {
    /// Starts (stdio) or contacts (HTTP) the upstream and runs the `initialize` handshake.
    /// `session_client`: the client speaks the session era (see `stateless::choose_era`).
    pub async fn connect(
        upstream: &Arc<Upstream>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        session_client: bool,
    ) -> Result<Arc<Link>, UpstreamError> {
        let deadline = upstream.config.connect_timeout;
        let connect = async {
            match &upstream.http {
                None => {
                    let (link, init) =
                        stdio::StdioLink::connect(upstream, hello, handler, session_client)
                            .await?;
                    Ok::<_, UpstreamError>((Transport::Stdio(link), init))
                }
                Some(client) => {
                    legacy_sse::connect(upstream, client, hello, handler, session_client).await
                }
            }
        };
        let connected = tokio::time::timeout(deadline, connect)
            .await
            .map_err(|_| UpstreamError::Timeout {
                upstream: upstream.name.clone(),
                after: deadline,
            })
            .and_then(|r| r);
        upstream.health.record(&connected);
        let (transport, init) = connected?;
        upstream.health.link_opened();
        let link = Arc::new(Link {
            upstream: upstream.clone(),
            transport,
            init,
        });
        let (kind, version) = match &link.transport {
            Transport::Stdio(_) => ("stdio", link.init["protocolVersion"].as_str()),
            Transport::Http(_) => ("streamable-http", link.init["protocolVersion"].as_str()),
            Transport::Sse(_) => ("sse", link.init["protocolVersion"].as_str()),
        };
        let version = if link.is_stateless() {
            crate::mcp::version::STATELESS
        } else {
            version.unwrap_or("unknown")
        };
        tracing::info!(upstream = %upstream.name, transport = kind, protocol = version, "upstream connected");
        Ok(link)
    }

    pub fn is_alive(&self) -> bool {
        match &self.transport {
            Transport::Stdio(l) => l.is_alive(),
            Transport::Http(_) => true,
            Transport::Sse(l) => l.is_alive(),
        }
    }

    /// Spoken to as MCP 2026-07-28: its questions to the client come as `input_required`.
    pub fn is_stateless(&self) -> bool {
        match &self.transport {
            Transport::Http(l) => l.stateless.is_some(),
            Transport::Stdio(l) => l.stateless.is_some(),
            Transport::Sse(_) => false,
        }
    }

    /// The upstream's declared capabilities.
    pub fn capabilities(&self) -> &Value {
        &self.init["capabilities"]
    }

    /// Sends a request and waits for its response, which keeps the id the caller gave.
    /// Related traffic (progress, logs, server→client requests) goes to `related`.
    /// On timeout or `cancel`, the upstream is sent `notifications/cancelled`.
    pub async fn request(
        &self,
        mut msg: Message,
        related: Option<Related>,
        cancel: &CancellationToken,
    ) -> Result<Message, UpstreamError> {
        debug_assert_eq!(msg.kind(), Kind::Request);
        if let Transport::Stdio(l) = &self.transport
            && let Some(answer) = l.stateless.as_ref().and_then(|s| s.answer_locally(&msg))
        {
            return Ok(answer);
        }
        let client_id = msg.id().cloned().unwrap_or(Value::Null);
        let timeout = self.upstream.timeout();
        let span = crate::observe::upstream_span(&self.upstream, &msg);
        let stdio = matches!(self.transport, Transport::Stdio(_));
        crate::observe::inject_meta(&span, &mut msg, stdio);
        // Requests are built inside the span, so an HTTP upstream gets its trace context.
        let entered = span.enter();
        let (upstream_id, call) = match &self.transport {
            Transport::Stdio(l) => {
                let (id, fut) = l.request(&mut msg, related);
                (id, futures_util::future::Either::Left(fut))
            }
            Transport::Http(l) => {
                let id = l.next_id();
                msg.set_id(Value::from(id));
                (
                    id,
                    futures_util::future::Either::Right(futures_util::future::Either::Left(
                        l.request(msg, related),
                    )),
                )
            }
            Transport::Sse(l) => {
                let (id, fut) = l.request(&mut msg, related);
                (
                    id,
                    futures_util::future::Either::Right(futures_util::future::Either::Right(fut)),
                )
            }
        };
        drop(entered);
        let call = tracing::Instrument::instrument(call, span.clone());
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, call) => match r {
                Ok(r) => r,
                Err(_) => {
                    self.cancel_upstream(upstream_id, "timed out in the gateway").await;
                    Err(UpstreamError::Timeout { upstream: self.upstream.name.clone(), after: timeout })
                }
            },
            _ = cancel.cancelled() => {
                self.cancel_upstream(upstream_id, "cancelled by the client").await;
                Err(UpstreamError::Cancelled)
            }
        };
        self.upstream.health.record(&outcome);
        crate::observe::record_upstream_outcome(&span, &outcome);
        let mut response = outcome?;
        response.set_id(client_id);
        Ok(response)
    }

    async fn cancel_upstream(&self, upstream_id: u64, reason: &str) {
        match &self.transport {
            Transport::Stdio(l) => l.forget(upstream_id),
            Transport::Sse(l) => l.forget(upstream_id),
            Transport::Http(_) => {}
        }
        let note = Message::notification(
            methods::CANCELLED,
            Some(json!({ "requestId": upstream_id, "reason": reason })),
        );
        if let Err(e) = self.send(note).await {
            tracing::debug!(upstream = %self.upstream.name, error = %e, "could not send cancellation");
        }
    }

    /// Sends a notification or a response (to a request the upstream made).
    pub async fn send(&self, msg: Message) -> Result<(), UpstreamError> {
        match &self.transport {
            Transport::Stdio(l) => l.send(msg),
            Transport::Http(l) => l.send(msg).await,
            Transport::Sse(l) => l.send(msg).await,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.upstream.health.link_closed();
        if let Transport::Http(l) = &self.transport {
            l.close();
        }
    }
}

/// What went wrong reaching an upstream, down to the root cause: reqwest's own message is only
/// "error sending request"; its sources say "connection refused", a DNS failure, a TLS error.
/// The URL is left out (it may carry credentials); headers never appear in reqwest's errors.
fn cause(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod cause_tests {
    #[tokio::test]
    async fn a_refused_connection_says_so() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let e = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/mcp"))
            .send()
            .await
            .unwrap_err();
        let text = super::cause(e);
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        assert!(!text.contains("127.0.0.1"), "no URL in the cause: {text}");
    }
}
