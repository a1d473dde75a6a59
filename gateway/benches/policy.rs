//! Policy chain costs (criterion). Needs the test plugins: `scripts/build-plugins`.
//!
//! ```sh
//! scripts/build-plugins && cargo bench -p portcullis --bench policy
//! ```
//!
//! Numbers and what each knob bought are in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderMap;
use portcullis::mcp::Message;
use portcullis::policy::{Call, Chain, Policies, RuntimeConfig};
use serde_json::json;

fn chaos_wasm() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/chaos.wasm");
    assert!(
        path.is_file(),
        "{} missing: run scripts/build-plugins",
        path.display()
    );
    path
}

/// A plugins folder with `chaos.wasm` copied under each name, with the given sidecars.
fn folder(plugins: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-bench-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = std::fs::read(chaos_wasm()).unwrap();
    for (name, sidecar) in plugins {
        std::fs::write(dir.join(format!("{name}.wasm")), &wasm).unwrap();
        std::fs::write(dir.join(format!("{name}.toml")), sidecar).unwrap();
    }
    dir
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn call_with_payload(bytes: usize) -> Arc<Message> {
    let blob = "x".repeat(bytes);
    Arc::new(Message::request(
        json!(1),
        "tools/call",
        Some(json!({ "name": "up__echo", "arguments": { "text": blob } })),
    ))
}

async fn open(dir: &Path, cache: Option<PathBuf>) -> Arc<Policies> {
    let runtime = RuntimeConfig {
        cache,
        ..RuntimeConfig::default()
    };
    Policies::open(Some(dir), runtime, Vec::new())
        .await
        .unwrap()
}

async fn run(chain: &Chain, msg: &Arc<Message>) {
    let mut call = Call::new(msg.clone(), HeaderMap::new(), None, None);
    let outcome = chain.on_request(&mut call).await;
    if let Err(d) = &outcome {
        panic!("denied: {}", d.message);
    }
}

fn chains(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let small = call_with_payload(64);
    let mut group = c.benchmark_group("chain");
    let setups: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "1 no-op plugin, fresh",
            vec![("a", "[config]\nmode = \"allow\"\n")],
        ),
        (
            "4 plugins, fresh",
            vec![
                ("a", "[config]\nmode = \"allow\"\n"),
                ("b", "[config]\nmode = \"allow\"\n"),
                ("c", "[config]\nmode = \"allow\"\n"),
                ("d", "[config]\nmode = \"allow\"\n"),
            ],
        ),
        (
            "1 no-op plugin, warm",
            vec![("a", "warm = 100000\n[config]\nmode = \"allow\"\n")],
        ),
        (
            "4 plugins, warm",
            vec![
                ("a", "warm = 100000\n[config]\nmode = \"allow\"\n"),
                ("b", "warm = 100000\n[config]\nmode = \"allow\"\n"),
                ("c", "warm = 100000\n[config]\nmode = \"allow\"\n"),
                ("d", "warm = 100000\n[config]\nmode = \"allow\"\n"),
            ],
        ),
    ];
    for (label, plugins) in setups {
        let dir = folder(&plugins);
        let policies = rt.block_on(open(&dir, None));
        let chain = policies.chain();
        group.bench_function(label, |b| b.to_async(&rt).iter(|| run(&chain, &small)));
        let _ = std::fs::remove_dir_all(dir);
    }
    group.finish();

    // Payload size: a plugin that never reads params must stay flat; one that parses them
    // pays for the copy and the parse.
    let mut group = c.benchmark_group("payload");
    for (label, sidecar) in [
        ("not read", "[config]\nmode = \"allow\"\n"),
        (
            "read+parsed",
            "[config]\nmode = \"read-params\"\nparse = true\n[limits]\nmemory-mib = 64\n",
        ),
    ] {
        let dir = folder(&[("p", sidecar)]);
        let policies = rt.block_on(open(&dir, None));
        let chain = policies.chain();
        for size in [1 << 10, 64 << 10, 1 << 20] {
            let msg = call_with_payload(size);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(label, size), &msg, |b, msg| {
                b.to_async(&rt).iter(|| run(&chain, msg))
            });
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    group.finish();

    // Loading: compile (no cache) against deserializing from the disk cache.
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    let dir = folder(&[("a", "[config]\nmode = \"allow\"\n")]);
    let cache = dir.with_extension("cache");
    group.bench_function("cold compile", |b| {
        b.to_async(&rt).iter(|| open(&dir, None))
    });
    rt.block_on(open(&dir, Some(cache.clone())));
    group.bench_function("warm cache", |b| {
        b.to_async(&rt).iter(|| open(&dir, Some(cache.clone())))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(cache);

    // Hot reload: from writing a sidecar to the new verdict being enforced.
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    let dir = folder(&[("gate", "[config]\nmode = \"allow\"\n")]);
    let policies = rt.block_on(open(&dir, None));
    let _watch = rt.block_on(async { policies.watch().unwrap() });
    group.bench_function("file write to enforcement", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (policies, dir, small) = (policies.clone(), dir.clone(), small.clone());
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let deny = i % 2 == 0;
                    let mode = if deny { "deny" } else { "allow" };
                    let started = Instant::now();
                    std::fs::write(
                        dir.join("gate.toml"),
                        format!("[config]\nmode = \"{mode}\"\n"),
                    )
                    .unwrap();
                    loop {
                        let mut call = Call::new(small.clone(), HeaderMap::new(), None, None);
                        if policies.chain().on_request(&mut call).await.is_err() == deny {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    total += started.elapsed();
                }
                total
            }
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, chains);
criterion_main!(benches);
