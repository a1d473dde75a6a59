//! Upstream behaviour: credentials, isolation of slow and dead upstreams, crash restarts,
//! expired upstream sessions, stderr in the log.

use std::time::Duration;

use portcullis_tests::harness::{
    ConnectOptions, FIXTURE_SIMPLE_TEXT, Fixture, Gateway, RawHttp, RecordingClient,
    RecordingProxy, call_tool, client, connect, server_toml, stdio_fixture_toml, text_of, toml_str,
};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_go_upstream_and_the_clients_never_do() {
    let beta = Fixture::http("beta").await;
    let config = format!(
        "{}[upstreams.beta]\nurl = {}\nbearer-token = \"${{BETA_TOKEN}}\"\nheaders = {{ \"X-Team\" = \"platform\" }}\n",
        server_toml(),
        toml_str(beta.url())
    );
    let gateway = Gateway::start_with_env(&config, &[("BETA_TOKEN", "upstream-secret")]).await;
    let options = ConnectOptions::default().header("Authorization", "Bearer client-secret");
    let client = connect(gateway.url(), RecordingClient::new(), &options)
        .await
        .expect("connect");
    let r = call_tool(&client, "beta__whoami", Value::Null)
        .await
        .unwrap();
    let who: Value = serde_json::from_str(&text_of(&r)).unwrap();
    let headers = &who["headers"];
    assert_eq!(headers["authorization"], "Bearer upstream-secret", "{who}");
    assert_eq!(headers["x-team"], "platform", "{who}");
    assert!(
        !who.to_string().contains("client-secret"),
        "client credential leaked upstream: {who}"
    );
    assert!(
        !gateway.logs().contains("upstream-secret"),
        "a secret reached the log"
    );
    client.cancel().await.unwrap();
}

/// Web frameworks answer `/mcp` with a redirect to `/mcp/`: the gateway follows it for the
/// POSTs that carry calls as well (its forward path's client does not follow redirects by
/// itself), with the upstream's credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_redirects_its_posts_is_still_reached() {
    let beta = Fixture::http("beta").await;
    let proxy = RecordingProxy::redirecting(beta.addr(), "/moved", "/mcp").await;
    let config = format!(
        "{}[upstreams.beta]\nurl = {}\nbearer-token = \"upstream-secret\"\n",
        server_toml(),
        toml_str(&proxy.url("/moved"))
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    for _ in 0..2 {
        let r = call_tool(&client, "beta__whoami", Value::Null)
            .await
            .unwrap();
        let who: Value = serde_json::from_str(&text_of(&r)).unwrap();
        assert_eq!(
            who["headers"]["authorization"], "Bearer upstream-secret",
            "{who}"
        );
    }
    let posts: Vec<String> = proxy
        .forwarded()
        .into_iter()
        .filter(|f| f.method == "POST")
        .map(|f| f.path)
        .collect();
    assert!(posts.contains(&"/moved".to_string()), "{posts:?}");
    assert!(
        posts.iter().filter(|p| *p == "/mcp").count() >= 3,
        "{posts:?}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_times_out_alone() {
    let beta = Fixture::http("beta").await;
    let config = format!(
        "{}{}\ntimeout = \"1s\"\n\n{}",
        server_toml(),
        beta.upstream_toml("slow").trim_end(),
        stdio_fixture_toml("fast")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    let slow = call_tool(&client, "slow__sleep", json!({ "ms": 5000 })).await;
    let err = slow.expect_err("the slow call must fail").to_string();
    assert!(
        err.contains("slow") && err.contains("did not answer"),
        "{err}"
    );
    let fast = call_tool(&client, "fast__test_simple_text", Value::Null)
        .await
        .unwrap();
    assert_eq!(text_of(&fast), FIXTURE_SIMPLE_TEXT);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_leaves_the_others_listed_and_is_logged() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/mcp", dead.local_addr().unwrap());
    drop(dead);
    let config = format!(
        "{}[upstreams.dead]\nurl = {}\nconnect-timeout = \"2s\"\n\n{}",
        server_toml(),
        toml_str(&dead_url),
        stdio_fixture_toml("alive")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    let tools = client
        .list_all_tools()
        .await
        .expect("tools/list still answers");
    assert!(tools.iter().any(|t| t.name == "alive__echo"));
    assert!(tools.iter().all(|t| !t.name.starts_with("dead__")));
    gateway
        .wait_for_log("upstream=dead", Duration::from_secs(10))
        .await;
    let err = call_tool(&client, "dead__echo", json!({ "text": "x" }))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("'dead'"), "{err}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_stdio_upstream_is_restarted_and_its_stderr_is_logged() {
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("flaky"));
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    assert_eq!(
        text_of(
            &call_tool(&client, "flaky__test_simple_text", Value::Null)
                .await
                .unwrap()
        ),
        FIXTURE_SIMPLE_TEXT
    );
    let crashed = call_tool(&client, "flaky__crash", Value::Null)
        .await
        .unwrap_err()
        .to_string();
    assert!(crashed.contains("flaky"), "{crashed}");
    gateway
        .wait_for_log("stdio upstream exited", Duration::from_secs(10))
        .await;
    // The next calls restart it once the backoff allows; they fail fast until then.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call_tool(&client, "flaky__test_simple_text", Value::Null).await {
            Ok(r) => {
                assert_eq!(text_of(&r), FIXTURE_SIMPLE_TEXT);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains("flaky"), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "not restarted: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        gateway.logs().contains("upstream=flaky"),
        "stderr and lifecycle lines are tagged"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_upstream_session_is_reinitialized_transparently() {
    let mut beta = Fixture::http("beta").await;
    let addr = beta.addr();
    let config = format!("{}{}", server_toml(), beta.upstream_toml("beta"));
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    assert_eq!(
        text_of(
            &call_tool(&client, "beta__test_simple_text", Value::Null)
                .await
                .unwrap()
        ),
        FIXTURE_SIMPLE_TEXT
    );
    // The upstream restarts on the same address and forgets every session.
    beta.kill();
    let _again = Fixture::http_on("beta", addr).await;
    let r = call_tool(&client, "beta__test_simple_text", Value::Null)
        .await
        .expect("re-initialized and retried");
    assert_eq!(text_of(&r), FIXTURE_SIMPLE_TEXT);
    gateway
        .wait_for_log("re-initializing", Duration::from_secs(5))
        .await;
    let _ = RawHttp::new(gateway.url());
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validated_client_token_never_reaches_an_upstream_without_credentials() {
    use portcullis_tests::harness::PluginDir;
    use sha2::{Digest, Sha256};
    // authn accepts the client's key, so the gateway holds a credential it validated; the
    // upstream has no credential of its own configured. It must get nothing, not the
    // client's token.
    const KEY: &str = "pk_client_token_that_must_stay_at_the_gateway";
    let hash: String = Sha256::digest(KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let plugins = PluginDir::new();
    plugins.add(
        "authn",
        "authn",
        &format!("[config]\n[[config.api-keys]]\nsha256 = \"{hash}\"\nsubject = \"agent\"\n"),
    );
    let beta = Fixture::http("beta").await;
    let gateway = Gateway::start_with_plugins(&plugins, &beta.upstream_toml("beta")).await;
    let options = ConnectOptions::default().header("Authorization", &format!("Bearer {KEY}"));
    let client = connect(gateway.url(), RecordingClient::new(), &options)
        .await
        .expect("connect");
    let r = call_tool(&client, "beta__whoami", Value::Null)
        .await
        .unwrap();
    let who: Value = serde_json::from_str(&text_of(&r)).unwrap();
    assert_eq!(who["transport"], "http", "{who}");
    assert!(who["headers"].get("authorization").is_none(), "{who}");
    assert!(
        !who.to_string().contains(KEY),
        "the client's token reached the upstream: {who}"
    );
    client.cancel().await.unwrap();
}
