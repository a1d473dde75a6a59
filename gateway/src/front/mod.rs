//! The client-facing HTTP server: our own hyper accept loop, MCP Streamable HTTP on the
//! configured path, DNS-rebinding protection, limits and graceful shutdown.

// Handlers return an HTTP error response as their `Err`; it is built once per failed
// request, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

mod authorization;
mod client_cert;
mod era;
mod guard;
mod legacy_sse;
mod linger;
mod metadata;
pub mod offline;
mod pipeline;
mod record;
mod relay;
mod response;
mod stateless;
mod streamable;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ALLOW, ORIGIN,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::policy::Policies;
use crate::session::Sessions;
use crate::session::stream::CutHook;
pub use guard::Guard;
pub use record::Recorder;
use response::Body;
pub use tls::{Tls, TlsError, WatchGuard as TlsWatch};

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub std::net::SocketAddr);

/// Everything a request handler needs.
pub struct Front {
    config: ServerConfig,
    guard: Guard,
    sessions: Arc<Sessions>,
    policies: Arc<Policies>,
    /// The RFC 9728 document, when `[oauth]` is configured.
    oauth_metadata: Option<bytes::Bytes>,
    /// Request tasks, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Open legacy HTTP+SSE connections.
    legacy: legacy_sse::Connections,
    /// 2026-07-28 (stateless) calls waiting for the client's `inputResponses`.
    parked: stateless::Parked,
    /// Fires when the gateway starts draining: long-lived streams end gracefully.
    closing: CancellationToken,
    /// The audit trail and the metrics.
    recorder: Arc<Recorder>,
    /// The identity every message starts with, as if an authn stage had set it: only
    /// `plugin test --identity` ([`offline`]) has one.
    assumed: Option<crate::policy::Identity>,
    /// The cluster bus, when replicas share streams and parked calls.
    bus: Option<Arc<crate::cluster::Bus>>,
}

impl Front {
    pub fn new(
        config: ServerConfig,
        sessions: Arc<Sessions>,
        policies: Arc<Policies>,
        oauth: Option<&crate::config::OAuthConfig>,
        recorder: Recorder,
        bus: Option<Arc<crate::cluster::Bus>>,
    ) -> Arc<Self> {
        Self::build(config, sessions, policies, oauth, recorder, None, bus)
    }

    fn build(
        config: ServerConfig,
        sessions: Arc<Sessions>,
        policies: Arc<Policies>,
        oauth: Option<&crate::config::OAuthConfig>,
        recorder: Recorder,
        assumed: Option<crate::policy::Identity>,
        bus: Option<Arc<crate::cluster::Bus>>,
    ) -> Arc<Self> {
        let oauth_metadata = oauth.map(|o| metadata::document(o, &config.path));
        sessions.set_screen(Arc::new(relay::PolicyScreen {
            policies: policies.clone(),
        }));
        let front = Arc::new(Front {
            guard: Guard::new(&config),
            config,
            sessions,
            policies,
            oauth_metadata,
            tasks: TaskTracker::new(),
            legacy: Default::default(),
            parked: stateless::Parked::default(),
            closing: CancellationToken::new(),
            recorder: Arc::new(recorder),
            assumed,
            bus,
        });
        if let Some(bus) = &front.bus {
            stateless::serve_forwarded(&front, bus);
        }
        front
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() != self.config.path
            && let Some((status, text)) = crate::admin::probe(
                req.method(),
                req.uri().path(),
                &self.policies,
                self.closing.is_cancelled(),
            )
        {
            let mut r = Response::new(response::full(bytes::Bytes::from(text)));
            *r.status_mut() = status;
            return r;
        }
        if let Some(doc) = &self.oauth_metadata
            && req.method() == Method::GET
            && metadata::is_metadata_path(req.uri().path(), &self.config.path)
        {
            return metadata::respond(doc);
        }
        let legacy = self.legacy_endpoint(req.uri().path());
        if legacy.is_none() && req.uri().path() != self.config.path {
            return response::status_error(StatusCode::NOT_FOUND, "Not Found");
        }
        if let Err(refused) = self.guard.check(req.headers()) {
            let host = req
                .headers()
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()));
            tracing::warn!(?refused, host = ?host.as_deref().map(crate::observe::clip), "refused: possible DNS rebinding");
            return response::status_error(
                StatusCode::FORBIDDEN,
                "Forbidden: Host or Origin not allowed",
            );
        }
        if let Err(refused) = authorization::check(req.headers()) {
            return refused;
        }
        // Fail closed: a required plugin that is not in the chain (removed, disabled) means
        // no MCP traffic at all, never traffic without that policy.
        let missing = self.policies.missing();
        if !missing.is_empty() && req.method() != Method::OPTIONS {
            tracing::warn!(missing = %missing.join(", "), "refused: required plugins are not in the chain");
            return response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                crate::mcp::codes::INTERNAL_ERROR,
                &format!(
                    "Service unavailable: required policy plugin(s) not loaded: {}",
                    missing.join(", ")
                ),
            );
        }
        let origin = req.headers().get(ORIGIN).cloned();
        // One span per client message (export on): POSTs carry them.
        let span = match *req.method() {
            Method::POST => crate::observe::request_span(req.headers()),
            _ => tracing::Span::none(),
        };
        // The transport adapter: legacy HTTP+SSE by path; on the MCP path, the era by header.
        let stateless = era::is_stateless(req.headers());
        let mut resp = match era::unsupported(req.headers()) {
            _ if let Some(endpoint) = legacy => {
                tracing::Instrument::instrument(self.legacy(endpoint, req), span).await
            }
            // A POST is checked once its body is read, so the error carries the request id.
            Some(bad) if req.method() != Method::OPTIONS && req.method() != Method::POST => {
                era::unsupported_version(&bad, None)
            }
            _ => match *req.method() {
                Method::POST if stateless => {
                    tracing::Instrument::instrument(self.stateless_post(req), span).await
                }
                Method::POST => tracing::Instrument::instrument(self.post(req), span).await,
                Method::GET | Method::DELETE if stateless => stateless::no_get_or_delete(),
                Method::GET => self.get(req).await,
                Method::DELETE => self.delete(req).await,
                Method::OPTIONS => response::empty(StatusCode::NO_CONTENT),
                _ => {
                    let mut r = response::status_error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "Method Not Allowed",
                    );
                    r.headers_mut().insert(
                        ALLOW,
                        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
                    );
                    r
                }
            },
        };
        if let Some(origin) = origin {
            // The guard let it through, so this origin may read our answers.
            let h = resp.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
            );
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(crate::mcp::headers::CORS_ALLOWED),
            );
            h.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from(crate::mcp::headers::SESSION_ID),
            );
        }
        resp
    }
}

/// One accepted connection: what [`serve`] runs for every socket, and what the fuzz targets
/// (fuzz/) drive over an in-memory stream, so they test this very code. HTTP/1.1, or HTTP/2
/// when `http2` (TLS with ALPN `h2`; plain HTTP stays HTTP/1.1, no h2c). `peer` is the
/// client's address (the caller of last resort for per-caller bounds); `cert` the verified
/// client certificate, set on every request as headers (see `client_cert`); cancelling
/// `kill` is how a cut-off SSE consumer's connection is closed at once (the caller selects
/// on it; over HTTP/2 that closes the whole connection too). The future ends when the
/// connection closes.
pub fn connection<I>(
    front: Arc<Front>,
    io: I,
    peer: Option<std::net::SocketAddr>,
    kill: CancellationToken,
    http2: bool,
    cert: Option<Arc<client_cert::ClientCert>>,
) -> impl GracefulConnection<Error = Box<dyn std::error::Error + Send + Sync>> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = front.config.idle_timeout;
    let service = service_fn(move |mut req: Request<Incoming>| {
        let (front, kill) = (front.clone(), kill.clone());
        client_cert::stamp(req.headers_mut(), cert.as_deref());
        if let Some(peer) = peer {
            req.extensions_mut().insert(Peer(peer));
        }
        let malformed =
            req.version() == http::Version::HTTP_2 && guard::authority_as_host(&mut req).is_err();
        async move {
            if malformed {
                return Ok(response::status_error(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: Host differs from :authority",
                ));
            }
            let mut resp = front.route(req).await;
            if let Some(hook) = resp.extensions_mut().remove::<CutHook>() {
                hook.on_cut(kill);
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    // HTTP/2 has no header-read timeout: an idle connection is pinged every `idle-timeout`
    // and closed when a ping goes unanswered for 20s (a peer that vanished). Streams per
    // connection: hyper's default (200), each a request like an HTTP/1.1 one.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(idle)
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = match http2 {
        true => builder.http2_only(),
        false => builder.http1_only(),
    };
    builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned()
}

/// An accepted connection on its way to the thread that serves it.
struct Accepted {
    peer: std::net::SocketAddr,
    front: Arc<Front>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    graceful: hyper_util::server::graceful::Watcher,
    lingering: linger::Linger,
}

impl Accepted {
    /// Serves the connection until it closes (TLS handshake first, when configured).
    async fn serve(self, stream: tokio::net::TcpStream) {
        let Accepted {
            peer,
            front,
            tls,
            graceful,
            lingering,
        } = self;
        // Nagle + delayed ACK would hold back small SSE events by ~40 ms.
        let _ = stream.set_nodelay(true);
        // Cancelled to close the connection at once: its SSE consumer was cut off.
        let kill = CancellationToken::new();
        let io = linger::Lingering::new(stream, lingering, kill.clone());
        if let Some(acceptor) = tls {
            let accepted = tls::Accepted { peer, kill };
            return accepted.serve(acceptor, io, front, graceful).await;
        }
        let conn = graceful.watch(connection(front, io, Some(peer), kill.clone(), false, None));
        tokio::select! {
            ended = conn => if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = kill.cancelled() => {
                tracing::debug!(%peer, "connection closed: its SSE consumer was cut off");
            }
        }
    }
}

/// Serves until `shutdown` fires, then drains: stops accepting, ends GET streams, lets
/// in-flight requests finish (up to `shutdown-grace`), and closes every session (which stops
/// stdio upstreams and ends upstream sessions).
pub async fn serve(
    listener: TcpListener,
    front: Arc<Front>,
    shutdown: CancellationToken,
    tls: Option<Arc<Tls>>,
    workers: Option<&crate::workers::Workers>,
) {
    let graceful = GracefulShutdown::new();
    let lingering = linger::Linger::from_config(&front.config);
    let reaper = {
        let (sessions, idle) = (front.sessions.clone(), front.config.session_idle_timeout);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15).min(idle));
            loop {
                tokio::select! {
                    _ = tick.tick() => { sessions.reap_idle(idle); }
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = Accepted {
            peer,
            front: front.clone(),
            tls: tls.as_ref().map(|t| t.acceptor()),
            graceful: graceful.watcher(),
            lingering,
        };
        match workers {
            // The socket moves to the worker's own event loop.
            Some(workers) => match stream.into_std() {
                Ok(stream) => workers.spawn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => accepted.serve(stream).await,
                        Err(e) => tracing::warn!(%peer, error = %e, "cannot serve a connection"),
                    }
                }),
                Err(e) => tracing::warn!(%peer, error = %e, "cannot serve a connection"),
            },
            None => {
                tokio::spawn(accepted.serve(stream));
            }
        }
    }
    drop(listener);
    reaper.abort();
    tracing::info!(in_flight = front.tasks.len(), "shutting down: draining");
    front.closing.cancel();
    for id in front.sessions.ids() {
        // A legacy client's stream carries its answers too: it closes after the drain.
        if let Some(s) = front.sessions.get(&id)
            && !front.legacy.owns(&id)
        {
            s.standalone.finish();
        }
    }
    front.tasks.close();
    let drained = tokio::time::timeout(front.config.shutdown_grace, async {
        front.tasks.wait().await;
        front.legacy.close_all();
        graceful.shutdown().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown grace period over; abandoning in-flight requests");
    }
    front.sessions.close_all();
}
