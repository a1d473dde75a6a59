//! The admin API: a listener of its own (`[admin] listen`, loopback by default), apart from
//! the MCP endpoint, so it can stay private while the gateway is public.
//!
//! | request | token | answer |
//! | --- | --- | --- |
//! | `GET /healthz` | no | `200 ok`: the process is alive and serving |
//! | `GET /readyz` | no | `200 ready`, or `503 not ready: <why>` (see [`status::readiness`]) |
//! | `GET /v1/status` | yes | JSON: version, uptime, sessions, upstreams, plugins, last reload |
//! | `POST /v1/reload` | yes | rescans the plugins folder now; JSON: the reload's outcome |
//! | `GET /metrics` | yes | Prometheus text, when a metrics source is mounted ([`Admin::mount_metrics`]) |
//!
//! The token travels as `Authorization: Bearer <token>`; a request without it or with
//! another gets 401. The comparison is constant-time (of SHA-256 digests, so the length
//! leaks nothing either), and neither the token nor what a caller sent is ever logged.
//! Probes need no token because load balancers and kubelets send none; they say nothing
//! but ready or not and why.

pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminConfig;
use crate::policy::Policies;
use crate::session::Sessions;

/// Renders the metrics exposition served at `GET /metrics`.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A slow or idle admin client is dropped after this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound admin listener, ready to serve.
pub struct Admin {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    token: [u8; 32],
    sessions: Arc<Sessions>,
    policies: Arc<Policies>,
    started: Instant,
    metrics: Option<MetricsSource>,
    /// Fires when the gateway starts draining: `/readyz` turns 503.
    draining: CancellationToken,
}

impl Admin {
    pub async fn bind(
        cfg: &AdminConfig,
        sessions: Arc<Sessions>,
        policies: Arc<Policies>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.listen))?;
        if !cfg.listen.ip().is_loopback() {
            tracing::warn!(listen = %cfg.listen, "the admin API listens beyond loopback (it still needs the token)");
        }
        Ok(Admin {
            listener,
            state: Arc::new(State {
                token: digest(cfg.token.as_bytes()),
                sessions,
                policies,
                started: Instant::now(),
                metrics: None,
                draining: CancellationToken::new(),
            }),
        })
    }

    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` from `source` (the metrics module's exposition).
    pub fn mount_metrics(&mut self, source: MetricsSource) {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.metrics = Some(source);
        }
    }

    /// Serves until `stop`; `/readyz` answers 503 from the moment `draining` fires.
    pub async fn serve(self, draining: CancellationToken, stop: CancellationToken) {
        let mut state = self.state;
        if let Some(s) = Arc::get_mut(&mut state) {
            s.draining = draining;
        }
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.route(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                    },
                    _ = stop.cancelled() => {}
                }
            });
        }
    }
}

type Body = Full<Bytes>;

impl State {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match path {
            "/healthz" if get => text(StatusCode::OK, "ok\n"),
            "/readyz" if get => self.ready(),
            "/healthz" | "/readyz" | "/v1/status" | "/metrics" if !get => not_allowed("GET"),
            "/v1/reload" if req.method() != Method::POST => not_allowed("POST"),
            "/v1/status" | "/v1/reload" | "/metrics" => {
                if !self.authorized(&req) {
                    tracing::warn!(path, "admin request refused: missing or wrong token");
                    let mut r = text(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized: send Authorization: Bearer <admin token>\n",
                    );
                    r.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
                    );
                    return r;
                }
                match path {
                    "/v1/status" => {
                        let s = status::status(
                            &self.sessions,
                            &self.policies,
                            self.started,
                            self.draining.is_cancelled(),
                        )
                        .await;
                        json(StatusCode::OK, &s)
                    }
                    "/v1/reload" => {
                        tracing::info!("reload requested through the admin API");
                        let report = status::Reload::from(self.policies.reload().await);
                        json(StatusCode::OK, &report)
                    }
                    _ => match &self.metrics {
                        Some(render) => {
                            let mut r = text(StatusCode::OK, &render());
                            r.headers_mut().insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static(
                                    "text/plain; version=0.0.4; charset=utf-8",
                                ),
                            );
                            r
                        }
                        None => text(StatusCode::NOT_FOUND, "no metrics in this build\n"),
                    },
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn ready(&self) -> Response<Body> {
        match status::readiness(&self.policies, self.draining.is_cancelled()) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        digest(given).ct_eq(&self.token).into()
    }
}

/// Answers the probes on the MCP listener too (Kubernetes probes the serving port, without
/// credentials and with the pod's IP as `Host`, so this runs before the Host check).
/// `None` for any other request.
pub fn probe(
    method: &Method,
    path: &str,
    policies: &Policies,
    draining: bool,
) -> Option<(StatusCode, String)> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/healthz" => Some((StatusCode::OK, "ok\n".into())),
        "/readyz" => Some(match status::readiness(policies, draining) {
            Ok(()) => (StatusCode::OK, "ready\n".into()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        }),
        _ => None,
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the answer: {e}\n"),
        ),
    }
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest() {
        let stored = digest(b"0123456789abcdef");
        assert!(bool::from(digest(b"0123456789abcdef").ct_eq(&stored)));
        assert!(!bool::from(digest(b"0123456789abcdeF").ct_eq(&stored)));
        assert!(!bool::from(digest(b"").ct_eq(&stored)));
    }
}
