//! authn by issuer URL: the built-in authn plugin fetches the provider's keys over `wasi:http`
//! (OIDC discovery or `jwks-url`), only from origins its sidecar grants, follows key rotation
//! without a restart and keeps known keys through an outage for a bounded time.
//!
//! The provider here is a small HTTP server in the test (discovery document and JWKS), so
//! the test controls rotation and outages to the second.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, initialize_request, stdio_fixture_toml,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUD: &str = "https://mcp.example.com/mcp";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ec_key() -> p256::ecdsa::SigningKey {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("randomness");
        if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    json!({ "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()) })
}

/// An ES256 token of alice's from `iss`, signed by `key` named `kid`.
fn token(iss: &str, key: &p256::ecdsa::SigningKey, kid: &str) -> String {
    use p256::ecdsa::signature::Signer as _;
    let header = json!({ "alg": "ES256", "typ": "JWT", "kid": kid });
    let claims = json!({ "iss": iss, "aud": AUD, "sub": "alice", "exp": now() + 600,
                         "nbf": now() - 10 });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// What the provider serves and what it was asked.
struct State {
    jwks: Value,
    cache_control: &'static str,
    requests: Vec<String>,
}

/// A minimal OpenID provider's key-serving half: `/.well-known/openid-configuration` and
/// `/jwks`, on loopback. Dropping it (or [`Provider::stop`]) closes the port.
struct Provider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start(jwks: Value) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            jwks,
            cache_control: "public, max-age=3600",
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (status, body, cc) = {
                        let mut s = state.lock().unwrap();
                        s.requests.push(path.clone());
                        let issuer = format!("http://{addr}");
                        match path.as_str() {
                            "/.well-known/openid-configuration" => (
                                200,
                                json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
                                        "token_endpoint": format!("{issuer}/token") })
                                .to_string(),
                                s.cache_control,
                            ),
                            "/jwks" => (200, s.jwks.to_string(), s.cache_control),
                            _ => (404, "{}".to_string(), "no-store"),
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncache-control: {cc}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Provider { addr, state, task }
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = jwks;
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Stops listening: connections are refused from now on.
    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gateway(sidecar: &str) -> (Gateway, PluginDir) {
    let plugins = PluginDir::new();
    plugins.add("authn", "authn", sidecar);
    (
        Gateway::start_with_plugins(&plugins, &stdio_fixture_toml("alpha")).await,
        plugins,
    )
}

async fn status_of(gateway: &Gateway, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    RawHttp::new(gateway.url())
        .post(
            &initialize_request(1, "2025-11-25"),
            &[("authorization", &auth)],
        )
        .await
        .status
        .as_u16()
}

/// `issuer` + `discover = true` is all it takes; a rotated key is followed at once; the old
/// key and another provider's tokens are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_from_the_issuer_accepts_its_tokens_and_follows_rotation() {
    let (k1, k2) = (ec_key(), ec_key());
    let provider = Provider::start(json!({ "keys": [ec_jwk(&k1, "k1")] })).await;
    let other = Provider::start(json!({ "keys": [ec_jwk(&ec_key(), "k1")] })).await;
    let iss = provider.issuer();
    let (gateway, _plugins) = gateway(&format!(
        "[grants]\nhttp = [\"{iss}\"]\n\n[config.jwt]\nissuer = \"{iss}\"\naudience = \"{AUD}\"\n\
         discover = true\ncache-seconds = 0\njwks-refresh-seconds = 1\n"
    ))
    .await;

    assert_eq!(status_of(&gateway, &token(&iss, &k1, "k1")).await, 200);
    assert_eq!(status_of(&gateway, &token(&iss, &k1, "k1")).await, 200);
    assert_eq!(
        provider.requests(),
        ["/.well-known/openid-configuration", "/jwks"],
        "discovery and keys are fetched once, then served from the gateway's store"
    );

    // The provider rotates: the new key is fetched on first sight of its kid (its cached set
    // would otherwise be fresh for an hour), and the old one is gone.
    provider.serve(json!({ "keys": [ec_jwk(&k2, "k2")] }));
    assert_eq!(status_of(&gateway, &token(&iss, &k2, "k2")).await, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_of(&gateway, &token(&iss, &k1, "k1")).await, 401);

    // A token from another provider: its issuer is not accepted, whatever its keys.
    let foreign = token(&other.issuer(), &ec_key(), "k2");
    assert_eq!(status_of(&gateway, &foreign).await, 401);
    // …nor a token claiming our issuer but signed by a key the provider never published.
    assert_eq!(
        status_of(&gateway, &token(&iss, &ec_key(), "k2")).await,
        401
    );
    assert!(
        other.requests().is_empty(),
        "the other provider was never asked"
    );
}

/// The provider goes down: the keys fetched last keep working for `jwks-stale-seconds`
/// past their freshness (with a warning), then tokens are refused with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_keeps_known_keys_working_until_their_bound() {
    let key = ec_key();
    let provider = Provider::start(json!({ "keys": [ec_jwk(&key, "k1")] })).await;
    let iss = provider.issuer();
    let (gateway, _plugins) = gateway(&format!(
        "[grants]\nhttp = [\"{iss}\"]\n\n[config.jwt]\nissuer = \"{iss}\"\naudience = \"{AUD}\"\n\
         jwks-url = \"{iss}/jwks\"\ncache-seconds = 0\njwks-min-seconds = 1\njwks-max-seconds = 1\n\
         jwks-refresh-seconds = 1\njwks-stale-seconds = 3\n"
    ))
    .await;
    let t = token(&iss, &key, "k1");
    assert_eq!(status_of(&gateway, &t).await, 200);
    let fetched = std::time::Instant::now();
    provider.stop();

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(status_of(&gateway, &t).await, 200, "stale but within bound");
    gateway
        .wait_for_log("using the copy fetched", Duration::from_secs(5))
        .await;

    // Freshness 1 s + staleness 3 s, counted in whole seconds from the fetch.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(fetched.elapsed())).await;
    assert_eq!(status_of(&gateway, &t).await, 503, "past the bound");
    let logs = gateway
        .wait_for_log("past jwks-stale-seconds", Duration::from_secs(5))
        .await;
    assert!(!logs.contains(&t[20..]), "a token reached the log");
}

/// Outgoing HTTP is a grant: an origin not listed is refused (the plugin sees the error and
/// answers 503), and so is every request of a plugin without any `http` grant — which still
/// loads and serves its other settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_origins_are_reachable() {
    let key = ec_key();
    let provider = Provider::start(json!({ "keys": [ec_jwk(&key, "k1")] })).await;
    let iss = provider.issuer();
    let jwt = format!(
        "[config.jwt]\nissuer = \"{iss}\"\naudience = \"{AUD}\"\njwks-url = \"{iss}/jwks\"\n"
    );
    for grants in ["[grants]\nhttp = [\"http://127.0.0.1:1\"]\n\n", ""] {
        let (gateway, _plugins) = gateway(&format!("{grants}{jwt}")).await;
        assert_eq!(
            status_of(&gateway, &token(&iss, &key, "k1")).await,
            503,
            "{grants:?}"
        );
        let logs = gateway
            .wait_for_log("origin not granted", Duration::from_secs(5))
            .await;
        assert!(logs.contains(&provider.addr.to_string()), "{logs}");
        assert!(logs.contains("grant the provider's origin"), "{logs}");
    }
    assert!(
        provider.requests().is_empty(),
        "nothing reached the provider"
    );
}
