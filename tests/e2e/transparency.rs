//! The gateway as a transparent proxy: what it does not know passes through intact, and
//! what belongs to the gateway (its environment, the client's level choices) is applied
//! exactly where it should be.

#![allow(deprecated)] // logging/setLevel and roots are 2025-11-25 API, deprecated by SEP-2577.

use std::time::Duration;

use portcullis_tests::harness::{
    ClientEvent, Gateway, RawHttp, RecordingClient, call_tool, client_with, server_toml,
    stdio_fixture_toml, text_of,
};
use rmcp::model::{LoggingLevel, Root, SetLevelRequestParams};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_fields_and_meta_pass_through_intact() {
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("only"));
    let gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;

    // A method the gateway has never heard of reaches the (single) upstream unchanged.
    let params = json!({ "a": [1, { "b": null }], "_meta": { "vendor/x": "y" } });
    let echoed = session.call(7, "vendor/custom", params.clone()).await;
    assert_eq!(echoed["method"], "vendor/custom");
    assert_eq!(echoed["params"]["a"], params["a"]);
    assert_eq!(echoed["meta"]["vendor/x"], "y", "{echoed}");

    // `_meta` on a routed call reaches the upstream (only the name is rewritten).
    let result = session
        .call(
            8,
            "tools/call",
            json!({ "name": "only__whoami", "arguments": {}, "_meta": { "traceparent": "00-abc-def-01" } }),
        )
        .await;
    assert_eq!(
        result["structuredContent"]["meta"]["traceparent"], "00-abc-def-01",
        "{result}"
    );
    // And result fields the gateway does not interpret come back as the upstream sent them.
    assert_eq!(result["structuredContent"]["server"], "only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_children_get_their_configured_environment_and_no_gateway_secrets() {
    let workdir = std::env::temp_dir();
    let config = format!(
        "{}{}\nenv = {{ FIXTURE_PROBE = \"from-config\" }}\ncwd = {:?}\n",
        server_toml(),
        stdio_fixture_toml("kid").trim_end(),
        workdir.display().to_string()
    );
    let gateway = Gateway::start_with_env(&config, &[("GATEWAY_SECRET", "do-not-leak")]).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let result = session
        .call(
            2,
            "tools/call",
            json!({ "name": "kid__whoami", "arguments": {} }),
        )
        .await;
    let who = &result["structuredContent"];
    assert_eq!(who["env"]["FIXTURE_PROBE"], "from-config", "{who}");
    assert_eq!(
        who["env"]["GATEWAY_SECRET"],
        Value::Null,
        "gateway environment leaked: {who}"
    );
    let cwd = std::fs::canonicalize(&workdir).unwrap();
    assert_eq!(who["cwd"], cwd.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_requests_reach_the_client_and_the_answer_returns() {
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("fs"));
    let gateway = Gateway::start(&config).await;
    let events = RecordingClient::new().with_roots(vec![Root::new("file:///work/project")]);
    let client = client_with(gateway.url(), events.clone()).await;
    let result = call_tool(&client, "fs__test_list_roots", Value::Null)
        .await
        .unwrap();
    assert!(
        text_of(&result).contains("file:///work/project"),
        "{result:?}"
    );
    assert!(
        events
            .events()
            .iter()
            .any(|e| matches!(e, ClientEvent::ListRoots))
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_log_level_is_fanned_out_to_upstreams() {
    let config = format!(
        "{}{}{}",
        server_toml(),
        stdio_fixture_toml("one"),
        stdio_fixture_toml("two")
    );
    let gateway = Gateway::start(&config).await;
    let events = RecordingClient::new();
    let client = client_with(gateway.url(), events.clone()).await;
    // Connect both upstreams first, so the level reaches live links.
    client.list_all_tools().await.unwrap();
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Error))
        .await
        .unwrap();
    for up in ["one", "two"] {
        call_tool(
            &client,
            &format!("{up}__test_tool_with_logging"),
            Value::Null,
        )
        .await
        .unwrap();
    }
    // Info lines are below `error`: on stdio they would have arrived before the response.
    assert!(
        !events
            .events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Log(_))),
        "{:?}",
        events.events()
    );
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .unwrap();
    for up in ["one", "two"] {
        call_tool(
            &client,
            &format!("{up}__test_tool_with_logging"),
            Value::Null,
        )
        .await
        .unwrap();
    }
    events
        .wait_for_count(6, Duration::from_secs(10), |e| {
            matches!(e, ClientEvent::Log(_))
        })
        .await;
    client.cancel().await.unwrap();
}
