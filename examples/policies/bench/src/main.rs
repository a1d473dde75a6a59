//! path-guard in Rust, Python, JavaScript and Go through the gateway's own policy host
//! (`portcullis::policy`): what each costs to load and to run. Prints a Markdown table.
//!
//! - **size**: the component file.
//! - **cold compile**: Cranelift compiling the component (nothing cached).
//! - **cold load**: everything the gateway does before the plugin serves: compile, link,
//!   instantiate, `describe`, `init` with the config.
//! - **cached load**: the same with the compiled code in the disk cache (a restart).
//! - **fresh call**: one evaluation as the gateway runs it by default: a new instance,
//!   `init`, `evaluate`, verdict applied (median of many).
//! - **warm call**: the same with `warm = 1000` in the sidecar: one instance reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use portcullis::mcp::Message;
use portcullis::policy::{Call, Chain, Policies, RuntimeConfig};
use serde_json::json;

const CONFIG: &str =
    "[config]\nallowed-prefixes = [\"/srv/data\", \"~/projects\"]\ntag-identity = true\n";

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target/plugins")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-lang-bench-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A plugins folder holding `wasm` as `path-guard.wasm` with a sidecar.
fn folder(wasm: &Path, name: &str, sidecar: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::copy(wasm, dir.join("path-guard.wasm")).unwrap();
    std::fs::write(dir.join("path-guard.toml"), sidecar).unwrap();
    dir
}

async fn open(dir: &Path, cache: &Path) -> (Arc<Policies>, Duration) {
    let start = Instant::now();
    let runtime = RuntimeConfig {
        cache: Some(cache.to_path_buf()),
        ..RuntimeConfig::default()
    };
    let policies = Policies::open(Some(dir), runtime, Vec::new())
        .await
        .unwrap();
    let took = start.elapsed();
    let status = policies.status().await;
    assert!(
        status.iter().all(|s| s.error.is_none()),
        "did not load: {status:?}"
    );
    (policies, took)
}

/// A typical call: three path arguments, all allowed (the policy reads and walks them all).
fn call() -> Arc<Message> {
    Arc::new(Message::request(
        json!(1),
        "tools/call",
        Some(json!({ "name": "fs__copy", "arguments": {
            "src": "/srv/data/a", "dst": "~/projects/b", "opts": ["-r", "/srv/data/c/../d"]
        } })),
    ))
}

/// Median time of one evaluation over `n` calls (after a few to warm up).
async fn per_call(chain: &Chain, n: usize) -> Duration {
    let msg = call();
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let mut c = Call::new(msg.clone(), HeaderMap::new(), None, None);
        let start = Instant::now();
        let outcome = chain.on_request(&mut c).await;
        let took = start.elapsed();
        assert!(outcome.is_ok(), "denied");
        if i >= 10 {
            times.push(took);
        }
    }
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 100_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let languages = [
        ("Rust", "path-guard.wasm"),
        ("Python", "path-guard-python.wasm"),
        ("JavaScript", "path-guard-js.wasm"),
        ("Go", "path-guard-go.wasm"),
    ];
    println!(
        "| language | size | cold compile | cold load | cached load | fresh call | warm call |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (language, file) in languages {
        let wasm = plugins_dir().join(file);
        assert!(
            wasm.is_file(),
            "{} missing: run scripts/build-plugins",
            wasm.display()
        );
        let size = std::fs::metadata(&wasm).unwrap().len();
        let cache = scratch(&format!("{language}-cache"));

        let fresh_dir = folder(&wasm, language, CONFIG);
        let (cold, cold_load) = open(&fresh_dir, &cache).await;
        let compile = cold.chain().plugins()[0].compile_time;
        drop(cold);
        let (cached, cached_load) = open(&fresh_dir, &cache).await;
        assert!(
            cached.chain().plugins()[0].cached,
            "not taken from the cache"
        );
        let fresh = per_call(&cached.chain(), 300).await;
        drop(cached);

        let warm_dir = folder(
            &wasm,
            &format!("{language}-warm"),
            &format!("warm = 1000\n{CONFIG}"),
        );
        let (warm, _) = open(&warm_dir, &cache).await;
        let warm_call = per_call(&warm.chain(), 2000).await;
        drop(warm);

        println!(
            "| {language} | {:.1} MB | {} | {} | {} | {} | {} |",
            size as f64 / 1e6,
            fmt(compile),
            fmt(cold_load),
            fmt(cached_load),
            fmt(fresh),
            fmt(warm_call)
        );
        for dir in [fresh_dir, warm_dir, cache] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
