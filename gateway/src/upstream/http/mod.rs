//! HTTP upstreams: the per-upstream client, and the transports spoken over it.
//!
//! - `detect.rs`: which transport a new link speaks — pinned, remembered, or found out.
//! - `streamable.rs`: Streamable HTTP in the session era (`initialize`, `Mcp-Session-Id`).
//! - `stateless.rs`: MCP 2026-07-28 over HTTP (its headers, `server/discover`,
//!   `subscriptions/listen`).
//! - `legacy_sse.rs`: the legacy HTTP+SSE transport (2024-11-05).
//! - `listen.rs`: the listening streams that stay open, reconnecting with backoff.
//!
//! Every request to an upstream is built by [`Client::request`], the one place where the
//! configured headers and bearer token are put on it; an upstream with a token exchange
//! also gets the caller's credential, just before each request is sent
//! (`credential::authorize`, async, as it may ask the token endpoint).

mod detect;
mod legacy_sse;
mod listen;
mod stateless;
mod streamable;

use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sse_stream::Sse;

use super::{Upstream, UpstreamError};
use crate::config::UpstreamConfig;
use crate::mcp::Message;

pub(super) use detect::connect;

/// A link on an upstream session another replica opened (`Link::attach`).
pub(super) fn attach(
    upstream: &std::sync::Arc<Upstream>,
    client: &Client,
    hello: &super::Hello,
    handler: std::sync::Weak<dyn super::InboundHandler>,
    resumed: &super::UpstreamSession,
) -> Result<(Box<dyn super::transport::Transport>, serde_json::Value), UpstreamError> {
    let (link, init) =
        streamable::HttpLink::attach(upstream, client.clone(), hello, handler, resumed)?;
    Ok((Box::new(link), init))
}

/// The per-upstream HTTP client: pool, URL and static headers.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    pub(super) url: reqwest::Url,
    /// Configured headers and bearer token, marked sensitive.
    headers: HeaderMap,
}

impl Client {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::Unavailable {
            upstream: name.into(),
            reason,
        };
        let url = reqwest::Url::parse(cfg.url.as_deref().unwrap_or_default())
            .map_err(|e| bad(format!("invalid URL: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let k = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let mut v = HeaderValue::from_str(v).map_err(|_| bad("invalid header value".into()))?;
            v.set_sensitive(true);
            headers.insert(k, v);
        }
        if let Some(token) = &cfg.bearer_token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| bad("invalid bearer token".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            // Nagle + delayed ACK stalls small SSE events by ~40 ms on loopback.
            .tcp_nodelay(true)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Client { http, url, headers })
    }

    /// A request to `url` (the upstream's own, or a legacy server's `endpoint`, which has
    /// the same origin) with the configured headers and bearer token. Every transport
    /// builds its requests here, so credentials are added in this one place.
    fn request(&self, method: reqwest::Method, url: &reqwest::Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url.clone())
            .headers(self.headers.clone())
    }
}

/// Adds the current span's trace context (`traceparent`) to a request, when tracing is on.
fn traced(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if !crate::observe::enabled() {
        return builder;
    }
    let mut trace = HeaderMap::new();
    crate::observe::inject_headers(&mut trace);
    builder.headers(trace)
}

/// Whether a response is an SSE stream.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The JSON-RPC message an SSE event carries: none for an event without data, none (logged)
/// for one that is not JSON-RPC.
fn event_message(upstream: &Upstream, event: Sse) -> Option<Message> {
    let data = event.data.filter(|d| !d.trim().is_empty())?;
    match Message::parse(data.as_bytes()) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, error = %e, "ignoring a bad SSE event");
            None
        }
    }
}

/// The upstream could not be reached, and why (see [`cause`]).
fn unavailable(upstream: &Upstream, e: reqwest::Error) -> UpstreamError {
    UpstreamError::Unavailable {
        upstream: upstream.name.clone(),
        reason: cause(e),
    }
}

/// What went wrong reaching an upstream, down to the root cause: reqwest's own message is only
/// "error sending request"; its sources say "connection refused", a DNS failure, a TLS error.
/// The URL is left out (it may carry credentials); headers never appear in reqwest's errors.
pub(super) fn cause(e: reqwest::Error) -> String {
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
