//! What isolation costs per call: the shipped plugins (`authn` with the demo's API key,
//! `authz`, `rate-limit`, `redact`, each with the sidecar it ships with) one by one and as
//! the whole chain, in each instance mode:
//!
//! - `fresh, init per call`: a new instance per call that runs `init` (`preinit = false`);
//! - `fresh, pre-initialized`: a new instance per call from the state after `init` (the
//!   default, once the background pre-initialization is done);
//! - `warm`: one instance reused (`warm = 100000`).
//!
//! Each case runs a `tools/call` through the request phase and its answer through the
//! response phase, one call at a time, and reports wall time and process CPU (user + system,
//! `getrusage`) per call: the CPU the chain adds to the gateway. The shipped rate-limit
//! sidecar allows 10 calls a second; its rates are raised here so every call passes (the
//! same work: each limit that applies is checked). Not criterion: a fixed number of calls,
//! so the whole table takes about a minute.
//!
//! ```sh
//! scripts/build-plugins && cargo bench -p portcullis --bench isolation
//! # only some rows: cases whose label starts with, modes whose label contains, one of the
//! # comma-separated words
//! ISOLATION_CASES=redact,whole ISOLATION_MODES=pre,warm cargo bench -p portcullis --bench isolation
//! # ISOLATION_CACHE=<dir>: use a compile cache there (none by default); a second run then
//! # finds the pre-initialized plugins there at once
//! # ISOLATION_NO_PHASES=1: drop the sidecars' `[phases]` (each plugin in every phase it
//! # declares, as before the shipped sidecars narrowed them)
//! # ISOLATION_CALLS=<n>: measured calls per row (default 4000), e.g. more under `perf record`
//! ```
//!
//! Numbers are in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use portcullis::mcp::Message;
use portcullis::policy::{Call, Chain, Identity, Policies, RuntimeConfig};
use serde_json::json;

const CALLS: u32 = 4000;

fn calls() -> u32 {
    std::env::var("ISOLATION_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CALLS)
}
const WARMUP: u32 = 300;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> Vec<u8> {
    let path = repo(path);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-plugins", path.display()))
}

/// The sidecar a plugin ships with, with `warm` and `preinit` set for the mode.
fn sidecar(name: &str, warm: u32, preinit: bool) -> String {
    let shipped = match name {
        "authn" => "plugins/default/authn.toml".to_string(),
        other => format!("plugins/{other}/{other}.toml"),
    };
    let text = String::from_utf8(read(&shipped)).unwrap();
    let mut out = format!("warm = {warm}\npreinit = {preinit}\n");
    // ISOLATION_NO_PHASES=1: without the shipped `[phases]` (every declared phase, every
    // method: what the sidecars did before they narrowed them).
    let no_phases = std::env::var("ISOLATION_NO_PHASES").is_ok_and(|v| v == "1");
    let mut in_phases = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_phases = line.trim() == "[phases]";
        }
        if no_phases && in_phases {
            continue;
        }
        if line.trim_start().starts_with("warm ") || line.trim_start().starts_with("warm=") {
            continue;
        }
        let line = if name == "rate-limit" && line.starts_with("rate = ") {
            "rate = \"1000000000/s\""
        } else {
            line
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn folder(plugins: &[&str], warm: u32, preinit: bool) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-bench-isolation-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for name in plugins {
        std::fs::write(
            dir.join(format!("{name}.wasm")),
            read(&format!("target/plugins/{name}.wasm")),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{name}.toml")),
            sidecar(name, warm, preinit),
        )
        .unwrap();
    }
    dir
}

async fn one_call(chain: &Chain, msg: &Arc<Message>) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer pk_demo_admin_do_not_use_in_production"),
    );
    let mut call = Call::new(
        msg.clone(),
        headers,
        Some("bench-session".into()),
        Some(("up".to_string(), "echo".to_string())),
    );
    // What authn sets for the demo admin key, for the cases without authn.
    call.set_identity(Identity {
        subject: "demo-admin".into(),
        roles: vec!["admin".into()],
        ..Identity::default()
    });
    if let Err(d) = chain.on_request(&mut call).await {
        panic!("denied: {}", d.message);
    }
    let response = Message::result(
        json!(1),
        json!({ "content": [{ "type": "text", "text": "Ticket 4711 was opened by alice@example.com from the support portal; the build finished in 42 s and the report is attached below for review." }], "isError": false }),
    );
    if let Err(d) = chain.on_response(&mut call, response).await {
        panic!("response denied: {}", d.message);
    }
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and has no other effect.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let msg = Arc::new(Message::request(
        json!(1),
        "tools/call",
        Some(json!({ "name": "up__echo", "arguments": { "text": "hello" } })),
    ));
    let modes = [
        ("fresh, init per call", 0, false),
        ("fresh, pre-initialized", 0, true),
        ("warm", 100_000, false),
    ];
    let cases: [(&str, &[&str]); 5] = [
        ("authn (API key)", &["authn"]),
        ("authz", &["authz"]),
        ("rate-limit", &["rate-limit"]),
        ("redact", &["redact"]),
        (
            "whole chain (authn, authz, rate-limit, redact)",
            &["authn", "authz", "rate-limit", "redact"],
        ),
    ];
    // Cases by the start of their label (`redact` is not the whole chain), modes by any part.
    let wanted = |var: &str, label: &str| {
        std::env::var(var)
            .map(|v| {
                v.split(',').any(|w| match var {
                    "ISOLATION_CASES" => label.starts_with(w.trim()),
                    _ => label.contains(w.trim()),
                })
            })
            .unwrap_or(true)
    };
    println!("| case | mode | wall µs/call | CPU µs/call |");
    println!("| --- | --- | ---: | ---: |");
    for (label, plugins) in cases {
        for (mode, warm, preinit) in modes {
            if !wanted("ISOLATION_CASES", label) || !wanted("ISOLATION_MODES", mode) {
                continue;
            }
            let dir = folder(plugins, warm, preinit);
            let (wall, cpu) = rt.block_on(async {
                let policies = Policies::open(
                    Some(&dir),
                    RuntimeConfig {
                        // ISOLATION_CACHE=<dir> keeps the compilations (and snapshots) there,
                        // e.g. to see the size of a pre-initialized plugin.
                        cache: std::env::var_os("ISOLATION_CACHE").map(PathBuf::from),
                        ..RuntimeConfig::default()
                    },
                    Vec::new(),
                )
                .await
                .unwrap();
                let chain = policies.chain();
                // Pre-initialization starts after a plugin's 64th call.
                for _ in 0..WARMUP {
                    one_call(&chain, &msg).await;
                }
                if preinit {
                    let started = Instant::now();
                    while !policies.status().await.iter().all(|s| s.preinitialized) {
                        assert!(
                            started.elapsed() < Duration::from_secs(120),
                            "not pre-initialized: {:?}",
                            policies.status().await
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                for _ in 0..WARMUP {
                    one_call(&chain, &msg).await;
                }
                let (cpu0, wall0) = (cpu_time(), Instant::now());
                for _ in 0..calls() {
                    one_call(&chain, &msg).await;
                }
                (wall0.elapsed() / calls(), (cpu_time() - cpu0) / calls())
            });
            println!(
                "| {label} | {mode} | {:.1} | {:.1} |",
                wall.as_secs_f64() * 1e6,
                cpu.as_secs_f64() * 1e6
            );
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
