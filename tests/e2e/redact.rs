//! The `redact` plugin through the real binary: what a real MCP client gets back from the
//! fixture upstream when results carry customer data and secrets.

use std::time::Duration;

use portcullis_tests::harness::{
    Gateway, PluginDir, call_tool, client, stdio_fixture_toml, text_of,
};
use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequestParams, GetPromptRequestParams, ReadResourceRequestParams, RequestMetaObject,
    ResourceContents,
};
use serde_json::{Value, json};

const EMAIL: &str = "alice@example.com";
const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// The sidecar shipped with the plugin, as operators copy it.
fn shipped_sidecar() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/redact/redact.toml");
    std::fs::read_to_string(path).expect("plugins/redact/redact.toml")
}

async fn gateway(sidecar: &str) -> (Gateway, PluginDir) {
    let plugins = PluginDir::new();
    plugins.add("redact", "redact", sidecar);
    (
        Gateway::start_with_plugins(&plugins, &stdio_fixture_toml("alpha")).await,
        plugins,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_data_and_secrets_come_back_masked() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let client = client(gateway.url()).await;
    let text = format!("Contact {EMAIL}, card {CARD}, deploy key {AWS_KEY}.");
    let result = call_tool(&client, "alpha__echo", json!({ "text": text }))
        .await
        .expect("call succeeds");
    assert_eq!(
        text_of(&result),
        "Contact [EMAIL], card **** **** **** 1111, deploy key [AWS_ACCESS_KEY]."
    );
    assert_ne!(result.is_error, Some(true));

    // The counts reach the log (and the audit trail); the values never do.
    let logs = gateway
        .wait_for_log("redacted tools/call alpha__echo", Duration::from_secs(10))
        .await;
    assert!(
        logs.contains("aws-access-key=1") && logs.contains("card=1") && logs.contains("email=1"),
        "{logs}"
    );
    assert!(
        !logs.contains(EMAIL) && !logs.contains(AWS_KEY) && !logs.contains(CARD),
        "a redacted value reached the log:\n{logs}"
    );
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_result_passes_unchanged() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let client = client(gateway.url()).await;
    let text = "Build 2024-03-15 passed: 42 tests in 1.5 s on v2.14.3 (see ABC-1234).";
    let result = call_tool(&client, "alpha__echo", json!({ "text": text }))
        .await
        .expect("call succeeds");
    assert_eq!(text_of(&result), text);
    client.cancel().await.ok();
    assert!(!gateway.logs().contains("redacted tools/call"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_refuses_the_response_without_echoing_the_value() {
    let sidecar = shipped_sidecar().replace(
        "aws-access-key = { action = \"label\" }",
        "aws-access-key = { action = \"block\" }",
    );
    assert!(
        sidecar.contains("\"block\""),
        "the shipped sidecar changed shape"
    );
    let (gateway, _plugins) = gateway(&sidecar).await;
    let client = client(gateway.url()).await;
    let outcome = call_tool(
        &client,
        "alpha__echo",
        json!({ "text": format!("key {AWS_KEY}") }),
    )
    .await;
    let Err(ServiceError::McpError(error)) = outcome else {
        panic!("expected a JSON-RPC error, got {outcome:?}");
    };
    assert_eq!(error.code.0, -32003, "{error:?}");
    assert!(error.message.contains("aws-access-key"), "{error:?}");
    assert!(!format!("{error:?}").contains(AWS_KEY), "{error:?}");

    // Other calls on the same session are unaffected.
    let ok = call_tool(&client, "alpha__echo", json!({ "text": "fine" }))
        .await
        .expect("call succeeds");
    assert_eq!(text_of(&ok), "fine");
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_content_stays_valid_and_keeps_its_types() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let client = client(gateway.url()).await;
    // `whoami` returns the request's `_meta` in its structured content.
    let meta: RequestMetaObject = serde_json::from_value(json!({
        "contact": EMAIL,
        "attempt": 3,
        "ratio": 0.5,
        "flags": [true, null, "card 5555-5555-5555-4444"],
        "db": { "password": "hunter2", "port": 5432 },
    }))
    .unwrap();
    let mut params = CallToolRequestParams::new("alpha__whoami");
    params.meta = Some(meta);
    let result = client
        .call_tool(params)
        .await
        .expect("the client accepts the redacted result");
    let s = result
        .structured_content
        .clone()
        .expect("structured content");
    let echoed = &s["meta"];
    assert_eq!(echoed["contact"], "[EMAIL]", "{s}");
    assert_eq!(echoed["attempt"], 3);
    assert_eq!(echoed["ratio"], 0.5);
    assert_eq!(
        echoed["flags"],
        json!([true, null, "card ****-****-****-4444"])
    );
    assert_eq!(
        echoed["db"],
        json!({ "password": "[SECRET]", "port": 5432 })
    );
    assert_eq!(s["server"], "alpha", "the rest of the report is intact");
    // The text block carries the same report as JSON text, redacted the same way.
    let text: Value = serde_json::from_str(&text_of(&result)).expect("still JSON");
    assert_eq!(text["meta"]["contact"], "[EMAIL]");
    assert_eq!(text["meta"]["db"]["password"], "[SECRET]");
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_contents_and_prompt_messages_are_redacted() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let client = client(gateway.url()).await;
    let uri = format!("alpha+test://template/{EMAIL}/data");
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .expect("read succeeds");
    let ResourceContents::TextResourceContents {
        text, uri: got_uri, ..
    } = &read.contents[0]
    else {
        panic!("text contents expected: {read:?}");
    };
    let data: Value = serde_json::from_str(text).expect("still JSON");
    assert_eq!(
        data,
        json!({ "id": "[EMAIL]", "templateTest": true, "data": "Data for ID: [EMAIL]" })
    );
    assert!(
        got_uri.contains(EMAIL),
        "URIs identify resources and are not rewritten: {got_uri}"
    );

    let prompt = client
        .get_prompt(
            GetPromptRequestParams::new("alpha__test_prompt_with_arguments").with_arguments(
                serde_json::from_value(json!({ "arg1": EMAIL, "arg2": CARD })).unwrap(),
            ),
        )
        .await
        .expect("prompt succeeds");
    let shown = serde_json::to_string(&prompt.messages).unwrap();
    assert!(
        shown.contains("arg1='[EMAIL]', arg2='**** **** **** 1111'"),
        "{shown}"
    );
    client.cancel().await.ok();
}
