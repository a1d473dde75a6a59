//! A [`Link`]: one client session's MCP session with one upstream, over whichever
//! [`Transport`] that upstream speaks.
//!
//! What is common to every kind of upstream lives here, once: the upstream-side request
//! id and the client's id restored on the answer, the timeout and cancellation (with
//! `notifications/cancelled` sent upstream), answers the gateway gives itself for a
//! 2026-07-28 upstream, the trace span and the upstream's health.

use std::sync::{Arc, Weak};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::transport::Transport;
use super::{
    Hello, InboundHandler, Related, Upstream, UpstreamError, UpstreamSession, http, recorded, stdio,
};
use crate::config::TransportKind;
use crate::mcp::{Kind, Message, methods};
use crate::observe::Peer;

/// An initialized MCP session with one upstream, owned by one client session.
pub struct Link {
    pub upstream: Arc<Upstream>,
    transport: Box<dyn Transport>,
    /// The upstream's `initialize` result (capabilities, serverInfo, instructions).
    pub init: Value,
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
            if let Some(recording) = &upstream.recorded {
                return Ok(recorded::RecordedLink::connect(
                    upstream, recording, handler,
                ));
            }
            match (&upstream.http, &upstream.shared) {
                (None, Some(pool)) => {
                    let (link, init) = pool.attach(upstream, hello, handler).await?;
                    Ok((Box::new(link) as Box<dyn Transport>, init))
                }
                (None, None) => {
                    let (link, init) =
                        stdio::StdioLink::connect(upstream, hello, handler, session_client).await?;
                    Ok((Box::new(link) as Box<dyn Transport>, init))
                }
                (Some(client), _) => {
                    http::connect(upstream, client, hello, handler, session_client).await
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
        let version = if link.is_stateless() {
            crate::mcp::version::STATELESS
        } else {
            link.init["protocolVersion"].as_str().unwrap_or("unknown")
        };
        tracing::info!(upstream = %upstream.name, transport = link.transport.kind(), protocol = version, "upstream connected");
        Ok(link)
    }

    /// A link on an upstream session another replica opened (sealed into the client's
    /// session id): no `initialize`. If the upstream no longer knows that session (HTTP 404),
    /// the link initializes a new one and retries, as for any expired upstream session.
    pub fn attach(
        upstream: &Arc<Upstream>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        resumed: &UpstreamSession,
    ) -> Result<Arc<Link>, UpstreamError> {
        let Some(client) = &upstream.http else {
            return Err(UpstreamError::Unavailable {
                upstream: upstream.name.clone(),
                reason: "only HTTP upstream sessions are resumed".into(),
            });
        };
        let (transport, init) = http::attach(upstream, client, hello, handler, resumed)?;
        upstream.health.link_opened();
        Ok(Arc::new(Link {
            upstream: upstream.clone(),
            transport,
            init,
        }))
    }

    /// This link's upstream session as another replica needs it to use it too; `None` for
    /// links that have none to share (stdio, legacy SSE, 2026-07-28).
    pub fn upstream_session(&self) -> Option<UpstreamSession> {
        Some(UpstreamSession {
            id: self.transport.session_id()?,
            version: self.init["protocolVersion"].as_str()?.to_string(),
            capabilities: self.capabilities().clone(),
        })
    }

    /// Whether dropping this link leaves its upstream session open (`true` while it is
    /// sealed into the client's session id, for other replicas) or ends it (`DELETE`).
    pub fn keep_open(&self, keep: bool) {
        self.transport.keep_open(keep);
    }

    pub fn is_alive(&self) -> bool {
        self.transport.is_alive()
    }

    /// Spoken to as MCP 2026-07-28: its questions to the client come as `input_required`.
    pub fn is_stateless(&self) -> bool {
        self.transport.stateless().is_some()
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
        msg: Message,
        related: Option<Related>,
        cancel: &CancellationToken,
    ) -> Result<Message, UpstreamError> {
        debug_assert_eq!(msg.kind(), Kind::Request);
        let mut msg = match self.transport.intercept(msg, self.upstream.timeout()) {
            Ok(call) => {
                let outcome = call.await;
                self.upstream.health.record(&outcome);
                return outcome;
            }
            Err(msg) => msg,
        };
        if let Some(answer) = self
            .transport
            .stateless()
            .and_then(|s| s.answer_locally(&msg))
        {
            return Ok(answer);
        }
        let client_id = msg.id().cloned().unwrap_or(Value::Null);
        let timeout = self.upstream.timeout();
        let peer = match self.upstream.config.transport() {
            TransportKind::Stdio => Peer::Pipe,
            TransportKind::Http => Peer::Tcp(self.upstream.endpoint_address()),
        };
        let span = crate::observe::upstream_span(&self.upstream.name, peer, &msg);
        crate::observe::inject_meta(&span, &mut msg, self.transport.traces_in_meta());
        let upstream_id = self.transport.ids().number(&mut msg);
        // Requests are built inside the span, so an HTTP upstream gets its trace context.
        let call = span.in_scope(|| self.transport.request(upstream_id, msg, related));
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
        self.transport.forget(upstream_id);
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
        self.transport.send(msg).await
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.upstream.health.link_closed();
    }
}
