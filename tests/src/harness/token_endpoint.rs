//! A minimal OAuth 2.0 token endpoint for RFC 8693 token exchange, on loopback.
//!
//! The real OpenID provider the suite runs (the npm `oidc-provider`) does not implement
//! RFC 8693, so the gateway's token exchange is tested against this endpoint. It checks
//! what a provider checks first (client authentication by HTTP Basic, the grant type, a
//! subject token), records every form it received, and issues a fresh token per exchange
//! (`exchanged-<n>`), with the `expires_in` the test sets. It can be told to refuse
//! (`invalid_grant`) or be stopped (connections refused).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// One exchange request as the endpoint received it.
#[derive(Debug, Clone)]
pub struct ExchangeRequest {
    /// The `Authorization` header (client authentication).
    pub authorization: Option<String>,
    /// The form fields.
    pub form: BTreeMap<String, String>,
    /// The token issued in answer, if one was.
    pub issued: Option<String>,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<ExchangeRequest>>,
    expires_in: AtomicU64,
    refuse: AtomicBool,
    issued: AtomicU64,
    basic: String,
}

/// A running token endpoint; stops on drop.
pub struct TokenEndpoint {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TokenEndpoint {
    /// Starts the endpoint; it accepts the client `client_id` / `client_secret` by HTTP
    /// Basic authentication and issues tokens valid for an hour until told otherwise.
    pub async fn start(client_id: &str, client_secret: &str) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{client_id}:{client_secret}"));
        let state = Arc::new(State {
            expires_in: AtomicU64::new(3600),
            basic: format!("Basic {basic}"),
            ..State::default()
        });
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let (state, tasks) = (state.clone(), tasks.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let state = state.clone();
                    let conn = tokio::spawn(async move {
                        let service = service_fn(move |req| answer(state.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                    tasks.lock().unwrap().push(conn.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        TokenEndpoint { addr, state, tasks }
    }

    /// The token endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// Every exchange request so far, in order.
    pub fn received(&self) -> Vec<ExchangeRequest> {
        self.state.received.lock().unwrap().clone()
    }

    /// `expires_in` of the tokens issued from now on, seconds.
    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::Relaxed);
    }

    /// From now on, refuse every exchange with `invalid_grant`.
    pub fn refuse(&self, refuse: bool) {
        self.state.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Stops listening and drops every open connection: the endpoint is down.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Decoded as a query string: the same application/x-www-form-urlencoded rules.
    let form: BTreeMap<String, String> =
        reqwest::Url::parse(&format!("http://form/?{}", String::from_utf8_lossy(&body)))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
    let mut record = ExchangeRequest {
        authorization: authorization.clone(),
        form: form.clone(),
        issued: None,
    };
    let reply = |status: StatusCode, body: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let refused = if authorization.as_deref() != Some(state.basic.as_str()) {
        Some((StatusCode::UNAUTHORIZED, "invalid_client"))
    } else if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:token-exchange")
    {
        Some((StatusCode::BAD_REQUEST, "unsupported_grant_type"))
    } else if form.get("subject_token").is_none_or(|t| t.is_empty()) {
        Some((StatusCode::BAD_REQUEST, "invalid_request"))
    } else if state.refuse.load(Ordering::Relaxed) {
        Some((StatusCode::BAD_REQUEST, "invalid_grant"))
    } else {
        None
    };
    let response = match refused {
        Some((status, error)) => reply(
            status,
            json!({ "error": error, "error_description": "refused by the test's token endpoint" }),
        ),
        None => {
            let n = state.issued.fetch_add(1, Ordering::Relaxed) + 1;
            let token = format!("exchanged-{n}");
            record.issued = Some(token.clone());
            reply(
                StatusCode::OK,
                json!({
                    "access_token": token,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer",
                    "expires_in": state.expires_in.load(Ordering::Relaxed),
                }),
            )
        }
    };
    state.received.lock().unwrap().push(record);
    Ok(response)
}
