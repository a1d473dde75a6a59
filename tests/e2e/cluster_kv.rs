//! The plugins' key-value store in Redis (`[cluster] redis`): two gateway processes sharing
//! one real `redis-server` enforce one rate limit between them; when Redis dies each plugin's
//! `fail-open` decides (a clear error naming the plugin, counted in `/metrics`), and when it
//! comes back the gateways recover without a restart.

use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, RawSession, RedisServer, server_toml, stdio_fixture_toml,
};
use serde_json::{Value, json};

const TOKEN: &str = "e2e-admin-token-cluster-kv-0123";

/// A rate-limit plugin keyed on the tool only (no authn needed): `limit` calls a minute.
fn limiter(fail_open: bool, limit: u32) -> PluginDir {
    let plugins = PluginDir::new();
    plugins.add(
        "rate-limit",
        "rate-limit",
        &format!(
            "fail-open = {fail_open}\n[limits]\ntimeout = \"2s\"\n[config]\n[[config.limits]]\nname = \"per-tool\"\nper = [\"tool\"]\nrate = \"{limit}/min\"\n"
        ),
    );
    plugins
}

/// A gateway on `plugins`, the stdio fixture `alpha`, Redis at `redis` and the admin API.
async fn gateway(plugins: &PluginDir, redis: &RedisServer) -> Gateway {
    let config = format!(
        "{}{}[cluster]\nredis = \"${{E2E_REDIS_URL}}\"\nredis-timeout = \"250ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"${{E2E_ADMIN_TOKEN}}\"\n\n{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha"),
    );
    Gateway::start_with_env(
        &config,
        &[("E2E_REDIS_URL", &redis.url()), ("E2E_ADMIN_TOKEN", TOKEN)],
    )
    .await
}

async fn session(gateway: &Gateway) -> RawSession {
    let (resp, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    session
}

/// A tools/call: (HTTP status, the JSON-RPC response).
async fn call(s: &RawSession, id: i64, tool: &str) -> (u16, Value) {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
                       "params": { "name": tool, "arguments": { "text": "hi" } } });
    let resp = s.post(&body).await;
    let message = resp
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body));
    (resp.status.as_u16(), message)
}

fn passed(r: &(u16, Value)) -> bool {
    r.0 == 200 && r.1["result"].is_object()
}

async fn admin_url(gateway: &Gateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(url) = gateway
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("portcullis admin listening on "))
        {
            return url.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no admin listening line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `portcullis_kv_errors_total{kind="…"}` on the admin API.
async fn kv_errors(gateway: &Gateway, kind: &str) -> u64 {
    let admin = admin_url(gateway).await;
    let text = reqwest::Client::new()
        .get(format!("{admin}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin reachable")
        .text()
        .await
        .unwrap();
    let series = format!("portcullis_kv_errors_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_enforce_one_limit() {
    portcullis_tests::harness::init_tls();
    let redis = RedisServer::start();
    let plugins = limiter(false, 5);
    let a = gateway(&plugins, &redis).await;
    let b = gateway(&plugins, &redis).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(session(&a).await);
        sessions.push(session(&b).await);
    }
    // 24 calls at once, alternating between the two processes.
    let calls = (0..24).map(|i| {
        let s = sessions[i % sessions.len()].clone();
        async move { call(&s, i as i64, "alpha__echo").await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok: Vec<usize> = (0..24).filter(|i| passed(&results[*i])).collect();
    let limited = results
        .iter()
        .filter(|r| r.0 == 429 && r.1["error"]["code"] == -32029)
        .count();
    assert_eq!((ok.len(), limited), (5, 19), "{results:?}");
    // Both processes refused: each saw the other's calls.
    assert!(
        (0..24).any(|i| i % 2 == 0 && !ok.contains(&i))
            && (0..24).any(|i| i % 2 == 1 && !ok.contains(&i)),
        "{ok:?}"
    );
    // Another tool has its own bucket, in the same shared store.
    assert!(passed(&call(&sessions[1], 100, "alpha__whoami").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_each_plugins_fail_mode_then_recovers_without_restart() {
    portcullis_tests::harness::init_tls();
    let mut redis = RedisServer::start();
    let closed_plugins = limiter(false, 1000);
    let open_plugins = limiter(true, 1000);
    let closed = gateway(&closed_plugins, &redis).await;
    let open = gateway(&open_plugins, &redis).await;
    let (sc, so) = (session(&closed).await, session(&open).await);
    assert!(passed(&call(&sc, 1, "alpha__echo").await));
    assert!(passed(&call(&so, 1, "alpha__echo").await));
    let before = kv_errors(&closed, "unavailable").await + kv_errors(&closed, "timeout").await;

    redis.kill();
    // fail-open = false: the call is refused with an error naming the plugin and the store.
    let (status, refused) = call(&sc, 2, "alpha__echo").await;
    assert_eq!(status, 200, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("policy 'rate-limit' failed")
            && message.contains("key-value store (redis)"),
        "{refused}"
    );
    assert_eq!(refused["error"]["data"]["plugin"], "rate-limit");
    // fail-open = true: the call passes.
    assert!(passed(&call(&so, 2, "alpha__echo").await));
    let after = kv_errors(&closed, "unavailable").await + kv_errors(&closed, "timeout").await;
    assert!(after > before, "kv errors counted: {before} -> {after}");
    assert!(
        closed.logs().contains("the key-value store (redis) fails"),
        "{}",
        closed.logs()
    );
    assert!(
        !closed.logs().contains(&redis.url()),
        "the URL is not logged"
    );

    // Redis back (empty): the same processes serve again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = 10;
    loop {
        id += 1;
        let r = call(&sc, id, "alpha__echo").await;
        if passed(&r) {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed
        .wait_for_log(
            "the key-value store (redis) answers again",
            Duration::from_secs(5),
        )
        .await;
}
