//! The `route` plugin through the real binary, in front of two fixture upstreams (`alpha`
//! over stdio, `beta` over HTTP; `whoami` says which one answered): routing by tool name,
//! caller and argument, weighted and sticky splits, per-caller catalogs, shadow copies.

use std::time::Duration;

use portcullis_tests::harness::{
    Fixture, Gateway, PluginDir, RawHttp, RawSession, server_toml, sha256_hex, stdio_fixture_toml,
};
use serde_json::{Value, json};

const ALICE: &str = "pk_alice_0123456789abcdefghijklmnopqrstuvwxyzABC";
const BOB: &str = "pk_bob_0123456789abcdefghijklmnopqrstuvwxyzABCDE";
const CAROL: &str = "pk_carol_0123456789abcdefghijklmnopqrstuvwxyzABC";

/// alice: tenant acme, role dev; bob: tenant globex, role dev; carol: tenant acme, role ops.
fn authn_sidecar() -> String {
    format!(
        "[config]\nresource-metadata = \"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"\n\
         [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"alice\"\ntenant = \"acme\"\nroles = [\"dev\"]\n\
         [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"bob\"\ntenant = \"globex\"\nroles = [\"dev\"]\n\
         [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"carol\"\ntenant = \"acme\"\nroles = [\"ops\"]\n",
        sha256_hex(ALICE),
        sha256_hex(BOB),
        sha256_hex(CAROL)
    )
}

/// A gateway in front of `alpha` (stdio) and `beta` (HTTP) with authn and route (`config`
/// is the route sidecar's `[config]` body).
async fn gateway(config: &str) -> (Gateway, PluginDir, Fixture) {
    let beta = Fixture::http("beta").await;
    let plugins = PluginDir::new();
    plugins.add("authn", "authn", &authn_sidecar()).add(
        "route",
        "route",
        &format!("[config]\n{config}"),
    );
    let toml = format!(
        "{}{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta")
    );
    (Gateway::start(&toml).await, plugins, beta)
}

async fn session(gateway: &Gateway, key: &str) -> RawSession {
    let auth = format!("Bearer {key}");
    let (resp, session) = RawHttp::new(gateway.url())
        .initialize(&[("authorization", &auth)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    session
}

async fn call(s: &RawSession, id: i64, tool: &str, args: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
                       "params": { "name": tool, "arguments": args } });
    let resp = s.post(&body).await;
    resp.response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body))
}

/// The upstream that answered a `whoami`.
async fn who_answers(s: &RawSession, id: i64, tool: &str, args: Value) -> String {
    let r = call(s, id, tool, args).await;
    r["result"]["structuredContent"]["server"]
        .as_str()
        .unwrap_or_else(|| panic!("not a whoami answer: {r}"))
        .to_string()
}

async fn tool_names(s: &RawSession, id: i64) -> Vec<String> {
    let list = s.call(id, "tools/list", json!({})).await;
    list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_routed_by_tool_name_caller_and_argument() {
    let (gateway, _plugins, _beta) = gateway(
        "[[config.routes]]\nname = \"eu-argument\"\ntools = [\"whoami\"]\narguments = { region = \"eu-*\" }\nupstream = \"beta\"\n\
         [[config.routes]]\nname = \"globex-tenant\"\ntenants = [\"globex\"]\ntools = [\"whoami\"]\nupstream = \"beta\"\n\
         [[config.routes]]\nname = \"ops-by-name\"\nroles = [\"ops\"]\ntargets = [\"alpha__who*\"]\nupstream = \"beta\"\n\
         [[config.routes]]\nname = \"echo-everywhere\"\ntargets = [\"beta__echo\"]\nupstream = \"alpha\"\n",
    )
    .await;
    let alice = session(&gateway, ALICE).await;
    let bob = session(&gateway, BOB).await;
    let carol = session(&gateway, CAROL).await;

    // No route matches alice's plain call: the catalog decides.
    assert_eq!(
        who_answers(&alice, 1, "alpha__whoami", json!({})).await,
        "alpha"
    );
    assert_eq!(
        who_answers(&alice, 2, "beta__whoami", json!({})).await,
        "beta"
    );
    // By argument value.
    assert_eq!(
        who_answers(&alice, 3, "alpha__whoami", json!({ "region": "eu-west" })).await,
        "beta"
    );
    assert_eq!(
        who_answers(&alice, 4, "alpha__whoami", json!({ "region": "us-east" })).await,
        "alpha"
    );
    // By tenant.
    assert_eq!(
        who_answers(&bob, 5, "alpha__whoami", json!({})).await,
        "beta"
    );
    // By role and client-facing name pattern.
    assert_eq!(
        who_answers(&carol, 6, "alpha__whoami", json!({})).await,
        "beta"
    );
    // To the other upstream, keeping the tool's own name.
    let echoed = call(&alice, 7, "beta__echo", json!({ "text": "via alpha" })).await;
    assert_eq!(
        echoed["result"]["content"][0]["text"], "via alpha",
        "{echoed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_split_sends_its_share_and_sticky_callers_stay() {
    let (gateway, _plugins, _beta) = gateway(
        "[[config.routes]]\nname = \"sticky\"\nroles = [\"ops\"]\ntools = [\"whoami\"]\nsticky = \"session\"\n\
         split = [{ upstream = \"alpha\", weight = 50 }, { upstream = \"beta\", weight = 50 }]\n\
         [[config.routes]]\nname = \"canary\"\ntools = [\"whoami\"]\n\
         split = [{ upstream = \"alpha\", weight = 80 }, { upstream = \"beta\", weight = 20 }]\n",
    )
    .await;
    let alice = session(&gateway, ALICE).await;
    const CALLS: i64 = 400;
    let mut beta = 0;
    for i in 0..CALLS {
        if who_answers(&alice, i, "alpha__whoami", json!({})).await == "beta" {
            beta += 1;
        }
    }
    // Binomial(400, 0.2): mean 80, sd 8. Five sd either way fails once in ~1.7 million runs.
    assert!((40..=120).contains(&beta), "{beta} of {CALLS} went to beta");

    // Sticky by session: every call of a session lands on one side; sessions spread.
    let mut sides = std::collections::BTreeSet::new();
    for s in 0..16 {
        let carol = session(&gateway, CAROL).await;
        let first = who_answers(&carol, 1, "alpha__whoami", json!({})).await;
        for i in 2..8 {
            assert_eq!(
                who_answers(&carol, i, "alpha__whoami", json!({})).await,
                first,
                "session {s} moved"
            );
        }
        sides.insert(first);
    }
    // All 16 sessions on one side of a 50/50 split: once in 32768 runs.
    assert_eq!(sides.len(), 2, "{sides:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_rewritten_per_caller_and_calls_follow_it() {
    let (gateway, _plugins, _beta) = gateway(
        "[[config.catalog]]\ntool = \"alpha__echo\"\nrename = \"say\"\ndescription = \"Says it back.\"\n\
         [[config.catalog]]\ntool = \"alpha__whoami\"\naliases = [\"me\"]\n\
         [[config.catalog]]\ntool = \"alpha__sleep\"\nhide = true\n\
         [[config.catalog]]\ntool = \"beta__*\"\nhide = true\n\
         [[config.catalog]]\ntenants = [\"globex\"]\ntool = \"alpha__crash\"\nhide = true\n",
    )
    .await;
    let alice = session(&gateway, ALICE).await;
    let names = tool_names(&alice, 1).await;
    for shown in ["say", "me", "alpha__whoami", "alpha__crash"] {
        assert!(
            names.iter().any(|n| n == shown),
            "{shown} missing: {names:?}"
        );
    }
    for gone in ["alpha__echo", "alpha__sleep"] {
        assert!(!names.iter().any(|n| n == gone), "{gone} listed: {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("beta__")), "{names:?}");
    let list = alice.call(2, "tools/list", json!({})).await;
    let say = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "say")
        .unwrap();
    assert_eq!(say["description"], "Says it back.");
    assert_eq!(say["inputSchema"]["properties"]["text"]["type"], "string");

    // New names are callable.
    let said = call(&alice, 3, "say", json!({ "text": "renamed" })).await;
    assert_eq!(said["result"]["content"][0]["text"], "renamed", "{said}");
    assert_eq!(who_answers(&alice, 4, "me", json!({})).await, "alpha");
    assert_eq!(
        who_answers(&alice, 5, "alpha__whoami", json!({})).await,
        "alpha"
    );
    // Renamed and hidden originals are unknown tools.
    for (id, name) in [(6, "alpha__echo"), (7, "alpha__sleep"), (8, "beta__whoami")] {
        let r = call(&alice, id, name, json!({ "text": "x", "ms": 1 })).await;
        assert_eq!(r["error"]["code"], -32602, "{name}: {r}");
        assert_eq!(r["error"]["message"], format!("Unknown tool: {name}"));
    }
    // Per tenant: globex does not see or reach crash; acme does see it.
    let bob = session(&gateway, BOB).await;
    assert!(
        !tool_names(&bob, 1)
            .await
            .iter()
            .any(|n| n == "alpha__crash")
    );
    let r = call(&bob, 2, "alpha__crash", json!({})).await;
    assert_eq!(r["error"]["message"], "Unknown tool: alpha__crash", "{r}");
}

/// The gateway sends a copy of a call to the `shadow` upstream and discards its answer. The
/// fixture's `set_dynamic_tool` changes its own tool list, so the copy is visible in the
/// shadow upstream's tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_copy_reaches_the_second_upstream() {
    let (gateway, _plugins, _beta) = gateway(
        "[[config.routes]]\nname = \"mirror\"\ntools = [\"set_dynamic_tool\"]\nupstreams = [\"alpha\"]\nshadow = \"beta\"\n",
    )
    .await;
    let alice = session(&gateway, ALICE).await;
    assert!(
        !tool_names(&alice, 1)
            .await
            .iter()
            .any(|n| n.ends_with("test_dynamic_tool"))
    );
    let r = call(
        &alice,
        2,
        "alpha__set_dynamic_tool",
        json!({ "enabled": true }),
    )
    .await;
    assert_eq!(
        r["result"]["content"][0]["text"], "test_dynamic_tool enabled: true",
        "the client gets the primary's answer: {r}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = tool_names(&alice, 3).await;
        if names.iter().any(|n| n == "beta__test_dynamic_tool") {
            assert!(
                names.iter().any(|n| n == "alpha__test_dynamic_tool"),
                "{names:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "beta never got the shadow copy: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
