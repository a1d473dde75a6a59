//! Pre-initialized plugins (gateway/src/policy/snapshot.rs): fresh instances start from the
//! state a plugin's `init` left, never from what an earlier call wrote, before and after the
//! gateway swaps in the pre-initialized component; a restart takes it from the compile cache.

use std::time::Duration;

use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, RawSession, TempDir, server_toml, stdio_fixture_toml, toml_str,
};
use serde_json::{Value, json};

/// Pre-initialization compiles the plugin twice more, in the background (a debug build's
/// Cranelift on a loaded machine is slow).
const PREINIT: Duration = Duration::from_secs(60);

/// `remember` (tests/plugins/chaos) on `tools/call` of `echo`: it keeps 64 KiB of memory per
/// call it has seen and sets `text` to `calls-seen-<n>`.
fn remember(extra: &str) -> String {
    format!(
        "{extra}\n[config]\nmode = \"remember\"\nmethods = [\"tools/call\"]\ntargets = [\"echo\"]\nargument = \"text\"\n"
    )
}

/// A gateway on `plugins`, with its compile cache in `cache`.
async fn start(plugins: &PluginDir, cache: &TempDir) -> (Gateway, RawSession) {
    let config = format!(
        "{}{}cache = {}\n\n{}",
        server_toml(),
        plugins.policy_toml(),
        toml_str(&cache.path().join("cc").to_string_lossy()),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    (gateway, session)
}

/// What `echo` said back for a call made with `text = "sent"`.
async fn echo(session: &RawSession, id: i64) -> String {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": "alpha__echo", "arguments": { "text": "sent" } } });
    let resp = session.post(&body).await;
    let v: Value = resp
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body));
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("not an echo: {v}"))
        .to_string()
}

fn preinit_line(logs: &str) -> &str {
    logs.lines()
        .find(|l| l.contains("plugin pre-initialized"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_never_see_an_earlier_calls_memory() {
    let plugins = PluginDir::new();
    plugins.add("remember", "chaos", &remember(""));
    let cache = TempDir::new();
    let (gateway, session) = start(&plugins, &cache).await;

    // Before it is pre-initialized (which starts after the plugin's 64th call; the
    // compilation runs in the background meanwhile), every call starts clean.
    for id in 1..=70 {
        assert_eq!(echo(&session, id).await, "calls-seen-1");
    }
    let logs = gateway
        .wait_for_log("plugin pre-initialized", PREINIT)
        .await;
    assert!(
        preinit_line(&logs).contains("cached=false"),
        "the first start makes it: {logs}"
    );
    // From the pre-initialized component: the state after init (the config is there: the
    // plugin acts), nothing of the calls before.
    for id in 71..=80 {
        assert_eq!(echo(&session, id).await, "calls-seen-1");
    }
    drop(gateway);

    // A restart with the same plugin and sidecar takes it from the compile cache at load,
    // before any call.
    let (gateway, session) = start(&plugins, &cache).await;
    let logs = gateway
        .wait_for_log("plugin pre-initialized", PREINIT)
        .await;
    assert!(preinit_line(&logs).contains("cached=true"), "{logs}");
    for id in 1..=5 {
        assert_eq!(echo(&session, id).await, "calls-seen-1");
    }
}

/// A plugin whose `init` is expensive is pre-initialized once its calls took 100 ms
/// altogether, long before its 64th call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expensive_init_is_snapshotted_after_a_few_calls() {
    let plugins = PluginDir::new();
    plugins.add(
        "slow-init",
        "chaos",
        &remember("[limits]\ntimeout = \"2s\"\n").replace("[config]\n", "[config]\ninit-ms = 40\n"),
    );
    let cache = TempDir::new();
    let (gateway, session) = start(&plugins, &cache).await;
    // Each call runs the 40 ms init in its instance until the snapshot is ready: 100 ms of
    // calls come after three; 10 are well short of the 64 that would ask otherwise.
    for id in 1..=10 {
        assert_eq!(echo(&session, id).await, "calls-seen-1");
    }
    let logs = gateway
        .wait_for_log("plugin pre-initialized", PREINIT)
        .await;
    assert!(preinit_line(&logs).contains("slow-init"), "{logs}");
    for id in 11..=15 {
        assert_eq!(echo(&session, id).await, "calls-seen-1");
    }
}

/// The same plugin reused (`warm`) does remember: the test above would see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_instance_remembers_earlier_calls() {
    let plugins = PluginDir::new();
    plugins.add("remember", "chaos", &remember("warm = 1000"));
    let cache = TempDir::new();
    let (_gateway, session) = start(&plugins, &cache).await;
    let mut seen = Vec::new();
    for id in 1..=6 {
        seen.push(echo(&session, id).await);
    }
    assert!(
        seen.iter().any(|s| s != "calls-seen-1"),
        "a reused instance keeps what earlier calls wrote: {seen:?}"
    );
}

/// A sidecar may turn pre-initialization off; calls are just as isolated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preinit_off_runs_init_in_every_instance() {
    let plugins = PluginDir::new();
    plugins.add("remember", "chaos", &remember("preinit = false"));
    let cache = TempDir::new();
    let (_gateway, session) = start(&plugins, &cache).await;
    for id in 1..=70 {
        assert_eq!(echo(&session, id).await, "calls-seen-1");
    }
}
