//! MCP 2026-07-28 (stateless, per-request `_meta`) on the gateway's one endpoint, in front of
//! session-era upstreams: real rmcp clients in Discover and Auto modes, and raw HTTP for the
//! transport's validation rules, multi round-trip requests and `subscriptions/listen`.

use std::time::Duration;

use portcullis_tests::harness::{
    ConnectOptions, Fixture, Gateway, RawHttp, RecordingClient, connect, server_toml,
    stdio_fixture_toml, text_of,
};
use reqwest::Method;
use rmcp::model::{CallToolRequestParams, GetPromptRequestParams, ReadResourceRequestParams};
use serde_json::{Value, json};

const V: &str = "2026-07-28";
const WAIT: Duration = Duration::from_secs(10);

async fn gateway() -> (Gateway, Fixture) {
    // Session-era upstreams (a dual-era one would give 2026-07-28 clients a stateless link).
    let beta = Fixture::http_with_args("beta", &["--era", "session"]).await;
    let config = format!(
        "{}{}{}",
        server_toml(),
        stdio_fixture_toml("alpha").replace(
            "args = [\"--stdio\",",
            "args = [\"--stdio\", \"--era\", \"session\","
        ),
        beta.upstream_toml("beta")
    );
    (Gateway::start(&config).await, beta)
}

/// A 2026-07-28 request body with the `_meta` every request carries.
fn request(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientInfo": { "name": "raw-test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": { "elicitation": {}, "sampling": {} },
    });
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// POSTs a stateless-era request with the headers a conforming client sends.
async fn post(gateway: &Gateway, body: &Value) -> portcullis_tests::harness::RawResponse {
    let method = body["method"].as_str().unwrap().to_string();
    let name = body["params"]["name"]
        .as_str()
        .or(body["params"]["uri"].as_str())
        .map(str::to_string);
    let mut headers = vec![("mcp-protocol-version", V), ("mcp-method", method.as_str())];
    if let Some(name) = &name {
        headers.push(("mcp-name", name.as_str()));
    }
    RawHttp::new(gateway.url()).post(body, &headers).await
}

fn error_code(resp: &portcullis_tests::harness::RawResponse) -> i64 {
    resp.json()["error"]["code"].as_i64().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_clients_in_discover_and_auto_mode_reach_session_era_upstreams() {
    let (gateway, _beta) = gateway().await;
    for (mode, options) in [
        ("discover", ConnectOptions::discover()),
        ("auto", ConnectOptions::auto()),
    ] {
        let handler = RecordingClient::new()
            .accept_elicitation(json!({ "username": "ada", "email": "ada@example.com" }));
        let client = connect(gateway.url(), handler.clone(), &options)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert!(
            names.contains(&"alpha__echo") && names.contains(&"beta__echo"),
            "{mode}: {names:?}"
        );
        for upstream in ["alpha", "beta"] {
            let echoed = client
                .call_tool(
                    CallToolRequestParams::new(format!("{upstream}__echo"))
                        .with_arguments(json!({ "text": "hi" }).as_object().unwrap().clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("{mode} {upstream}: {e}"));
            assert_eq!(text_of(&echoed), "hi", "{mode} {upstream}");

            // The upstream's elicitation request travels as an input_required result and
            // the client's retry completes the parked call.
            let elicited = client
                .call_tool(
                    CallToolRequestParams::new(format!("{upstream}__test_elicitation"))
                        .with_arguments(json!({ "message": "who?" }).as_object().unwrap().clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("{mode} {upstream} elicitation: {e}"));
            let text = text_of(&elicited);
            assert!(
                text.contains("accept") && text.contains("ada"),
                "{mode} {upstream}: {text}"
            );
        }
        let prompts = client.list_all_prompts().await.expect("prompts/list");
        let prompt = prompts
            .iter()
            .find(|p| p.name.starts_with("alpha__"))
            .unwrap_or_else(|| panic!("{mode}: no alpha prompt in {prompts:?}"));
        let got = client
            .get_prompt(GetPromptRequestParams::new(prompt.name.to_string()))
            .await;
        assert!(got.is_ok() || prompt.arguments.is_some(), "{mode}: {got:?}");
        let resources = client.list_all_resources().await.expect("resources/list");
        let first = resources.first().expect("resources");
        let read = client
            .read_resource(ReadResourceRequestParams::new(first.uri.clone()))
            .await
            .unwrap_or_else(|e| panic!("{mode}: read {}: {e}", first.uri));
        assert!(!read.contents.is_empty(), "{mode}");
        client.cancel().await.unwrap();
    }
    // Both clients were served statelessly, through the caller's internal session.
    let logs = gateway.logs();
    assert!(
        logs.contains("internal session for a stateless caller"),
        "{logs}"
    );
    assert!(
        !logs.contains("session started"),
        "a 2026-07-28 client fell back to initialize:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_and_results_carry_the_2026_fields() {
    let (gateway, _beta) = gateway().await;
    let discover = post(&gateway, &request(1, "server/discover", json!({}))).await;
    assert_eq!(discover.status, 200, "{}", discover.body);
    let result = &discover.json()["result"];
    assert_eq!(result["resultType"], "complete");
    let versions = result["supportedVersions"].as_array().unwrap();
    assert!(versions.contains(&json!(V)) && versions.contains(&json!("2025-11-25")));
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "portcullis"
    );
    assert!(result["capabilities"]["tools"].is_object());
    assert_eq!(result["cacheScope"], "public");

    let list = post(&gateway, &request(2, "tools/list", json!({}))).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let result = &list.json()["result"];
    assert_eq!(result["resultType"], "complete");
    assert!(result["ttlMs"].is_u64(), "{result}");
    assert_eq!(
        result["cacheScope"], "public",
        "no policies: nothing per caller"
    );
    assert!(!result["tools"].as_array().unwrap().is_empty());

    let call = post(
        &gateway,
        &request(
            3,
            "tools/call",
            json!({ "name": "alpha__echo", "arguments": { "text": "x" } }),
        ),
    )
    .await;
    let result = &call.json()["result"];
    assert_eq!(result["resultType"], "complete");
    assert_eq!(result["content"][0]["text"], "x");
    assert_eq!(call.json()["id"], 3, "the client's own id comes back");

    let missing = post(
        &gateway,
        &request(
            4,
            "resources/read",
            json!({ "uri": "alpha+test://no-such-thing" }),
        ),
    )
    .await;
    assert_eq!(error_code(&missing), -32602, "{}", missing.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_versions_and_methods_are_validated_as_the_spec_says() {
    let (gateway, _beta) = gateway().await;
    let http = RawHttp::new(gateway.url());
    let list = request(1, "tools/list", json!({}));

    // Mcp-Method missing, or naming another method.
    let r = http.post(&list, &[("mcp-protocol-version", V)]).await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32020),
        "{}",
        r.body
    );
    let r = http
        .post(
            &list,
            &[("mcp-protocol-version", V), ("mcp-method", "prompts/list")],
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32020),
        "{}",
        r.body
    );

    // Mcp-Name must match the tool; the base64 sentinel form is decoded first.
    let call = request(
        2,
        "tools/call",
        json!({ "name": "alpha__echo", "arguments": { "text": "y" } }),
    );
    let base = [("mcp-protocol-version", V), ("mcp-method", "tools/call")];
    let r = http.post(&call, &base).await;
    assert_eq!(error_code(&r), -32020, "Mcp-Name is required: {}", r.body);
    let r = http
        .post(&call, &[base[0], base[1], ("mcp-name", "alpha__crash")])
        .await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32020),
        "{}",
        r.body
    );
    let r = http
        .post(
            &call,
            &[
                base[0],
                base[1],
                ("mcp-name", "=?base64?YWxwaGFfX2VjaG8=?="),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"]["content"][0]["text"], "y");

    // The _meta version must be there (else invalid params) and agree with the header (else
    // a mismatch).
    let mut no_version = list.clone();
    no_version["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/protocolVersion");
    let headers = [("mcp-protocol-version", V), ("mcp-method", "tools/list")];
    let r = http.post(&no_version, &headers).await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32602),
        "{}",
        r.body
    );
    let mut other_version = list.clone();
    other_version["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] =
        json!("2025-11-25");
    let r = http.post(&other_version, &headers).await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32020),
        "{}",
        r.body
    );
    let mut no_capabilities = list.clone();
    no_capabilities["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientCapabilities");
    let r = http.post(&no_capabilities, &headers).await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32602),
        "{}",
        r.body
    );
    // _meta says 2026-07-28 but the header is missing.
    let r = http.post(&list, &[("mcp-method", "tools/list")]).await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32020),
        "{}",
        r.body
    );

    // A version nobody speaks: 400 -32022 with what the gateway supports.
    let r = http
        .post(
            &list,
            &[
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/list"),
            ],
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), error_code(&r)),
        (400, -32022),
        "{}",
        r.body
    );
    let data = &r.json()["error"]["data"];
    assert_eq!(data["requested"], "2099-01-01");
    assert!(data["supported"].as_array().unwrap().contains(&json!(V)));

    // Methods 2026-07-28 removed, or never had: 404 -32601.
    for method in ["ping", "logging/setLevel", "initialize", "no/such"] {
        let r = http
            .post(
                &request(5, method, json!({})),
                &[("mcp-protocol-version", V), ("mcp-method", method)],
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), error_code(&r)),
            (404, -32601),
            "{method}: {}",
            r.body
        );
    }

    // No GET stream and no sessions in this revision.
    for method in [Method::GET, Method::DELETE] {
        let r = http
            .request(
                method.clone(),
                &[("mcp-protocol-version", V), ("accept", "text/event-stream")],
                None,
            )
            .await;
        assert_eq!(r.status, 405, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_question_becomes_input_required_and_the_retry_completes_it() {
    let (gateway, _beta) = gateway().await;
    let call = request(
        1,
        "tools/call",
        json!({ "name": "beta__test_elicitation", "arguments": { "message": "name?" } }),
    );
    let first = post(&gateway, &call).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let result = first
        .messages()
        .into_iter()
        .find(|m| m["id"] == 1)
        .expect("a response")["result"]
        .clone();
    assert_eq!(result["resultType"], "input_required", "{result}");
    let requests = result["inputRequests"].as_object().unwrap();
    assert_eq!(requests.len(), 1);
    let (key, asked) = requests.iter().next().unwrap();
    assert_eq!(asked["method"], "elicitation/create");
    let state = result["requestState"].as_str().unwrap().to_string();

    let mut retry = call.clone();
    retry["id"] = json!(2);
    retry["params"]["inputResponses"] =
        json!({ key: { "action": "accept", "content": { "username": "grace" } } });
    retry["params"]["requestState"] = json!(state);
    let done = post(&gateway, &retry).await;
    let response = done
        .messages()
        .into_iter()
        .find(|m| m["id"] == 2)
        .expect("a response");
    assert_eq!(response["result"]["resultType"], "complete", "{response}");
    let text = response["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("accept") && text.contains("grace"), "{text}");

    // The state is single-use: a replay resumes nothing; the call starts over and asks again.
    let replay = post(&gateway, &retry).await;
    let again = replay
        .messages()
        .into_iter()
        .find(|m| m["id"] == 2)
        .expect("a response");
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");
    assert_ne!(again["result"]["requestState"], json!(state));

    // A client that cannot elicit is never asked. Its capabilities reach the upstream with
    // the request, so here the upstream itself declines; had it asked anyway, the client
    // would get 400 -32021 naming the capability.
    let mut plain = call.clone();
    plain["id"] = json!(3);
    plain["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({});
    let r = post(&gateway, &plain).await;
    let response = r.messages().into_iter().find(|m| m["id"] == 3).unwrap();
    assert_ne!(
        response["result"]["resultType"], "input_required",
        "{response}"
    );
    assert!(response.to_string().contains("elicitation"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_listen_carries_only_the_opted_in_changes() {
    let (gateway, _beta) = gateway().await;
    let listen = request(
        7,
        "subscriptions/listen",
        json!({ "notifications": { "toolsListChanged": true, "bogusFilter": true } }),
    );
    let mut stream = RawHttp::new(gateway.url())
        .open_stream(
            Method::POST,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", V),
                ("mcp-method", "subscriptions/listen"),
            ],
            Some(listen.to_string()),
        )
        .await;
    let ack = stream.next_message(WAIT).await.expect("acknowledgment");
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        7
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({ "toolsListChanged": true })
    );

    // A change on an upstream reaches the listener, tagged with the subscription id.
    let r = post(
        &gateway,
        &request(
            8,
            "tools/call",
            json!({ "name": "alpha__set_dynamic_tool", "arguments": { "enabled": true } }),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let changed = stream.next_message(WAIT).await.expect("list_changed");
    assert_eq!(changed["method"], "notifications/tools/list_changed");
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        7
    );
    let tools = post(&gateway, &request(9, "tools/list", json!({}))).await;
    assert!(
        tools.body.contains("alpha__test_dynamic_tool"),
        "the gateway re-fetched the changed list"
    );
}

mod toward_2026_upstreams {
    //! Upstreams spoken to in 2026-07-28: a session-era client gets their questions as
    //! server→client requests (and the gateway retries with the answers), a 2026-07-28 client
    //! gets their `input_required` results as they are; `auto` keeps the session era for an
    //! upstream that speaks both.

    use super::*;
    use portcullis_tests::harness::{call_tool, client_with};

    async fn gateway_with(protocol: &str) -> (Gateway, Fixture) {
        let beta = Fixture::http("beta").await;
        let config = format!(
            "{}{}\n{protocol}\n",
            server_toml(),
            beta.upstream_toml("beta").trim_end(),
        );
        (Gateway::start(&config).await, beta)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(deprecated)] // resources/subscribe: session-era API, exercised on purpose
    async fn a_session_era_client_answers_a_2026_upstreams_questions_as_requests() {
        let (gateway, _beta) = gateway_with("protocol = \"2026-07-28\"").await;
        let handler = RecordingClient::new().accept_elicitation(json!({ "name": "ada" }));
        let client = client_with(gateway.url(), handler.clone()).await;
        let tools = client.list_all_tools().await.expect("tools/list");
        assert!(tools.iter().any(|t| t.name == "beta__echo"), "{tools:?}");
        let echoed = call_tool(&client, "beta__echo", json!({ "text": "plain" }))
            .await
            .unwrap();
        assert_eq!(text_of(&echoed), "plain");

        // The upstream answers input_required; the client sees an elicitation request, and
        // the gateway's retry with its answer completes the call.
        let greeted = call_tool(
            &client,
            "beta__test_input_required_result_elicitation",
            json!({}),
        )
        .await
        .unwrap();
        assert!(text_of(&greeted).contains("ada"), "{}", text_of(&greeted));
        assert!(
            handler
                .events()
                .iter()
                .any(|e| matches!(e, portcullis_tests::harness::ClientEvent::Elicitation(_))),
            "the client was asked"
        );
        // Two rounds: a question, then another under a new requestState.
        let rounds = call_tool(
            &client,
            "beta__test_input_required_result_multi_round",
            json!({}),
        )
        .await;
        assert!(rounds.is_ok(), "{rounds:?}");

        // What 2026-07-28 has no equivalent for gets a clear error, not a hang.
        let subscribe = client
            .subscribe(rmcp::model::SubscribeRequestParams::new(
                "beta+test://watched-resource",
            ))
            .await;
        let err = format!("{:?}", subscribe.expect_err("no subscribe in 2026-07-28"));
        assert!(err.contains("2026-07-28"), "{err}");
        client.cancel().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(deprecated)] // setLevel, resources/subscribe: session-era API, exercised on purpose
    async fn a_2026_stdio_upstream_is_spoken_to_without_initialize() {
        let config = format!(
            "{}{}protocol = \"2026-07-28\"\n",
            server_toml(),
            stdio_fixture_toml("alpha")
        );
        let gateway = Gateway::start(&config).await;
        let handler = RecordingClient::new().accept_elicitation(json!({ "name": "ada" }));
        let client = client_with(gateway.url(), handler.clone()).await;
        let tools = client.list_all_tools().await.expect("tools/list");
        assert!(tools.iter().any(|t| t.name == "alpha__echo"), "{tools:?}");
        let echoed = call_tool(&client, "alpha__echo", json!({ "text": "over stdio" }))
            .await
            .unwrap();
        assert_eq!(text_of(&echoed), "over stdio");

        // Questions come as input_required; the session-era client answers them as requests.
        let greeted = call_tool(
            &client,
            "alpha__test_input_required_result_elicitation",
            json!({}),
        )
        .await
        .unwrap();
        assert!(text_of(&greeted).contains("ada"), "{}", text_of(&greeted));

        // The client's log level travels as `_meta` on each request.
        client
            .set_level(rmcp::model::SetLevelRequestParams::new(
                rmcp::model::LoggingLevel::Info,
            ))
            .await
            .expect("setLevel is answered by the gateway");
        call_tool(&client, "alpha__test_tool_with_logging", json!({}))
            .await
            .unwrap();
        handler
            .wait_for_count(3, WAIT, |e| {
                matches!(e, portcullis_tests::harness::ClientEvent::Log(_))
            })
            .await;

        // List changes arrive through the link's subscriptions/listen request.
        call_tool(
            &client,
            "alpha__set_dynamic_tool",
            json!({ "enabled": true }),
        )
        .await
        .unwrap();
        handler
            .wait_for(WAIT, |e| {
                matches!(e, portcullis_tests::harness::ClientEvent::ToolListChanged)
            })
            .await;
        let tools = client.list_all_tools().await.expect("tools/list again");
        assert!(
            tools.iter().any(|t| t.name == "alpha__test_dynamic_tool"),
            "the catalog was refreshed: {tools:?}"
        );

        let subscribe = client
            .subscribe(rmcp::model::SubscribeRequestParams::new(
                "alpha+test://watched-resource",
            ))
            .await;
        let err = format!("{:?}", subscribe.expect_err("no subscribe in 2026-07-28"));
        assert!(err.contains("2026-07-28"), "{err}");
        client.cancel().await.unwrap();
        let logs = gateway.logs();
        assert!(
            !logs.contains("upstream discovered"),
            "pinned: no probe\n{logs}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_probes_a_stdio_upstream_once_before_initialize() {
        let config = format!("{}{}", server_toml(), stdio_fixture_toml("alpha"));
        let gateway = Gateway::start(&config).await;
        let a = client_with(gateway.url(), RecordingClient::new()).await;
        let b = client_with(gateway.url(), RecordingClient::new()).await;
        for c in [&a, &b] {
            let r = call_tool(c, "alpha__echo", json!({ "text": "x" }))
                .await
                .unwrap();
            assert_eq!(text_of(&r), "x");
        }
        let logs = gateway.logs();
        assert_eq!(
            logs.matches("upstream discovered").count(),
            1,
            "probed once, remembered for the second child:\n{logs}"
        );
        assert!(
            logs.contains("era=Dual") && !logs.contains("protocol=\"2026-07-28\""),
            "a dual-era child keeps initialize for session-era clients: {logs}"
        );
        a.cancel().await.unwrap();
        b.cancel().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stdio_server_that_exits_on_the_probe_is_started_again_with_initialize() {
        let config = format!(
            "{}{}",
            server_toml(),
            stdio_fixture_toml("alpha").replace(
                "args = [\"--stdio\",",
                "args = [\"--stdio\", \"--initialize-first\","
            )
        );
        assert!(config.contains("--initialize-first"), "{config}");
        let gateway = Gateway::start(&config).await;
        let client = client_with(gateway.url(), RecordingClient::new()).await;
        let r = call_tool(&client, "alpha__echo", json!({ "text": "second try" }))
            .await
            .expect("the first call already succeeds");
        assert_eq!(text_of(&r), "second try");
        let logs = gateway.logs();
        assert!(
            logs.contains("the first message must be initialize"),
            "the probe did end the first child:\n{logs}"
        );
        assert!(logs.contains("starting it again with initialize"), "{logs}");
        // A second client's child gets initialize straight away.
        let other = client_with(gateway.url(), RecordingClient::new()).await;
        call_tool(&other, "alpha__echo", json!({ "text": "x" }))
            .await
            .unwrap();
        assert_eq!(
            gateway.logs().matches("starting it again").count(),
            1,
            "the era is remembered"
        );
        client.cancel().await.unwrap();
        other.cancel().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_2026_client_gets_a_2026_upstreams_input_required_as_it_is() {
        let (gateway, _beta) = gateway_with("protocol = \"2026-07-28\"").await;
        let call = request(
            1,
            "tools/call",
            json!({ "name": "beta__test_input_required_result_elicitation", "arguments": {} }),
        );
        let first = post(&gateway, &call).await;
        let result = first
            .messages()
            .into_iter()
            .find(|m| m["id"] == 1)
            .expect("a response")["result"]
            .clone();
        assert_eq!(result["resultType"], "input_required", "{result}");
        let (key, _) = result["inputRequests"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let mut retry = call.clone();
        retry["id"] = json!(2);
        retry["params"]["inputResponses"] =
            json!({ key: { "action": "accept", "content": { "name": "grace" } } });
        if let Some(state) = result.get("requestState") {
            retry["params"]["requestState"] = state.clone();
        }
        let done = post(&gateway, &retry).await;
        let response = done
            .messages()
            .into_iter()
            .find(|m| m["id"] == 2)
            .expect("a response");
        assert_eq!(response["result"]["resultType"], "complete", "{response}");
        assert!(
            response["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("grace"),
            "{response}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auto_discovers_once_and_keeps_the_session_era_for_a_dual_era_upstream() {
        let (gateway, _beta) = gateway_with("").await;
        // Relayed as a plain server→client request: the link is a session-era one.
        let handler = RecordingClient::new().accept_elicitation(json!({ "username": "ada" }));
        let a = client_with(gateway.url(), handler.clone()).await;
        let b = client_with(gateway.url(), RecordingClient::new()).await;
        for c in [&a, &b] {
            call_tool(c, "beta__echo", json!({ "text": "x" }))
                .await
                .unwrap();
        }
        let elicited = call_tool(&a, "beta__test_elicitation", json!({ "message": "who?" }))
            .await
            .unwrap();
        assert!(text_of(&elicited).contains("ada"));
        let logs = gateway.logs();
        assert_eq!(
            logs.matches("upstream discovered").count(),
            1,
            "discovered once, remembered for the second client:\n{logs}"
        );
        assert!(logs.contains("era=Dual"), "{logs}");
        a.cancel().await.unwrap();
        b.cancel().await.unwrap();
    }
}

/// Every pairing of client era (rmcp in `initialize` and in `server/discover` mode) and
/// upstream era (the HTTP fixture pinned to the session era and to 2026-07-28): lists,
/// a call, a prompt, a resource and a question from the upstream to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_era_reaches_every_upstream_era() {
    let session_up = Fixture::http("old").await;
    let stateless_up = Fixture::http("new").await;
    let config = format!(
        "{}{}\nprotocol = \"2025-11-25\"\n\n{}\nprotocol = \"2026-07-28\"\n",
        server_toml(),
        session_up.upstream_toml("old").trim_end(),
        stateless_up.upstream_toml("new").trim_end(),
    );
    let gateway = Gateway::start(&config).await;
    for (client_era, options) in [
        ("2025-11-25", ConnectOptions::default()),
        ("2026-07-28", ConnectOptions::discover()),
    ] {
        let handler = RecordingClient::new().accept_elicitation(
            json!({ "name": "ada", "username": "ada", "email": "ada@example.com" }),
        );
        let client = connect(gateway.url(), handler, &options)
            .await
            .unwrap_or_else(|e| panic!("{client_era}: {e}"));
        let tools = client.list_all_tools().await.expect("tools/list");
        let prompts = client.list_all_prompts().await.expect("prompts/list");
        let resources = client.list_all_resources().await.expect("resources/list");
        for (upstream, question) in [
            ("old", "test_elicitation"),
            ("new", "test_input_required_result_elicitation"),
        ] {
            let pairing = format!("{client_era} client × {upstream} upstream");
            let prefix = format!("{upstream}__");
            assert!(
                tools.iter().any(|t| t.name == format!("{prefix}echo")),
                "{pairing}: tools"
            );
            let echoed = client
                .call_tool(
                    CallToolRequestParams::new(format!("{prefix}echo"))
                        .with_arguments(json!({ "text": "hi" }).as_object().unwrap().clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("{pairing}: call: {e}"));
            assert_eq!(text_of(&echoed), "hi", "{pairing}");
            let prompt = prompts
                .iter()
                .find(|p| p.name == format!("{prefix}test_simple_prompt"))
                .unwrap_or_else(|| panic!("{pairing}: prompts"));
            client
                .get_prompt(GetPromptRequestParams::new(prompt.name.to_string()))
                .await
                .unwrap_or_else(|e| panic!("{pairing}: prompts/get: {e}"));
            let resource = resources
                .iter()
                .find(|r| r.uri == format!("{upstream}+test://static-text"))
                .unwrap_or_else(|| panic!("{pairing}: resources {resources:?}"));
            client
                .read_resource(ReadResourceRequestParams::new(resource.uri.clone()))
                .await
                .unwrap_or_else(|e| panic!("{pairing}: resources/read: {e}"));
            let asked = client
                .call_tool(
                    CallToolRequestParams::new(format!("{prefix}{question}"))
                        .with_arguments(json!({ "message": "who?" }).as_object().unwrap().clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("{pairing}: question: {e}"));
            assert!(
                text_of(&asked).contains("ada"),
                "{pairing}: {}",
                text_of(&asked)
            );
        }
        client.cancel().await.unwrap();
    }
}
