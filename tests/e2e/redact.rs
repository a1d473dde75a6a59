//! The `redact` plugin through the real binary: what a real MCP client gets back from the
//! fixture upstream when results carry customer data and secrets.

#![allow(deprecated)] // logging/setLevel is 2025-11-25 API, deprecated by SEP-2577.

use std::time::Duration;

use portcullis_tests::harness::{
    ClientEvent, Gateway, PluginDir, RawHttp, RecordingClient, TempDir, call_tool,
    call_tool_tracked, client, client_with, stdio_fixture_toml, text_of, toml_str,
};
use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequestParams, GetPromptRequestParams, LoggingLevel, ReadResourceRequestParams,
    RequestMetaObject, ResourceContents, SetLevelRequestParams,
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
    let text: Value = serde_json::from_str(&text_of(&result))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text_of(&result)));
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

/// What a session-era client hears while and after `alpha__report` runs with an e-mail
/// address in its text: the progress message, and the log lines during the call (on the
/// request's stream) and after it (on the GET stream).
async fn reported(gateway: &Gateway) -> (Option<String>, Vec<String>) {
    let recorder = RecordingClient::new();
    let client = client_with(gateway.url(), recorder.clone()).await;
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .expect("setLevel");
    let (token, result) = call_tool_tracked(
        &client,
        "alpha__report",
        json!({ "text": format!("mailing {EMAIL}") }),
    )
    .await
    .expect("call succeeds");
    assert_eq!(text_of(&result), "reported");
    let logs = recorder
        .wait_for_count(2, Duration::from_secs(10), |e| {
            matches!(e, ClientEvent::Log(_))
        })
        .await;
    let logs = logs
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Log(l) => l.data.as_str().map(str::to_string),
            _ => None,
        })
        .collect();
    let progress = recorder
        .progress_for(&token)
        .first()
        .and_then(|p| p.message.clone());
    client.cancel().await.ok();
    (progress, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_log_notifications_are_redacted_by_the_shipped_sidecar() {
    // Opting out lets the values reach the client as sent.
    let opted_out = shipped_sidecar().replace("notifications = true ", "notifications = false");
    assert!(opted_out.contains("notifications = false"), "{opted_out}");
    let (plain, _plain_plugins) = gateway(&opted_out).await;
    let (progress, logs) = reported(&plain).await;
    assert_eq!(progress.as_deref(), Some("mailing alice@example.com"));
    assert_eq!(
        logs,
        [
            "mailing alice@example.com",
            "later: mailing alice@example.com"
        ]
    );
    drop(plain);

    let sidecar = shipped_sidecar();
    let plugins = PluginDir::new();
    plugins.add("redact", "redact", &sidecar);
    let dir = TempDir::new();
    let trail = dir.path().join("audit.jsonl");
    // The trail is keyed: a chain key and a checkpoint signing key (an Ed25519 seed).
    let checkpoint_key = dir.write("checkpoint.key", &"5a".repeat(32));
    let config = format!(
        "{}[audit]\nenabled = true\npath = {}\nkey = \"an e2e chain key of 32 bytes or more\"\ncheckpoint-key-file = {}\n",
        stdio_fixture_toml("alpha"),
        toml_str(&trail.to_string_lossy()),
        toml_str(&checkpoint_key.to_string_lossy())
    );
    let gateway = Gateway::start_with_plugins(&plugins, &config).await;
    let (progress, logs) = reported(&gateway).await;
    assert_eq!(
        progress.as_deref(),
        Some("mailing [EMAIL]"),
        "progress on the request's stream"
    );
    assert_eq!(
        logs,
        ["mailing [EMAIL]", "later: mailing [EMAIL]"],
        "a log line during the call (request stream) and one after it (GET stream)"
    );
    let log = gateway.logs();
    assert!(
        !log.contains(EMAIL),
        "a redacted value reached the log:\n{log}"
    );

    // The call's audit record counts what was redacted in its progress and log line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let text = std::fs::read_to_string(&trail).unwrap_or_default();
        if let Some(r) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["target"] == "alpha__report")
        {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no record:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["redactions"], json!({ "email": 2 }), "{record}");
    assert!(!record.to_string().contains(EMAIL), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_gets_redacted_progress_and_logs_on_its_stream() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": "alpha__report",
            "arguments": { "text": format!("mailing {EMAIL}") },
            "_meta": {
                "progressToken": "p1",
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": { "name": "raw-test", "version": "1" },
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/logLevel": "info",
            },
        },
    });
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "alpha__report"),
    ];
    let resp = RawHttp::new(gateway.url()).post(&body, &headers).await;
    assert!(
        resp.is_sse(),
        "notifications came before the answer: {}",
        resp.body
    );
    let messages = resp.messages();
    let progress = messages
        .iter()
        .find(|m| m["method"] == "notifications/progress")
        .unwrap_or_else(|| panic!("no progress: {messages:#?}"));
    assert_eq!(progress["params"]["message"], "mailing [EMAIL]");
    let log = messages
        .iter()
        .find(|m| m["method"] == "notifications/message")
        .unwrap_or_else(|| panic!("no log line: {messages:#?}"));
    assert_eq!(log["params"]["data"], "mailing [EMAIL]");
    assert_eq!(
        log["params"]["level"], "info",
        "the rest of the notification is intact"
    );
    let answer = messages.last().expect("an answer");
    assert_eq!(answer["result"]["content"][0]["text"], "reported");
    assert!(!resp.body.contains(EMAIL), "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_upstream_asks_the_clients_model_is_redacted() {
    let (labelling, _labelling_plugins) = gateway(&shipped_sidecar()).await;
    let recorder = RecordingClient::new();
    let client = client_with(labelling.url(), recorder.clone()).await;
    let result = call_tool(
        &client,
        "alpha__test_sampling",
        json!({ "prompt": format!("Summarise the complaint from {EMAIL}") }),
    )
    .await
    .expect("call succeeds");
    let asked = recorder
        .events()
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::Sampling(p) => Some(p),
            _ => None,
        })
        .expect("the client was asked to sample");
    let shown = serde_json::to_value(&asked.messages).unwrap();
    assert_eq!(
        shown[0]["content"]["text"], "Summarise the complaint from [EMAIL]",
        "{shown}"
    );
    assert_eq!(
        text_of(&result),
        "LLM response: sampled: Summarise the complaint from [EMAIL]"
    );
    client.cancel().await.ok();

    // With `block`, the upstream's request is refused to the upstream; the client never
    // sees it.
    let sidecar = shipped_sidecar().replace(
        "email = { action = \"label\" }",
        "email = { action = \"block\" }",
    );
    assert!(
        sidecar.contains("email = { action = \"block\" }"),
        "{sidecar}"
    );
    let (blocking, _blocking_plugins) = gateway(&sidecar).await;
    let recorder = RecordingClient::new();
    let client = client_with(blocking.url(), recorder.clone()).await;
    let result = call_tool(
        &client,
        "alpha__test_sampling",
        json!({ "prompt": format!("Summarise the complaint from {EMAIL}") }),
    )
    .await
    .expect("call answers");
    assert_eq!(result.is_error, Some(true));
    assert!(
        text_of(&result).starts_with("sampling failed:"),
        "{}",
        text_of(&result)
    );
    assert!(
        !recorder
            .events()
            .iter()
            .any(|e| matches!(e, ClientEvent::Sampling(_))),
        "the client was asked anyway"
    );
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disguised_values_come_back_masked() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let client = client(gateway.url()).await;
    // What an attacker tried: look-alike letters, fullwidth digits, zero-width characters,
    // NBSP, URL and HTML escapes, JSON escapes, base64, hex, a lower-case IBAN.
    let cases = [
        ("key ѕk_lіve_4eC39HqLyjWDarjtT1zdp7dc.", "key [STRIPE_KEY]."),
        ("id АКІАIOSFODNN7EXAMPLE", "id [AWS_ACCESS_KEY]"),
        (
            "card ４１１１ １１１１ １１１１ １１１１",
            "card **** **** **** 1111",
        ),
        (
            "card 4111\u{A0}1111\u{A0}1111\u{A0}1111",
            "card **** **** **** 1111",
        ),
        ("mail alice\u{200B}@example\u{200D}.com", "mail [EMAIL]"),
        ("mailto:alice%40example.com", "mailto:[EMAIL]"),
        ("alice&#64;example&#x2E;com", "[EMAIL]"),
        (r"\u0073k_live_4eC39HqLyjWDarjtT1zdp7dc", "[STRIPE_KEY]"),
        ("b64 QUtJQUlPU0ZPRE5ON0VYQU1QTEU=", "b64 [AWS_ACCESS_KEY]"),
        (
            "hex 414b4941494f53464f444e4e374558414d504c45",
            "hex [AWS_ACCESS_KEY]",
        ),
        (
            "iban de89 3704 0044 0532 0130 00",
            "iban **** **** **** **** **30 00",
        ),
        (
            "all at once ѕk\u{200B}_ｌｉｖｅ_4eC39Hq&#76;yjWDarjtT1zdp7dc",
            "all at once [STRIPE_KEY]",
        ),
    ];
    for (sent, expected) in cases {
        let result = call_tool(&client, "alpha__echo", json!({ "text": sent }))
            .await
            .expect("call succeeds");
        assert_eq!(text_of(&result), expected, "sent {sent:?}");
    }
    // Text with nothing disguised in it passes as it was.
    let clean = "AT&amp;T: 50% off, café, Привет, 7f3c9a2e-1b4d-4c8e-9f2a-6d5e4c3b2a10";
    let result = call_tool(&client, "alpha__echo", json!({ "text": clean }))
        .await
        .expect("call succeeds");
    assert_eq!(text_of(&result), clean);
    let logs = gateway.logs();
    assert!(
        !logs.contains("4eC39HqLyjWDarjtT1zdp7dc") && !logs.contains("IOSFODNN7EXAMPLE"),
        "a value reached the log:\n{logs}"
    );
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_split_across_two_content_items_is_masked_in_both() {
    let (gateway, _plugins) = gateway(&shipped_sidecar()).await;
    let client = client(gateway.url()).await;
    let parts = [
        "Deploy key:\n-----BEGIN RSA PRIVATE KEY-----\n",
        "MIIEpAIBAAKCAQEA7bq9\nQm9vbXNoYWthbGFrYQ==\n-----END RSA PRIVATE KEY-----\nDone.",
    ];
    let result = call_tool(&client, "alpha__echo", json!({ "parts": parts }))
        .await
        .expect("call succeeds");
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        ["Deploy key:\n[PRIVATE_KEY]", "[PRIVATE_KEY]\nDone."],
        "{result:?}"
    );
    // A token cut in two.
    let parts = ["token ghp_0123456789abcdefghij", "klmnopqrstuvwxyzAB, ok"];
    let result = call_tool(&client, "alpha__echo", json!({ "parts": parts }))
        .await
        .expect("call succeeds");
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    assert_eq!(texts, ["token [GITHUB_TOKEN]", "[GITHUB_TOKEN], ok"]);
    let logs = gateway
        .wait_for_log("private-key=1", Duration::from_secs(10))
        .await;
    assert!(!logs.contains("MIIEpAIBAAKCAQEA7bq9"), "{logs}");
    client.cancel().await.ok();
}
