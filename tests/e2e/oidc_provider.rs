//! authn against a real OpenID provider: panva's `oidc-provider` (npm, pinned in
//! `tests/idp/package-lock.json`, installed by `tests/idp/install.sh`), run on loopback by
//! `tests/idp/provider.mjs` on the Node 22 that `tests/conformance` pins. Access tokens come
//! from a real client-credentials request with a resource indicator (RFC 8707), so they are
//! the provider's RS256 JWTs (RFC 9068) for that audience, and the gateway finds the
//! provider's keys by discovery from its issuer or by `jwks-url`.
//!
//! `identity_provider.rs` covers the same behaviour against a provider written in the test,
//! where outages and rotations can be timed to the second; this file proves the gateway works
//! with what a real provider serves (its discovery document, its JWKS without caching
//! headers, its `at+jwt` tokens).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis_tests::harness::{
    ConnectOptions, Gateway, PluginDir, RawHttp, RecordingClient, connect, initialize_request,
    node, stdio_fixture_toml,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The gateway's resource (its audience at the provider).
const AUD: &str = "https://mcp.example.com/mcp";
const CLIENT_ID: &str = "build-agent";
const CLIENT_SECRET: &str = "build-agent-secret-0123456789abcdef";

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("idp")
}

/// Runs `tests/idp/install.sh` once per test process.
fn installed() -> PathBuf {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = std::process::Command::new(idp_dir().join("install.sh"))
            .output()
            .expect("run tests/idp/install.sh");
        assert!(
            out.status.success(),
            "tests/idp/install.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    idp_dir()
}

/// One oidc-provider process on loopback (killed when dropped).
struct Idp {
    child: tokio::process::Child,
    issuer: String,
    http: reqwest::Client,
}

impl Idp {
    async fn start() -> Idp {
        let dir = installed();
        let options = serde_json::json!({
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scopes": "tools:read tools:call",
        });
        let mut child = tokio::process::Command::new(node(&[]).0)
            .arg(dir.join("provider.mjs"))
            .arg(options.to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tests/idp/provider.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the provider did not start within 60s")
        .expect("read the provider's first line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("provider.mjs printed {line:?}: {e}"));
        let issuer = ready["issuer"].as_str().expect("issuer").to_string();
        portcullis_tests::harness::init_tls();
        Idp {
            child,
            issuer,
            http: reqwest::Client::new(),
        }
    }

    /// An access token from the client-credentials grant for `resource` with `scope`.
    async fn token(&self, resource: &str, scope: &str) -> String {
        let basic = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
        let body = format!(
            "grant_type=client_credentials&resource={}&scope={}",
            form_encode(resource),
            form_encode(scope)
        );
        let response = self
            .http
            .post(format!("{}/token", self.issuer))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("POST /token");
        let status = response.status();
        let answer: Value = response.json().await.expect("token response JSON");
        assert_eq!(status, 200, "token endpoint answered {answer}");
        assert_eq!(answer["token_type"], "Bearer", "{answer}");
        answer["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Rotates the signing key at the provider (the previous key stays published); returns
    /// the new key's id.
    async fn rotate(&self) -> String {
        let answer: Value = self
            .http
            .post(format!("{}/test/rotate", self.issuer))
            .send()
            .await
            .expect("POST /test/rotate")
            .json()
            .await
            .expect("rotate answer");
        answer["kid"].as_str().expect("kid").to_string()
    }

    /// Takes the provider down: its port refuses connections from now on.
    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// `application/x-www-form-urlencoded` for the few characters the tests send.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A part of a token (0: header, 1: claims), decoded.
fn part(token: &str, index: usize) -> Value {
    let text = token.split('.').nth(index).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).expect("base64url")).expect("JSON")
}

async fn gateway(sidecar: &str) -> (Gateway, PluginDir) {
    let plugins = PluginDir::new();
    plugins.add("authn", "authn", sidecar);
    (
        Gateway::start_with_plugins(&plugins, &stdio_fixture_toml("alpha")).await,
        plugins,
    )
}

/// The HTTP status and `WWW-Authenticate` of an `initialize` carrying `token`.
async fn answer_to(gateway: &Gateway, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let response = RawHttp::new(gateway.url())
        .post(
            &initialize_request(1, "2025-11-25"),
            &[("authorization", &auth)],
        )
        .await;
    let challenge = response
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status.as_u16(), challenge)
}

/// `issuer` + `discover = true`: a token from the provider's client-credentials grant lists
/// tools through the gateway; one for another audience or another provider is refused; after
/// the provider rotates its key, tokens signed with the new key are accepted at once, without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_provider_by_issuer_and_its_key_rotation() {
    let idp = Idp::start().await;
    let other = Idp::start().await;
    let iss = &idp.issuer;
    let (gateway, _plugins) = gateway(&format!(
        "[grants]\nhttp = [\"{iss}\"]\n\n[config]\nrequired-scopes = [\"tools:read\"]\n\n\
         [config.jwt]\nissuer = \"{iss}\"\naudience = \"{AUD}\"\ndiscover = true\n\
         cache-seconds = 0\njwks-refresh-seconds = 1\n"
    ))
    .await;

    let token = idp.token(AUD, "tools:read").await;
    let claims = part(&token, 1);
    assert_eq!(claims["aud"], AUD, "{claims}");
    assert_eq!(claims["sub"], CLIENT_ID, "{claims}");
    assert_eq!(part(&token, 0)["alg"], "RS256");

    let client = connect(
        gateway.url(),
        RecordingClient::new(),
        &ConnectOptions::default().header("authorization", &format!("Bearer {token}")),
    )
    .await
    .expect("an MCP client with the provider's token connects");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(
        tools.iter().any(|t| t.name == "alpha__echo"),
        "the fixture's tools are listed: {:?}",
        tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>()
    );
    client.cancel().await.ok();

    // The same provider and client, but a token made for another resource.
    let elsewhere = idp
        .token("https://other.example.com/mcp", "tools:read")
        .await;
    let (status, challenge) = answer_to(&gateway, &elsewhere).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");

    // The provider's token, without the scope the gateway requires.
    let (status, challenge) = answer_to(&gateway, &idp.token(AUD, "tools:call").await).await;
    assert_eq!(status, 403);
    assert!(challenge.contains("insufficient_scope"), "{challenge}");

    // Key rotation at the provider: new tokens name a key the gateway has never seen; it
    // fetches the provider's keys again and accepts them. Tokens signed before the rotation
    // still verify while the provider keeps publishing the old key.
    let old_kid = part(&token, 0)["kid"].clone();
    let new_kid = idp.rotate().await;
    let rotated = idp.token(AUD, "tools:read").await;
    assert_eq!(part(&rotated, 0)["kid"], new_kid.as_str());
    assert_ne!(part(&rotated, 0)["kid"], old_kid);
    assert_eq!(answer_to(&gateway, &rotated).await.0, 200);
    assert_eq!(answer_to(&gateway, &token).await.0, 200);

    // Another provider (another issuer, its own keys): refused, and never asked.
    let foreign = other.token(AUD, "tools:read").await;
    let (status, challenge) = answer_to(&gateway, &foreign).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");

    let logs = gateway
        .wait_for_log("audience", Duration::from_secs(5))
        .await;
    for t in [&token, &rotated, &foreign, &elsewhere] {
        let signature = t.rsplit('.').next().unwrap_or_default();
        assert!(!logs.contains(signature), "a token reached the log");
    }
}

/// `jwks-url` pointing at the provider's key set; when the provider goes down, the keys
/// fetched last keep working for `jwks-stale-seconds` past their freshness, then tokens are
/// refused with 503 (not 401: the token is not at fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_provider_by_jwks_url_and_its_outage() {
    let mut idp = Idp::start().await;
    let iss = idp.issuer.clone();
    let (gateway, _plugins) = gateway(&format!(
        "[grants]\nhttp = [\"{iss}\"]\n\n[config.jwt]\nissuer = \"{iss}\"\naudience = \"{AUD}\"\n\
         jwks-url = \"{iss}/jwks\"\ncache-seconds = 0\njwks-min-seconds = 1\n\
         jwks-max-seconds = 1\njwks-refresh-seconds = 1\njwks-stale-seconds = 3\n"
    ))
    .await;
    let token = idp.token(AUD, "tools:read").await;
    assert_eq!(answer_to(&gateway, &token).await.0, 200);
    let fetched = std::time::Instant::now();
    idp.stop().await;

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        answer_to(&gateway, &token).await.0,
        200,
        "stale but within bound"
    );
    gateway
        .wait_for_log("using the copy fetched", Duration::from_secs(5))
        .await;

    // Freshness 1 s + staleness 3 s, counted in whole seconds from the fetch.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(fetched.elapsed())).await;
    assert_eq!(answer_to(&gateway, &token).await.0, 503, "past the bound");
    gateway
        .wait_for_log("past jwks-stale-seconds", Duration::from_secs(5))
        .await;
}
