//! A minimal OAuth 2.0 token endpoint for RFC 8693 token exchange, on loopback.
//!
//! The real OpenID provider the suite runs (the npm `oidc-provider`) does not implement
//! RFC 8693, so the gateway's token exchange is tested against this endpoint. It checks
//! what a provider checks first (client authentication by HTTP Basic, the grant type, a
//! subject token), records every form it received, and issues a fresh token per exchange
//! (`exchanged-<n>`), with the `expires_in` the test sets. It can be told to refuse
//! (`invalid_grant`) or be stopped (connections refused).
//!
//! It is also its provider's discovery side: the issuer is [`TokenEndpoint::issuer`] (a
//! path under the endpoint's origin, as Keycloak's realms have), and a `GET` of
//! `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery) answers the
//! provider's metadata with that issuer and the token endpoint. A test can serve the
//! document at RFC 8414's location instead, or nowhere, or have it name another issuer.

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
    discovery: Mutex<DiscoveryAt>,
    /// The `issuer` the discovery document names; `None`: the endpoint's own.
    named_issuer: Mutex<Option<String>>,
    /// The paths of every discovery request, in order.
    fetched: Mutex<Vec<String>>,
}

/// Where the endpoint serves its discovery document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiscoveryAt {
    /// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery).
    #[default]
    OpenId,
    /// `/.well-known/oauth-authorization-server<issuer path>` (RFC 8414) only.
    OAuth,
    /// Nowhere: every discovery request gets 404.
    Nowhere,
}

/// The path of the issuer under the endpoint's origin.
const ISSUER_PATH: &str = "/realms/test";

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

    /// The issuer identifier its discovery document names (unless told otherwise).
    pub fn issuer(&self) -> String {
        format!("http://{}{ISSUER_PATH}", self.addr)
    }

    /// Serve the discovery document `at` from now on.
    pub fn serve_discovery(&self, at: DiscoveryAt) {
        *self.state.discovery.lock().unwrap() = at;
    }

    /// The discovery document names `issuer` from now on (a provider that is not the one
    /// configured, or a location that serves someone else's metadata).
    pub fn name_issuer(&self, issuer: &str) {
        *self.state.named_issuer.lock().unwrap() = Some(issuer.to_string());
    }

    /// The path of every discovery request so far, in order.
    pub fn discovery_fetches(&self) -> Vec<String> {
        self.state.fetched.lock().unwrap().clone()
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

/// The discovery document, or 404 where the test serves none.
fn discovery(state: &State, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    state.fetched.lock().unwrap().push(path.clone());
    let served = match *state.discovery.lock().unwrap() {
        DiscoveryAt::OpenId => Some(format!("{ISSUER_PATH}/.well-known/openid-configuration")),
        DiscoveryAt::OAuth => Some(format!(
            "/.well-known/oauth-authorization-server{ISSUER_PATH}"
        )),
        DiscoveryAt::Nowhere => None,
    };
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let own = format!("http://{host}{ISSUER_PATH}");
    if served.as_deref() != Some(path.as_str()) {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let issuer = state.named_issuer.lock().unwrap().clone().unwrap_or(own);
    let doc = json!({
        "issuer": issuer,
        "token_endpoint": format!("http://{host}/oauth/token"),
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(doc.to_string())))
        .unwrap()
}

async fn answer(
    state: Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() == hyper::Method::GET {
        return Ok(discovery(&state, &req));
    }
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
