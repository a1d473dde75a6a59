//! The tasks extension (`io.modelcontextprotocol/tasks`) through the gateway, in front of two
//! fixtures that create tasks: a task call reaches the upstream that created the task, the
//! client sees only gateway task ids, another session or caller cannot use them, and a
//! client that did not declare the extension is refused clearly. Raw HTTP, so every field of
//! the wire is visible.

use std::time::Duration;

use portcullis_tests::harness::{
    Fixture, Gateway, RawHttp, RawResponse, RawSession, jsonrpc_notification, jsonrpc_request,
    server_toml,
};
use serde_json::{Value, json};

const TASKS: &str = "io.modelcontextprotocol/tasks";
const V: &str = "2026-07-28";
/// How long a test waits for a task to finish (a bound, not an assertion).
const SETTLE: Duration = Duration::from_secs(15);

async fn gateway() -> (Gateway, Fixture, Fixture) {
    let alpha = Fixture::http("alpha").await;
    let beta = Fixture::http("beta").await;
    let config = format!(
        "{}{}{}",
        server_toml(),
        alpha.upstream_toml("alpha"),
        beta.upstream_toml("beta")
    );
    (Gateway::start(&config).await, alpha, beta)
}

/// A session-era session whose `initialize` declares the extension (or not).
async fn session(gateway: &Gateway, extension: bool) -> RawSession {
    let http = RawHttp::new(gateway.url());
    let capabilities = if extension {
        json!({ "extensions": { TASKS: {} } })
    } else {
        json!({})
    };
    let init = http
        .post(
            &jsonrpc_request(
                0,
                "initialize",
                json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": capabilities,
                    "clientInfo": { "name": "tasks-test", "version": "1" },
                }),
            ),
            &[],
        )
        .await;
    let result = init.response(&json!(0)).expect("initialize answered");
    assert_eq!(
        result["result"]["capabilities"]["extensions"][TASKS],
        json!({}),
        "the gateway advertises the tasks extension: {result}"
    );
    let session = RawSession {
        http,
        session_id: init.session_id().map(str::to_owned),
        protocol_version: "2025-11-25".into(),
        extra_headers: Vec::new(),
    };
    session
        .post(&jsonrpc_notification(
            "notifications/initialized",
            Value::Null,
        ))
        .await;
    session
}

/// The whole JSON-RPC answer (result or error) to one request of `session`.
async fn ask(session: &RawSession, id: i64, method: &str, params: Value) -> Value {
    let response = session.post(&jsonrpc_request(id, method, params)).await;
    response
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no answer to {method}: {}", response.body))
}

/// Polls `tasks/get` until the task is terminal; returns the last `tasks/get` result.
async fn settle(session: &RawSession, task: &str) -> Value {
    let deadline = tokio::time::Instant::now() + SETTLE;
    for n in 1000.. {
        let got = ask(session, n, "tasks/get", json!({ "taskId": task })).await;
        let result = got["result"].clone();
        assert!(result.is_object(), "tasks/get failed: {got}");
        assert_eq!(result["taskId"], task, "tasks/get names the gateway id");
        if ["completed", "failed", "cancelled"].contains(&result["status"].as_str().unwrap_or("")) {
            return result;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never finished: {result}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

fn created(answer: &Value) -> String {
    let result = &answer["result"];
    assert_eq!(result["resultType"], "task", "a task was created: {answer}");
    let id = result["taskId"].as_str().expect("taskId").to_string();
    assert!(
        id.starts_with("pt1."),
        "the client sees a gateway task id: {id}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_calls_reach_the_upstream_that_created_the_task() {
    let (gateway, _alpha, _beta) = gateway().await;
    let s = session(&gateway, true).await;
    let a = created(
        &ask(
            &s,
            1,
            "tools/call",
            json!({ "name": "alpha__slow_compute", "arguments": { "seconds": 0.3 } }),
        )
        .await,
    );
    let b = created(
        &ask(
            &s,
            2,
            "tools/call",
            json!({ "name": "beta__slow_compute", "arguments": { "seconds": 0.3 } }),
        )
        .await,
    );
    assert_ne!(a, b);
    for (task, server) in [(&a, "alpha"), (&b, "beta")] {
        let done = settle(&s, task).await;
        assert_eq!(done["status"], "completed", "{done}");
        let text = done["result"]["content"][0]["text"].as_str().unwrap_or("");
        assert!(
            text.ends_with(&format!("by {server}")),
            "the task of {server} was answered by {server}: {text}"
        );
    }
    // An upstream's own id, or anything else the gateway did not issue, is an unknown task.
    for bogus in ["3f8b1c2e-0000-4000-8000-000000000000", "pt1.AAAA", ""] {
        let answer = ask(&s, 3, "tasks/get", json!({ "taskId": bogus })).await;
        assert_eq!(answer["error"]["code"], -32602, "{bogus:?}: {answer}");
    }
    // A task that asks for input: its questions reach the client, its answers the upstream.
    let c = created(
        &ask(
            &s,
            4,
            "tools/call",
            json!({ "name": "beta__confirm_delete", "arguments": { "filename": "a.txt" } }),
        )
        .await,
    );
    let deadline = tokio::time::Instant::now() + SETTLE;
    let key = loop {
        let got = ask(&s, 5, "tasks/get", json!({ "taskId": c })).await;
        if got["result"]["status"] == "input_required" {
            let requests = got["result"]["inputRequests"].as_object().expect("map");
            break requests.keys().next().expect("one question").clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never asked: {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ack = ask(
        &s,
        6,
        "tasks/update",
        json!({ "taskId": c, "inputResponses": { key: { "action": "accept", "content": { "confirm": true } } } }),
    )
    .await;
    assert!(ack["result"].is_object(), "{ack}");
    let done = settle(&s, &c).await;
    assert_eq!(
        done["result"]["content"][0]["text"], "a.txt: deleted",
        "{done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_cannot_see_or_stop_a_task() {
    let (gateway, _alpha, _beta) = gateway().await;
    let owner = session(&gateway, true).await;
    let other = session(&gateway, true).await;
    let task = created(
        &ask(
            &owner,
            1,
            "tools/call",
            json!({ "name": "alpha__slow_compute", "arguments": { "seconds": 60 } }),
        )
        .await,
    );
    for method in ["tasks/get", "tasks/cancel"] {
        let answer = ask(&other, 2, method, json!({ "taskId": task })).await;
        assert_eq!(
            answer["error"]["code"], -32602,
            "{method} from another session: {answer}"
        );
    }
    let got = ask(&owner, 3, "tasks/get", json!({ "taskId": task })).await;
    assert_eq!(
        got["result"]["status"], "working",
        "the other session's cancel did not reach it: {got}"
    );
    let ack = ask(&owner, 4, "tasks/cancel", json!({ "taskId": task })).await;
    assert!(ack["result"].is_object(), "{ack}");
    assert_eq!(settle(&owner, &task).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_extension_gets_plain_results() {
    let (gateway, _alpha, _beta) = gateway().await;
    let s = session(&gateway, false).await;
    let answer = ask(
        &s,
        1,
        "tools/call",
        json!({ "name": "alpha__slow_compute", "arguments": { "seconds": 0 } }),
    )
    .await;
    let result = &answer["result"];
    assert!(result.get("taskId").is_none(), "{answer}");
    assert_eq!(result["content"][0]["text"], "computed after 0 s by alpha");
    // A task-only tool tells it what it lacks.
    let answer = ask(
        &s,
        2,
        "tools/call",
        json!({ "name": "alpha__failing_job", "arguments": {} }),
    )
    .await;
    assert_eq!(answer["error"]["code"], -32021, "{answer}");
}

/// A 2026-07-28 request; `extension`: its `_meta` declares the tasks extension.
async fn stateless(gateway: &Gateway, method: &str, params: Value, extension: bool) -> RawResponse {
    stateless_named(gateway, method, params, extension, None).await
}

async fn stateless_named(
    gateway: &Gateway,
    method: &str,
    mut params: Value,
    extension: bool,
    name_header: Option<&str>,
) -> RawResponse {
    let capabilities = if extension {
        json!({ "extensions": { TASKS: {} } })
    } else {
        json!({})
    };
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientInfo": { "name": "tasks-test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    });
    let name = name_header
        .map(str::to_string)
        .or_else(|| params["name"].as_str().map(str::to_string))
        .or_else(|| params["taskId"].as_str().map(str::to_string));
    let mut headers = vec![("mcp-protocol-version", V), ("mcp-method", method)];
    if let Some(name) = &name {
        headers.push(("mcp-name", name.as_str()));
    }
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    RawHttp::new(gateway.url()).post(&body, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_negotiates_per_request_and_is_refused_without_it() {
    let (gateway, _alpha, _beta) = gateway().await;
    let discover = stateless(&gateway, "server/discover", json!({}), false).await;
    let capabilities = &discover.json()["result"]["capabilities"];
    assert_eq!(
        capabilities["extensions"][TASKS],
        json!({}),
        "{capabilities}"
    );
    assert!(
        capabilities.get("tasks").is_none(),
        "no 2025-11-25 tasks capability for a 2026-07-28 client: {capabilities}"
    );

    // Without the extension: tasks/* are refused with what is missing; calls run plainly.
    for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
        let refused = stateless(
            &gateway,
            method,
            json!({ "taskId": "anything", "inputResponses": {} }),
            false,
        )
        .await;
        let body = refused.json();
        assert_eq!(body["error"]["code"], -32021, "{method}: {body}");
        assert_eq!(
            body["error"]["data"]["requiredCapabilities"]["extensions"][TASKS],
            json!({}),
            "{body}"
        );
    }
    let plain = stateless(
        &gateway,
        "tools/call",
        json!({ "name": "beta__slow_compute", "arguments": { "seconds": 0 } }),
        false,
    )
    .await
    .json();
    assert_eq!(plain["result"]["resultType"], "complete", "{plain}");

    // With it: a task, polled with the gateway id in Mcp-Name.
    let answer = stateless(
        &gateway,
        "tools/call",
        json!({ "name": "beta__slow_compute", "arguments": { "seconds": 0.2 } }),
        true,
    )
    .await
    .json();
    let task = created(&answer);
    let deadline = tokio::time::Instant::now() + SETTLE;
    let done = loop {
        let got = stateless(&gateway, "tasks/get", json!({ "taskId": task }), true)
            .await
            .json();
        assert_eq!(got["result"]["taskId"], task.as_str(), "{got}");
        if got["result"]["status"] == "completed" {
            break got;
        }
        assert!(tokio::time::Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        done["result"]["result"]["content"][0]["text"],
        "computed after 0.2 s by beta"
    );
    let mismatch = stateless_named(
        &gateway,
        "tasks/get",
        json!({ "taskId": task }),
        true,
        Some("some-other-task"),
    )
    .await;
    assert_eq!(mismatch.status, 400);
    assert_eq!(mismatch.json()["error"]["code"], -32020);
    // 2025-11-25's tasks/result and tasks/list are not part of the extension.
    for method in ["tasks/result", "tasks/list"] {
        let gone = stateless(&gateway, method, json!({ "taskId": task }), true).await;
        assert_eq!(gone.json()["error"]["code"], -32601, "{method}");
    }
}
