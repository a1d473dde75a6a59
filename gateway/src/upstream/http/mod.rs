//! HTTP upstreams: the per-upstream client, and the transports spoken over it.
//!
//! - `detect.rs`: which transport a new link speaks — pinned, remembered, or found out.
//! - `streamable.rs`: Streamable HTTP in the session era (`initialize`, `Mcp-Session-Id`).
//! - `stateless.rs`: MCP 2026-07-28 over HTTP (its headers, `server/discover`,
//!   `subscriptions/listen`).
//! - `legacy_sse.rs`: the legacy HTTP+SSE transport (2024-11-05).
//! - `listen.rs`: the listening streams that stay open, reconnecting with backoff.
//!
//! Every request to an upstream is built by [`Client::request`] (reqwest) or
//! [`Client::post_request`] (the POSTs that carry messages), the two places where the
//! configured headers and bearer token are put on it; an upstream with a token exchange
//! also gets the caller's credential, just before each request is sent
//! (`credential::authorize` / `credential::authorization`, async, as they may ask the token
//! endpoint). Nothing of the client's own request (its `Authorization` above all) is copied
//! onto these.

mod detect;
mod legacy_sse;
mod listen;
mod pool;
mod stateless;
mod streamable;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{Either, Full};
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

/// The body of an answer to a POST: the forward path's own (a plain `http://` upstream,
/// [`pool::Driven`]) or reqwest's.
pub(super) type Body = Either<pool::Driven, reqwest::Body>;

/// The forward path to a plain `http://` upstream: its connections, and what every POST's
/// request line and `Host` header say, built once.
#[derive(Clone)]
struct Plain {
    pool: Arc<pool::Pool>,
    /// The URL's path and query: the request line's origin form.
    path: http::Uri,
    host: HeaderValue,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain").finish_non_exhaustive()
    }
}

/// The per-upstream HTTP client: pools, URL and static headers.
///
/// The POSTs that carry every forwarded message (`HttpLink::post`, the hot path) go
/// over [`pool`]'s connections when the upstream is plain `http://` without
/// credentials in its URL: the URI and the fixed headers are built once, here, and nothing
/// per request re-parses the URL (reqwest turns its redirect layer's `Uri` back into a `Url`
/// on every response: docs/BENCHMARKS.md, "The bare proxy"). The forward path follows no
/// redirect: an upstream that answers a POST with one is sent its POSTs through reqwest
/// from then on (the redirected POST is sent again there). An `https://` upstream
/// (reqwest's rustls configuration and verifier) and everything else — the listening
/// streams, `DELETE`, the legacy HTTP+SSE transport — use reqwest. Both keep connections
/// alive with `TCP_NODELAY`, the same connect timeout and a 90 s idle timeout.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// The forward path's client, for a plain `http://` upstream.
    plain: Option<Plain>,
    pub(super) url: reqwest::Url,
    /// Configured headers and bearer token, marked sensitive.
    headers: HeaderMap,
    /// `headers` plus the `Accept` and `Content-Type` of an MCP POST: a POST's headers start
    /// as a clone of these.
    post_headers: HeaderMap,
    /// The upstream answered a POST with a redirect: its POSTs go through reqwest.
    redirects: Arc<AtomicBool>,
}

impl Client {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::Unavailable {
            upstream: name.into(),
            reason,
        };
        let url = reqwest::Url::parse(cfg.url.as_deref().unwrap_or_default())
            .map_err(|e| bad(format!("invalid URL: {e}")))?;
        let uri: http::Uri = url
            .as_str()
            .parse()
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
        let mut post_headers = headers.clone();
        post_headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        post_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let idle = Duration::from_secs(90);
        let http = reqwest::Client::builder()
            // Nagle + delayed ACK stalls small SSE events by ~40 ms on loopback.
            .tcp_nodelay(true)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(idle)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        // A URL with `user:password@` gets reqwest's Basic credentials from it: left to
        // reqwest, as is TLS.
        let plain =
            if url.scheme() == "http" && url.username().is_empty() && url.password().is_none() {
                // `http::Uri` keeps an IPv6 host in brackets, as both of these want it.
                let host = uri.host().unwrap_or_default();
                let port = url.port_or_known_default().unwrap_or(80);
                let authority = format!("{host}:{port}");
                let host_header = uri.authority().map_or(host, |a| a.as_str());
                let path = uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse()
                    .map_err(|e| bad(format!("invalid URL: {e}")))?;
                Some(Plain {
                    pool: pool::Pool::new(authority, cfg.connect_timeout),
                    path,
                    host: HeaderValue::from_str(host_header)
                        .map_err(|_| bad("invalid URL: host".into()))?,
                })
            } else {
                None
            };
        Ok(Client {
            http,
            plain,
            url,
            headers,
            post_headers,
            redirects: Arc::default(),
        })
    }

    /// A request to `url` (the upstream's own, or a legacy server's `endpoint`, which has
    /// the same origin) with the configured headers and bearer token. Every transport
    /// builds its requests here or in [`Client::post_request`], so credentials are added
    /// in these two places.
    fn request(&self, method: reqwest::Method, url: &reqwest::Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url.clone())
            .headers(self.headers.clone())
    }

    /// An MCP POST of `body` to the upstream's URL with the configured headers, bearer token,
    /// `Accept` and `Content-Type` (more headers are added by the caller before [`send`]).
    ///
    /// [`send`]: Client::send
    fn post_request(&self, body: Bytes) -> http::Request<Bytes> {
        let mut req = http::Request::new(body);
        *req.method_mut() = http::Method::POST;
        if let Some(plain) = &self.plain {
            *req.uri_mut() = plain.path.clone();
        }
        *req.headers_mut() = self.post_headers.clone();
        req
    }

    /// Sends a request built by [`Client::post_request`]. [`Sent::Redirected`]: build it
    /// again and send it once more (it then goes through reqwest, which follows redirects).
    async fn send(
        &self,
        upstream: &Upstream,
        req: http::Request<Bytes>,
    ) -> Result<Sent, UpstreamError> {
        let plain = match &self.plain {
            Some(plain) if !self.redirects.load(Ordering::Relaxed) => plain,
            _ => {
                let (parts, body) = req.into_parts();
                // Through the builder, which takes `user:password@` out of the URL.
                let resp = self
                    .http
                    .request(parts.method, self.url.clone())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| unavailable(upstream, e))?;
                return Ok(Sent::Answer(http::Response::from(resp).map(Either::Right)));
            }
        };
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(HOST, plain.host.clone());
        let resp = plain
            .pool
            .send(http::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| UpstreamError::Unavailable {
                upstream: upstream.name.clone(),
                reason: chain(&e),
            })?;
        if matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
            // Starlette, for one, redirects `/mcp` to `/mcp/`: from now on this upstream's
            // POSTs go through reqwest, which follows redirects as it always did.
            if !self.redirects.swap(true, Ordering::Relaxed) {
                tracing::info!(upstream = %upstream.name, status = resp.status().as_u16(), "the upstream redirects its POSTs; following them from now on");
            }
            return Ok(Sent::Redirected);
        }
        Ok(Sent::Answer(resp.map(Either::Left)))
    }
}

/// What [`Client::send`] got.
pub(super) enum Sent {
    Answer(http::Response<Body>),
    /// A redirect from the forward path's client, which does not follow them.
    Redirected,
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

/// [`traced`] for a request built by [`Client::post_request`].
fn trace_headers(headers: &mut HeaderMap) {
    if crate::observe::enabled() {
        crate::observe::inject_headers(headers);
    }
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
    chain(&e.without_url())
}

/// An error and its sources, each once. The forward path's errors name neither the URL nor a
/// header.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
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
    use super::Client;
    use crate::upstream::{Upstream, UpstreamError};

    #[tokio::test]
    async fn the_forward_path_says_why_an_upstream_is_unreachable_without_its_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://127.0.0.1:{port}/mcp");
        let cfg = toml::from_str(&format!("url = \"{url}\"")).unwrap();
        let upstream = Upstream::new("beta", cfg).unwrap();
        let client = Client::new("beta", &upstream.config).unwrap();
        assert!(
            client.plain.is_some(),
            "http:// goes over the forward path's own connections"
        );
        let req = client.post_request(bytes::Bytes::from_static(b"{}"));
        let Err(UpstreamError::Unavailable { reason, .. }) = client.send(&upstream, req).await
        else {
            panic!("a closed port must be unreachable");
        };
        assert!(
            reason.to_lowercase().contains("connection refused"),
            "{reason}"
        );
        assert!(
            !reason.contains("127.0.0.1"),
            "no URL in the cause: {reason}"
        );
    }

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
