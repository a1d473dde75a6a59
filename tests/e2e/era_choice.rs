//! `protocol = "auto"` chooses the upstream era per client: a session-era client gets a
//! session-era link to an upstream that advertises only 2026-07-28 but accepts `initialize`
//! (and so keeps `resources/subscribe`, sampling and elicitation); a 2026-07-28 client keeps
//! the stateless link; an upstream that refuses `initialize` is spoken to statelessly.
#![allow(deprecated)] // resources/subscribe: session-era API, exercised on purpose

use std::time::Duration;

use portcullis_tests::harness::{
    ConnectOptions, Fixture, Gateway, RecordingClient, bin_path, call_tool, client_with, connect,
    server_toml, text_of, toml_str,
};
use rmcp::model::SubscribeRequestParams;
use serde_json::json;

fn stdio_toml(name: &str, era: &str) -> String {
    format!(
        "[upstreams.{name}]\ncommand = {}\nargs = [\"--stdio\", \"--name\", {}, \"--era\", {}]\n\n",
        toml_str(&bin_path("fixture").to_string_lossy()),
        toml_str(name),
        toml_str(era)
    )
}

/// A session-era client: subscribe works, the upstream's sampling request reaches it.
async fn session_client_keeps_everything(gateway: &Gateway, upstream: &str) {
    let handler = RecordingClient::new();
    let client = client_with(gateway.url(), handler.clone()).await;
    client
        .subscribe(SubscribeRequestParams::new(format!(
            "{upstream}+test://watched-resource"
        )))
        .await
        .unwrap_or_else(|e| panic!("{upstream}: resources/subscribe lost: {e:?}"));
    let sampled = call_tool(
        &client,
        &format!("{upstream}__test_sampling"),
        json!({ "prompt": "hello" }),
    )
    .await
    .unwrap_or_else(|e| panic!("{upstream}: test_sampling: {e}"));
    assert!(
        handler
            .events()
            .iter()
            .any(|e| matches!(e, portcullis_tests::harness::ClientEvent::Sampling(_))),
        "{upstream}: the upstream's sampling request did not reach the client: {}",
        text_of(&sampled)
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_era_upstream_advertising_only_2026_serves_each_client_in_its_own_era() {
    let beta = Fixture::http_with_args("beta", &["--era", "dual-advertising-stateless"]).await;
    let config = format!(
        "{}{}{}",
        server_toml(),
        beta.upstream_toml("beta"),
        stdio_toml("alpha", "dual-advertising-stateless")
    );
    let gateway = Gateway::start(&config).await;
    for upstream in ["beta", "alpha"] {
        session_client_keeps_everything(&gateway, upstream).await;
    }
    gateway
        .wait_for_log("accepts=true", Duration::from_secs(5))
        .await;

    // A 2026-07-28 client keeps the stateless link: its links say so when they connect.
    let modern = connect(
        gateway.url(),
        RecordingClient::new(),
        &ConnectOptions::discover(),
    )
    .await
    .expect("2026-07-28 client");
    for upstream in ["beta", "alpha"] {
        let echoed = call_tool(
            &modern,
            &format!("{upstream}__echo"),
            json!({ "text": "modern" }),
        )
        .await
        .unwrap();
        assert_eq!(text_of(&echoed), "modern");
    }
    let logs = gateway.logs();
    for upstream in ["beta", "alpha"] {
        assert!(
            logs.lines().any(|l| l.contains("upstream connected")
                && l.contains(&format!("upstream={upstream}"))
                && l.contains("protocol=\"2026-07-28\"")),
            "{upstream}: no stateless link for the 2026-07-28 client: {logs}"
        );
    }
    modern.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_initialize_is_spoken_to_statelessly() {
    let beta = Fixture::http_with_args("beta", &["--era", "stateless"]).await;
    let config = format!(
        "{}{}{}",
        server_toml(),
        beta.upstream_toml("beta"),
        stdio_toml("alpha", "stateless")
    );
    let gateway = Gateway::start(&config).await;
    // Twice: the first session learns the refusal, the second goes straight to 2026-07-28.
    for _ in 0..2 {
        let client = client_with(gateway.url(), RecordingClient::new()).await;
        for upstream in ["beta", "alpha"] {
            let echoed = call_tool(
                &client,
                &format!("{upstream}__echo"),
                json!({ "text": "still works" }),
            )
            .await
            .unwrap_or_else(|e| panic!("{upstream}: {e}"));
            assert_eq!(text_of(&echoed), "still works");
        }
        client.cancel().await.unwrap();
    }
    gateway
        .wait_for_log("accepts=false", Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_only_upstream_gets_initialize() {
    let beta = Fixture::http_with_args("beta", &["--era", "session"]).await;
    let config = format!(
        "{}{}{}",
        server_toml(),
        beta.upstream_toml("beta"),
        stdio_toml("alpha", "session")
    );
    let gateway = Gateway::start(&config).await;
    for upstream in ["beta", "alpha"] {
        session_client_keeps_everything(&gateway, upstream).await;
    }
}
