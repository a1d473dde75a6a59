//! Upstream credentials per caller: RFC 8693 token exchange (`[upstreams.<name>.auth] kind =
//! "token-exchange"`).
//!
//! The callers authenticate to the gateway with bearer tokens the authn plugin accepts (API
//! keys, one subject each). The upstream (the fixture over HTTP) sits behind a recording
//! proxy, so the tests see the `Authorization` of every request it received. The token
//! endpoint is the harness's minimal RFC 8693 endpoint (`harness/token_endpoint.rs`): the
//! OpenID provider the suite runs elsewhere (npm `oidc-provider`) does not implement RFC 8693.
//! The same endpoint serves its provider's discovery document, for configurations that give
//! the provider's `issuer` instead of `token-endpoint`.

use std::time::Duration;

use portcullis_tests::harness::{
    ConnectOptions, DiscoveryAt, Fixture, Gateway, McpClient, PluginDir, RecordingClient,
    RecordingProxy, TokenEndpoint, call_tool, connect, server_toml, text_of, toml_str,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ALICE: &str = "pk_alice_token_that_stays_at_the_gateway";
const BOB: &str = "pk_bob_token_that_stays_at_the_gateway";
const CAROL: &str = "pk_carol_token_that_stays_at_the_gateway";
const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "exchange-client-secret";

/// The gateway with authn (three API keys), and `beta` behind `proxy` exchanging tokens at
/// `endpoint`; the plugins folder lives as long as the returned handle.
async fn gateway(endpoint: &TokenEndpoint, proxy: &RecordingProxy) -> (Gateway, PluginDir) {
    let at = format!("token-endpoint = {}", toml_str(&endpoint.url()));
    gateway_with(&at, proxy).await
}

/// The same, with `endpoint`'s provider given by its issuer only: the token endpoint is
/// discovered.
async fn gateway_by_issuer(
    endpoint: &TokenEndpoint,
    proxy: &RecordingProxy,
) -> (Gateway, PluginDir) {
    let at = format!("issuer = {}", toml_str(&endpoint.issuer()));
    gateway_with(&at, proxy).await
}

/// The gateway, with `locate` (`token-endpoint = …` or `issuer = …`) saying where `beta`'s
/// tokens are exchanged.
async fn gateway_with(locate: &str, proxy: &RecordingProxy) -> (Gateway, PluginDir) {
    let plugins = PluginDir::new();
    let keys: String = [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")]
        .iter()
        .map(|(key, subject)| {
            let hash: String = Sha256::digest(key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("[[config.api-keys]]\nsha256 = \"{hash}\"\nsubject = \"{subject}\"\n")
        })
        .collect();
    plugins.add("authn", "authn", &format!("[config]\n{keys}"));
    let upstream = format!(
        "[upstreams.beta]\nurl = {url}\n\n[upstreams.beta.auth]\nkind = \"token-exchange\"\n\
         {locate}\nclient-id = \"{CLIENT_ID}\"\n\
         client-secret = \"${{EXCHANGE_SECRET}}\"\naudience = \"beta-mcp\"\nresource = {url}\n\
         scope = \"tools:call\"\n",
        url = toml_str(&proxy.url("/mcp")),
    );
    let config = format!("{}{}{upstream}", server_toml(), plugins.policy_toml());
    let gateway = Gateway::start_with_env(&config, &[("EXCHANGE_SECRET", CLIENT_SECRET)]).await;
    (gateway, plugins)
}

/// The requests the upstream received, once no more are arriving (a link's GET stream opens
/// in the background).
async fn settled(proxy: &RecordingProxy) -> usize {
    let mut seen = proxy.forwarded().len();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = proxy.forwarded().len();
        if now == seen {
            return now;
        }
        seen = now;
    }
}

async fn caller(gateway: &Gateway, key: &str) -> McpClient {
    let options = ConnectOptions::default().header("Authorization", &format!("Bearer {key}"));
    connect(gateway.url(), RecordingClient::new(), &options)
        .await
        .expect("connect")
}

/// The `Authorization` the upstream reports for a `whoami` call.
async fn upstream_saw(client: &McpClient) -> Result<String, String> {
    let r = call_tool(client, "beta__whoami", Value::Null)
        .await
        .map_err(|e| e.to_string())?;
    let who: Value = serde_json::from_str(&text_of(&r)).unwrap();
    Ok(who["headers"]["authorization"]
        .as_str()
        .unwrap_or("<none>")
        .to_string())
}

fn assert_no_secret_in(text: &str, what: &str) {
    for secret in [ALICE, BOB, CAROL, CLIENT_SECRET, "exchanged-"] {
        assert!(!text.contains(secret), "{secret} reached {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_gets_a_token_exchanged_for_it_and_never_its_own() {
    let endpoint = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET).await;
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::start(beta.addr()).await;
    let (gateway, _plugins) = gateway(&endpoint, &proxy).await;

    let alice = caller(&gateway, ALICE).await;
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-1");
    // The same caller again: the cached token, no second exchange.
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-1");
    let received = endpoint.received();
    assert_eq!(received.len(), 1, "one exchange for alice: {received:?}");
    let form = &received[0].form;
    let field = |k: &str| form.get(k).map(String::as_str);
    assert_eq!(
        field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(
        field("subject_token"),
        Some(ALICE),
        "the caller's token is the subject"
    );
    let access = Some("urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(field("subject_token_type"), access);
    assert_eq!(field("requested_token_type"), access);
    assert_eq!(field("audience"), Some("beta-mcp"));
    assert_eq!(field("resource"), Some(proxy.url("/mcp").as_str()));
    assert_eq!(field("scope"), Some("tools:call"));
    assert!(
        field("client_secret").is_none(),
        "Basic authentication, not the form"
    );
    // The endpoint answered, so it accepted the client's Basic credentials.
    assert!(
        received[0]
            .authorization
            .as_deref()
            .unwrap_or_default()
            .starts_with("Basic ")
    );

    // Another caller gets a token of its own.
    let bob = caller(&gateway, BOB).await;
    assert_eq!(upstream_saw(&bob).await.unwrap(), "Bearer exchanged-2");
    let received = endpoint.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(
        received[1].form.get("subject_token").map(String::as_str),
        Some(BOB)
    );

    // Every request the upstream received (discovery, initialize, lists, calls) carried an
    // exchanged token, and never a client's.
    let forwarded = proxy.forwarded();
    assert!(!forwarded.is_empty());
    for f in &forwarded {
        let auth = f.authorization.as_deref().unwrap_or("<none>");
        assert!(
            auth == "Bearer exchanged-1" || auth == "Bearer exchanged-2",
            "{} reached the upstream with {auth}",
            f.method
        );
    }
    assert_no_secret_in(&gateway.logs(), "the gateway's log");
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_exchanged_again() {
    let endpoint = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET).await;
    // Refreshed at half its life (refresh-before is 30s, more than the lifetime).
    endpoint.set_expires_in(2);
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::start(beta.addr()).await;
    let (gateway, _plugins) = gateway(&endpoint, &proxy).await;
    let alice = caller(&gateway, ALICE).await;
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-2");
    let received = endpoint.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(
        received
            .iter()
            .all(|r| r.form.get("subject_token").map(String::as_str) == Some(ALICE))
    );
    alice.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_exchanged_token_means_nothing_reaches_the_upstream() {
    let endpoint = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET).await;
    endpoint.set_expires_in(2);
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::start(beta.addr()).await;
    let (gateway, _plugins) = gateway(&endpoint, &proxy).await;
    let alice = caller(&gateway, ALICE).await;
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-1");
    let before = settled(&proxy).await;

    // The provider refuses carol's token: her call fails, naming the upstream and why.
    endpoint.refuse(true);
    let carol = caller(&gateway, CAROL).await;
    let e = upstream_saw(&carol)
        .await
        .expect_err("no credential, no call");
    assert!(
        e.contains("beta") && e.contains("no credential") && e.contains("invalid_grant"),
        "{e}"
    );

    // The endpoint goes down while alice's token expires: her next call fails too.
    endpoint.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = upstream_saw(&alice)
        .await
        .expect_err("no credential, no call");
    assert!(
        e.contains("beta") && e.contains("token endpoint cannot be reached"),
        "{e}"
    );
    assert_no_secret_in(&e, "the client's error");

    settled(&proxy).await;
    let forwarded = proxy.forwarded();
    assert_eq!(
        forwarded.len(),
        before,
        "nothing reached the upstream without an exchanged token: {forwarded:?}"
    );
    assert_no_secret_in(&gateway.logs(), "the gateway's log");
    alice.cancel().await.unwrap();
    carol.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_is_discovered_from_the_issuer() {
    let endpoint = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET).await;
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::start(beta.addr()).await;
    let (gateway, _plugins) = gateway_by_issuer(&endpoint, &proxy).await;

    let alice = caller(&gateway, ALICE).await;
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-1");
    let bob = caller(&gateway, BOB).await;
    assert_eq!(upstream_saw(&bob).await.unwrap(), "Bearer exchanged-2");
    // Two exchanges at the discovered endpoint, with the client's credentials, and one
    // discovery for both: the endpoint is kept.
    let received = endpoint.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(
        received[1].form.get("subject_token").map(String::as_str),
        Some(BOB)
    );
    assert!(received.iter().all(|r| r.issued.is_some()));
    assert_eq!(
        endpoint.discovery_fetches(),
        ["/realms/test/.well-known/openid-configuration"]
    );
    for f in proxy.forwarded() {
        let auth = f.authorization.as_deref().unwrap_or("<none>");
        assert!(
            auth == "Bearer exchanged-1" || auth == "Bearer exchanged-2",
            "{} reached the upstream with {auth}",
            f.method
        );
    }
    let logs = gateway.logs();
    assert!(logs.contains("token endpoint discovered"), "{logs}");
    assert_no_secret_in(&logs, "the gateway's log");
    alice.cancel().await.unwrap();
    bob.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_8414_metadata_serves_a_provider_without_openid_discovery() {
    let endpoint = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET).await;
    endpoint.serve_discovery(DiscoveryAt::OAuth);
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::start(beta.addr()).await;
    let (gateway, _plugins) = gateway_by_issuer(&endpoint, &proxy).await;
    let alice = caller(&gateway, ALICE).await;
    assert_eq!(upstream_saw(&alice).await.unwrap(), "Bearer exchanged-1");
    assert_eq!(
        endpoint.discovery_fetches(),
        [
            "/realms/test/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/realms/test",
        ]
    );
    alice.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let endpoint = TokenEndpoint::start(CLIENT_ID, CLIENT_SECRET).await;
    // The document names a different issuer (here: a trailing `/` more, the commonest
    // real mismatch); its token endpoint is not used.
    endpoint.name_issuer(&format!("{}/", endpoint.issuer()));
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::start(beta.addr()).await;
    let (gateway, _plugins) = gateway_by_issuer(&endpoint, &proxy).await;
    let alice = caller(&gateway, ALICE).await;
    let e = upstream_saw(&alice)
        .await
        .expect_err("no credential, no call");
    assert!(
        e.contains("beta")
            && e.contains("no credential")
            && e.contains("token endpoint cannot be discovered")
            && e.contains("not the configured"),
        "{e}"
    );
    assert_no_secret_in(&e, "the client's error");
    assert!(
        endpoint.received().is_empty(),
        "no exchange: neither the caller's token nor the client secret went anywhere"
    );
    assert!(!endpoint.discovery_fetches().is_empty());
    settled(&proxy).await;
    let forwarded = proxy.forwarded();
    assert!(
        forwarded.is_empty(),
        "nothing reached the upstream without an exchanged token: {forwarded:?}"
    );
    let logs = gateway.logs();
    assert!(logs.contains("token endpoint discovery failed"), "{logs}");
    assert_no_secret_in(&logs, "the gateway's log");
    alice.cancel().await.unwrap();
}
