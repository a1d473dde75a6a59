//! Legacy HTTP+SSE upstreams (MCP 2024-11-05): servers that predate Streamable HTTP.
//!
//! A link opens `GET <url>`, an SSE stream whose first event, `endpoint`, names the URL to
//! POST messages to. That URL must have the same origin as `url`, so the configured headers
//! and bearer token never go anywhere else. Every message the server sends arrives on the
//! stream: answers find their waiting request by id; progress goes to the request that asked
//! for it (by token); other messages sent while requests are in flight go to the most recent
//! one, as on stdio (this transport has no per-request streams). The stream ending ends the
//! link; its slot reconnects, with backoff, on the next message. Dropping the link closes
//! the stream, which ends the upstream's session.
//!
//! Whether an upstream speaks it is pinned in its config or found out (`detect.rs`).
//!
//! The link shares the upstream's HTTP client with Streamable HTTP: one keep-alive pool
//! with `TCP_NODELAY`, the same headers, the same SSE parser.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use super::Client;
use crate::mcp::{Kind, Message, methods};
use crate::upstream::bounds::{self, Bound};
use crate::upstream::pending::{Pending, RequestIds};
use crate::upstream::transport::{Call, Transport};
use crate::upstream::{Hello, InboundHandler, Related, Upstream, UpstreamError};

pub struct SseLink {
    name: Arc<str>,
    client: Client,
    /// Where messages are posted: the `endpoint` event's URL.
    endpoint: reqwest::Url,
    upstream: Arc<Upstream>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    reader: tokio::task::AbortHandle,
    /// The client session: whose credential a token-exchange upstream gets.
    handler: Weak<dyn InboundHandler>,
}

impl SseLink {
    pub async fn start(
        upstream: &Arc<Upstream>,
        client: Client,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
    ) -> Result<(Self, Value), UpstreamError> {
        let name = upstream.name.clone();
        let protocol = |detail: String| UpstreamError::Protocol {
            upstream: name.clone(),
            detail,
        };
        let get = client
            .request(reqwest::Method::GET, &client.url)
            .header(ACCEPT, "text/event-stream");
        let resp = crate::upstream::credential::authorize(upstream, &handler, get)
            .await?
            .send()
            .await
            .map_err(|e| super::unavailable(upstream, e))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Http {
                upstream: name,
                status: resp.status().as_u16(),
            });
        }
        if !super::is_event_stream(resp.headers()) {
            return Err(protocol("GET did not open an SSE stream".into()));
        }
        let mut events = bounds::sse_events(upstream, http::Response::from(resp).into_body());

        // The first event says where to post.
        let endpoint = loop {
            match events.next().await {
                None => {
                    return Err(protocol(
                        "the SSE stream ended before the endpoint event".into(),
                    ));
                }
                Some(Err(e)) => {
                    let failure = bounds::sse_failure(upstream, &e);
                    crate::memory::give_back(events);
                    return Err(failure);
                }
                Some(Ok(ev)) if ev.event.as_deref() == Some("endpoint") => {
                    break ev.data.unwrap_or_default();
                }
                // A comment or a bare `retry:` carries nothing.
                Some(Ok(ev)) if ev.event.is_none() && ev.data.is_none() => continue,
                Some(Ok(_)) => {
                    return Err(protocol("the first SSE event is not `endpoint`".into()));
                }
            }
        };
        let endpoint = client
            .url
            .join(endpoint.trim())
            .map_err(|e| protocol(format!("bad endpoint URL: {e}")))?;
        if endpoint.origin() != client.url.origin() {
            // The credentials configured for this upstream must not go to another host.
            return Err(protocol(
                "the endpoint event names another origin; refused".into(),
            ));
        }

        let pending = Arc::new(Pending::default());
        let alive = Arc::new(AtomicBool::new(true));
        let weak = handler.clone();
        let reader = {
            let (upstream, pending, alive) = (upstream.clone(), pending.clone(), alive.clone());
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(e) => e,
                        Err(e) if bounds::is_breach(&e) => {
                            // The dropped event may be any waiting request's answer.
                            let _ = bounds::sse_failure(&upstream, &e);
                            pending.fail_all_with(|| {
                                bounds::breach(&upstream, Bound::SseEvent, "an SSE event")
                            });
                            crate::memory::give_back(events);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(upstream = %upstream.name, error = %e, "SSE stream broken");
                            break;
                        }
                    };
                    if event.event.as_deref().is_some_and(|t| t != "message") {
                        continue;
                    }
                    let Some(msg) = super::event_message(&upstream, event) else {
                        continue;
                    };
                    if msg.kind() == Kind::Response {
                        if !pending.complete(msg) {
                            tracing::debug!(upstream = %upstream.name, "response to a request nobody waits for");
                        }
                        continue;
                    }
                    let related = pending.related_for(&msg);
                    match handler.upgrade() {
                        Some(h) => h.on_message(&upstream, msg, related.as_ref()),
                        None => break,
                    }
                }
                alive.store(false, Ordering::Release);
                pending.fail_all();
                tracing::info!(upstream = %upstream.name, "legacy SSE stream closed");
            })
            .abort_handle()
        };

        let link = SseLink {
            name,
            client,
            endpoint,
            upstream: upstream.clone(),
            pending,
            alive,
            reader,
            handler: weak,
        };
        let answer = link.pending.register(0, None, None);
        link.post(hello.initialize_request().to_bytes()).await?;
        let reply = answer.await.map_err(|_| link.closed())??;
        let result = crate::upstream::initialize_result(&link.name, reply)?;
        link.post(Message::notification(methods::INITIALIZED, None).to_bytes())
            .await?;
        Ok((link, result))
    }

    fn post(&self, body: Vec<u8>) -> impl Future<Output = Result<(), UpstreamError>> + use<> {
        let alive = self.alive.load(Ordering::Acquire);
        let closed = self.closed();
        let name = self.name.clone();
        let upstream = self.upstream.clone();
        let handler = self.handler.clone();
        let req = super::traced(
            self.client
                .request(reqwest::Method::POST, &self.endpoint)
                .header(CONTENT_TYPE, "application/json")
                .body(body),
        );
        async move {
            if !alive {
                return Err(closed);
            }
            let req = crate::upstream::credential::authorize(&upstream, &handler, req).await?;
            let resp = req
                .send()
                .await
                .map_err(|e| super::unavailable(&upstream, e))?;
            let status = resp.status();
            // Read the (short) body so the connection goes back to the pool; a long one is
            // cut off at `max-response-mib` (the connection is then dropped).
            let _ = bounds::read_body(&upstream, http::Response::from(resp).into_body()).await;
            if status.is_success() {
                Ok(())
            } else {
                Err(UpstreamError::Http {
                    upstream: name,
                    status: status.as_u16(),
                })
            }
        }
    }

    fn closed(&self) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: self.name.clone(),
            reason: "its SSE stream closed".into(),
        }
    }
}

impl Transport for SseLink {
    fn kind(&self) -> &'static str {
        "sse"
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn ids(&self) -> &RequestIds {
        &self.pending.ids
    }

    /// Registers the waiter before posting: the answer may come on the stream before the
    /// POST returns.
    fn request(&self, id: u64, msg: Message, related: Option<Related>) -> Call<'_> {
        let answer = self.pending.register_request(id, &msg, related);
        let post = self.post(msg.to_bytes());
        Box::pin(self.pending.call(id, answer, post, self.closed()))
    }

    fn forget(&self, id: u64) {
        self.pending.remove(id);
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<(), UpstreamError>> {
        Box::pin(self.post(msg.to_bytes()))
    }
}

impl Drop for SseLink {
    /// Closing the stream ends the upstream's session.
    fn drop(&mut self) {
        self.reader.abort();
    }
}
