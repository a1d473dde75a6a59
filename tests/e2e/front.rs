//! The client-facing transport, through the real binary with raw HTTP: every row of the
//! bad-input table that applies to the core gateway, version negotiation, JSON vs SSE
//! answers, resumption, the GET stream, cancellation, graceful shutdown and DELETE.
//!
//! Each test asserts what a client would notice: HTTP statuses, JSON-RPC codes, SSE framing,
//! and (for process lifetimes) what is left in `/proc`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use portcullis_tests::harness::{
    Fixture, Gateway, RawHttp, RawResponse, RawSession, SHUTDOWN_TIMEOUT, SseEvent, SseReader,
    bin_path, initialize_request, jsonrpc_notification, jsonrpc_request, server_toml,
    stdio_fixture_toml, toml_str,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Upper bound for anything that should happen "soon" (an event, a process going away).
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A gateway with two stdio fixtures, `alpha` and `beta` (prefix `always`, the default).
async fn two_stdio_upstreams() -> Gateway {
    Gateway::start(&format!(
        "{}{}{}",
        server_toml(),
        stdio_fixture_toml("alpha"),
        stdio_fixture_toml("beta")
    ))
    .await
}

/// A string no other process on the machine has on its command line.
fn unique_marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("e2e-{what}-{}-{nanos}", std::process::id())
}

/// An `[upstreams.NAME]` section running the stdio fixture with `--name MARKER`, so its
/// process can be found in `/proc` by that argument.
fn marked_stdio_upstream(name: &str, marker: &str) -> String {
    format!(
        "[upstreams.{name}]\ncommand = {}\nargs = [\"--stdio\", \"--name\", {}]\n\n",
        toml_str(&bin_path("fixture").to_string_lossy()),
        toml_str(marker)
    )
}

/// Pids of live processes with `marker` as one of their command-line arguments. (A zombie
/// has an empty command line, so only processes that still run are found.)
fn processes_with_arg(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()))
        })
        .collect()
}

/// Polls until `cond` holds, panicking with `what` after [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The headers a request within `session` carries (session id and protocol version).
fn session_headers(session: &RawSession) -> Vec<(&str, &str)> {
    let mut h = vec![("mcp-protocol-version", session.protocol_version.as_str())];
    if let Some(id) = &session.session_id {
        h.push(("mcp-session-id", id.as_str()));
    }
    h
}

/// `tools/call` of `name` with `arguments`.
fn call(id: i64, name: &str, arguments: Value) -> Value {
    jsonrpc_request(
        id,
        "tools/call",
        json!({ "name": name, "arguments": arguments }),
    )
}

/// Asserts an HTTP 200 JSON answer carrying a JSON-RPC error for `id`; returns the error.
fn rpc_error(response: &RawResponse, id: i64) -> Value {
    assert_eq!(
        response.status,
        StatusCode::OK,
        "a JSON-RPC error travels in an HTTP 200: {}",
        response.body
    );
    let message = response
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no response with id {id}: {}", response.body));
    message
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("expected an error, got {message}"))
}

/// Asserts a successful `tools/call` result (not `isError`) for `id`; returns its text.
fn tool_text(response: &RawResponse, id: i64) -> String {
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let message = response
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no response with id {id}: {}", response.body));
    let result = message
        .get("result")
        .unwrap_or_else(|| panic!("tools/call failed: {message}"));
    assert_ne!(result["isError"], true, "tool returned an error: {message}");
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// At most the first 400 characters of `text`, for assertion messages.
fn short(text: &str) -> String {
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

/// Asserts an HTTP-level refusal: the exact status, and a body that is either empty or one
/// complete JSON-RPC error object (never a half-written or non-JSON body).
fn assert_refused(response: &RawResponse, status: StatusCode, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: wrong status; body: {}",
        short(&response.body)
    );
    if !response.body.trim().is_empty() {
        let body = response.json();
        assert!(
            body["error"]["code"].is_i64(),
            "{what}: the body is not a JSON-RPC error: {body}"
        );
    }
}

/// Asserts HTTP 400 with a JSON-RPC error of `code` (id null: the request could not be read).
fn assert_bad_request(response: &RawResponse, code: i64, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::BAD_REQUEST,
        "{what}: wrong status; body: {}",
        short(&response.body)
    );
    let body = response.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: the error has no message: {body}"
    );
}

/// A raw HTTP/1.1 exchange on a fresh TCP connection, for requests `reqwest` cannot make
/// (no `Accept` header at all, a chunked body). The request should say `Connection: close`.
/// Returns the status code and the (de-chunked) body.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request).await.expect("write request");
        let mut reply = Vec::new();
        // The server may close while we still read; keep whatever arrived.
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        reply
    };
    let reply = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("no complete raw HTTP answer in time");
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Reads SSE events until the stream ends (bounded by [`WAIT`] per event).
async fn read_to_end(stream: &mut SseReader) -> Vec<SseEvent> {
    let mut events = Vec::new();
    while let Some(event) = stream.next_event(WAIT).await {
        events.push(event);
    }
    events
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_gets_400_and_parse_error() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let mut headers = session_headers(&session);
    headers.push(("content-type", "application/json"));
    headers.push(("accept", "application/json, text/event-stream"));
    for body in ["{\"jsonrpc\": \"2.0\", \"id\": 1,", "not json at all", ""] {
        let response = http
            .request(Method::POST, &headers, Some(body.to_owned()))
            .await;
        assert_bad_request(&response, -32700, &format!("body {body:?}"));
    }
    // The same holds before any session exists.
    let response = http
        .request(
            Method::POST,
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ],
            Some("{oops".to_owned()),
        )
        .await;
    assert_bad_request(&response, -32700, "non-JSON initialize");
    // The session is unharmed.
    assert_eq!(session.call(9, "ping", json!({})).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_json_rpc_gets_400_and_invalid_request() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let cases = [
        (
            "a batch",
            json!([
                { "jsonrpc": "2.0", "id": 1, "method": "ping" },
                { "jsonrpc": "2.0", "id": 2, "method": "ping" }
            ]),
        ),
        ("an empty batch", json!([])),
        ("a bare string", json!("ping")),
        ("no jsonrpc member", json!({ "id": 1, "method": "ping" })),
        (
            "jsonrpc 1.0",
            json!({ "jsonrpc": "1.0", "id": 1, "method": "ping" }),
        ),
        (
            "id null",
            json!({ "jsonrpc": "2.0", "id": null, "method": "ping" }),
        ),
        (
            "params a number",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": 3 }),
        ),
        (
            "params a string",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": "x" }),
        ),
        (
            "method not a string",
            json!({ "jsonrpc": "2.0", "id": 1, "method": 7 }),
        ),
        ("neither method nor id", json!({ "jsonrpc": "2.0" })),
    ];
    for (what, body) in cases {
        let response = session.post(&body).await;
        assert_bad_request(&response, -32600, what);
    }
    assert_eq!(session.call(9, "ping", json!({})).await, json!({}));
}

/// MCP requires `params` to be an object (the schema's `params?: { [key: string]: unknown }`);
/// positional (array) params are JSON-RPC but not MCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_that_are_an_array_get_400_and_invalid_request() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    for (what, body) in [
        (
            "a request",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [] }),
        ),
        (
            "a tools/call",
            json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": ["alpha__echo", { "text": "x" }] }),
        ),
        (
            "a notification",
            json!({ "jsonrpc": "2.0", "method": "notifications/roots/list_changed", "params": [1] }),
        ),
    ] {
        let response = session.post(&body).await;
        assert_bad_request(&response, -32600, &format!("array params in {what}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tools_and_prompts_get_invalid_params() {
    let gateway = two_stdio_upstreams().await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    // No such upstream prefix, no prefix at all, and a real upstream without that tool.
    for (id, name) in [(1, "nobody__echo"), (2, "echo"), (3, "alpha__no_such_tool")] {
        let response = session.post(&call(id, name, json!({}))).await;
        let error = rpc_error(&response, id);
        assert_eq!(error["code"], -32602, "tools/call {name}: {error}");
    }
    for (id, name) in [
        (4, "nobody__test_simple_prompt"),
        (5, "test_simple_prompt"),
        (6, "alpha__no_such_prompt"),
    ] {
        let response = session
            .post(&jsonrpc_request(id, "prompts/get", json!({ "name": name })))
            .await;
        let error = rpc_error(&response, id);
        assert_eq!(error["code"], -32602, "prompts/get {name}: {error}");
    }
    // Known names still work.
    let response = session
        .post(&call(7, "beta__echo", json!({ "text": "still here" })))
        .await;
    assert_eq!(tool_text(&response, 7), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_resource_gets_resource_not_found() {
    let gateway = two_stdio_upstreams().await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    for (id, uri) in [
        (1, "test://no-such-resource"),
        (2, "nobody+test://static-text"),
        (3, "alpha+test://no-such-resource"),
    ] {
        let response = session
            .post(&jsonrpc_request(
                id,
                "resources/read",
                json!({ "uri": uri }),
            ))
            .await;
        let error = rpc_error(&response, id);
        assert_eq!(error["code"], -32002, "resources/read {uri}: {error}");
    }
    let read = session
        .call(
            4,
            "resources/read",
            json!({ "uri": "alpha+test://static-text" }),
        )
        .await;
    assert_eq!(
        read["contents"][0]["uri"], "alpha+test://static-text",
        "{read}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_with_two_upstreams_gets_method_not_found() {
    let gateway = two_stdio_upstreams().await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    for (id, method) in [(1, "no/such/method"), (2, "tools/frobnicate")] {
        let response = session.post(&jsonrpc_request(id, method, json!({}))).await;
        let error = rpc_error(&response, id);
        assert_eq!(error["code"], -32601, "{method}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_and_is_not_forwarded() {
    // An HTTP fixture: its tool list is shared by all its sessions, so the test can ask it
    // directly whether `set_dynamic_tool` ever ran.
    let beta = Fixture::http("beta").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nmax-body-bytes = 1024\n\n{}",
        beta.upstream_toml("beta")
    );
    let gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let direct = RawHttp::new(beta.url());
    let (_, upstream) = direct.initialize(&[]).await;
    let dynamic_tool_listed = |tools: Value| {
        tools["tools"]
            .as_array()
            .expect("tools/list has tools")
            .iter()
            .any(|t| t["name"] == "test_dynamic_tool")
    };

    // 1. Content-Length over the limit.
    let padding = "x".repeat(2000);
    let big = call(
        1,
        "beta__set_dynamic_tool",
        json!({ "enabled": true, "padding": padding }),
    );
    assert!(big.to_string().len() > 1024);
    let response = session.post(&big).await;
    assert_refused(
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "Content-Length body",
    );

    // 2. A chunked body (no Content-Length) that grows over the limit.
    let body = big.to_string();
    let id = session.session_id.clone().expect("session id");
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMcp-Session-Id: {id}\r\n\
         MCP-Protocol-Version: {version}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        addr = gateway.addr(),
        version = session.protocol_version,
    );
    for piece in body.as_bytes().chunks(500) {
        request.push_str(&format!("{:x}\r\n", piece.len()));
        request.push_str(std::str::from_utf8(piece).expect("ASCII body"));
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    let (status, _) = raw_exchange(gateway.addr(), request.as_bytes()).await;
    assert_eq!(status, 413, "chunked body over the limit");

    // Nothing reached the upstream: the tool it would have added is not there.
    let tools = upstream.call(2, "tools/list", json!({})).await;
    assert!(
        !dynamic_tool_listed(tools.clone()),
        "an over-limit request was forwarded: {tools}"
    );

    // Control: the same call under the limit goes through on the same session and is seen.
    let small = call(3, "beta__set_dynamic_tool", json!({ "enabled": true }));
    assert_eq!(
        tool_text(&session.post(&small).await, 3),
        "test_dynamic_tool enabled: true"
    );
    let tools = upstream.call(4, "tools/list", json!({})).await;
    assert!(dynamic_tool_listed(tools.clone()), "{tools}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_accept_gets_406() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let ping = jsonrpc_request(1, "ping", json!({}));
    let headers = session_headers(&session);
    for accept in [
        "application/json",
        "text/event-stream",
        "text/html",
        "application/xml, text/plain",
    ] {
        let mut h = headers.clone();
        h.push(("accept", accept));
        let response = http.post(&ping, &h).await;
        assert_refused(
            &response,
            StatusCode::NOT_ACCEPTABLE,
            &format!("POST with Accept: {accept}"),
        );
    }
    // No Accept header at all (reqwest always sends one, so this one is written by hand).
    let body = ping.to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Mcp-Session-Id: {id}\r\nMCP-Protocol-Version: {version}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        addr = gateway.addr(),
        id = session.session_id.as_deref().expect("session id"),
        version = session.protocol_version,
        len = body.len(),
    );
    let (status, _) = raw_exchange(gateway.addr(), request.as_bytes()).await;
    assert_eq!(status, 406, "POST without Accept");
    // A GET that does not accept an event stream.
    let mut h = headers.clone();
    h.push(("accept", "application/json"));
    let response = http.request(Method::GET, &h, None).await;
    assert_refused(
        &response,
        StatusCode::NOT_ACCEPTABLE,
        "GET with Accept: application/json",
    );
    // The right Accept works.
    assert_eq!(session.call(2, "ping", json!({})).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_content_type_gets_415() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let body = jsonrpc_request(1, "ping", json!({})).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/json",
    ] {
        let mut h = session_headers(&session);
        h.push(("content-type", content_type));
        h.push(("accept", "application/json, text/event-stream"));
        let response = http.request(Method::POST, &h, Some(body.clone())).await;
        assert_refused(
            &response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Type: {content_type}"),
        );
    }
    // Parameters on the right type are fine.
    let mut h = session_headers(&session);
    h.push(("content-type", "application/json; charset=utf-8"));
    let response = http.post(&jsonrpc_request(2, "ping", json!({})), &h).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(
        response.response(&json!(2)).expect("ping answered")["result"],
        json!({})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_version_header_gets_400() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let id = session.session_id.clone().expect("session id");
    for version in ["1999-01-01", "2024-10-07", "latest"] {
        let response = http
            .post(
                &jsonrpc_request(1, "ping", json!({})),
                &[("mcp-session-id", &id), ("mcp-protocol-version", version)],
            )
            .await;
        assert_refused(
            &response,
            StatusCode::BAD_REQUEST,
            &format!("MCP-Protocol-Version: {version}"),
        );
    }
    // The negotiated version is accepted.
    assert_eq!(session.call(2, "ping", json!({})).await, json!({}));
}

/// The transport spec's 400 for an unsupported `MCP-Protocol-Version` applies to every
/// request of the session, not only to POSTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_version_header_on_get_or_delete_gets_400() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let id = session.session_id.clone().expect("session id");
    let bad = [
        ("mcp-session-id", id.as_str()),
        ("mcp-protocol-version", "1999-01-01"),
    ];
    let mut get = bad.to_vec();
    get.push(("accept", "text/event-stream"));
    let stream = http.open_stream(Method::GET, &get, None).await;
    let get_status = stream.status;
    drop(stream);
    let delete = http.request(Method::DELETE, &bad, None).await;
    assert_eq!(
        (get_status, delete.status),
        (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST),
        "(GET, DELETE) with MCP-Protocol-Version: 1999-01-01; DELETE body: {}",
        delete.body
    );
    assert_refused(&delete, StatusCode::BAD_REQUEST, "DELETE");
    // The session survived the refused DELETE.
    assert_eq!(session.call(2, "ping", json!({})).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_terminated_session_ids_get_404_and_a_missing_one_400() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let ping = jsonrpc_request(1, "ping", json!({}));

    let missing = http
        .post(&ping, &[("mcp-protocol-version", "2025-11-25")])
        .await;
    assert_refused(
        &missing,
        StatusCode::BAD_REQUEST,
        "POST without Mcp-Session-Id",
    );

    let unknown = http
        .post(
            &ping,
            &[
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-session-id", "0123456789abcdef0123456789abcdef"),
            ],
        )
        .await;
    assert_refused(
        &unknown,
        StatusCode::NOT_FOUND,
        "POST with an unknown session",
    );
    let unknown_get = http
        .request(
            Method::GET,
            &[
                ("accept", "text/event-stream"),
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-session-id", "no-such-session"),
            ],
            None,
        )
        .await;
    assert_refused(
        &unknown_get,
        StatusCode::NOT_FOUND,
        "GET with an unknown session",
    );

    let (_, session) = http.initialize(&[]).await;
    assert_eq!(session.call(2, "ping", json!({})).await, json!({}));
    let deleted = session.delete().await;
    assert!(deleted.status.is_success(), "DELETE: {deleted:?}");
    let after = session.post(&ping).await;
    assert_refused(&after, StatusCode::NOT_FOUND, "POST after DELETE");
    let again = session.delete().await;
    assert_refused(&again, StatusCode::NOT_FOUND, "second DELETE");
    // A client that re-initializes gets a new, working session.
    let (_, fresh) = http.initialize(&[]).await;
    assert_ne!(fresh.session_id, session.session_id);
    assert_eq!(fresh.call(3, "ping", json!({})).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_or_origin_gets_403_and_localhost_works() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let port = gateway.addr().port();
    let evil_host = "evil.example.com".to_owned();
    let evil_host_port = format!("evil.example.com:{port}");
    let localhost = format!("localhost:{port}");

    for host in [&evil_host, &evil_host_port] {
        let response = http
            .post(&initialize_request(1, "2025-11-25"), &[("host", host)])
            .await;
        assert_refused(&response, StatusCode::FORBIDDEN, &format!("Host: {host}"));
        assert!(response.session_id().is_none(), "no session for {host}");
    }
    for origin in [
        "http://evil.example.com",
        "null",
        "https://localhost.evil.example.com",
    ] {
        let response = http
            .post(
                &initialize_request(1, "2025-11-25"),
                &[("host", &localhost), ("origin", origin)],
            )
            .await;
        assert_refused(
            &response,
            StatusCode::FORBIDDEN,
            &format!("Origin: {origin}"),
        );
    }

    // `Host: localhost:PORT`, with and without a loopback Origin, is served.
    let local_origin = format!("http://localhost:{port}");
    let (_, session) = http
        .initialize(&[("host", &localhost), ("origin", &local_origin)])
        .await;
    assert_eq!(session.call(2, "ping", json!({})).await, json!({}));
    // An established session does not make a bad Host acceptable.
    let mut h = session_headers(&session);
    h.push(("host", &evil_host));
    let response = http.post(&jsonrpc_request(3, "ping", json!({})), &h).await;
    assert_refused(
        &response,
        StatusCode::FORBIDDEN,
        "bad Host within a session",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_is_named_while_the_other_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}/mcp", closed.local_addr().expect("addr"));
    drop(closed);
    let config = format!(
        "{}[upstreams.dead]\nurl = {}\nconnect-timeout = \"2s\"\n\n{}",
        server_toml(),
        toml_str(&dead_url),
        stdio_fixture_toml("alive")
    );
    let gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;

    let response = session
        .post(&call(1, "dead__echo", json!({ "text": "hello" })))
        .await;
    let error = rpc_error(&response, 1);
    assert_eq!(error["code"], -32603, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("dead") || error["data"].to_string().contains("dead"),
        "the error does not name the upstream: {error}"
    );
    assert_eq!(error["data"]["upstream"], "dead", "{error}");

    let response = session
        .post(&call(2, "alive__echo", json!({ "text": "hello" })))
        .await;
    assert_eq!(tool_text(&response, 2), "hello");
    // Lists still answer, without the dead upstream's items.
    let tools = session.call(3, "tools/list", json!({})).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"alive__echo"), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("dead__")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_too_slowly_gets_408() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nrequest-timeout = \"500ms\"\n\n{}",
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let body = initialize_request(1, "2025-11-25").to_string();
    // The head promises the whole body; only half of it ever comes.
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n{half}",
        addr = gateway.addr(),
        len = body.len(),
        half = &body[..body.len() / 2],
    );
    let (status, _) = raw_exchange(gateway.addr(), request.as_bytes()).await;
    assert_eq!(status, 408, "a body that never completes");
    // Others are served meanwhile and afterwards.
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    assert_eq!(session.call(2, "ping", json!({})).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_beyond_max_sessions_gets_503_until_one_ends() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nmax-sessions = 1\n\n{}",
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let (_, first) = http.initialize(&[]).await;
    let refused = http.post(&initialize_request(1, "2025-11-25"), &[]).await;
    assert_refused(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "initialize over max-sessions",
    );
    assert!(refused.session_id().is_none(), "{refused:?}");
    assert_eq!(first.call(2, "ping", json!({})).await, json!({}));
    assert!(first.delete().await.status.is_success());
    let (_, second) = http.initialize(&[]).await;
    assert_eq!(second.call(3, "ping", json!({})).await, json!({}));
}

// ---------------------------------------------------------------------------------------
// Lifecycle and message kinds
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_negotiates_the_protocol_version() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    for (asked, expected) in [
        ("2025-11-25", "2025-11-25"),
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("1999-01-01", "2025-11-25"),
        ("2099-12-31", "2025-11-25"),
    ] {
        let response = http.post(&initialize_request(1, asked), &[]).await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{asked}: {}",
            response.body
        );
        let init = response.response(&json!(1)).expect("initialize answered");
        assert_eq!(
            init["result"]["protocolVersion"], expected,
            "asked for {asked}: {init}"
        );
        let id = response.session_id().expect("a session id").to_owned();
        // The session works with the negotiated version in its header.
        let ping = http
            .post(
                &jsonrpc_request(2, "ping", json!({})),
                &[("mcp-session-id", &id), ("mcp-protocol-version", expected)],
            )
            .await;
        assert_eq!(ping.status, StatusCode::OK, "{asked}: {}", ping.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_responses_get_202_with_an_empty_body_and_ping_is_answered() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    for (what, message) in [
        (
            "notifications/initialized",
            jsonrpc_notification("notifications/initialized", Value::Null),
        ),
        (
            "notifications/roots/list_changed",
            jsonrpc_notification("notifications/roots/list_changed", Value::Null),
        ),
        (
            "an unknown notification",
            jsonrpc_notification("notifications/something_else", json!({ "x": 1 })),
        ),
        (
            "a result response",
            json!({ "jsonrpc": "2.0", "id": "s99", "result": {} }),
        ),
        (
            "an error response",
            json!({ "jsonrpc": "2.0", "id": "s98", "error": { "code": -1, "message": "no" } }),
        ),
    ] {
        let response = session.post(&message).await;
        assert_eq!(
            response.status,
            StatusCode::ACCEPTED,
            "{what}: {}",
            response.body
        );
        assert_eq!(response.body, "", "{what}: 202 must have an empty body");
    }
    let response = session
        .post(&jsonrpc_request("p-1", "ping", json!({})))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert!(
        response
            .content_type()
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        response.content_type()
    );
    assert_eq!(
        response.json(),
        json!({ "jsonrpc": "2.0", "id": "p-1", "result": {} })
    );
}

// ---------------------------------------------------------------------------------------
// JSON or SSE, resumption, the GET stream
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_with_progress_streams_sse_with_a_priming_event_first() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let response = session
        .post(&jsonrpc_request(
            1,
            "tools/call",
            json!({ "name": "alpha__test_tool_with_progress", "_meta": { "progressToken": "tok-1" } }),
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert!(
        response.is_sse(),
        "expected SSE, got {:?}",
        response.content_type()
    );
    let events = response.sse_events();
    assert!(events.len() >= 2, "{}", response.body);

    let priming = &events[0];
    assert!(
        priming.id.as_deref().is_some_and(|id| !id.is_empty()),
        "the first event must carry an id: {priming:?}"
    );
    assert_eq!(
        priming.data, "",
        "the first event must have empty data: {priming:?}"
    );

    let messages: Vec<Value> = events[1..].iter().map(SseEvent::json).collect();
    let (last, before) = messages.split_last().expect("a response");
    assert_eq!(last["id"], 1, "the response comes last: {last}");
    assert_eq!(
        last["result"]["content"][0]["text"], "Tool with progress executed successfully",
        "{last}"
    );
    assert_eq!(before.len(), 3, "three progress notifications: {before:?}");
    for (n, progress) in before.iter().enumerate() {
        assert_eq!(progress["method"], "notifications/progress", "{progress}");
        assert_eq!(progress["params"]["progressToken"], "tok-1", "{progress}");
        assert_eq!(
            progress["params"]["progress"],
            [0.0, 50.0, 100.0][n],
            "{progress}"
        );
    }
    for event in &events {
        assert!(event.id.is_some(), "every event has an id: {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tool_answers_with_json() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let response = session
        .post(&call(1, "alpha__echo", json!({ "text": "plain" })))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert!(
        response
            .content_type()
            .is_some_and(|ct| ct.starts_with("application/json")),
        "expected application/json, got {:?}",
        response.content_type()
    );
    let message = response.json();
    assert_eq!(message["id"], 1, "{message}");
    assert_eq!(
        message["result"]["content"][0]["text"], "plain",
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_with_last_event_id() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let mut headers = session_headers(&session);
    headers.push(("content-type", "application/json"));
    headers.push(("accept", "application/json, text/event-stream"));

    // Start a streaming call, read the priming event, and lose the connection.
    let request = jsonrpc_request(
        "a",
        "tools/call",
        json!({ "name": "alpha__test_tool_with_progress", "_meta": { "progressToken": "tok-a" } }),
    );
    let mut stream = http
        .open_stream(Method::POST, &headers, Some(request.to_string()))
        .await;
    assert_eq!(stream.status, StatusCode::OK);
    let priming = stream.next_event(WAIT).await.expect("a priming event");
    assert_eq!(priming.data, "", "{priming:?}");
    let last_event_id = priming.id.clone().expect("the priming event has an id");
    stream.close();

    // Another stream of the same session runs to completion meanwhile.
    let other = session
        .post(&jsonrpc_request(
            "b",
            "tools/call",
            json!({ "name": "alpha__test_tool_with_progress", "_meta": { "progressToken": "tok-b" } }),
        ))
        .await;
    assert!(other.response(&json!("b")).is_some(), "{}", other.body);

    // Resume the first one.
    let mut get = session_headers(&session);
    get.push(("accept", "text/event-stream"));
    get.push(("last-event-id", &last_event_id));
    let mut resumed = http.open_stream(Method::GET, &get, None).await;
    assert_eq!(resumed.status, StatusCode::OK);
    let events = read_to_end(&mut resumed).await;
    let messages: Vec<Value> = events
        .iter()
        .filter(|e| !e.data.is_empty())
        .map(SseEvent::json)
        .collect();
    for message in &messages {
        assert_ne!(message["id"], "b", "a message of another stream: {message}");
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "tok-a", "{message}");
        }
    }
    let responses: Vec<&Value> = messages
        .iter()
        .filter(|m| m.get("result").is_some() || m.get("error").is_some())
        .collect();
    assert_eq!(responses.len(), 1, "exactly one response: {messages:?}");
    assert_eq!(responses[0]["id"], "a", "{messages:?}");
    assert_eq!(
        responses[0]["result"]["content"][0]["text"],
        "Tool with progress executed successfully"
    );
    assert_eq!(
        messages.last(),
        Some(responses[0]),
        "the response ends the stream"
    );
    let progress = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert_eq!(
        progress, 3,
        "every progress after the priming event: {messages:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.id.as_deref() != Some(&last_event_id)),
        "the event named by Last-Event-ID is not replayed: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_stream_hears_tools_list_changed_and_the_list_shows_the_prefixed_name() {
    let gateway = two_stdio_upstreams().await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let names = |tools: &Value| -> Vec<String> {
        tools["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect()
    };
    let before = session.call(1, "tools/list", json!({})).await;
    assert!(
        !names(&before)
            .iter()
            .any(|n| n.ends_with("test_dynamic_tool")),
        "{before}"
    );

    let mut stream = session.get_stream().await;
    assert_eq!(stream.status, StatusCode::OK);
    assert!(
        stream
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{:?}",
        stream.headers
    );

    let response = session
        .post(&call(
            2,
            "alpha__set_dynamic_tool",
            json!({ "enabled": true }),
        ))
        .await;
    assert_eq!(tool_text(&response, 2), "test_dynamic_tool enabled: true");

    let changed = stream
        .next_message(WAIT)
        .await
        .expect("the GET stream ended");
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert!(changed.get("id").is_none(), "{changed}");

    let after = session.call(3, "tools/list", json!({})).await;
    let after = names(&after);
    assert!(
        after.contains(&"alpha__test_dynamic_tool".to_owned()),
        "{after:?}"
    );
    assert!(
        !after.contains(&"beta__test_dynamic_tool".to_owned()),
        "{after:?}"
    );
    assert!(
        !after.contains(&"test_dynamic_tool".to_owned()),
        "{after:?}"
    );
    let response = session
        .post(&call(4, "alpha__test_dynamic_tool", json!({})))
        .await;
    assert_eq!(tool_text(&response, 4), "This is a dynamically added tool");
}

// ---------------------------------------------------------------------------------------
// Cancellation, shutdown, DELETE
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_in_flight_call_answers_it_with_request_cancelled() {
    let gateway =
        Gateway::start(&format!("{}{}", server_toml(), stdio_fixture_toml("alpha"))).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    // The call would sleep for a minute, longer than any bound below.
    let sleeper = {
        let session = session.clone();
        tokio::spawn(async move {
            session
                .post(&call(7, "alpha__sleep", json!({ "ms": 60_000 })))
                .await
        })
    };
    // The client cannot see when the gateway has the request, so it repeats the
    // (idempotent) cancellation until the call is answered.
    let cancel = jsonrpc_notification(
        "notifications/cancelled",
        json!({ "requestId": 7, "reason": "the user changed their mind" }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleeper.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the cancelled call was not answered"
        );
        let ack = session.post(&cancel).await;
        assert_eq!(ack.status, StatusCode::ACCEPTED, "{}", ack.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = sleeper.await.expect("the call task panicked");
    let error = rpc_error(&response, 7);
    assert_eq!(error["code"], -32800, "{error}");

    // The session and the upstream are still fine.
    let response = session
        .post(&call(8, "alpha__echo", json!({ "text": "after" })))
        .await;
    assert_eq!(tool_text(&response, 8), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_call_finish_then_exits_0_leaving_no_children() {
    let marker = unique_marker("sigterm");
    let config = format!(
        "{}{}",
        server_toml(),
        marked_stdio_upstream("alpha", &marker)
    );
    let mut gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;

    // The call is the session's first message to `alpha`, so the upstream process starts
    // for it: once it runs, the call is being handled.
    let sleeper = {
        let session = session.clone();
        tokio::spawn(async move {
            session
                .post(&call(1, "alpha__sleep", json!({ "ms": 1500 })))
                .await
        })
    };
    // A client also listens on the GET stream; shutdown must end it, not wait for it.
    let mut listener = session.get_stream().await;
    assert_eq!(listener.status, StatusCode::OK);
    gateway.wait_for_log("started stdio upstream", WAIT).await;
    eventually("the stdio upstream runs", || {
        !processes_with_arg(&marker).is_empty()
    })
    .await;

    gateway.signal(libc::SIGTERM);
    // Once draining, the gateway accepts no new connections.
    gateway.wait_for_log("shutting down", WAIT).await;
    let late = tokio::net::TcpStream::connect(gateway.addr()).await;
    assert!(
        late.is_err(),
        "a new connection was accepted after shutdown began"
    );
    let status = match gateway.wait_exit(SHUTDOWN_TIMEOUT).await {
        Some(status) => status,
        None => panic!(
            "the gateway did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n--- log ---\n{}",
            gateway.logs()
        ),
    };
    read_to_end(&mut listener).await;
    let response = sleeper.await.expect("the call task panicked");
    assert_eq!(tool_text(&response, 1), "slept 1500 ms");
    assert!(status.success(), "gateway exited with {status}");
    assert_eq!(status.code(), Some(0));
    let left = processes_with_arg(&marker);
    assert!(
        left.is_empty(),
        "upstream processes outlived the gateway: {left:?}\n--- gateway log ---\n{}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_the_session_and_its_stdio_upstream_process() {
    let marker = unique_marker("delete");
    let config = format!(
        "{}{}",
        server_toml(),
        marked_stdio_upstream("alpha", &marker)
    );
    let gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let response = session
        .post(&call(1, "alpha__echo", json!({ "text": "hi" })))
        .await;
    assert_eq!(tool_text(&response, 1), "hi");
    let running = processes_with_arg(&marker);
    assert_eq!(
        running.len(),
        1,
        "one upstream process for the session: {running:?}"
    );

    let deleted = session.delete().await;
    assert!(deleted.status.is_success(), "DELETE: {deleted:?}");
    eventually("the session's upstream process is gone", || {
        processes_with_arg(&marker).is_empty()
    })
    .await;
    let after = session.post(&jsonrpc_request(2, "ping", json!({}))).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND, "{}", after.body);
}

/// The gateway's connection threads (`portcullis-conn`), from `/proc`.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim() == "portcullis-conn")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_how_many_threads_serve() {
    let config = format!(
        "{}\nworker-threads = 3\n\n{}",
        server_toml().trim_end(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let result = session.call(2, "tools/list", json!({})).await;
    assert!(result["tools"].is_array(), "{result}");
    assert_eq!(worker_threads(gateway.pid()), 3);
}
