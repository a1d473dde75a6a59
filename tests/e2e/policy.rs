//! The policy chain through the real binary: verdicts applied, hostile plugins contained,
//! load failures rejected clearly, hot reload without failed requests, state kept where it
//! should be and nowhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_tests::harness::{
    Fixture, Gateway, PluginDir, RawHttp, RawSession, check_config, initialize_request,
    server_toml, stdio_fixture_toml,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

/// A chaos plugin acting only on `tools/call` of targets containing `target`.
fn chaos(mode: &str, target: &str, extra: &str) -> String {
    format!(
        "[config]\nmode = \"{mode}\"\nmethods = [\"tools/call\"]\ntargets = [\"{target}\"]\n{extra}\n"
    )
}

async fn gateway(plugins: &PluginDir) -> (Gateway, RawSession) {
    let config = format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    (gateway, session)
}

async fn call(session: &RawSession, id: i64, tool: &str, args: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": args } });
    let resp = session.post(&body).await;
    resp.response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body))
}

fn echo_text(v: &Value) -> &str {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_deny_modify_filter_and_route() {
    let beta = Fixture::http("beta").await;
    let plugins = PluginDir::new();
    plugins
        .add(
            "deny-crash",
            "chaos",
            &chaos(
                "deny",
                "crash",
                "code = -32003\nmessage = \"crashing is not allowed\"",
            ),
        )
        .add(
            "rewrite",
            "chaos",
            &chaos(
                "modify-params",
                "echo",
                "argument = \"text\"\nvalue = \"rewritten\"",
            ),
        )
        .add(
            "hide-sleep",
            "chaos",
            "[config]\nmode = \"filter-list\"\ncontains = \"sleep\"\n",
        )
        .add(
            "to-beta",
            "chaos",
            &chaos("route", "alpha__whoami", "upstream = \"beta\""),
        );
    let config = format!(
        "{}{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta")
    );
    let gateway = Gateway::start(&config).await;
    let (_, s) = RawHttp::new(gateway.url()).initialize(&[]).await;

    let denied = call(&s, 1, "alpha__crash", json!({})).await;
    assert_eq!(denied["error"]["code"], -32003, "{denied}");
    assert_eq!(denied["error"]["message"], "crashing is not allowed");

    let echoed = call(&s, 2, "alpha__echo", json!({ "text": "original" })).await;
    assert_eq!(echo_text(&echoed), "rewritten", "{echoed}");

    let list = s.call(3, "tools/list", json!({})).await;
    let names: Vec<&str> = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(!names.iter().any(|n| n.contains("sleep")), "{names:?}");
    assert!(names.contains(&"alpha__echo"), "{names:?}");

    let who = call(&s, 4, "alpha__whoami", json!({})).await;
    assert_eq!(
        who["result"]["structuredContent"]["server"], "beta",
        "routed by policy: {who}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_level_denial_carries_status_and_headers() {
    let plugins = PluginDir::new();
    plugins.add(
        "gate",
        "chaos",
        "[config]\nmode = \"deny-http\"\nstatus = 401\nwww-authenticate = \"Bearer resource_metadata=\\\"http://x/.well-known/oauth-protected-resource\\\"\"\n",
    );
    let config = format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let resp = RawHttp::new(gateway.url())
        .post(&initialize_request(1, "2025-11-25"), &[])
        .await;
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["error"]["code"], -32004, "{}", resp.body);
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Bearer resource_metadata=")),
        "{resp:?}"
    );
}

/// Each hostile behaviour gets a clear error naming the plugin, the gateway stays healthy,
/// and the next request is served normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_closed_and_the_gateway_keeps_serving() {
    let plugins = PluginDir::new();
    let cases = [
        ("spin", "loop", "exceeded its CPU deadline"),
        ("hog", "oom", "memory limit"),
        ("trapper", "trap", "trapped"),
        ("panicker", "panic", "trapped"),
        ("bloat", "huge-output", "over its output limit"),
    ];
    for (name, mode, _) in cases {
        let sidecar = format!(
            "[limits]\ntimeout = \"100ms\"\nmemory-mib = 8\noutput-kib = 1024\n{}",
            chaos(mode, &format!("__{name}"), "")
        );
        plugins.add(name, "chaos", &sidecar);
    }
    plugins.add("chatty", "chaos", &chaos("flood", "test_simple_text", ""));
    let (gateway, s) = gateway(&plugins).await;
    for (i, (name, _, expect)) in cases.iter().enumerate() {
        // A tool name only this plugin acts on (the call never reaches an upstream).
        let r = call(&s, i as i64 + 10, &format!("alpha__{name}"), json!({})).await;
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("policy '{name}' failed")) && message.contains(expect),
            "{name}: {r}"
        );
        assert_eq!(r["error"]["data"]["plugin"], *name);
        // And the next request is served.
        let ok = call(
            &s,
            i as i64 + 100,
            "alpha__echo",
            json!({ "text": "still here" }),
        )
        .await;
        assert_eq!(echo_text(&ok), "still here", "after {name}: {ok}");
    }
    // A log flood is capped and does not fail the call.
    let flood = call(&s, 200, "alpha__test_simple_text", json!({})).await;
    assert!(flood["result"].is_object(), "{flood}");
    let logs = gateway.logs();
    assert!(logs.contains("log limit reached"), "log flood not capped");
    assert!(
        logs.lines().filter(|l| l.contains("plugin=chatty")).count() < 400,
        "log flood not capped"
    );
    for (name, _, _) in cases {
        assert!(
            logs.contains(&format!("plugin={name}")),
            "{name} failure not logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_a_failing_plugin_pass() {
    let plugins = PluginDir::new();
    plugins.add(
        "spin",
        "chaos",
        &format!(
            "fail-open = true\n[limits]\ntimeout = \"20ms\"\n{}",
            chaos("loop", "echo", "")
        ),
    );
    let (gateway, s) = gateway(&plugins).await;
    let r = call(&s, 1, "alpha__echo", json!({ "text": "passed" })).await;
    assert_eq!(echo_text(&r), "passed", "{r}");
    gateway.wait_for_log("fail-open", WAIT).await;
}

/// Fail closed at start-up: a plugin that does not load stops `serve` (non-zero, naming the
/// file and the reason) and `check` says the same. Only an explicit `on-error = "skip"`
/// starts without the broken plugins, and then the rest serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_plugins_refuse_the_start_unless_skipping_is_asked_for() {
    let plugins = PluginDir::new();
    plugins.add("good", "chaos", &chaos("deny", "crash", ""));
    plugins.add("wrong", "wrong-world", "");
    plugins.write_wasm("core", b"\0asm\x01\0\0\0");
    plugins.write_wasm("garbage", b"this is not webassembly at all");
    plugins.add("picky", "chaos", "[config]\nmode = \"reject-config\"\n");
    plugins.add("narrow", "chaos", "[phases]\nrequest = []\n");
    let reasons = [
        (
            "wrong",
            "does not implement the portcullis:policy plugin world",
        ),
        ("core", "a core WebAssembly module, not a component"),
        ("garbage", "not a WebAssembly file"),
        ("picky", "configuration rejected"),
        ("narrow", "`phases.request`: an empty list"),
    ];
    let config = format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let refused = Gateway::try_start_with_env(&config, &[])
        .await
        .expect_err("a gateway with broken plugins must not serve");
    let check = check_config(&config).await;
    assert!(!check.status.success(), "check passed: {}", check.stdout);
    for (name, why) in reasons {
        let line = format!("{name}.wasm: ");
        for (what, text) in [
            ("serve", format!("{refused:#}")),
            ("check", check.stderr.clone()),
        ] {
            assert!(
                text.lines().any(|l| l.contains(&line) && l.contains(why)),
                "{what} does not name {name}: {why}\n{text}"
            );
        }
    }

    let skipping = format!(
        "{}{}on-error = \"skip\"\n{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&skipping).await;
    let (_, s) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let logs = gateway.wait_for_log("policy chain ready", WAIT).await;
    for (name, why) in reasons {
        assert!(
            logs.lines().any(|l| l.contains("plugin rejected")
                && l.contains(&format!("plugin={name}"))
                && l.contains(why)),
            "{name}: {why}\n{logs}"
        );
    }
    let denied = call(&s, 1, "alpha__crash", json!({})).await;
    assert!(
        denied["error"].is_object(),
        "the good plugin is active: {denied}"
    );
    assert_eq!(
        echo_text(&call(&s, 2, "alpha__echo", json!({ "text": "ok" })).await),
        "ok"
    );
}

/// `[policy] required`: a required plugin (by stage or by name) missing at start-up stops
/// `serve` and fails `check`; removed while serving, the MCP endpoint answers 503 with a
/// JSON-RPC error until it is back, and never serves without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_plugin_missing_means_no_traffic() {
    let plugins = PluginDir::new();
    let guard = format!("stage = \"authz\"\n{}", chaos("deny", "crash", ""));
    plugins.add("guard", "chaos", &guard);
    let config = |required: &str| {
        format!(
            "{}{}required = {required}\n{}",
            server_toml(),
            plugins.policy_toml(),
            stdio_fixture_toml("alpha")
        )
    };
    let missing = config(r#"["authz", "audit-tagger"]"#);
    let refused = Gateway::try_start_with_env(&missing, &[])
        .await
        .expect_err("a required plugin is missing");
    assert!(
        format!("{refused:#}")
            .contains(r#"required plugin or stage "audit-tagger" is not in the chain"#),
        "{refused:#}"
    );
    let check = check_config(&missing).await;
    assert!(
        !check.status.success() && check.stderr.contains(r#""audit-tagger""#),
        "{check:?}"
    );
    let check = check_config(&config(r#"["authz", "guard"]"#)).await;
    assert!(check.status.success(), "{check:?}");
    assert!(check.stdout.contains("policy chain: guard"), "{check:?}");

    let gateway = Gateway::start(&config(r#"["authz"]"#)).await;
    let http = RawHttp::new(gateway.url());
    let (_, s) = http.initialize(&[]).await;
    assert!(call(&s, 1, "alpha__crash", json!({})).await["error"].is_object());

    plugins.remove("guard");
    gateway
        .wait_for_log("required plugins are not in the chain", WAIT)
        .await;
    let body = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": { "name": "alpha__crash", "arguments": {} } });
    let refused = s.post(&body).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let error: Value = serde_json::from_str(&refused.body).expect("a JSON-RPC error body");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("authz")),
        "{error}"
    );
    let init = http.post(&initialize_request(9, "2025-11-25"), &[]).await;
    assert_eq!(init.status, 503, "no new session either: {}", init.body);

    plugins.add("guard", "chaos", &guard);
    gateway
        .wait_for_log("every required plugin is in the chain again", WAIT)
        .await;
    assert!(call(&s, 3, "alpha__crash", json!({})).await["error"]["code"].is_i64());
    assert_eq!(
        echo_text(&call(&s, 4, "alpha__echo", json!({ "text": "back" })).await),
        "back"
    );
}

/// Drop, replace, break, fix, delete — while a client calls without pause. Every answer is
/// either a success or the policy's own denial: no request fails because of a swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_the_chain_without_failing_a_request() {
    let plugins = PluginDir::new();
    let (_gateway, s) = gateway(&plugins).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, denied, other) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = {
        let (s, stop, ok, denied, other) = (
            s.clone(),
            stop.clone(),
            ok.clone(),
            denied.clone(),
            other.clone(),
        );
        tokio::spawn(async move {
            let mut id = 1000;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let r = call(&s, id, "alpha__echo", json!({ "text": "x" })).await;
                if echo_text(&r) == "x" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else if r["error"]["code"] == -32077 {
                    denied.fetch_add(1, Ordering::Relaxed);
                } else {
                    other.fetch_add(1, Ordering::Relaxed);
                    failures.push(r);
                }
            }
            failures
        })
    };
    let wait_until = |pred: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reload not observed in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let deny = chaos("deny", "echo", "code = -32077\nmessage = \"closed\"");

    // Drop a plugin in: requests start being denied.
    plugins.add("gate", "chaos", &deny);
    let d = denied.clone();
    wait_until(Box::new(move || d.load(Ordering::Relaxed) > 0)).await;
    // Break it: the last good version keeps denying.
    plugins.write_wasm("gate", b"broken bytes");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = denied.load(Ordering::Relaxed);
    let d = denied.clone();
    wait_until(Box::new(move || d.load(Ordering::Relaxed) > before + 3)).await;
    // Fix it, as an allowing plugin: requests pass again.
    plugins.add("gate", "chaos", "[config]\nmode = \"allow\"\n");
    let seen = ok.load(Ordering::Relaxed);
    let o = ok.clone();
    wait_until(Box::new(move || o.load(Ordering::Relaxed) > seen + 3)).await;
    // Replace with the denying one, then delete it: requests pass once more.
    plugins.set_sidecar("gate", &deny);
    let before = denied.load(Ordering::Relaxed);
    let d = denied.clone();
    wait_until(Box::new(move || d.load(Ordering::Relaxed) > before)).await;
    plugins.remove("gate");
    let seen = ok.load(Ordering::Relaxed);
    let o = ok.clone();
    wait_until(Box::new(move || o.load(Ordering::Relaxed) > seen + 3)).await;

    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
    assert_eq!(other.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_counters_persist_across_reloads() {
    let plugins = PluginDir::new();
    plugins.add(
        "quota",
        "chaos",
        &chaos(
            "kv-count",
            "echo",
            "limit = 2\ncode = -32029\nmessage = \"quota\"",
        ),
    );
    let (gateway, s) = gateway(&plugins).await;
    for i in 0..2 {
        assert_eq!(
            echo_text(&call(&s, i, "alpha__echo", json!({ "text": "x" })).await),
            "x"
        );
    }
    assert_eq!(
        call(&s, 3, "alpha__echo", json!({ "text": "x" })).await["error"]["code"],
        -32029
    );
    // A new sidecar (same plugin, new priority) reloads it; the counter is the gateway's.
    plugins.set_sidecar(
        "quota",
        &format!(
            "priority = 5\n{}",
            chaos(
                "kv-count",
                "echo",
                "limit = 2\ncode = -32029\nmessage = \"quota\""
            )
        ),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.logs().matches("plugin loaded").count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&s, 4, "alpha__echo", json!({ "text": "x" })).await["error"]["code"],
        -32029
    );
}

/// Many concurrent requests through a four-plugin chain: every caller gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_through_a_chain_do_not_share_state() {
    let plugins = PluginDir::new();
    plugins
        .add(
            "a-tag",
            "chaos",
            "stage = \"authn\"\n[config]\nmode = \"tag\"\n",
        )
        .add(
            "b-read",
            "chaos",
            "[config]\nmode = \"read-params\"\nparse = true\n",
        )
        .add("c-allow", "chaos", "[config]\nmode = \"allow\"\n")
        .add(
            "d-count",
            "chaos",
            "[config]\nmode = \"kv-count\"\nlimit = 1000000\n",
        );
    let (_gateway, s) = gateway(&plugins).await;
    let calls = (0..64).map(|i| {
        let s = s.clone();
        async move {
            let text = format!("caller-{i}");
            let r = call(&s, i, "alpha__echo", json!({ "text": text })).await;
            (text, echo_text(&r).to_string())
        }
    });
    for (sent, got) in futures_util::future::join_all(calls).await {
        assert_eq!(sent, got);
    }
}

/// Warm mode reuses an instance for pure policies, and discards it after a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_serve_many_calls_and_are_dropped_after_a_trap() {
    let plugins = PluginDir::new();
    plugins.add(
        "rewrite",
        "chaos",
        &format!(
            "warm = 5\n{}",
            chaos(
                "modify-params",
                "echo",
                "argument = \"text\"\nvalue = \"warm\""
            )
        ),
    );
    plugins.add(
        "trapper",
        "chaos",
        &format!("warm = 5\n{}", chaos("trap", "crash", "")),
    );
    let (gateway, s) = gateway(&plugins).await;
    for i in 0..12 {
        assert_eq!(
            echo_text(&call(&s, i, "alpha__echo", json!({ "text": "cold" })).await),
            "warm"
        );
        if i % 4 == 0 {
            let r = call(&s, 100 + i, "alpha__crash", json!({})).await;
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("policy 'trapper' failed"),
                "{r}"
            );
        }
    }
    let listed = std::process::Command::new(portcullis_tests::harness::bin_path("portcullis"))
        .args(["plugin", "list", plugins.path().to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v["chain"], json!(["rewrite", "trapper"]));
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_pass_the_response_phase_and_a_denial_drops_them() {
    let plugins = PluginDir::new();
    plugins.add(
        "drop-logs",
        "chaos",
        "[config]\nmode = \"deny\"\nphases = [\"response\"]\nmethods = [\"notifications/message\"]\n",
    );
    let (gateway, session) = gateway(&plugins).await;
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": "alpha__report",
            "arguments": { "text": "nightly export" },
            "_meta": { "progressToken": "p1" },
        },
    });
    let resp = session.post(&body).await;
    let messages = resp.messages();
    let methods: Vec<&str> = messages
        .iter()
        .filter_map(|m| m["method"].as_str())
        .collect();
    assert_eq!(
        methods,
        ["notifications/progress"],
        "the log line is dropped, the progress passes: {messages:#?}"
    );
    assert_eq!(messages[0]["params"]["message"], "nightly export");
    assert_eq!(
        resp.response(&json!(1)).expect("answer")["result"]["content"][0]["text"],
        "reported",
        "dropping a notification does not fail the call"
    );
    let log = gateway
        .wait_for_log("server-to-client message stopped by policy", WAIT)
        .await;
    assert!(log.contains("plugin=drop-logs"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("stopped") && l.contains("nightly export")),
        "the dropped content is not logged:\n{log}"
    );
}

/// `[phases]` in a sidecar: a plugin is not called where its sidecar narrows it out, and
/// still is everywhere else. The plugin here denies every message it sees, in both phases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_narrows_the_phases_a_plugin_is_called_in() {
    let plugins = PluginDir::new();
    plugins.add(
        "wall",
        "chaos",
        "[phases]\nrequest = [\"tools/list\"]\nresponse = [\"tools/call\"]\n\
         [config]\nmode = \"deny\"\nmessage = \"stopped by the wall\"\n",
    );
    // `initialize` passed: the request phase is narrowed to `tools/list`.
    let (gateway, session) = gateway(&plugins).await;

    let listed = session
        .post(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {} }))
        .await;
    let listed = listed.response(&json!(1)).expect("an answer to tools/list");
    assert_eq!(
        listed["error"]["message"], "stopped by the wall",
        "called in the request phase for tools/list: {listed}"
    );

    let body = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {
            "name": "alpha__report",
            "arguments": { "text": "nightly export" },
            "_meta": { "progressToken": "p1" },
        },
    });
    let resp = session.post(&body).await;
    let messages = resp.messages();
    let progress: Vec<&Value> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(
        progress.len(),
        1,
        "not called in the request phase for tools/call (the upstream ran), nor in the \
         response phase for its progress notification: {messages:#?}"
    );
    assert_eq!(progress[0]["params"]["message"], "nightly export");
    let answer = resp.response(&json!(2)).expect("an answer to tools/call");
    assert_eq!(
        answer["error"]["message"], "stopped by the wall",
        "called in the response phase for the tools/call answer: {answer}"
    );
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reloads_once_and_reading_the_folder_is_not_a_change() {
    let plugins = PluginDir::new();
    plugins.add("gate", "chaos", "[config]\nmode = \"allow\"\n");
    let (gateway, s) = gateway(&plugins).await;
    let reloads = || gateway.logs().matches("policy chain ready").count();
    assert_eq!(reloads(), 1, "the initial load");
    plugins.set_sidecar(
        "gate",
        &chaos("deny", "echo", "code = -32077\nmessage = \"closed\""),
    );
    gateway.wait_for_log("plugin loaded", WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while call(&s, 1, "alpha__echo", json!({ "text": "x" })).await["error"]["code"] != -32077 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reload reads the folder's files, and inotify reports every open; those reads must not
    // count as changes (they did: the gateway reloaded itself five times a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        reloads(),
        2,
        "one reload for one change:\n{}",
        gateway.logs()
    );
    // A second gateway on the same folder reads it too: neither reloads for that.
    let other = Gateway::start(&format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(reloads(), 2, "{}", gateway.logs());
    assert_eq!(other.logs().matches("policy chain ready").count(), 1);
}
