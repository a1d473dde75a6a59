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
//! Which transport an HTTP upstream speaks is pinned by `transport` in its config, or found
//! out on first contact as the MCP spec's backward-compatibility section describes: POST
//! `initialize`; a 400, 404 or 405 without a JSON-RPC error means "try GET and expect an
//! `endpoint` event". The answer is remembered per upstream, so later links go straight to
//! the right transport (and probe again if a remembered legacy server stops answering so).
//!
//! The link shares the upstream's HTTP client with Streamable HTTP: one keep-alive pool
//! with `TCP_NODELAY`, the same headers, the same SSE parser.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use super::bounds::{self, Bound};
use super::http::{Client, HttpLink};
use super::pending::Pending;
use super::{Hello, InboundHandler, Related, Transport, Upstream, UpstreamError};
use crate::config::HttpTransport;
use crate::mcp::{Kind, Message, methods};

/// Connects an HTTP upstream over the transport it speaks: the pinned one, the one found
/// out before, or — first time — Streamable HTTP with a fallback to HTTP+SSE.
pub(super) async fn connect(
    upstream: &Arc<Upstream>,
    client: &Client,
    hello: &Hello,
    handler: Weak<dyn InboundHandler>,
    session_client: bool,
) -> Result<(Transport, Value), UpstreamError> {
    let streamable = || async {
        let (link, init) = HttpLink::start(
            upstream,
            client.clone(),
            hello,
            handler.clone(),
            session_client,
        )
        .await?;
        Ok::<_, UpstreamError>((Transport::Http(Box::new(link)), init))
    };
    let sse = || async {
        let (link, init) = SseLink::start(upstream, client.clone(), hello, handler.clone()).await?;
        Ok::<_, UpstreamError>((Transport::Sse(Box::new(link)), init))
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
            .http
            .get(client.url.clone())
            .headers(client.headers.clone())
            .header(ACCEPT, "text/event-stream");
        let resp = super::credential::authorize(upstream, &handler, get)
            .await?
            .send()
            .await
            .map_err(|e| unavailable(&name, e))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Http {
                upstream: name,
                status: resp.status().as_u16(),
            });
        }
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(protocol("GET did not open an SSE stream".into()));
        }
        let mut events = bounds::sse_events(upstream, resp);

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
                    let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                        continue;
                    };
                    let msg = match Message::parse(data.as_bytes()) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(upstream = %upstream.name, error = %e, "ignoring a bad SSE event");
                            continue;
                        }
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
        link.send(hello.initialize_request()).await?;
        let reply = answer.await.map_err(|_| link.closed())??;
        let result = super::initialize_result(&link.name, reply)?;
        link.send(Message::notification(methods::INITIALIZED, None))
            .await?;
        Ok((link, result))
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Assigns an upstream id and registers the waiter before posting (the answer may come
    /// on the stream before the POST returns). The future resolves with the response.
    pub fn request(
        &self,
        msg: &mut Message,
        related: Option<Related>,
    ) -> (
        u64,
        impl Future<Output = Result<Message, UpstreamError>> + use<>,
    ) {
        let (id, answer) = self.pending.start(msg, related);
        let post = self.post(msg.to_bytes());
        let (pending, closed) = (self.pending.clone(), self.closed());
        let fut = async move {
            if let Err(e) = post.await {
                pending.remove(id);
                return Err(e);
            }
            answer.await.map_err(|_| closed)?
        };
        (id, fut)
    }

    /// Stops waiting for a request (after a timeout or cancellation).
    pub fn forget(&self, id: u64) {
        self.pending.remove(id);
    }

    /// Sends a notification or a response (to a request the upstream made).
    pub async fn send(&self, msg: Message) -> Result<(), UpstreamError> {
        self.post(msg.to_bytes()).await
    }

    fn post(&self, body: Vec<u8>) -> impl Future<Output = Result<(), UpstreamError>> + use<> {
        let alive = self.is_alive();
        let closed = self.closed();
        let name = self.name.clone();
        let upstream = self.upstream.clone();
        let handler = self.handler.clone();
        let mut req = self
            .client
            .http
            .post(self.endpoint.clone())
            .headers(self.client.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if crate::observe::enabled() {
            let mut trace = http::HeaderMap::new();
            crate::observe::inject_headers(&mut trace);
            req = req.headers(trace);
        }
        async move {
            if !alive {
                return Err(closed);
            }
            let req = super::credential::authorize(&upstream, &handler, req).await?;
            let resp = req.send().await.map_err(|e| unavailable(&name, e))?;
            let status = resp.status();
            // Read the (short) body so the connection goes back to the pool; a long one is
            // cut off at `max-response-mib` (the connection is then dropped).
            let _ = bounds::read_body(&upstream, resp).await;
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

impl Drop for SseLink {
    /// Closing the stream ends the upstream's session.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn unavailable(name: &Arc<str>, e: reqwest::Error) -> UpstreamError {
    // reqwest errors may contain the URL but never our headers.
    UpstreamError::Unavailable {
        upstream: name.clone(),
        reason: super::cause(e),
    }
}
