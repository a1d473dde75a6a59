//! Smoke test: one stdio and one HTTP upstream behind the gateway, seen through an rmcp
//! client speaking 2025-11-25.

use portcullis_tests::harness::{
    FIXTURE_SIMPLE_TEXT, Fixture, Gateway, call_tool, client, server_toml, stdio_fixture_toml,
    text_of,
};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_and_http_upstreams_are_namespaced_and_callable() {
    let beta = Fixture::http("beta").await;
    let config = format!(
        "{}[namespacing]\nseparator = \"__\"\nprefix = \"always\"\n\n{}{}",
        server_toml(),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta"),
    );
    let mut gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;

    let tools = client.list_all_tools().await.expect("tools/list failed");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in ["alpha__test_simple_text", "beta__test_simple_text"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from tools/list: {names:?}"
        );
    }

    let result = call_tool(&client, "beta__test_simple_text", Value::Null)
        .await
        .expect("tools/call beta__test_simple_text failed");
    assert_ne!(
        result.is_error,
        Some(true),
        "tool returned an error: {result:?}"
    );
    assert_eq!(text_of(&result), FIXTURE_SIMPLE_TEXT);

    client.cancel().await.expect("client task panicked");
    let status = gateway.stop().await;
    assert!(status.success(), "gateway exited with {status}");
}

/// The first README command: `portcullis serve` with no configuration runs the demo upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_the_demo_upstream() {
    let mut gateway = Gateway::start_embedded().await;
    let client = client(gateway.url()).await;
    let tools = client.list_all_tools().await.expect("tools/list failed");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in [
        "demo__echo",
        "demo__add",
        "demo__get_weather",
        "demo__slow_count",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    let result = call_tool(
        &client,
        "demo__echo",
        serde_json::json!({ "text": "hello" }),
    )
    .await
    .expect("demo__echo");
    assert_eq!(text_of(&result), "hello");
    let prompts = client.list_all_prompts().await.expect("prompts/list");
    assert!(
        prompts.iter().any(|p| p.name == "demo__review_code"),
        "{prompts:?}"
    );
    let resources = client.list_all_resources().await.expect("resources/list");
    assert!(!resources.is_empty());
    client.cancel().await.expect("client task panicked");
    assert!(gateway.stop().await.success());
}
