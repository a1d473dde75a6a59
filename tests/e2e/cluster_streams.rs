//! Streams and multi-round-trip calls across replicas (the cluster bus, `[cluster]` with a
//! session key and Redis): three gateway processes, one key, one real `redis-server`.
//!
//! - A session-era GET stream opened on one replica receives what its session's upstreams
//!   say outside any request on another replica (a late log line, a list change).
//! - A client's answer to a request (sampling during a call) reaches the replica that asked.
//! - A 2026-07-28 `subscriptions/listen` stream on one replica receives a list change caused
//!   on another.
//! - Redis down: streams still get their own replica's messages; when Redis is back they get
//!   the other replicas' again, without a restart.
//! - A 2026-07-28 retry carrying `requestState` works on any replica: a 2026-07-28 upstream's
//!   state passes through (it is the upstream's, self-contained), and a call the gateway
//!   parked for a session-era upstream is resumed on the replica that parked it, the answer
//!   relayed back; when that replica is gone the client gets a clear `-32602` and retries
//!   without the state.

use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    Fixture, Gateway, RawHttp, RawResponse, RawSession, RedisServer, SseReader, initialize_request,
    jsonrpc_notification, jsonrpc_request, server_toml, stdio_fixture_toml,
};
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const V: &str = "2026-07-28";
const WAIT: Duration = Duration::from_secs(10);

/// A replica: the session-era stdio fixture `alpha`, the HTTP fixture `beta` spoken to in
/// 2026-07-28, the shared key and Redis.
async fn replica(beta: &Fixture, redis: &RedisServer) -> Gateway {
    let alpha = stdio_fixture_toml("alpha").replace(
        "args = [\"--stdio\",",
        "args = [\"--stdio\", \"--era\", \"session\",",
    );
    let config = format!(
        "{}[cluster]\nsession-key = \"${{PORTCULLIS_SESSION_KEY}}\"\nredis = \"${{E2E_REDIS_URL}}\"\nredis-timeout = \"250ms\"\n\n{alpha}{}\nprotocol = \"{V}\"\n",
        server_toml(),
        beta.upstream_toml("beta").trim_end(),
    );
    let gateway = Gateway::start_with_env(
        &config,
        &[
            ("PORTCULLIS_SESSION_KEY", KEY),
            ("E2E_REDIS_URL", &redis.url()),
        ],
    )
    .await;
    gateway
        .wait_for_log("cluster bus: subscriber connected", WAIT)
        .await;
    gateway
}

async fn cluster(n: usize) -> (RedisServer, Fixture, Vec<Gateway>) {
    let redis = RedisServer::start();
    let beta = Fixture::http("beta").await;
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(replica(&beta, &redis).await);
    }
    (redis, beta, replicas)
}

/// The same session, addressed to another replica.
fn on(session: &RawSession, gateway: &Gateway) -> RawSession {
    RawSession {
        http: RawHttp::new(gateway.url()),
        ..session.clone()
    }
}

/// The next JSON-RPC message on `stream` whose method is `method`, skipping others.
async fn next_with(stream: &mut SseReader, method: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = stream
            .next_message(left)
            .await
            .unwrap_or_else(|| panic!("the stream ended before {method}"));
        if m["method"] == method {
            return m;
        }
    }
}

/// Waits for a `notifications/message` whose data is `text`, skipping others; `None` when
/// none came within `timeout`.
async fn log_line(stream: &mut SseReader, text: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(event)) = stream.try_next_event(left).await else {
            return None;
        };
        if event.data.is_empty() {
            continue;
        }
        let m = event.json();
        if m["method"] == "notifications/message" && m["params"]["data"] == text {
            return Some(m);
        }
    }
}

/// Calls `alpha__report`, whose upstream logs `later: <text>` after answering: outside any
/// request, so it goes to the session's GET stream, wherever that is.
async fn report(session: &RawSession, id: i64, text: &str) {
    let result = session
        .call(
            id,
            "tools/call",
            json!({ "name": "alpha__report", "arguments": { "text": text } }),
        )
        .await;
    assert_eq!(result["content"][0]["text"], "reported", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_stream_on_one_replica_hears_its_session_on_the_others() {
    let (_redis, _beta, replicas) = cluster(3).await;
    let (_, session) = RawHttp::new(replicas[0].url()).initialize(&[]).await;
    let mut stream = session.get_stream().await;
    assert_eq!(stream.status, 200);

    // A log line the upstream sends on replica B after its call answered.
    report(&on(&session, &replicas[1]), 1, "from B").await;
    let line = log_line(&mut stream, "later: from B", WAIT).await;
    assert!(line.is_some(), "replica A's stream got B's late log line");

    // A list change caused on replica C (its own stdio child changed its tools).
    let here = on(&session, &replicas[2]);
    here.call(
        2,
        "tools/call",
        json!({ "name": "alpha__set_dynamic_tool", "arguments": { "enabled": true } }),
    )
    .await;
    next_with(&mut stream, "notifications/tools/list_changed").await;
    // C's list shows the new tool (its child has it); the change travelled, not the child.
    let tools = here.call(3, "tools/list", json!({})).await;
    assert!(tools.to_string().contains("alpha__test_dynamic_tool"));

    // What the session does on A itself still arrives once, not twice.
    report(&session, 4, "from A").await;
    assert!(log_line(&mut stream, "later: from A", WAIT).await.is_some());
    assert!(
        log_line(&mut stream, "later: from A", Duration::from_millis(800))
            .await
            .is_none(),
        "delivered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_answer_reaches_the_replica_that_asked() {
    let (_redis, _beta, replicas) = cluster(3).await;
    // A session-era client that can sample.
    let http = RawHttp::new(replicas[0].url());
    let mut init = initialize_request(0, "2025-11-25");
    init["params"]["capabilities"] = json!({ "sampling": {} });
    let r = http.post(&init, &[]).await;
    let id = r.session_id().expect("a session id").to_string();
    let session = RawSession {
        http,
        session_id: Some(id.clone()),
        protocol_version: "2025-11-25".into(),
        extra_headers: Vec::new(),
    };
    let r = session
        .post(&jsonrpc_notification(
            "notifications/initialized",
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 202);

    // A call on B whose upstream asks the client to sample, on the call's own stream.
    let call = jsonrpc_request(
        1,
        "tools/call",
        json!({ "name": "alpha__test_sampling", "arguments": { "prompt": "capital?" } }),
    );
    let mut stream = RawHttp::new(replicas[1].url())
        .open_stream(
            Method::POST,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-session-id", &id),
            ],
            Some(call.to_string()),
        )
        .await;
    let ask = next_with(&mut stream, "sampling/createMessage").await;

    // The client's answer is posted to C; it reaches B, and B's call completes.
    let answer = json!({ "jsonrpc": "2.0", "id": ask["id"], "result": {
        "role": "assistant", "model": "test",
        "content": { "type": "text", "text": "Paris" } } });
    let r = on(&session, &replicas[2]).post(&answer).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = loop {
        let m = stream.next_message(WAIT).await.expect("the call's answer");
        if m["id"] == 1 {
            break m;
        }
    };
    let text = done["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Paris"), "{done}");
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

/// POSTs a 2026-07-28 request with the headers a conforming client sends.
async fn post(gateway: &Gateway, body: &Value) -> RawResponse {
    let method = body["method"].as_str().unwrap().to_string();
    let name = body["params"]["name"].as_str().map(str::to_string);
    let mut headers = vec![("mcp-protocol-version", V), ("mcp-method", method.as_str())];
    if let Some(name) = &name {
        headers.push(("mcp-name", name.as_str()));
    }
    RawHttp::new(gateway.url()).post(body, &headers).await
}

/// The response with `id` in a JSON or SSE answer.
fn response(r: &RawResponse, id: i64) -> Value {
    r.messages()
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no response {id}: {} {}", r.status, r.body))
}

async fn listen(gateway: &Gateway, id: i64) -> SseReader {
    let body = request(
        id,
        "subscriptions/listen",
        json!({ "notifications": { "toolsListChanged": true } }),
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
            Some(body.to_string()),
        )
        .await;
    let ack = stream.next_message(WAIT).await.expect("acknowledgment");
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_stream_on_one_replica_hears_a_change_made_on_another() {
    let (_redis, _beta, replicas) = cluster(2).await;
    let mut stream = listen(&replicas[0], 7).await;
    let r = post(
        &replicas[1],
        &request(
            8,
            "tools/call",
            json!({ "name": "alpha__set_dynamic_tool", "arguments": { "enabled": true } }),
        ),
    )
    .await;
    let result = response(&r, 8);
    assert!(result["result"]["content"].is_array(), "{result}");
    let changed = next_with(&mut stream, "notifications/tools/list_changed").await;
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7,
        "{changed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_streams_get_their_replicas_messages_and_recover_after() {
    let (mut redis, _beta, replicas) = cluster(2).await;
    let (_, session) = RawHttp::new(replicas[0].url()).initialize(&[]).await;
    let mut stream = session.get_stream().await;
    let b = on(&session, &replicas[1]);
    report(&b, 1, "before").await;
    assert!(log_line(&mut stream, "later: before", WAIT).await.is_some());

    redis.kill();
    replicas[0]
        .wait_for_log("cluster bus: subscriber lost redis", WAIT)
        .await;
    // The stream's own replica still delivers; B's line cannot cross and stays on B.
    report(&session, 2, "local").await;
    assert!(log_line(&mut stream, "later: local", WAIT).await.is_some());
    report(&b, 3, "lost").await;
    assert!(
        log_line(&mut stream, "later: lost", Duration::from_secs(1))
            .await
            .is_none()
    );
    assert!(
        replicas[1].logs().contains("cluster bus: cannot publish"),
        "{}",
        replicas[1].logs()
    );

    redis.restart();
    replicas[0]
        .wait_for_log(
            "cluster bus: subscriber connected again",
            Duration::from_secs(15),
        )
        .await;
    // B publishes again once its back-off (at most 5 s) has passed: no restart needed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 10;
    loop {
        let text = format!("after {n}");
        report(&b, n, &text).await;
        if log_line(
            &mut stream,
            &format!("later: {text}"),
            Duration::from_secs(1),
        )
        .await
        .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B's messages never crossed again\n{}",
            replicas[1].logs()
        );
        n += 1;
    }
    // Logged once the publish went through, so possibly just after the line crossed.
    replicas[1]
        .wait_for_log("cluster bus: publishing again", WAIT)
        .await;
}

/// The `input_required` result of a 2026-07-28 answer.
fn input_required(r: &RawResponse, id: i64) -> (String, Option<String>) {
    let result = response(r, id)["result"].clone();
    assert_eq!(result["resultType"], "input_required", "{result}");
    let key = result["inputRequests"]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
        .expect("an input request");
    (key, result["requestState"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_upstreams_request_state_works_on_any_replica() {
    let (_redis, _beta, replicas) = cluster(3).await;
    // Two rounds of questions, each answer sent to the next replica: the state is the
    // upstream's own and self-contained, so any replica carries it.
    let mut call = request(
        1,
        "tools/call",
        json!({ "name": "beta__test_input_required_result_multi_round", "arguments": {} }),
    );
    let first = post(&replicas[0], &call).await;
    let (key, state) = input_required(&first, 1);
    assert_eq!(key, "step1");
    let state = state.expect("the upstream's requestState");
    assert!(!state.starts_with("pgs1."), "passed through unchanged");

    call["id"] = json!(2);
    call["params"]["inputResponses"] =
        json!({ "step1": { "action": "accept", "content": { "name": "ada" } } });
    call["params"]["requestState"] = json!(state);
    let second = post(&replicas[1], &call).await;
    let (key, state) = input_required(&second, 2);
    assert_eq!(key, "step2");

    call["id"] = json!(3);
    call["params"]["inputResponses"] =
        json!({ "step2": { "action": "accept", "content": { "color": "green" } } });
    call["params"]["requestState"] = json!(state.expect("a new state"));
    let done = post(&replicas[2], &call).await;
    let result = response(&done, 3)["result"].clone();
    assert_eq!(result["resultType"], "complete", "{result}");
    assert_eq!(
        result["content"][0]["text"], "name: ada, favorite color: green",
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_parked_for_a_session_era_upstream_is_resumed_from_any_replica() {
    let (_redis, _beta, mut replicas) = cluster(3).await;
    let call = request(
        1,
        "tools/call",
        json!({ "name": "alpha__test_elicitation", "arguments": { "message": "name?" } }),
    );
    let first = post(&replicas[0], &call).await;
    let (key, state) = input_required(&first, 1);
    let state = state.expect("a requestState");
    assert!(
        state.starts_with("pgs1."),
        "sealed, naming replica A: {state}"
    );

    // The retry lands on B: B forwards it to A, A resumes the parked call, B relays.
    let mut retry = call.clone();
    retry["id"] = json!(2);
    retry["params"]["inputResponses"] =
        json!({ &key: { "action": "accept", "content": { "username": "grace" } } });
    retry["params"]["requestState"] = json!(state);
    let done = post(&replicas[1], &retry).await;
    let answer = response(&done, 2);
    assert_eq!(answer["result"]["resultType"], "complete", "{answer}");
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("accept") && text.contains("grace"), "{text}");

    // Single use, wherever it is presented again.
    let replay = post(&replicas[2], &retry).await;
    let again = response(&replay, 2);
    assert_eq!(again["error"]["code"], -32602, "{again}");

    // The replica holding a parked call is gone: a clear error, and the request sent again
    // without the state starts over.
    let first = post(&replicas[0], &call).await;
    let (key, state) = input_required(&first, 1);
    // It dies (a graceful stop would wait for the parked call first).
    replicas[0].signal(libc::SIGKILL);
    assert!(replicas[0].wait_exit(WAIT).await.is_some());
    retry["params"]["inputResponses"] =
        json!({ &key: { "action": "accept", "content": { "username": "grace" } } });
    retry["params"]["requestState"] = json!(state.unwrap());
    let orphan = post(&replicas[1], &retry).await;
    let error = response(&orphan, 2);
    assert_eq!(error["error"]["code"], -32602, "{error}");
    assert_eq!(error["error"]["data"]["retry"], "without requestState");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another replica"),
        "{error}"
    );
    let fresh = post(&replicas[1], &call).await;
    input_required(&fresh, 1);
}
