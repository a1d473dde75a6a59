//! Checks of the harness itself, against a fixture directly (no gateway): if these fail,
//! the harness or the fixture is broken, not the gateway.

#![allow(deprecated)] // logging/setLevel is deprecated by SEP-2577 but is 2025-11-25 API.

use std::time::Duration;

use portcullis_tests::harness::{
    ClientEvent, FIXTURE_SIMPLE_TEXT, Fixture, RawHttp, RecordingClient, call_tool,
    call_tool_tracked, client_with, jsonrpc_request, text_of,
};
use rmcp::model::{LoggingLevel, SetLevelRequestParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn rmcp_client_progress_logging_and_sampling() {
    let fixture = Fixture::http("direct").await;
    let handler = RecordingClient::new().accept_elicitation(json!({
        "username": "ada",
        "email": "ada@example.com"
    }));
    let client = client_with(fixture.url(), handler).await;
    assert_eq!(
        client.peer_info().map(|i| i.protocol_version.to_string()),
        Some("2025-11-25".to_owned())
    );

    let result = call_tool(&client, "test_simple_text", Value::Null)
        .await
        .unwrap();
    assert_eq!(text_of(&result), FIXTURE_SIMPLE_TEXT);

    let (token, _) = call_tool_tracked(&client, "test_tool_with_progress", Value::Null)
        .await
        .unwrap();
    let events = client.service().clone();
    let progress = events
        .wait_for_count(
            3,
            WAIT,
            |e| matches!(e, ClientEvent::Progress(p) if p.progress_token == token),
        )
        .await;
    assert_eq!(progress.len(), 3);

    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .unwrap();
    call_tool(&client, "test_tool_with_logging", Value::Null)
        .await
        .unwrap();
    events
        .wait_for_count(3, WAIT, |e| matches!(e, ClientEvent::Log(_)))
        .await;

    let sampled = call_tool(&client, "test_sampling", json!({ "prompt": "hi" }))
        .await
        .unwrap();
    assert_eq!(text_of(&sampled), "LLM response: sampled: hi");
    assert!(
        events
            .events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Sampling(_)))
    );

    let elicited = call_tool(&client, "test_elicitation", json!({ "message": "who?" }))
        .await
        .unwrap();
    assert!(text_of(&elicited).contains("action=accept"), "{elicited:?}");

    client.cancel().await.unwrap();
}

#[tokio::test]
async fn raw_http_session() {
    let fixture = Fixture::http("raw").await;
    let http = RawHttp::new(fixture.url());
    let (init, session) = http.initialize(&[]).await;
    assert!(init.session_id().is_some(), "no session id: {init:?}");
    let tools = session.call(1, "tools/list", json!({})).await;
    assert!(
        tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "test_simple_text")
    );

    // A streamed call: the response arrives as SSE events on the POST.
    let response = session
        .post(&jsonrpc_request(
            2,
            "tools/call",
            json!({ "name": "test_tool_with_progress", "_meta": { "progressToken": "p" } }),
        ))
        .await;
    let messages = response.messages();
    let progress = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert_eq!(progress, 3, "{}", response.body);
    assert!(response.response(&json!(2)).is_some(), "{}", response.body);

    let deleted = session.delete().await;
    assert!(deleted.status.is_success(), "{deleted:?}");
}
