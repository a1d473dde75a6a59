//! The legacy HTTP+SSE transport (MCP 2024-11-05) on both sides of the gateway: the official
//! TypeScript SDK's `SSEClientTransport` in front, its `SSEServerTransport` behind (the node
//! scripts in `tests/legacy-sse/`), and raw HTTP for the transport rules.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use portcullis_tests::harness::{
    Fixture, Gateway, PluginDir, RawHttp, SseReader, call_tool, client, initialize_request,
    jsonrpc_notification, jsonrpc_request, node, server_toml, sha256_hex, stdio_fixture_toml,
    text_of, toml_str,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(15);

/// `tests/`, where the node scripts and the npm packages live.
fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> PathBuf {
    tests_dir().join("legacy-sse").join(name)
}

/// Runs the SDK's SSE client against `sse_url` through `steps` and returns its output lines:
/// the connection line, then one `{"ok": …}` or `{"error": …}` per step.
async fn sdk_client(sse_url: &str, steps: Value) -> Vec<Value> {
    let (node, modules) = node(&["@modelcontextprotocol/sdk"]);
    let run = tokio::process::Command::new(node)
        .arg(script("client.cjs"))
        .arg(sse_url)
        .arg(steps.to_string())
        .env("NODE_PATH", modules)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK client did not finish within 60s")
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The SDK's SSE server (`tests/legacy-sse/server.cjs`), killed on drop.
struct LegacyServer {
    url: String,
    _child: tokio::process::Child,
}

impl LegacyServer {
    async fn start() -> LegacyServer {
        let (node, modules) = node(&["@modelcontextprotocol/sdk"]);
        let mut child = tokio::process::Command::new(node)
            .arg(script("server.cjs"))
            .env("NODE_PATH", modules)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run node");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("the legacy server exited before listening");
        })
        .await
        .expect("the legacy server did not start");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[legacy server] {line}");
            }
        });
        LegacyServer { url, _child: child }
    }
}

fn sse_url(gateway: &Gateway) -> String {
    format!("{}/sse", gateway.base())
}

/// Opens `GET /sse` and returns the stream and the POST URL its `endpoint` event names.
async fn open(gateway: &Gateway, headers: &[(&str, &str)]) -> (SseReader, String) {
    let mut stream = RawHttp::new(&sse_url(gateway))
        .open_stream(Method::GET, headers, None)
        .await;
    assert_eq!(stream.status, 200);
    let first = stream.next_event(WAIT).await.expect("an endpoint event");
    assert_eq!(first.event.as_deref(), Some("endpoint"), "{first:?}");
    assert!(
        first.data.starts_with("/message?sessionId="),
        "{}",
        first.data
    );
    (stream, format!("{}{}", gateway.base(), first.data))
}

async fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let resp = RawHttp::new(url)
        .request(Method::POST, &all, Some(body.to_owned()))
        .await;
    (resp.status.as_u16(), resp.body)
}

/// The next `message` event's JSON-RPC message.
async fn next_message(stream: &mut SseReader) -> Value {
    let event = stream.next_event(WAIT).await.expect("a message event");
    assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
    event.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_sse_client_lists_calls_gets_prompts_reads_and_is_denied_by_policy() {
    let plugins = PluginDir::new();
    plugins.add(
        "deny-crash",
        "chaos",
        "[config]\nmode = \"deny\"\nmethods = [\"tools/call\"]\ntargets = [\"crash\"]\ncode = -32003\nmessage = \"crashing is not allowed\"\n",
    );
    let config = format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let out = sdk_client(
        &sse_url(&gateway),
        json!([
            { "op": "listTools" },
            { "op": "callTool", "name": "alpha__echo", "arguments": { "text": "over the old wire" } },
            { "op": "getPrompt", "name": "alpha__test_simple_prompt" },
            { "op": "readResource", "uri": "alpha+test://static-text" },
            { "op": "callTool", "name": "alpha__crash", "arguments": {} },
        ]),
    )
    .await;
    assert_eq!(out[0]["connected"]["name"], "portcullis", "{}", out[0]);

    let tools: Vec<&str> = out[1]["ok"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", out[1]))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        tools.contains(&"alpha__echo") && tools.contains(&"alpha__test_simple_text"),
        "{tools:?}"
    );
    assert_eq!(
        out[2]["ok"]["content"][0]["text"], "over the old wire",
        "{}",
        out[2]
    );
    assert_eq!(
        out[3]["ok"]["messages"][0]["content"]["text"], "This is a simple prompt for testing.",
        "{}",
        out[3]
    );
    assert_eq!(
        out[4]["ok"]["contents"][0]["text"], "This is the content of the static text resource.",
        "{}",
        out[4]
    );
    assert_eq!(out[5]["error"]["code"], -32003, "{}", out[5]);
    assert!(
        out[5]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("crashing is not allowed")),
        "{}",
        out[5]
    );
    // The client's disconnect ended the session it had.
    gateway
        .wait_for_log("legacy SSE stream closed; session ended", WAIT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_sse_server_behind_the_gateway_pinned_and_detected() {
    let legacy = LegacyServer::start().await;
    let config = format!(
        "{}[upstreams.pinned]\nurl = {url}\ntransport = \"sse\"\n\n\
         [upstreams.found]\nurl = {url}\nbearer-token = \"upstream-secret\"\n\n",
        server_toml(),
        url = toml_str(&legacy.url)
    );
    let gateway = Gateway::start(&config).await;

    for round in 0..2 {
        let client = client(gateway.url()).await;
        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "found__add",
                "found__echo",
                "found__whoami",
                "pinned__add",
                "pinned__echo",
                "pinned__whoami"
            ],
            "round {round}"
        );
        for upstream in ["pinned", "found"] {
            let r = call_tool(
                &client,
                &format!("{upstream}__add"),
                json!({ "a": 40, "b": 2 }),
            )
            .await
            .unwrap_or_else(|e| panic!("{upstream}__add: {e}"));
            assert_eq!(text_of(&r), "42", "{upstream}");
        }
        let who = call_tool(&client, "found__whoami", json!({}))
            .await
            .unwrap();
        let headers: Value = serde_json::from_str(&text_of(&who)).unwrap();
        assert_eq!(headers["authorization"], "Bearer upstream-secret");
        client.cancel().await.unwrap();
    }

    // Detected once, remembered for the second client session; the pinned upstream is
    // never probed.
    let logs = gateway.logs();
    let probes: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Streamable HTTP refused"))
        .collect();
    assert_eq!(probes.len(), 1, "{probes:#?}");
    assert!(probes[0].contains("upstream=found") && probes[0].contains("status=405"));
    assert!(
        !logs.contains("upstream-secret"),
        "a secret reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let config = format!(
        "{}\nmax-body-bytes = 4096\n\n{}",
        server_toml().trim_end(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let message = format!("{}/message", gateway.base());

    let (status, _) = post(&format!("{message}?sessionId=0123456789abcdef"), "{}", &[]).await;
    assert_eq!(status, 404, "unknown connection");
    let (status, body) = post(&message, "{}", &[]).await;
    assert_eq!(status, 400, "no sessionId: {body}");

    let (mut stream, endpoint) = open(&gateway, &[("accept", "text/event-stream")]).await;
    let (status, body) = post(&endpoint, "{not json", &[]).await;
    assert_eq!(status, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], -32700, "{err}");

    let list = jsonrpc_request(1, "tools/list", json!({})).to_string();
    let (status, body) = post(&endpoint, &list, &[]).await;
    assert_eq!(status, 400, "a request before initialize: {body}");

    let resp = RawHttp::new(&endpoint)
        .request(
            Method::POST,
            &[("content-type", "text/plain")],
            Some(list.clone()),
        )
        .await;
    assert_eq!(resp.status, 415);

    let huge = "x".repeat(5000);
    let (status, _) = post(&endpoint, &huge, &[]).await;
    assert_eq!(status, 413, "the body limit applies");

    // The stream still works: initialize, then a call, answered on it.
    let init = initialize_request(0, "2024-11-05").to_string();
    assert_eq!(post(&endpoint, &init, &[]).await.0, 202);
    let answer = next_message(&mut stream).await;
    assert_eq!(answer["id"], 0);
    assert_eq!(
        answer["result"]["protocolVersion"], "2024-11-05",
        "{answer}"
    );
    let initialized = jsonrpc_notification("notifications/initialized", Value::Null).to_string();
    assert_eq!(post(&endpoint, &initialized, &[]).await.0, 202);
    assert_eq!(post(&endpoint, &list, &[]).await.0, 202);
    let answer = next_message(&mut stream).await;
    assert_eq!(answer["id"], 1);
    assert!(answer["result"]["tools"].is_array(), "{answer}");

    // Same guard as the Streamable HTTP endpoint.
    let evil = RawHttp::new(&sse_url(&gateway))
        .request(Method::GET, &[("host", "evil.example")], None)
        .await;
    assert_eq!(evil.status, 403);
    let evil = RawHttp::new(&endpoint)
        .request(
            Method::POST,
            &[
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
            Some(list.clone()),
        )
        .await;
    assert_eq!(evil.status, 403);
    let wrong = RawHttp::new(&sse_url(&gateway))
        .request(Method::DELETE, &[], None)
        .await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, OPTIONS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_session_end_together() {
    let config = format!(
        "{}\nsession-idle-timeout = \"2s\"\n\n{}",
        server_toml().trim_end(),
        stdio_fixture_toml("alpha")
    );
    let mut gateway = Gateway::start(&config).await;

    // A stream that never initializes is closed after session-idle-timeout.
    let (mut idle, _) = open(&gateway, &[]).await;
    assert!(
        idle.next_event(WAIT).await.is_none(),
        "the uninitialized stream must close"
    );

    // The client closing the stream ends its session: its endpoint is gone. A connected
    // stream keeps the session alive past session-idle-timeout.
    let (mut stream, endpoint) = open(&gateway, &[]).await;
    let init = initialize_request(0, "2025-11-25").to_string();
    assert_eq!(post(&endpoint, &init, &[]).await.0, 202);
    assert_eq!(next_message(&mut stream).await["id"], 0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ping = jsonrpc_request(1, "ping", json!({})).to_string();
    assert_eq!(post(&endpoint, &ping, &[]).await.0, 202);
    assert_eq!(next_message(&mut stream).await["id"], 1);
    stream.close();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = post(&endpoint, &ping, &[]).await;
        if status == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived its stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The session ending (gateway shutdown) closes the stream, after in-flight answers.
    let (mut stream, endpoint) = open(&gateway, &[]).await;
    assert_eq!(post(&endpoint, &init, &[]).await.0, 202);
    assert_eq!(next_message(&mut stream).await["id"], 0);
    let slow = jsonrpc_request(
        7,
        "tools/call",
        json!({ "name": "alpha__sleep", "arguments": { "ms": 500 } }),
    )
    .to_string();
    assert_eq!(post(&endpoint, &slow, &[]).await.0, 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.signal(libc::SIGTERM);
    let answer = next_message(&mut stream).await;
    assert_eq!(answer["id"], 7, "the in-flight call is answered: {answer}");
    assert!(
        stream.next_event(WAIT).await.is_none(),
        "the stream closes at shutdown"
    );
    assert!(gateway.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_belongs_to_the_caller_that_opened_it() {
    const OWNER: &str = "pc_owner_key_0123456789";
    const OTHER: &str = "pc_other_key_0123456789";
    let plugins = PluginDir::new();
    plugins.add(
        "authn",
        "authn",
        &format!(
            "[config]\nresource-metadata = \"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"\n\
             [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"owner\"\nroles = [\"dev\"]\n\
             [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"other\"\nroles = [\"dev\"]\n",
            sha256_hex(OWNER),
            sha256_hex(OTHER)
        ),
    );
    let config = format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let owner = format!("Bearer {OWNER}");
    let other = format!("Bearer {OTHER}");

    let bad = RawHttp::new(&sse_url(&gateway))
        .request(Method::GET, &[("authorization", "Bearer nope")], None)
        .await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert!(bad.header("www-authenticate").is_some());

    let (mut stream, endpoint) = open(&gateway, &[("authorization", &owner)]).await;
    let init = initialize_request(0, "2025-11-25").to_string();
    let (status, _) = post(&endpoint, &init, &[("authorization", &other)]).await;
    assert_eq!(status, 404, "someone else's stream");
    assert_eq!(
        post(&endpoint, &init, &[("authorization", &owner)]).await.0,
        202
    );
    assert_eq!(next_message(&mut stream).await["id"], 0);

    let list = jsonrpc_request(1, "tools/list", json!({})).to_string();
    let (status, _) = post(&endpoint, &list, &[("authorization", &other)]).await;
    assert_eq!(status, 404, "someone else's session");
    assert_eq!(
        post(&endpoint, &list, &[("authorization", &owner)]).await.0,
        202
    );
    let answer = next_message(&mut stream).await;
    assert_eq!(answer["id"], 1);
    assert!(answer["result"]["tools"].is_array(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_speaks_neither_transport_gets_an_error_naming_both() {
    let fixture = Fixture::http("beta").await;
    let legacy = LegacyServer::start().await;
    let wrong = format!("http://{}/nothing-here", fixture.addr());
    let config = format!(
        "{}[upstreams.lost]\nurl = {}\n\n[upstreams.strict]\nurl = {}\ntransport = \"streamable-http\"\n\n",
        server_toml(),
        toml_str(&wrong),
        toml_str(&legacy.url)
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;

    let err = call_tool(&client, "lost__test_simple_text", json!({}))
        .await
        .expect_err("nothing serves that URL")
        .to_string();
    assert!(
        err.contains("refused Streamable HTTP (HTTP 404)")
            && err.contains("legacy HTTP+SSE fallback failed"),
        "{err}"
    );
    // Pinned to Streamable HTTP: no fallback, the refusal is the answer.
    let err = call_tool(&client, "strict__add", json!({ "a": 1, "b": 2 }))
        .await
        .expect_err("a legacy server does not speak Streamable HTTP")
        .to_string();
    assert!(
        err.contains("refused the Streamable HTTP POST with HTTP 405"),
        "{err}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_sampling_travel_on_the_one_stream() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let (mut stream, endpoint) = open(&gateway, &[]).await;
    let init = jsonrpc_request(
        0,
        "initialize",
        json!({
            "protocolVersion": "2024-11-05",
            "capabilities": { "sampling": {} },
            "clientInfo": { "name": "raw-legacy", "version": "0" }
        }),
    )
    .to_string();
    assert_eq!(post(&endpoint, &init, &[]).await.0, 202);
    assert_eq!(next_message(&mut stream).await["id"], 0);

    // Progress, then the answer, all as `message` events.
    let call = jsonrpc_request(
        1,
        "tools/call",
        json!({ "name": "alpha__test_tool_with_progress", "arguments": {}, "_meta": { "progressToken": "p1" } }),
    )
    .to_string();
    assert_eq!(post(&endpoint, &call, &[]).await.0, 202);
    let mut progress = Vec::new();
    let answer = loop {
        let m = next_message(&mut stream).await;
        if m["method"] == "notifications/progress" {
            assert_eq!(m["params"]["progressToken"], "p1", "{m}");
            progress.push(m["params"]["progress"].as_f64().unwrap_or(-1.0));
        } else {
            break m;
        }
    };
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(progress, [0.0, 50.0, 100.0]);

    // A sampling request arrives on the stream; the client's answer is a POST.
    let call = jsonrpc_request(
        2,
        "tools/call",
        json!({ "name": "alpha__test_sampling", "arguments": { "prompt": "hello?" } }),
    )
    .to_string();
    assert_eq!(post(&endpoint, &call, &[]).await.0, 202);
    let ask = next_message(&mut stream).await;
    assert_eq!(ask["method"], "sampling/createMessage", "{ask}");
    let reply = json!({ "jsonrpc": "2.0", "id": ask["id"], "result": {
        "role": "assistant", "model": "test", "content": { "type": "text", "text": "hi there" } } })
    .to_string();
    assert_eq!(post(&endpoint, &reply, &[]).await.0, 202);
    let answer = next_message(&mut stream).await;
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"], "LLM response: hi there",
        "{answer}"
    );
}
