//! The `rate-limit` plugin through the real binary: limits per caller and tool, HTTP 429 with
//! `Retry-After` and an honest `retryAfterMs`, atomic under concurrency, and counters that
//! survive a hot reload of the plugin.

use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, RawSession, sha256_hex, stdio_fixture_toml,
};
use serde_json::{Value, json};

const ALICE: &str = "pk_alice_0123456789abcdefghijklmnopqrstuvwxyzABC";
const BOB: &str = "pk_bob_0123456789abcdefghijklmnopqrstuvwxyzABCDE";
const WAIT: Duration = Duration::from_secs(15);

/// `authn` with API keys for alice (tenant acme) and bob (tenant globex).
fn authn_sidecar() -> String {
    format!(
        "[config]\nresource-metadata = \"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"\n\
         [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"alice\"\ntenant = \"acme\"\n\
         [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"bob\"\ntenant = \"globex\"\n",
        sha256_hex(ALICE),
        sha256_hex(BOB)
    )
}

/// A gateway in front of the stdio fixture `alpha`, with authn and rate-limit (`limits` is
/// the rate-limit sidecar).
async fn gateway(limits: &str) -> (Gateway, PluginDir) {
    let plugins = PluginDir::new();
    plugins
        .add("authn", "authn", &authn_sidecar())
        .add("rate-limit", "rate-limit", limits);
    (
        Gateway::start_with_plugins(&plugins, &stdio_fixture_toml("alpha")).await,
        plugins,
    )
}

async fn session(gateway: &Gateway, key: &str) -> RawSession {
    let auth = format!("Bearer {key}");
    let (resp, session) = RawHttp::new(gateway.url())
        .initialize(&[("authorization", &auth)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    session
}

/// A tools/call: (HTTP status, `Retry-After`, the JSON-RPC response).
async fn call(s: &RawSession, id: i64, tool: &str) -> (u16, Option<String>, Value) {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
                       "params": { "name": tool, "arguments": { "text": "hi" } } });
    let resp = s.post(&body).await;
    let message = resp
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body));
    (
        resp.status.as_u16(),
        resp.header("retry-after").map(str::to_string),
        message,
    )
}

fn passed(r: &(u16, Option<String>, Value)) -> bool {
    r.0 == 200 && r.2["result"].is_object()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_per_caller_and_tool_and_refusals_say_when_to_retry() {
    let (gateway, _plugins) = gateway(
        "[config]\n[[config.limits]]\nname = \"caller-tool\"\nper = [\"subject\", \"tool\"]\nrate = \"3/6s\"\n",
    )
    .await;
    let alice = session(&gateway, ALICE).await;
    let bob = session(&gateway, BOB).await;

    let started = Instant::now();
    for i in 0..3 {
        let r = call(&alice, i, "alpha__echo").await;
        assert!(passed(&r), "call {i}: {r:?}");
    }
    let (status, retry_after, refused) = call(&alice, 10, "alpha__echo").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], -32029, "{refused}");
    let retry_ms = refused["error"]["data"]["retryAfterMs"].as_u64().unwrap();
    assert_eq!(refused["error"]["data"]["limit"], "caller-tool");
    // Three at once, then one every two seconds: the next is two seconds after the first.
    assert!(
        retry_ms > 0 && u128::from(retry_ms) <= 2_000 - elapsed.as_millis().min(1_999) + 200,
        "{retry_ms} ms after {elapsed:?}"
    );
    let header: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert_eq!(
        header,
        retry_ms.div_ceil(1000),
        "Retry-After is whole seconds, rounded up"
    );

    // Another tool and another caller have their own buckets.
    assert!(passed(&call(&alice, 11, "alpha__whoami").await));
    for i in 0..3 {
        assert!(passed(&call(&bob, 20 + i, "alpha__echo").await), "bob {i}");
    }
    assert_eq!(call(&bob, 30, "alpha__echo").await.0, 429);

    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_millis(retry_ms + 20)).await;
    let again = call(&alice, 40, "alpha__echo").await;
    assert!(passed(&again), "after waiting {retry_ms} ms: {again:?}");
}

/// Many callers at once against one bucket: exactly `burst` pass, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_never_pass_more_than_the_limit() {
    let (gateway, _plugins) = gateway(
        "[config]\n[[config.limits]]\nname = \"tenant\"\nper = [\"tenant\"]\nrate = \"5/min\"\n",
    )
    .await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(session(&gateway, ALICE).await);
    }
    let calls = (0..24).map(|i| {
        let s = sessions[i % sessions.len()].clone();
        async move { call(&s, i as i64, "alpha__echo").await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| passed(r)).count();
    let limited = results
        .iter()
        .filter(|r| r.0 == 429 && r.2["error"]["code"] == -32029)
        .count();
    assert_eq!((ok, limited), (5, 19), "{results:?}");
    // Another tenant is not affected.
    let bob = session(&gateway, BOB).await;
    assert!(passed(&call(&bob, 100, "alpha__echo").await));
}

/// A new sidecar reloads the plugin; its counters are the gateway's and carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_reload_does_not_reset_the_counters() {
    // One request back every 30 s: time enough for two reloads.
    let limit = "[[config.limits]]\nname = \"caller\"\nper = [\"subject\"]\nrate = \"2/min\"\n";
    let (gateway, plugins) = gateway(&format!("[config]\n{limit}")).await;
    let alice = session(&gateway, ALICE).await;
    for i in 0..2 {
        assert!(passed(&call(&alice, i, "alpha__echo").await), "call {i}");
    }
    assert_eq!(call(&alice, 5, "alpha__echo").await.0, 429);

    // The same limit, answered in-band from now on: proves the new version is the one
    // answering.
    let loads = gateway.logs().matches("plugin loaded").count();
    plugins.set_sidecar(
        "rate-limit",
        &format!("priority = 5\n[config]\nhttp-status = 200\n{limit}"),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.logs().matches("plugin loaded").count() <= loads {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, retry_after, refused) = call(&alice, 6, "alpha__echo").await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(retry_after, None);
    assert_eq!(refused["error"]["code"], -32029, "still limited: {refused}");

    // The .wasm replaced by a new build (here: the same build rewritten with a custom
    // section appended, so its hash changes) reloads too, and the count still carries on.
    let mut wasm = std::fs::read(portcullis_tests::harness::plugin_wasm("rate-limit")).unwrap();
    wasm.extend_from_slice(&[0, 9, 8, b'r', b'e', b'l', b'o', b'a', b'd', b'0', b'1']);
    let loads = gateway.logs().matches("plugin loaded").count();
    plugins.write_wasm("rate-limit", &wasm);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.logs().matches("plugin loaded").count() <= loads {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&alice, 7, "alpha__echo").await.2["error"]["code"],
        -32029
    );
    // Bob never called: his bucket is full.
    let bob = session(&gateway, BOB).await;
    assert!(passed(&call(&bob, 8, "alpha__echo").await));
}
