//! Three gateway processes with one session key and one Redis, behind a round-robin TCP
//! balancer without affinity (`harness::RoundRobin`, a connection per request), driven by
//! rmcp (the official Rust MCP SDK): each request lands on another replica and succeeds;
//! 24 concurrent calls against a limit of 5 let exactly 5 through; a replica killed mid-run
//! loses no session.

use std::net::SocketAddr;

use portcullis_tests::harness::call_tool;
use portcullis_tests::harness::{
    Gateway, PluginDir, RecordingClient, RedisServer, RoundRobin, server_toml, stdio_fixture_toml,
    text_of,
};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;

const KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

async fn replica(plugins: &PluginDir, redis: &RedisServer) -> Gateway {
    let config = format!(
        "{}{}[cluster]\nsession-key = \"${{PORTCULLIS_SESSION_KEY}}\"\nredis = \"${{PORTCULLIS_REDIS_URL}}\"\n\n{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha"),
    );
    Gateway::start_with_env(
        &config,
        &[
            ("PORTCULLIS_SESSION_KEY", KEY),
            ("PORTCULLIS_REDIS_URL", &redis.url()),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_client_behind_a_round_robin_balancer_sees_one_gateway() {
    portcullis_tests::harness::init_tls();
    let redis = RedisServer::start();
    let plugins = PluginDir::new();
    plugins.add(
        "rate-limit",
        "rate-limit",
        "[config]\nhttp-status = 200\n[[config.limits]]\nname = \"per-tool\"\nper = [\"tool\"]\nrate = \"5/min\"\n",
    );
    let mut replicas = vec![
        replica(&plugins, &redis).await,
        replica(&plugins, &redis).await,
        replica(&plugins, &redis).await,
    ];
    let backends: Vec<SocketAddr> = replicas.iter().map(Gateway::addr).collect();
    let lb = RoundRobin::start(backends).await;
    let path = replicas[0]
        .url()
        .rsplit_once('/')
        .map(|(_, p)| p.to_string())
        .unwrap();
    let url = format!("http://{}/{path}", lb.addr());

    // A connection per request: no keep-alive, so the balancer spreads requests.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.clone()).reinit_on_expired_session(false);
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let client = RecordingClient::new()
        .serve(transport)
        .await
        .expect("initialize through the balancer");

    // Sequential requests of one session, each on the next replica.
    let before = lb.connections().len();
    for i in 0..4 {
        let tools = client.list_all_tools().await.expect("tools/list");
        assert!(tools.iter().any(|t| t.name == "alpha__whoami"), "{i}");
        if i < 2 {
            let r = call_tool(&client, "alpha__whoami", json!({}))
                .await
                .unwrap_or_else(|e| panic!("whoami {i}: {e}"));
            assert!(!text_of(&r).is_empty());
        }
    }
    let hops: Vec<usize> = lb.connections()[before..].to_vec();
    assert!(
        hops.windows(2).all(|w| w[0] != w[1]) && hops.len() >= 6,
        "every request on another replica: {hops:?}"
    );

    // 24 calls at once against a limit of 5 for this tool, spread over three replicas.
    let calls = (0..24).map(|i| {
        let peer = client.peer().clone();
        async move { call_tool(&peer, "alpha__echo", json!({ "text": format!("c{i}") })).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "{results:?}");

    // A replica dies: the session goes on on the others.
    replicas.remove(1);
    for i in 0..3 {
        let r = call_tool(&client, "alpha__whoami", json!({}))
            .await
            .unwrap_or_else(|e| panic!("call {i} after a replica died: {e}"));
        assert!(!text_of(&r).is_empty());
    }
    let _ = client.cancel().await;
}
