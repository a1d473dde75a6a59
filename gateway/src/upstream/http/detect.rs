//! Which transport a new link to an HTTP upstream speaks.
//!
//! Pinned by `transport` in the upstream's config, or found out on first contact as the MCP
//! spec's backward-compatibility section describes: POST `initialize` (Streamable HTTP); a
//! 400, 404 or 405 without a JSON-RPC error means "try GET and expect an `endpoint` event"
//! (legacy HTTP+SSE). The answer is remembered per upstream, so later links go straight to
//! the right transport, and probe again if a remembered legacy server stops answering so.
//!
//! Which protocol era a Streamable HTTP link speaks (session or 2026-07-28) is decided
//! after this, by the link itself (`stateless::choose_era`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde_json::Value;

use super::Client;
use super::legacy_sse::SseLink;
use super::streamable::HttpLink;
use crate::config::HttpTransport;
use crate::upstream::transport::Transport;
use crate::upstream::{Hello, InboundHandler, Upstream, UpstreamError};

/// Connects an HTTP upstream over the transport it speaks: the pinned one, the one found
/// out before, or — first time — Streamable HTTP with a fallback to HTTP+SSE.
pub(in crate::upstream) async fn connect(
    upstream: &Arc<Upstream>,
    client: &Client,
    hello: &Hello,
    handler: Weak<dyn InboundHandler>,
    session_client: bool,
) -> Result<(Box<dyn Transport>, Value), UpstreamError> {
    let streamable = || async {
        let (link, init) = HttpLink::start(
            upstream,
            client.clone(),
            hello,
            handler.clone(),
            session_client,
        )
        .await?;
        Ok::<_, UpstreamError>((Box::new(link) as Box<dyn Transport>, init))
    };
    let sse = || async {
        let (link, init) = SseLink::start(upstream, client.clone(), hello, handler.clone()).await?;
        Ok::<_, UpstreamError>((Box::new(link) as Box<dyn Transport>, init))
    };
    match upstream.config.transport {
        HttpTransport::StreamableHttp => return streamable().await,
        HttpTransport::Sse => return sse().await,
        HttpTransport::Auto => {}
    }
    if upstream.speaks_sse.load(Ordering::Relaxed) {
        let linked = sse().await;
        if linked.is_err() {
            // Perhaps it moved to Streamable HTTP: the next attempt finds out again.
            upstream.speaks_sse.store(false, Ordering::Relaxed);
        }
        return linked;
    }
    match streamable().await {
        Err(UpstreamError::NotStreamable { status, .. }) => {
            tracing::info!(upstream = %upstream.name, status, "Streamable HTTP refused; trying the legacy HTTP+SSE transport");
            let linked = sse().await.map_err(|e| UpstreamError::Unavailable {
                upstream: upstream.name.clone(),
                reason: format!(
                    "it refused Streamable HTTP (HTTP {status}) and the legacy HTTP+SSE fallback failed: {e}"
                ),
            })?;
            upstream.speaks_sse.store(true, Ordering::Relaxed);
            tracing::info!(upstream = %upstream.name, "upstream speaks the legacy HTTP+SSE transport");
            Ok(linked)
        }
        other => other,
    }
}
