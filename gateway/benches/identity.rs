//! Per-call cost of the identity plugins (criterion): `authn` with API keys and with RS256
//! JWTs (verified on every call, and answered from the verified-token cache), and `authz`
//! with 100 rules, each fresh (a new instance per call) and warm.
//!
//! ```sh
//! scripts/build-plugins && cargo bench -p portcullis --bench identity
//! # process CPU per call (user + system, all threads) instead of wall time: steadier than
//! # wall time on a machine that other work shares
//! IDENTITY_CPU=1 cargo bench -p portcullis --bench identity
//! ```
//!
//! Numbers are in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use criterion::measurement::{Measurement, ValueFormatter};
use http::{HeaderMap, HeaderValue};
use portcullis::mcp::Message;
use portcullis::policy::{Call, Chain, Policies, RuntimeConfig};
use serde_json::json;

/// The public half of an RSA-2048 key made for this benchmark, and a token it signed
/// (`exp` in 2100, `aud` the gateway's resource URI, role `dev`; the sidecar's
/// `max-lifetime` is raised to accept that `exp`).
const BENCH_JWK: &str = r#"{ kty = "RSA", kid = "bench-rsa", alg = "RS256", n = "4k5ZJJZA3f-J3EXXmwpFrCfMdFm_FvQcONRPh8Y_U04ZVifV95DCNpv8pA2kL3lAawIMgl79cOwph6qX4URMlFRJKwW13eQhpvtUuNtsJuXcRxq-PRvOY8EQTwvbOWaZ2OM-vkfN6oeQU1Ykk_7k-LbxSYDwiOk5NEu_5sacz4fTUC-I3f20TtSSJP1Zo8tDobKMMDqKsZX4Ku-u-vGqV9xJLBgGSR64RzTdOfKpptgbJaui9Wu5Klb0CuScI1JYQIJHf8v7DHqG6i1K5xRLpB9CqemC0Z04kHOxcR3lNylydvjtW9HCgCJJmQP0xZpsDcGzxxuBxvhSJtB5BuCPkQ", e = "AQAB" }"#;
const BENCH_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImJlbmNoLXJzYSJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSIsImF1ZCI6Imh0dHBzOi8vbWNwLmV4YW1wbGUuY29tL21jcCIsInN1YiI6ImJlbmNoIiwicm9sZXMiOlsiZGV2Il0sInNjb3BlIjoibWNwOnRvb2xzIiwiZXhwIjo0MTAyNDQ0ODAwLCJuYmYiOjE3MDAwMDAwMDB9.g2UasDc77Iwft-qRjOtL4b0cTrLC-19hiV2Y6-itEWMfgtKrIsLaVgcR6an9AZvzLoZK7uhbcCEWOAnUPOp8dtuJ-w_M-tvXykdfeVgxaVa2lefQakuFoTCnCqG5vCcpM7GW3fxbPqoA_69ZcXJ3Q1lwYXB4-i7c-QZjhmo0-8XdsvsMU3rQE48BQhV_u4NZy9fWLDWv-w8EX3fddiTceFPtaZZ_Be0hMnolxih6qI-kquliai_P9YrA8vDcVJPfs2rwOMkT03CFYLo4XJh0YlgbNEAApRD6o7hv23ZEBlSsvP600wE1h1xKCyJ6_PepODfyJHVJ_HymjXHjvDs8Kg";
/// An API key whose SHA-256 is the last of the 100 configured (the worst case of the scan).
const API_KEY: &str = "pk_bench_key_0000000000000000000000000000000000";

fn plugin(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-plugins", path.display()))
}

fn sha256_hex(s: &str) -> String {
    portcullis::policy::sha256_hex(s.as_bytes())
}

/// The authn sidecar: 100 API keys (ours last) and an RS256 JWKS; `cache_seconds` is the
/// verified-token cache's lifetime (0: off, every call verifies the signature).
fn authn_sidecar(warm: u32, cache_seconds: u32) -> String {
    let mut s = format!("warm = {warm}\n[config]\n");
    for i in 0..99 {
        s += &format!(
            "[[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"agent-{i}\"\nroles = [\"r{i}\"]\n",
            sha256_hex(&format!("pk_other_{i}"))
        );
    }
    s += &format!(
        "[[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"bench\"\nroles = [\"dev\"]\n",
        sha256_hex(API_KEY)
    );
    s += &format!(
        "[config.jwt]\nissuer = \"https://idp.example.com\"\naudience = \"https://mcp.example.com/mcp\"\nroles-claim = \"roles\"\ncache-seconds = {cache_seconds}\nmax-lifetime = 2500000000\njwks = {{ keys = [{BENCH_JWK}] }}\n"
    );
    s
}

/// The authz sidecar: 100 rules; only the last allows role `dev` the tool `echo`.
fn authz_sidecar(warm: u32) -> String {
    let mut s = format!("warm = {warm}\n[config]\ndefault = \"deny\"\n");
    for i in 0..99 {
        s += &format!(
            "[[config.rules]]\nname = \"rule-{i}\"\neffect = \"allow\"\nroles = [\"r{i}\"]\nupstreams = [\"up{i}\"]\ntools = [\"get_*\", \"list_*\"]\n"
        );
    }
    s += "[[config.rules]]\nname = \"devs-echo\"\neffect = \"allow\"\nroles = [\"dev\"]\nupstreams = [\"up\"]\ntools = [\"echo\"]\n";
    s
}

fn folder(files: &[(&str, Vec<u8>)]) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("portcullis-bench-id-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

async fn run(chain: &Chain, msg: &Arc<Message>, token: &str) {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let mut call = Call::new(
        msg.clone(),
        headers,
        None,
        Some(("up".to_string(), "echo".to_string())),
    );
    if let Err(d) = chain.on_request(&mut call).await {
        panic!("denied: {}", d.message);
    }
}

fn identity<M: Measurement + 'static>(c: &mut Criterion<M>) {
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
    let mut group = c.benchmark_group("identity");
    for (mode, warm) in [("fresh", 0), ("warm", 100_000)] {
        let authn = |cache_seconds| {
            vec![
                ("authn.wasm", plugin("authn")),
                (
                    "authn.toml",
                    authn_sidecar(warm, cache_seconds).into_bytes(),
                ),
            ]
        };
        // Every call after the first is a cache hit: the run is far shorter than 60 s.
        let (authn_only, authn_uncached) = (authn(60), authn(0));
        let mut both = authn_only.clone();
        both.push(("authz.wasm", plugin("authz")));
        both.push(("authz.toml", authz_sidecar(warm).into_bytes()));
        for (label, files, token) in [
            ("authn api-key (100 keys)", &authn_only, API_KEY),
            ("authn jwt RS256, verified", &authn_uncached, BENCH_TOKEN),
            ("authn jwt RS256, cached", &authn_only, BENCH_TOKEN),
            ("authn api-key + authz (100 rules)", &both, API_KEY),
        ] {
            let dir = folder(files);
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
            let chain = policies.chain();
            group.bench_function(format!("{label}, {mode}"), |b| {
                b.to_async(&rt).iter(|| run(&chain, &msg, token))
            });
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    group.finish();
}

/// Process CPU time (user + system, every thread: the bench's runtime and the engine's own),
/// the measurement with `IDENTITY_CPU` set.
struct ProcessCpu;

impl Measurement for ProcessCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        cpu_time()
    }
    fn end(&self, started: Duration) -> Duration {
        cpu_time().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuMicros
    }
}

fn cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass and has no other effect.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Nanoseconds of CPU shown as microseconds.
struct CpuMicros;

impl ValueFormatter for CpuMicros {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e3);
        "µs CPU"
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        _throughput: &criterion::Throughput,
        _values: &mut [f64],
    ) -> &'static str {
        "(no throughput)"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn main() {
    if std::env::var_os("IDENTITY_CPU").is_some() {
        let mut c = Criterion::default()
            .with_measurement(ProcessCpu)
            .configure_from_args();
        identity(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        identity(&mut c);
        c.final_summary();
    }
}
