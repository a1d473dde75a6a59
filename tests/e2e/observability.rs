//! Observability through the real binary: OpenTelemetry traces received by an in-test
//! OTLP/HTTP collector (request → plugin → upstream spans under the client's trace id, and
//! the trace context the upstreams receive), the admin API and its token, `portcullis
//! status`, the health probes on both listeners, and JSON log lines.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use portcullis_tests::harness::{
    Fixture, Gateway, PluginDir, RawHttp, TempDir, bin_path, init_tls, server_toml, session_tag,
    stdio_fixture_toml, toml_str,
};
use prost::Message as _;
use serde_json::{Value, json};

const TOKEN: &str = "e2e-admin-token-0123456789";
const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_A: &str = "00f067aa0ba902b7";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_B: &str = "b7ad6b7169203331";

/// Spans an in-test OTLP/HTTP receiver got, with their resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn spans(&self) -> Vec<(String, Span)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A minimal OTLP/HTTP collector: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, answered with an empty (successful) response.
async fn collector() -> (String, Received, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("collector address");
    let received = Received::default();
    let store = received.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let store = store.clone();
                async move {
                    let ok = req.uri().path() == "/v1/traces"
                        && req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/x-protobuf");
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let decoded = body
                        .ok()
                        .filter(|_| ok)
                        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
                    let status = match decoded {
                        Some(export) => {
                            let mut spans = store.0.lock().unwrap_or_else(PoisonError::into_inner);
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .as_ref()
                                    .and_then(|r| string_attr(&r.attributes, "service.name"))
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for span in ss.spans {
                                        spans.push((service.clone(), span));
                                    }
                                }
                            }
                            StatusCode::OK
                        }
                        None => StatusCode::BAD_REQUEST,
                    };
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        "content-type",
                        "application/x-protobuf".parse().expect("header"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), received, task)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin API's URL, from the line `portcullis serve` prints after the listening line.
async fn admin_url(gateway: &Gateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stdout = gateway.stdout();
        if let Some(url) = stdout
            .lines()
            .find_map(|l| l.strip_prefix("portcullis admin listening on "))
        {
            return url.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no admin listening line in stdout:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn admin_toml() -> String {
    "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${E2E_ADMIN_TOKEN}\"\n\n".into()
}

fn allow_all(plugins: &PluginDir) {
    plugins.add("gatekeeper", "chaos", "[config]\nmode = \"allow\"\n");
}

/// The gateway with one allow-all policy in `plugins`, the stdio fixture and the admin API
/// (token [`TOKEN`]), and the admin API's URL.
async fn with_admin_api(plugins: &PluginDir) -> (Gateway, String) {
    allow_all(plugins);
    let config = format!(
        "{}{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        admin_toml(),
        stdio_fixture_toml("alpha"),
    );
    let gateway = Gateway::start_with_env(&config, &[("E2E_ADMIN_TOKEN", TOKEN)]).await;
    let admin = admin_url(&gateway).await;
    (gateway, admin)
}

/// Calls a tool over raw HTTP in `session` with extra headers and params, returning the
/// JSON-RPC response.
async fn call_tool(
    http: &RawHttp,
    session: &str,
    id: i64,
    name: &str,
    meta: Option<Value>,
    headers: &[(&str, &str)],
) -> Value {
    let mut params = json!({ "name": name, "arguments": {} });
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params });
    let mut all = vec![
        ("mcp-session-id", session),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    all.extend_from_slice(headers);
    let resp = http.post(&body, &all).await;
    resp.response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body))
}

/// The `traceparent` an upstream received, split into (trace id, parent span id).
fn split_traceparent(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_runs_through_plugin_and_upstream_spans_to_the_collector() {
    let (endpoint, received, collector_task) = collector().await;
    let beta = Fixture::http("beta").await;
    let plugins = PluginDir::new();
    allow_all(&plugins);
    let config = format!(
        "{}{}[tracing]\notlp-endpoint = {}\nservice-name = \"portcullis-e2e\"\n\n{}{}",
        server_toml(),
        plugins.policy_toml(),
        toml_str(&endpoint),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta"),
    );
    let mut gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    let sid = session.session_id.clone().expect("a session id");

    // Trace A: the client's context in the HTTP header; an HTTP upstream.
    let traceparent_a = format!("00-{TRACE_A}-{PARENT_A}-01");
    let answer = call_tool(
        &http,
        &sid,
        1,
        "beta__whoami",
        None,
        &[("traceparent", &traceparent_a)],
    )
    .await;
    let seen = &answer["result"]["structuredContent"];
    let tp = seen["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the HTTP upstream got no traceparent: {answer}"));
    let (trace, beta_parent) = split_traceparent(tp);
    assert_eq!(trace, TRACE_A, "the HTTP upstream is in the client's trace");
    assert_ne!(
        beta_parent, PARENT_A,
        "the gateway's own span is the parent"
    );

    // Trace B: the client's context in `_meta.traceparent` (the MCP convention); stdio.
    let traceparent_b = format!("00-{TRACE_B}-{PARENT_B}-01");
    let answer = call_tool(
        &http,
        &sid,
        2,
        "alpha__whoami",
        Some(json!({ "traceparent": traceparent_b })),
        &[],
    )
    .await;
    let meta = &answer["result"]["structuredContent"]["meta"];
    let tp = meta["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the stdio upstream got no _meta.traceparent: {answer}"));
    let (trace, alpha_parent) = split_traceparent(tp);
    assert_eq!(
        trace, TRACE_B,
        "the stdio upstream is in the client's trace"
    );
    assert_ne!(alpha_parent, PARENT_B);

    // A graceful stop flushes the exporter.
    let status = gateway.stop().await;
    assert!(status.success(), "gateway exited with {status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = received.spans();
        let in_b = spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == TRACE_B)
            .count();
        if in_b >= 3 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    collector_task.abort();
    assert!(
        spans.iter().all(|(service, _)| service == "portcullis-e2e"),
        "service.name"
    );
    let describe = || {
        spans
            .iter()
            .map(|(_, s)| {
                format!(
                    "{} {} <- {} {:?}",
                    hex(&s.trace_id),
                    s.name,
                    hex(&s.parent_span_id),
                    s.attributes.iter().map(|a| &a.key).collect::<Vec<_>>()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    for (trace_id, client_parent, upstream, tool, upstream_parent, transport) in [
        (
            TRACE_A,
            PARENT_A,
            "beta",
            "beta__whoami",
            &beta_parent,
            "tcp",
        ),
        (
            TRACE_B,
            PARENT_B,
            "alpha",
            "alpha__whoami",
            &alpha_parent,
            "pipe",
        ),
    ] {
        let in_trace: Vec<&Span> = spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        let request = in_trace
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .unwrap_or_else(|| panic!("no request span in trace {trace_id}:\n{}", describe()));
        assert_eq!(request.name, format!("tools/call {tool}"));
        assert_eq!(
            hex(&request.parent_span_id),
            client_parent,
            "request span's parent"
        );
        let a = &request.attributes;
        assert_eq!(
            string_attr(a, "mcp.method.name").as_deref(),
            Some("tools/call")
        );
        assert_eq!(string_attr(a, "gen_ai.tool.name").as_deref(), Some(tool));
        assert_eq!(
            string_attr(a, "gen_ai.operation.name").as_deref(),
            Some("execute_tool")
        );
        // The span names the session by its tag: the first 16 hex digits of the id's SHA-256.
        assert_eq!(
            string_attr(a, "mcp.session.id").as_deref(),
            Some(session_tag(&sid).as_str())
        );
        assert_eq!(
            string_attr(a, "portcullis.upstream").as_deref(),
            Some(upstream)
        );
        assert_eq!(string_attr(a, "portcullis.outcome").as_deref(), Some("ok"));

        let plugin = in_trace
            .iter()
            .find(|s| string_attr(&s.attributes, "portcullis.plugin.name").is_some())
            .unwrap_or_else(|| panic!("no plugin span in trace {trace_id}:\n{}", describe()));
        assert_eq!(
            plugin.parent_span_id, request.span_id,
            "plugin under request"
        );
        assert_eq!(plugin.name, "policy gatekeeper");
        assert_eq!(
            string_attr(&plugin.attributes, "portcullis.plugin.stage").as_deref(),
            Some("custom")
        );
        assert_eq!(
            string_attr(&plugin.attributes, "portcullis.plugin.phase").as_deref(),
            Some("request")
        );
        assert_eq!(
            string_attr(&plugin.attributes, "portcullis.plugin.verdict").as_deref(),
            Some("allow")
        );

        let call = in_trace
            .iter()
            .find(|s| s.kind == SpanKind::Client as i32)
            .unwrap_or_else(|| panic!("no upstream span in trace {trace_id}:\n{}", describe()));
        assert_eq!(
            call.parent_span_id, request.span_id,
            "upstream call under request"
        );
        assert_eq!(
            call.name, "tools/call whoami",
            "named as the upstream knows the tool"
        );
        assert_eq!(
            string_attr(&call.attributes, "portcullis.upstream").as_deref(),
            Some(upstream)
        );
        assert_eq!(
            string_attr(&call.attributes, "network.transport").as_deref(),
            Some(transport)
        );
        assert_eq!(
            &hex(&call.span_id),
            upstream_parent,
            "the upstream's traceparent names the upstream span"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_wants_its_token_and_portcullis_status_reads_it() {
    init_tls();
    let plugins = PluginDir::new();
    let (gateway, admin) = with_admin_api(&plugins).await;
    let client = reqwest::Client::new();
    let status_url = format!("{admin}/v1/status");

    let none = client
        .get(&status_url)
        .send()
        .await
        .expect("admin reachable");
    assert_eq!(none.status(), 401);
    assert!(none.headers().get("www-authenticate").is_some());
    let wrong = client
        .get(&status_url)
        .bearer_auth("e2e-admin-token-0123456788")
        .send()
        .await
        .expect("admin reachable");
    assert_eq!(wrong.status(), 401);
    let reload = client
        .post(format!("{admin}/v1/reload"))
        .send()
        .await
        .expect("admin reachable");
    assert_eq!(reload.status(), 401, "reload needs the token too");

    // Use the gateway once, so the upstream has a known state.
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    session.call(1, "tools/list", json!({})).await;

    let status: Value = client
        .get(&status_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin reachable")
        .json()
        .await
        .expect("a JSON status");
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(status["status"], "ready", "{status:#}");
    assert_eq!(status["sessions"], 1, "{status:#}");
    assert_eq!(status["upstreams"][0]["name"], "alpha");
    assert_eq!(status["upstreams"][0]["state"], "up", "{status:#}");
    assert_eq!(status["upstreams"][0]["links"], 1, "{status:#}");
    let plugin = &status["plugins"][0];
    assert_eq!(plugin["name"], "gatekeeper");
    assert_eq!(plugin["stage"], "custom");
    assert_eq!(plugin["state"], "active");
    assert_eq!(plugin["sha256"].as_str().map(str::len), Some(64));
    assert!(plugin["calls"].as_u64() >= Some(1), "{status:#}");
    assert_eq!(status["last_reload"]["active"], 1);

    let reloaded: Value = client
        .post(format!("{admin}/v1/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin reachable")
        .json()
        .await
        .expect("a JSON reload report");
    assert_eq!(reloaded["active"], 1, "{reloaded:#}");
    assert_eq!(reloaded["errors"], json!([]));
    let get_reload = client
        .get(format!("{admin}/v1/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin reachable");
    assert_eq!(get_reload.status(), 405);

    for probe in ["healthz", "readyz"] {
        let r = client
            .get(format!("{admin}/{probe}"))
            .send()
            .await
            .expect("admin reachable");
        assert_eq!(r.status(), 200, "{probe} needs no token");
    }

    // `portcullis status`: the token from the environment, a readable summary, exit 0.
    let run = status_cli(&["--admin", &admin], Some(TOKEN)).await;
    assert_eq!(run.0, Some(0), "stdout:\n{}\nstderr:\n{}", run.1, run.2);
    assert!(run.1.contains(": ready"), "{}", run.1);
    assert!(run.1.contains("alpha") && run.1.contains("up"), "{}", run.1);
    assert!(
        run.1.contains("gatekeeper") && run.1.contains("active"),
        "{}",
        run.1
    );
    let run = status_cli(
        &["--admin", &admin, "--token", "not-the-token-at-all"],
        None,
    )
    .await;
    assert_eq!(run.0, Some(2), "a refused token is exit 2: {}", run.2);
    assert!(run.2.contains("refused the token"), "{}", run.2);
    assert!(
        !run.2.contains("not-the-token-at-all"),
        "the token is not echoed"
    );
    let run = status_cli(&["--admin", "http://127.0.0.1:9"], Some(TOKEN)).await;
    assert_eq!(run.0, Some(2), "unreachable is exit 2: {}", run.2);
    // With --config, address and token come from the file (and its ${ENV}).
    let dir = TempDir::new();
    let file = dir.write(
        "admin.toml",
        &format!(
            "[admin]\nlisten = {}\ntoken = \"${{E2E_ADMIN_TOKEN}}\"\n\n{}",
            toml_str(admin.trim_start_matches("http://")),
            stdio_fixture_toml("alpha")
        ),
    );
    let run = status_cli_env(
        &["--config", &file.to_string_lossy()],
        &[("E2E_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(run.0, Some(0), "{}\n{}", run.1, run.2);

    assert!(
        !gateway.logs().contains(TOKEN),
        "the token never reaches the log"
    );
}

async fn status_cli(args: &[&str], token: Option<&str>) -> (Option<i32>, String, String) {
    match token {
        Some(t) => status_cli_env(args, &[("PORTCULLIS_ADMIN_TOKEN", t)]).await,
        None => status_cli_env(args, &[]).await,
    }
}

async fn status_cli_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(bin_path("portcullis"));
    cmd.arg("status")
        .args(args)
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("PORTCULLIS_ADMIN_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("portcullis status finished")
        .expect("portcullis status ran");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_on_both_listeners_and_a_broken_plugin_is_not_ready() {
    init_tls();
    let plugins = PluginDir::new();
    let (gateway, admin) = with_admin_api(&plugins).await;
    let main: SocketAddr = gateway.addr();
    let client = reqwest::Client::new();
    // Kubernetes probes the pod's IP: a Host the MCP endpoint would refuse (403).
    let probe = |base: String, path: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("{base}/{path}"))
                .header("host", "10.1.2.3:8080")
                .send()
                .await
                .expect("reachable");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    let main_base = format!("http://{main}");
    assert_eq!(
        probe(main_base.clone(), "healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(
        probe(main_base.clone(), "readyz").await,
        (200, "ready\n".into())
    );
    assert_eq!(
        probe(admin.clone(), "readyz").await,
        (200, "ready\n".into())
    );

    // A plugin file that never loads: the chain is not what was deployed.
    plugins.write_wasm("broken", b"not a component");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = probe(main_base.clone(), "readyz").await;
        if code == 503 {
            assert_eq!(text, "not ready: 1 plugin failed to load\n");
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed {code} {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probe(admin.clone(), "readyz").await.0, 503);
    assert_eq!(
        probe(admin.clone(), "healthz").await.0,
        200,
        "alive all the same"
    );
    let run = status_cli(&["--admin", &admin], Some(TOKEN)).await;
    assert_eq!(run.0, Some(1), "not ready is exit 1:\n{}", run.1);
    assert!(
        run.1.contains("not-ready") && run.1.contains("broken"),
        "{}",
        run.1
    );

    plugins.remove("broken");
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe(admin.clone(), "readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "readyz never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_json_object_per_line() {
    let config = format!(
        "{}[log]\nformat = \"json\"\nlevel = \"info,portcullis::session=debug\"\n\n{}",
        server_toml(),
        stdio_fixture_toml("alpha"),
    );
    let mut gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    session.call(1, "tools/list", json!({})).await;
    let status = gateway.stop().await;
    assert!(status.success());
    let logs = gateway.logs();
    let mut gateway_lines = 0;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        // The fixture's own stderr reaches the log through a gateway event, so every line
        // the process wrote is the gateway's.
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n--- all ---\n{logs}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["target"].is_string(), "{line}");
        gateway_lines += 1;
    }
    assert!(gateway_lines > 0);
    assert!(
        logs.lines()
            .any(|l| l.contains("\"message\":\"session started\"")),
        "{logs}"
    );
}
