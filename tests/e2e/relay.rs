//! Messages both ways through the gateway: progress, log messages, list changes,
//! resource updates, and server→client requests (sampling, elicitation) with their answers.

#![allow(deprecated)] // logging/setLevel, subscribe and sampling are 2025-11-25 API, deprecated by SEP-2577.

use std::time::Duration;

use portcullis_tests::harness::{
    ClientEvent, Fixture, Gateway, RecordingClient, call_tool, call_tool_tracked, client_with,
    server_toml, stdio_fixture_toml, text_of,
};
use rmcp::model::{LoggingLevel, SetLevelRequestParams, SubscribeRequestParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// One stdio and one HTTP upstream: every relay path is exercised on both transports.
async fn gateway_with_both(beta: &Fixture) -> Gateway {
    let config = format!(
        "{}{}{}",
        server_toml(),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta")
    );
    Gateway::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_logs_reach_the_calling_client() {
    let beta = Fixture::http("beta").await;
    let gateway = gateway_with_both(&beta).await;
    let events = RecordingClient::new();
    let client = client_with(gateway.url(), events.clone()).await;
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .unwrap();

    for upstream in ["alpha", "beta"] {
        let (token, _) = call_tool_tracked(
            &client,
            &format!("{upstream}__test_tool_with_progress"),
            Value::Null,
        )
        .await
        .unwrap();
        let progress = events
            .wait_for_count(
                3,
                WAIT,
                |e| matches!(e, ClientEvent::Progress(p) if p.progress_token == token),
            )
            .await;
        let values: Vec<f64> = progress
            .iter()
            .map(|e| match e {
                ClientEvent::Progress(p) => p.progress,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(values, [0.0, 50.0, 100.0], "{upstream}");

        events.clear_events();
        call_tool(
            &client,
            &format!("{upstream}__test_tool_with_logging"),
            Value::Null,
        )
        .await
        .unwrap();
        events
            .wait_for_count(3, WAIT, |e| matches!(e, ClientEvent::Log(_)))
            .await;
        events.clear_events();
    }
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_and_elicitation_are_relayed_to_the_client_and_answered() {
    let beta = Fixture::http("beta").await;
    let gateway = gateway_with_both(&beta).await;
    let events = RecordingClient::new()
        .accept_elicitation(json!({ "username": "ada", "email": "ada@example.com" }));
    let client = client_with(gateway.url(), events.clone()).await;

    for upstream in ["alpha", "beta"] {
        let sampled = call_tool(
            &client,
            &format!("{upstream}__test_sampling"),
            json!({ "prompt": "hello" }),
        )
        .await
        .unwrap();
        assert_eq!(
            text_of(&sampled),
            "LLM response: sampled: hello",
            "{upstream}"
        );
        let elicited = call_tool(
            &client,
            &format!("{upstream}__test_elicitation"),
            json!({ "message": "who?" }),
        )
        .await
        .unwrap();
        let text = text_of(&elicited);
        assert!(
            text.contains("action=accept") && text.contains("ada"),
            "{upstream}: {text}"
        );
    }
    let asked = events
        .events()
        .iter()
        .filter(|e| matches!(e, ClientEvent::Sampling(_)))
        .count();
    assert_eq!(
        asked, 2,
        "one sampling request per upstream reached the client"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_go_to_the_client_that_caused_them() {
    let beta = Fixture::http("beta").await;
    let gateway = gateway_with_both(&beta).await;
    let first = RecordingClient::new();
    let second = RecordingClient::new();
    let a = client_with(gateway.url(), first.clone()).await;
    let b = client_with(gateway.url(), second.clone()).await;
    let (ra, rb) = tokio::join!(
        call_tool(&a, "beta__test_sampling", json!({ "prompt": "from a" })),
        call_tool(&b, "alpha__test_sampling", json!({ "prompt": "from b" })),
    );
    assert_eq!(text_of(&ra.unwrap()), "LLM response: sampled: from a");
    assert_eq!(text_of(&rb.unwrap()), "LLM response: sampled: from b");
    let prompts = |c: &RecordingClient| -> Vec<String> {
        c.events()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Sampling(p) => Some(serde_json::to_string(&p.messages).unwrap()),
                _ => None,
            })
            .collect()
    };
    let (pa, pb) = (prompts(&first), prompts(&second));
    assert!(pa.len() == 1 && pa[0].contains("from a"), "{pa:?}");
    assert!(pb.len() == 1 && pb[0].contains("from b"), "{pb:?}");
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changes_invalidate_the_catalog_and_reach_the_client() {
    let beta = Fixture::http("beta").await;
    let gateway = gateway_with_both(&beta).await;
    let events = RecordingClient::new();
    let client = client_with(gateway.url(), events.clone()).await;
    let before = client.list_all_tools().await.unwrap();
    assert!(!before.iter().any(|t| t.name == "alpha__test_dynamic_tool"));

    call_tool(
        &client,
        "alpha__set_dynamic_tool",
        json!({ "enabled": true }),
    )
    .await
    .unwrap();
    events
        .wait_for(WAIT, |e| matches!(e, ClientEvent::ToolListChanged))
        .await;
    let after = client.list_all_tools().await.unwrap();
    assert!(
        after.iter().any(|t| t.name == "alpha__test_dynamic_tool"),
        "cached list was not refreshed"
    );
    let r = call_tool(&client, "alpha__test_dynamic_tool", Value::Null)
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_updates_arrive_with_the_uri_the_client_subscribed_to() {
    let beta = Fixture::http("beta").await;
    let gateway = gateway_with_both(&beta).await;
    let events = RecordingClient::new();
    let client = client_with(gateway.url(), events.clone()).await;
    for upstream in ["alpha", "beta"] {
        let uri = format!("{upstream}+test://watched-resource");
        client
            .subscribe(SubscribeRequestParams::new(uri.clone()))
            .await
            .unwrap();
        call_tool(
            &client,
            &format!("{upstream}__touch_watched_resource"),
            Value::Null,
        )
        .await
        .unwrap();
        events
            .wait_for(
                WAIT,
                |e| matches!(e, ClientEvent::ResourceUpdated(p) if p.uri == uri),
            )
            .await;
    }
    client.cancel().await.unwrap();
}
