//! Smoke test: one stdio and one HTTP upstream behind the gateway, seen through an rmcp
//! client speaking 2025-11-25.

use std::time::Duration;

use portcullis_tests::harness::{
    ConnectOptions, FIXTURE_SIMPLE_TEXT, Fixture, Gateway, RecordingClient, call_tool, client,
    connect, server_toml, stdio_fixture_toml, text_of,
};
use serde_json::{Value, json};

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

/// The first README command: `portcullis serve` with no configuration runs the demo upstream
/// behind the default policy chain (authn + authz): anonymous callers are guests, the printed
/// demo key is the admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_the_demo_upstream_behind_the_default_policies() {
    let mut gateway = Gateway::start_embedded().await;
    let banner = gateway
        .wait_for_log("Policies: authn + authz", Duration::from_secs(10))
        .await;
    let key_line = banner
        .lines()
        .find(|l| l.contains("Authorization: Bearer "))
        .expect("the banner names the demo key");
    let key = key_line
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a key after Bearer")
        .to_owned();

    // Anonymous: the guest role sees and calls only echo and add.
    let guest = client(gateway.url()).await;
    let mut names: Vec<String> = guest
        .list_all_tools()
        .await
        .expect("tools/list failed")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["demo__add", "demo__echo"]);
    let result = call_tool(&guest, "demo__echo", json!({ "text": "hello" }))
        .await
        .expect("demo__echo");
    assert_eq!(text_of(&result), "hello");
    let denied = call_tool(&guest, "demo__get_weather", json!({ "city": "Oslo" })).await;
    assert!(denied.is_err(), "a guest called get_weather: {denied:?}");
    assert!(
        guest
            .list_all_prompts()
            .await
            .expect("prompts/list")
            .is_empty(),
        "guests see no prompts"
    );
    assert!(
        !guest
            .list_all_resources()
            .await
            .expect("resources/list")
            .is_empty()
    );
    guest.cancel().await.expect("client task panicked");

    // The demo admin key sees everything.
    let admin = connect(
        gateway.url(),
        RecordingClient::new(),
        &ConnectOptions::default().header("authorization", &format!("Bearer {key}")),
    )
    .await
    .expect("the admin connects");
    let tools = admin.list_all_tools().await.expect("tools/list failed");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in [
        "demo__echo",
        "demo__add",
        "demo__get_weather",
        "demo__slow_count",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    let prompts = admin.list_all_prompts().await.expect("prompts/list");
    assert!(
        prompts.iter().any(|p| p.name == "demo__review_code"),
        "{prompts:?}"
    );
    admin.cancel().await.expect("client task panicked");

    // The demo's plugins folder is the gateway's own temporary folder, gone after a stop.
    let folder = banner
        .lines()
        .find_map(|l| l.split(" from ").nth(1))
        .and_then(|rest| rest.split(" (").next())
        .map(std::path::PathBuf::from)
        .expect("the banner names the plugins folder");
    assert!(folder.join("authn.wasm").exists(), "{}", folder.display());
    assert!(gateway.stop().await.success());
    assert!(!folder.exists(), "{} was left behind", folder.display());
}
