//! Per-call cost of the traffic-shaping plugins (criterion): `rate-limit` passing and
//! refusing, and `route` routing a call, mapping an alias and rewriting a `tools/list`, each
//! fresh (a new instance per call) and warm.
//!
//! ```sh
//! scripts/build-plugins && cargo bench -p portcullis --bench shaping
//! ```
//!
//! Numbers are in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use portcullis::mcp::Message;
use portcullis::policy::{Call, Chain, Policies, RuntimeConfig};
use serde_json::{Value, json};

fn plugin(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-plugins", path.display()))
}

fn folder(name: &str, sidecar: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-bench-shaping-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), plugin(name)).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), sidecar).unwrap();
    dir
}

fn call(name: &str) -> Arc<Message> {
    Arc::new(Message::request(
        json!(1),
        "tools/call",
        Some(json!({ "name": name, "arguments": { "text": "hello", "region": "eu-west" } })),
    ))
}

/// A `tools/list` result of 60 tools from two upstreams.
fn tools_list() -> Value {
    let tools: Vec<Value> = (0..60)
        .map(|i| {
            json!({ "name": format!("{}__tool_{i}", if i % 2 == 0 { "up" } else { "other" }),
                    "description": "Does one thing well, with a description of ordinary length.",
                    "inputSchema": { "type": "object", "properties": { "text": { "type": "string" } } } })
        })
        .collect();
    json!({ "tools": tools })
}

/// The request phase, with the gateway's resolution of the name (none for an alias).
async fn request(chain: &Chain, msg: &Arc<Message>, hint: Option<(&str, &str)>) -> bool {
    let mut call = Call::new(
        msg.clone(),
        HeaderMap::new(),
        Some("bench-session".into()),
        hint.map(|(u, t)| (u.to_string(), t.to_string())),
    );
    chain.on_request(&mut call).await.is_ok()
}

async fn list(chain: &Chain, result: &Value) {
    let msg = Arc::new(Message::request(json!(1), "tools/list", Some(json!({}))));
    let mut call = Call::new(msg, HeaderMap::new(), Some("bench-session".into()), None);
    chain.on_request(&mut call).await.unwrap();
    let response = Message::result(json!(1), result.clone());
    chain.on_response(&mut call, response).await.unwrap();
}

const RATE_LIMIT_PASSING: &str = "[[config.limits]]\nname = \"caller-tool\"\nper = [\"subject\", \"tool\"]\nrate = \"1000000000/s\"\n";
const RATE_LIMIT_FOUR: &str = "\
[[config.limits]]\nname = \"a\"\nper = [\"subject\"]\nrate = \"1000000000/s\"\n\
[[config.limits]]\nname = \"b\"\nper = [\"subject\", \"tool\"]\nrate = \"1000000000/min\"\n\
[[config.limits]]\nname = \"c\"\nper = [\"tenant\", \"upstream\"]\nupstreams = [\"up\"]\nrate = \"1000000000/h\"\n\
[[config.limits]]\nname = \"d\"\nper = [\"session\"]\ntools = [\"echo\", \"search_*\"]\nrate = \"1000000000/day\"\n";
const RATE_LIMIT_REFUSING: &str =
    "[[config.limits]]\nname = \"tight\"\nper = [\"subject\"]\nrate = \"1/h\"\n";

const ROUTE: &str = "\
[[config.routes]]\nname = \"eu\"\ntools = [\"query\"]\narguments = { region = \"eu-*\" }\nupstream = \"eu\"\n\
[[config.routes]]\nname = \"canary\"\ntools = [\"echo\"]\n\
split = [{ upstream = \"up\", weight = 90 }, { upstream = \"next\", weight = 10 }]\n\
[[config.catalog]]\ntool = \"up__echo\"\naliases = [\"say\"]\n\
[[config.catalog]]\ntool = \"up__tool_4\"\nrename = \"four\"\ndescription = \"The fourth.\"\n\
[[config.catalog]]\ntool = \"other__*\"\nhide = true\n";

fn shaping(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let echo = call("up__echo");
    let alias = call("say");
    let result = tools_list();
    let mut group = c.benchmark_group("shaping");
    for (mode, warm) in [("fresh", 0), ("warm", 100_000)] {
        let open = |name: &str, config: &str| {
            let dir = folder(name, &format!("warm = {warm}\n[config]\n{config}"));
            let policies = rt.block_on(async {
                Policies::open(
                    Some(&dir),
                    RuntimeConfig {
                        cache: None,
                        ..RuntimeConfig::default()
                    },
                    Vec::new(),
                )
                .await
                .unwrap()
            });
            let _ = std::fs::remove_dir_all(dir);
            policies
        };
        let hint = Some(("up", "echo"));

        let p = open("rate-limit", RATE_LIMIT_PASSING);
        let chain = p.chain();
        group.bench_function(format!("rate-limit 1 limit, passes, {mode}"), |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(request(&chain, &echo, hint).await) })
        });
        let p = open("rate-limit", RATE_LIMIT_FOUR);
        let chain = p.chain();
        group.bench_function(format!("rate-limit 4 limits, passes, {mode}"), |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(request(&chain, &echo, hint).await) })
        });
        let p = open("rate-limit", RATE_LIMIT_REFUSING);
        let chain = p.chain();
        rt.block_on(request(&chain, &echo, hint));
        group.bench_function(format!("rate-limit 1 limit, refuses, {mode}"), |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(!request(&chain, &echo, hint).await) })
        });

        let p = open("route", ROUTE);
        let chain = p.chain();
        group.bench_function(format!("route canary split, {mode}"), |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(request(&chain, &echo, hint).await) })
        });
        group.bench_function(format!("route alias mapped back, {mode}"), |b| {
            b.to_async(&rt)
                .iter(|| async { assert!(request(&chain, &alias, None).await) })
        });
        group.bench_function(format!("route tools/list of 60 rewritten, {mode}"), |b| {
            b.to_async(&rt).iter(|| list(&chain, &result))
        });
        // The same list for a caller no entry concerns: the response phase without the
        // rewrite (the host's share of the cost).
        let p = open(
            "route",
            "[[config.catalog]]\ntenants = [\"nobody\"]\ntool = \"up__*\"\nhide = true\n",
        );
        let chain = p.chain();
        group.bench_function(format!("route tools/list of 60 untouched, {mode}"), |b| {
            b.to_async(&rt).iter(|| list(&chain, &result))
        });
    }
    group.finish();
}

criterion_group!(benches, shaping);
criterion_main!(benches);
