//! The cluster, as operators run it and agents use it: three gateway processes with one session
//! key and one Redis behind a real HAProxy (`mode http`, `balance roundrobin`, no stickiness,
//! `harness::Haproxy`), driven by the official MCP SDKs for TypeScript and Python
//! (`tests/cluster/client.cjs`, `tests/cluster/client.py`). HAProxy marks every answer with the
//! replica that served it (`x-served-by`), and each replica's stdio upstream reports which
//! replica it runs on (`whoami`), so the test knows where every request went:
//!
//! - every request of a session lands on a different replica than the one before, and succeeds;
//! - 24 concurrent calls against a rate limit of 5 (its buckets in Redis) let exactly 5 through;
//! - a replica killed while it serves a call: that call fails with an HTTP 502 from the balancer
//!   and succeeds when retried; the session goes on, on the other replicas, under the same id;
//! - the killed replica comes back, then every replica is restarted one by one with a new key
//!   (the old one as previous): the session sealed under the old key lives on through the roll,
//!   and a new session (sealed under the new key) is served everywhere.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_tests::harness::{
    Gateway, Haproxy, PluginDir, RedisServer, bin_path, node, toml_str,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const KEY_1: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const KEY_2: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const REPLICAS: usize = 3;

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    TypeScript,
    Python,
}

/// The Python SDK's virtualenv (tests/servers/install.sh, run once per test process).
fn python() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let servers = tests_dir().join("servers");
            let out = std::process::Command::new(servers.join("install.sh"))
                .output()
                .expect("run tests/servers/install.sh");
            assert!(
                out.status.success(),
                "tests/servers/install.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            servers.join(".venv/bin/python")
        })
        .clone()
}

/// One SDK client process: a JSON command a line in, a JSON reply a line out.
struct SdkClient {
    sdk: Sdk,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SdkClient {
    fn spawn(sdk: Sdk, url: &str) -> SdkClient {
        let mut cmd = match sdk {
            Sdk::TypeScript => {
                let (node, modules) = node(&["@modelcontextprotocol/sdk"]);
                let mut c = tokio::process::Command::new(node);
                c.arg(tests_dir().join("cluster/client.cjs"))
                    .env("NODE_PATH", modules);
                c
            }
            Sdk::Python => {
                let mut c = tokio::process::Command::new(python());
                c.arg(tests_dir().join("cluster/client.py"))
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                c
            }
        };
        let mut child = cmd
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {sdk:?} client: {e}"));
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        SdkClient {
            sdk,
            child,
            stdin,
            lines,
        }
    }

    /// Sends one command and returns its reply.
    async fn send(&mut self, cmd: Value) -> Value {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(180), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{:?} client: no reply to {cmd} within 180 s", self.sdk))
            .unwrap();
        let Some(reply) = next else {
            let status = self.child.wait().await;
            panic!(
                "{:?} client exited before answering {cmd}: {status:?}",
                self.sdk
            );
        };
        let reply: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{:?} client printed {reply:?}: {e}", self.sdk));
        assert!(
            reply.get("failed").is_none(),
            "{:?} client failed {cmd}: {}",
            self.sdk,
            reply["failed"]
        );
        reply
    }

    async fn close(mut self) {
        self.send(json!({ "op": "close" })).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// The HTTP requests of a reply from the `from`-th on.
fn http_since(reply: &Value, from: usize) -> Vec<Value> {
    reply["http"].as_array().unwrap()[from..].to_vec()
}

fn http_len(reply: &Value) -> usize {
    reply["http"].as_array().unwrap().len()
}

/// Each request of a `sequence` succeeded (HTTP 200, and its result), whoami ran on the
/// replica HAProxy says served it, and — with `alternate` — each landed on another replica
/// than the POST before it (the one before the sequence included). Returns the replicas in
/// order.
fn check_sequence(reply: &Value, alternate: bool) -> Vec<String> {
    let results = reply["results"].as_array().unwrap();
    let mut servers = Vec::new();
    for r in results {
        assert_eq!(r["ok"], true, "{r}\n{}", wire(reply));
        let server = r["server"]
            .as_str()
            .unwrap_or_else(|| panic!("no x-served-by: {r}"));
        if r["op"] == "tools/call" {
            assert_eq!(
                r["replica"], server,
                "whoami ran on another replica than HAProxy says: {r}"
            );
        }
        servers.push(server.to_string());
    }
    // A sequence runs alone: its requests are the last POSTs on the wire.
    let posts: Vec<&Value> = reply["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["verb"] == "POST")
        .collect();
    let ours = &posts[posts.len() - results.len()..];
    for e in ours {
        assert_eq!(e["status"], 200, "{e}");
    }
    if alternate {
        let from = posts.len() - results.len() - 1;
        let chain: Vec<&str> = posts[from..]
            .iter()
            .map(|e| e["server"].as_str().unwrap_or("?"))
            .collect();
        assert!(
            chain.windows(2).all(|w| w[0] != w[1]),
            "every request on another replica than the one before: {chain:?}\n{}",
            wire(reply)
        );
    }
    servers
}

/// The HTTP requests of a reply, one a line: verb, JSON-RPC method, status, replica.
fn wire(reply: &Value) -> String {
    reply["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}\n",
                e["verb"], e["rpc"], e["status"], e["server"]
            )
        })
        .collect()
}

/// The session id every request carried, after `initialize`: exactly one.
fn session_ids(reply: &Value) -> BTreeSet<String> {
    reply["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["session"].as_str().map(str::to_string))
        .collect()
}

struct Cluster {
    plugins: PluginDir,
    redis: RedisServer,
    replicas: Vec<Option<Gateway>>,
    addrs: Vec<SocketAddr>,
    lb: Haproxy,
}

impl Cluster {
    fn config(&self, i: usize, listen: &str, rotated: bool) -> String {
        let previous = if rotated {
            "previous-session-keys = [\"${E2E_OLD_KEY}\"]\n"
        } else {
            ""
        };
        config(&self.plugins, i, listen, previous)
    }

    async fn start() -> Cluster {
        let redis = RedisServer::start();
        let plugins = PluginDir::new();
        plugins.add(
            "rate-limit",
            "rate-limit",
            "[config]\nhttp-status = 200\n[[config.limits]]\nname = \"echo\"\n\
             tools = [\"alpha__echo\"]\nrate = \"5/h\"\n",
        );
        let mut replicas = Vec::new();
        for i in 0..REPLICAS {
            let cfg = config(&plugins, i, "127.0.0.1:0", "");
            replicas.push(Some(start_replica(&cfg, &redis, KEY_1).await));
        }
        let addrs: Vec<SocketAddr> = replicas.iter().flatten().map(Gateway::addr).collect();
        let lb = Haproxy::start(&addrs);
        Cluster {
            plugins,
            redis,
            replicas,
            addrs,
            lb,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.lb.addr())
    }

    /// Starts replica `i` again on its address (after it was killed or stopped) and waits
    /// until HAProxy's health check has it back.
    async fn restart(&mut self, i: usize, key: &str, rotated: bool) {
        let cfg = self.config(i, &self.addrs[i].to_string(), rotated);
        let mut last = None;
        for _ in 0..20 {
            match try_start_replica(&cfg, &self.redis, key).await {
                Ok(g) => {
                    self.replicas[i] = Some(g);
                    self.lb
                        .wait_status(&format!("r{i}"), "UP", Duration::from_secs(30))
                        .await;
                    return;
                }
                // Its port may still be held for a moment after the old process died.
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "replica r{i} did not restart on {}: {last:?}",
            self.addrs[i]
        );
    }
}

fn config(plugins: &PluginDir, i: usize, listen: &str, previous: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\npath = \"/mcp\"\n\n{}\
         [cluster]\nsession-key = \"${{PORTCULLIS_SESSION_KEY}}\"\n{previous}\
         redis = \"${{PORTCULLIS_REDIS_URL}}\"\n\n\
         [upstreams.alpha]\ncommand = {}\nargs = [\"--stdio\", \"--name\", \"alpha\"]\n\
         env = {{ FIXTURE_PROBE = \"r{i}\" }}\n",
        plugins.policy_toml(),
        toml_str(&bin_path("fixture").to_string_lossy()),
    )
}

async fn try_start_replica(cfg: &str, redis: &RedisServer, key: &str) -> anyhow::Result<Gateway> {
    Gateway::try_start_with_env(
        cfg,
        &[
            ("PORTCULLIS_SESSION_KEY", key),
            ("E2E_OLD_KEY", KEY_1),
            ("PORTCULLIS_REDIS_URL", &redis.url()),
        ],
    )
    .await
}

async fn start_replica(cfg: &str, redis: &RedisServer, key: &str) -> Gateway {
    try_start_replica(cfg, redis, key)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn one_session_through_the_cluster(sdk: Sdk) {
    let mut cluster = Cluster::start().await;
    let mut client = SdkClient::spawn(sdk, &cluster.url());

    let connected = client.send(json!({ "op": "connect" })).await;
    eprintln!("{sdk:?} connected: {}", connected["protocolVersion"]);
    let initialize = &connected["http"][0];
    assert_eq!(initialize["rpc"], "initialize", "{connected}");
    assert_eq!(initialize["status"], 200, "{connected}");

    // 1. Request after request of one session, each on another replica; all succeed.
    let seq = client.send(json!({ "op": "sequence", "n": 4 })).await;
    let servers = check_sequence(&seq, true);
    let distinct: BTreeSet<&String> = servers.iter().collect();
    assert_eq!(distinct.len(), REPLICAS, "all replicas served: {servers:?}");
    let ids = session_ids(&seq);
    assert_eq!(ids.len(), 1, "one session id throughout: {ids:?}");
    let session = ids.into_iter().next().unwrap();
    assert!(session.starts_with("ps1."), "a sealed id: {session}");

    // 2. 24 calls at once against a limit of 5 (buckets in Redis), over all replicas.
    let mark = http_len(&seq);
    let burst = client.send(json!({ "op": "burst", "n": 24 })).await;
    let results = burst["results"].as_array().unwrap();
    let passed = results.iter().filter(|r| r["ok"] == true).count();
    assert_eq!(passed, 5, "exactly the limit passes: {results:?}");
    for r in results.iter().filter(|r| r["ok"] != true) {
        assert_eq!(r["code"], -32029, "refused by the rate limit: {r}");
    }
    let burst_servers: BTreeSet<String> = http_since(&burst, mark)
        .iter()
        .filter(|e| e["rpc"] == "tools/call")
        .filter_map(|e| e["server"].as_str().map(str::to_string))
        .collect();
    assert_eq!(burst_servers.len(), REPLICAS, "spread: {burst_servers:?}");

    // 3. A replica dies under a call: three calls in flight, one on each replica; r1 is killed.
    let mark = http_len(&burst);
    let before = cluster.lb.server("r1").current;
    client
        .send(json!({ "op": "sleepers", "n": 3, "ms": 4000 }))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cluster.lb.server("r1").current <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call reached r1: {:?}",
            cluster.lb.servers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.replicas[1] = None; // SIGKILL
    let collected = client.send(json!({ "op": "collect" })).await;
    let results = collected["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert_eq!(
        failed.len(),
        1,
        "only the call on the killed replica fails: {results:?}"
    );
    assert_eq!(
        failed[0]["retry"]["ok"], true,
        "its retry succeeds: {:?}",
        failed[0]
    );
    // What went over the wire: the three calls in flight, then the retry. The one that
    // failed got no answer from a replica: HTTP 502 from HAProxy, or its connection closed
    // (HAProxy closes the client's connection instead when the replica dies on a kept-alive
    // connection, so that the client retries); the two others were served by the survivors.
    let sleeps: Vec<Value> = http_since(&collected, mark)
        .into_iter()
        .filter(|e| e["rpc"] == "tools/call")
        .collect();
    assert_eq!(sleeps.len(), 4, "three calls and one retry: {sleeps:?}");
    let (served, cut): (Vec<&Value>, Vec<&Value>) =
        sleeps[..3].iter().partition(|e| e["status"] == 200);
    assert_eq!(cut.len(), 1, "{sleeps:?}");
    assert!(
        (cut[0]["status"] == 502 && cut[0]["server"] == "r1") || cut[0]["status"].is_null(),
        "a 502 from r1 or a closed connection: {}",
        cut[0]
    );
    let survivors: BTreeSet<&str> = served.iter().filter_map(|e| e["server"].as_str()).collect();
    assert_eq!(survivors, BTreeSet::from(["r0", "r2"]), "{sleeps:?}");
    assert_eq!(sleeps[3]["status"], 200, "the retry: {}", sleeps[3]);
    assert_ne!(sleeps[3]["server"], "r1", "the retry: {}", sleeps[3]);

    cluster
        .lb
        .wait_status("r1", "DOWN", Duration::from_secs(30))
        .await;
    let mark = http_len(&collected);
    let after = client.send(json!({ "op": "sequence", "n": 3 })).await;
    let servers: BTreeSet<String> = check_sequence(&after, false).into_iter().collect();
    assert_eq!(
        servers,
        BTreeSet::from(["r0".to_string(), "r2".to_string()]),
        "the survivors serve the session"
    );
    for e in http_since(&after, mark) {
        assert_ne!(e["status"], 404, "the session is never lost: {e}");
    }
    assert_eq!(session_ids(&after), BTreeSet::from([session.clone()]));

    // 4. r1 comes back; then a rolling key rotation: each replica restarted with the new key
    //    current and the old one as previous. The session (sealed under the old key) goes on.
    cluster.restart(1, KEY_1, false).await;
    let mut last = after;
    for i in 0..REPLICAS {
        let mut old = cluster.replicas[i].take().unwrap();
        assert!(old.stop().await.success(), "r{i} drains and exits 0");
        cluster.restart(i, KEY_2, true).await;
        last = client.send(json!({ "op": "sequence", "n": 2 })).await;
        check_sequence(&last, false);
    }
    let mark = http_len(&last);
    let rolled = client.send(json!({ "op": "sequence", "n": 3 })).await;
    let servers = check_sequence(&rolled, true);
    assert_eq!(servers.iter().collect::<BTreeSet<_>>().len(), REPLICAS);
    for e in http_since(&rolled, mark) {
        assert_ne!(e["status"], 404, "the session is never lost: {e}");
    }
    assert_eq!(
        session_ids(&rolled),
        BTreeSet::from([session.clone()]),
        "the session id sealed under the old key, still served"
    );
    for (i, r) in cluster.replicas.iter().flatten().enumerate() {
        assert!(
            r.logs().contains("session resumed from its sealed id"),
            "r{i} resumed the session: {}",
            r.logs()
        );
    }

    // A new session, sealed under the new key, is served everywhere.
    let mut fresh = SdkClient::spawn(sdk, &cluster.url());
    fresh.send(json!({ "op": "connect" })).await;
    let seq = fresh.send(json!({ "op": "sequence", "n": 3 })).await;
    let servers = check_sequence(&seq, false);
    assert_eq!(servers.iter().collect::<BTreeSet<_>>().len(), REPLICAS);
    let new_ids = session_ids(&seq);
    assert_eq!(new_ids.len(), 1, "{new_ids:?}");
    assert!(!new_ids.contains(&session));

    fresh.close().await;
    client.close().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_sees_one_gateway_behind_haproxy() {
    one_session_through_the_cluster(Sdk::TypeScript).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_sees_one_gateway_behind_haproxy() {
    one_session_through_the_cluster(Sdk::Python).await;
}
