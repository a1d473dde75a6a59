//! `loadgen`: the gateway's load harness. Measures `tools/call` and `tools/list` through the
//! gateway and directly against the same Streamable HTTP upstream (the fixture server), at
//! 1, 16 and 64 concurrent client sessions, then the gateway's memory with 1,000 sessions.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-tests --bins
//! target/release/loadgen [--seconds 10] [--sessions 1000] [--memory-only]
//! target/release/loadgen --calls-only [--seconds 10]
//! target/release/loadgen --tracing [--seconds 10]
//! target/release/loadgen --audit [--seconds 10]
//! target/release/loadgen --cluster [--seconds 10] [--sessions 1000]
//! target/release/loadgen --compare [--seconds 10] [--only stdio]
//! ```
//!
//! `--compare` runs one comparison in one run (`loadgen/compare.rs`): direct, Portcullis
//! without policies, with the shipped chain, with a stdio upstream, and mcp-proxy (PyPI)
//! with the same stdio upstream (needs `scripts/build-plugins`; installs mcp-proxy with
//! `scripts/ensure-mcp-proxy`).
//!
//! `--cluster` measures scale-out (needs `scripts/build-plugins`, `redis-server` and
//! `haproxy`: `scripts/ensure-redis`, `scripts/ensure-haproxy`): the rate-limit plugin with a
//! limit per session nobody reaches in the chain, so every request reads and swaps its
//! session's bucket; one gateway
//! process with the plugin's state in memory, the same with `[cluster]` (sealed session ids,
//! the state in Redis), and three such replicas behind HAProxy (round robin per request, so
//! consecutive requests of a session go to different replicas). Then RSS per idle session
//! with sealed ids, on the replica that opened the sessions and on one that resumed them.
//!
//! `--audit` measures the audit trail the same way: one allow-all policy, one HTTP upstream,
//! `[audit]` off and on (records to a file), and the plain gateway without policies for
//! reference (its request metrics are always on).
//!
//! `--tracing` measures the cost of OpenTelemetry export instead: the same gateway (one
//! allow-all policy, one HTTP upstream) with `[tracing]` off and on, exporting to an
//! OTLP/HTTP sink in this process (needs `scripts/build-plugins` for the policy).
//!
//! `--calls-only` skips the memory table and `tools/list`: `tools/call` direct and through
//! the gateway only, the bare proxy's cost (issue 18).
//!
//! Prints a Markdown report (see docs/BENCHMARKS.md). Each virtual client is one MCP session
//! on its own keep-alive connection, sending its next request as soon as the last answer
//! arrived. CPU per call is the server processes' user+system time (from /proc) divided by
//! the calls answered: on a 2-core machine that, not latency, bounds throughput.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[path = "loadgen/compare.rs"]
mod compare;
use portcullis_tests::harness::{
    Fixture, Gateway, Haproxy, PluginDir, RedisServer, TempDir, toml_str,
};
use serde_json::json;

const CONCURRENCY: [usize; 3] = [1, 16, 64];

#[derive(Clone, Copy)]
enum Op {
    Call,
    List,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Call => "tools/call",
            Op::List => "tools/list",
        }
    }

    fn body(self, tool: &str) -> String {
        match self {
            Op::Call => json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": tool, "arguments": {"text": "hello"}}})
            .to_string(),
            Op::List => json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string(),
        }
    }
}

struct Target<'a> {
    label: &'static str,
    url: &'a str,
    /// Name of the echo tool as this target exposes it.
    echo: &'static str,
    /// Server processes whose CPU time is charged to this target.
    pids: Vec<u32>,
}

struct Cell {
    calls: usize,
    errors: usize,
    rps: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_call: Duration,
    /// CPU per call of each of the target's `pids`, in their order (see [`cpu_split`]).
    cpu_each: Vec<Duration>,
}

fn client() -> reqwest::Client {
    portcullis_tests::harness::init_tls();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()
        .expect("http client")
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: String,
) -> anyhow::Result<(String, Option<String>)> {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    let resp = req.send().await?;
    let status = resp.status();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {text}");
    }
    Ok((text, sid))
}

async fn open_session(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "loadgen", "version": "1"}}});
    let (_, sid) = post(http, url, None, init.to_string()).await?;
    let sid = sid.context("no Mcp-Session-Id")?;
    post(
        http,
        url,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
    )
    .await?;
    Ok(sid)
}

/// User+system CPU time of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn measure(
    target: &Target<'_>,
    op: Op,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Cell> {
    let http = client();
    let mut sessions = Vec::new();
    for _ in 0..concurrency {
        sessions.push(open_session(&http, target.url).await?);
    }
    let body = op.body(target.echo);
    let run = |until: Instant, record: bool| {
        let workers = sessions.iter().map(|sid| {
            let (http, body, url, sid) = (
                http.clone(),
                body.clone(),
                target.url.to_string(),
                sid.clone(),
            );
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                while Instant::now() < until {
                    let t0 = Instant::now();
                    match post(&http, &url, Some(&sid), body.clone()).await {
                        Ok((text, _)) if text.contains("\"result\"") => {
                            if record {
                                lat.push(t0.elapsed());
                            }
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        });
        futures_util::future::join_all(workers)
    };
    // Warm up: connections, upstream links, caches.
    run(Instant::now() + Duration::from_secs(1), false).await;
    let cpu0 = cpu_times(&target.pids);
    let start = Instant::now();
    let results = run(start + Duration::from_secs_f64(seconds), true).await;
    let elapsed = start.elapsed();
    let cpu_spent: Vec<Duration> = cpu_times(&target.pids)
        .iter()
        .zip(&cpu0)
        .map(|(after, before)| after.saturating_sub(*before))
        .collect();
    let cpu: Duration = cpu_spent.iter().sum();
    let mut lat = Vec::new();
    let mut errors = 0;
    for r in results {
        let (l, e) = r?;
        lat.extend(l);
        errors += e;
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let calls = lat.len();
    Ok(Cell {
        calls,
        errors,
        rps: calls as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_call: cpu / calls.max(1) as u32,
        cpu_each: cpu_spent.iter().map(|c| *c / calls.max(1) as u32).collect(),
    })
}

/// User+system CPU time so far of each of `pids`.
fn cpu_times(pids: &[u32]) -> Vec<Duration> {
    pids.iter().map(|p| cpu_time(*p)).collect()
}

/// The main table's split of a cell's CPU per call: the gateway's own (`–` for the direct
/// target, whose only process is the upstream) and the upstream's, in µs. The gateway
/// target's pids are `[gateway, upstream]`.
fn cpu_split(target: &Target<'_>, cell: &Cell) -> String {
    let us = |d: &Duration| format!("{:.0}", d.as_secs_f64() * 1e6);
    match cell.cpu_each.as_slice() {
        [upstream] if target.label == "direct" => format!("– | {}", us(upstream)),
        [gateway, upstream] => format!("{} | {}", us(gateway), us(upstream)),
        _ => "? | ?".into(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The gateway's load harness: prints a Markdown report (see the module docs and
/// docs/BENCHMARKS.md). Without a mode flag: tools/call and tools/list direct and through the
/// gateway at 1, 16 and 64 clients, then the memory table.
#[derive(clap::Parser)]
struct Args {
    /// Measured seconds per cell.
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    seconds: f64,
    /// Sessions for the memory table (idle, then after one call each).
    #[arg(long = "sessions", value_name = "N", default_value_t = 1000)]
    idle_sessions: usize,
    /// Only the memory table.
    #[arg(long)]
    memory_only: bool,
    /// tools/call direct and through the gateway only: the bare proxy's cost.
    #[arg(long)]
    calls_only: bool,
    /// OpenTelemetry export off and on.
    #[arg(long)]
    tracing: bool,
    /// The audit trail off and on.
    #[arg(long)]
    audit: bool,
    /// One process, one process with `[cluster]`, three replicas behind HAProxy.
    #[arg(long)]
    cluster: bool,
    /// One comparison in one run: direct, Portcullis (bare, shipped chain, stdio), mcp-proxy.
    #[arg(long = "compare")]
    peers: bool,
    /// With --compare: only the targets whose label contains this text (e.g. `stdio`).
    #[arg(long, value_name = "TEXT", requires = "peers")]
    only: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        seconds,
        idle_sessions,
        memory_only,
        calls_only,
        tracing,
        audit,
        cluster,
        peers,
        only,
    } = <Args as clap::Parser>::parse();
    if peers {
        return compare::compare(seconds, only.as_deref()).await;
    }
    if cluster {
        return cluster_overhead(seconds, idle_sessions, memory_only).await;
    }
    if audit {
        return audit_overhead(seconds).await;
    }
    if tracing {
        return tracing_overhead(seconds).await;
    }
    let upstream = Fixture::http("bench").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax-sessions = 100000\nmax-sessions-per-caller = 100000\n\n{}",
        upstream.upstream_toml("bench")
    );
    // Memory, on a gateway of its own (so the throughput runs do not pre-grow its heap):
    // sessions that only initialized, then the same sessions after one call each (which
    // opens one upstream session per client session).
    if !calls_only {
        let fresh = Gateway::start(&config).await;
        let http = client();
        let base = rss_kib(fresh.pid());
        let mut sids = Vec::new();
        for _ in 0..idle_sessions {
            sids.push(open_session(&http, fresh.url()).await?);
        }
        let idle = rss_kib(fresh.pid());
        for chunk in sids.chunks(64) {
            let calls = chunk
                .iter()
                .map(|sid| post(&http, fresh.url(), Some(sid), Op::Call.body("bench__echo")));
            for r in futures_util::future::join_all(calls).await {
                r?;
            }
        }
        let active = rss_kib(fresh.pid());
        let per = |kib: u64| kib.saturating_sub(base) as f64 / idle_sessions.max(1) as f64;
        println!("| gateway RSS | MiB | per session |");
        println!("| --- | ---: | ---: |");
        println!("| after start | {:.1} | |", base as f64 / 1024.0);
        println!(
            "| {idle_sessions} idle sessions | {:.1} | {:.1} KiB |",
            idle as f64 / 1024.0,
            per(idle)
        );
        println!(
            "| {idle_sessions} sessions after one call each (upstream session open) | {:.1} | {:.1} KiB |",
            active as f64 / 1024.0,
            per(active)
        );
    }
    if memory_only {
        return Ok(());
    }

    let gateway = Gateway::start(&config).await;
    let direct = Target {
        label: "direct",
        url: upstream.url(),
        echo: "echo",
        pids: vec![upstream.pid()],
    };
    let through = Target {
        label: "gateway",
        url: gateway.url(),
        echo: "bench__echo",
        pids: vec![gateway.pid(), upstream.pid()],
    };

    println!(
        "\n| op | clients | target | calls/s | p50 ms | p99 ms | CPU µs/call (servers) | gateway CPU µs/call | upstream CPU µs/call | errors |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut ratios = Vec::new();
    let ops: &[Op] = if calls_only {
        &[Op::Call]
    } else {
        &[Op::Call, Op::List]
    };
    for &op in ops {
        for c in CONCURRENCY {
            let d = measure(&direct, op, c, seconds).await?;
            let g = measure(&through, op, c, seconds).await?;
            for (t, cell) in [(&direct, &d), (&through, &g)] {
                println!(
                    "| {} | {c} | {} | {:.0} | {} | {} | {:.0} | {} | {} |",
                    op.label(),
                    t.label,
                    cell.rps,
                    ms(cell.p50),
                    ms(cell.p99),
                    cell.cpu_per_call.as_secs_f64() * 1e6,
                    cpu_split(t, cell),
                    cell.errors
                );
            }
            ratios.push((
                op.label(),
                c,
                g.rps / d.rps,
                g.p50.as_secs_f64() / d.p50.as_secs_f64().max(1e-9),
                d.calls + g.calls,
            ));
        }
    }
    println!("\n| op | clients | gateway/direct throughput | gateway/direct p50 |");
    println!("| --- | ---: | ---: | ---: |");
    for (op, c, t, l) in ratios.iter().map(|(o, c, t, l, _)| (o, c, t, l)) {
        println!("| {op} | {c} | {t:.2} | {l:.2} |");
    }
    Ok(())
}

/// An OTLP/HTTP receiver that accepts everything: (its base URL, exports received, bytes).
async fn otlp_sink() -> anyhow::Result<(String, std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>)>
{
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering::Relaxed;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let counts = std::sync::Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let n = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        seen[0].fetch_add(1, Relaxed);
                        seen[1].fetch_add(n as u64, Relaxed);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::new()),
                        ))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((url, counts))
}

/// Measures `bench__echo` calls through `gateway` alone (its CPU only) from `clients`
/// clients and prints the row; gives the calls answered.
async fn gateway_row(
    label: &'static str,
    gateway: &Gateway,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<usize> {
    let target = Target {
        label,
        url: gateway.url(),
        echo: "bench__echo",
        pids: vec![gateway.pid()],
    };
    let cell = measure(&target, Op::Call, clients, seconds).await?;
    println!(
        "| {clients} | {label} | {:.0} | {} | {} | {:.0} | {} |",
        cell.rps,
        ms(cell.p50),
        ms(cell.p99),
        cell.cpu_per_call.as_secs_f64() * 1e6,
        cell.errors
    );
    Ok(cell.calls)
}

/// `--tracing`: tools/call through the gateway with trace export off and on.
async fn tracing_overhead(seconds: f64) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let upstream = Fixture::http("bench").await;
    let plugins = PluginDir::new();
    plugins.add("gate", "chaos", "[config]\nmode = \"allow\"\n");
    let (sink, exported) = otlp_sink().await?;
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax-sessions = 100000\nmax-sessions-per-caller = 100000\n\n{}{}",
        plugins.policy_toml(),
        upstream.upstream_toml("bench")
    );
    let off = Gateway::start(&base).await;
    let on = Gateway::start(&format!("{base}[tracing]\notlp-endpoint = \"{sink}\"\n")).await;
    println!("| clients | tracing | calls/s | p50 ms | p99 ms | gateway CPU µs/call | errors |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let mut calls_on = 0;
    for c in CONCURRENCY {
        for (label, gateway) in [("off", &off), ("on", &on)] {
            let calls = gateway_row(label, gateway, c, seconds).await?;
            if label == "on" {
                calls_on += calls;
            }
        }
    }
    // Let the batch processor send what it holds (it exports every 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!(
        "\nexported: {} OTLP requests, {:.1} MiB, for {} measured calls (plus warm-up)",
        exported[0].load(Relaxed),
        exported[1].load(Relaxed) as f64 / (1024.0 * 1024.0),
        calls_on
    );
    Ok(())
}

/// `--audit`: tools/call through the gateway without policies, with one allow-all policy,
/// and with that policy and the audit trail writing to a file.
async fn audit_overhead(seconds: f64) -> anyhow::Result<()> {
    let upstream = Fixture::http("bench").await;
    let plugins = PluginDir::new();
    plugins.add("gate", "chaos", "[config]\nmode = \"allow\"\n");
    let dir = TempDir::new();
    let trail = dir.path().join("audit.jsonl");
    let server = "[server]\nlisten = \"127.0.0.1:0\"\nmax-sessions = 100000\nmax-sessions-per-caller = 100000\n\n";
    let bare = format!("{server}{}", upstream.upstream_toml("bench"));
    let policy = format!(
        "{server}{}{}",
        plugins.policy_toml(),
        upstream.upstream_toml("bench")
    );
    // The keyed chain and its checkpoints, with the default checkpoint cadence.
    let checkpoint_key = dir.write("checkpoint.key", &"5a".repeat(32));
    let audited = format!(
        "{policy}[audit]\nenabled = true\npath = {}\nkey = \"a loadgen chain key of 32 bytes or more\"\ncheckpoint-key-file = {}\n",
        toml_str(&trail.to_string_lossy()),
        toml_str(&checkpoint_key.to_string_lossy())
    );
    let gateways = [
        ("no policy", Gateway::start(&bare).await),
        ("policy", Gateway::start(&policy).await),
        ("policy + audit", Gateway::start(&audited).await),
    ];
    println!("| clients | gateway | calls/s | p50 ms | p99 ms | gateway CPU µs/call | errors |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for c in CONCURRENCY {
        for (label, gateway) in &gateways {
            gateway_row(label, gateway, c, seconds).await?;
        }
    }
    let bytes = std::fs::metadata(&trail).map(|m| m.len()).unwrap_or(0);
    let records = std::fs::read_to_string(&trail)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!(
        "\naudit trail: {records} records, {:.1} MiB ({} bytes per record)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / records.max(1) as u64
    );
    Ok(())
}

/// `--cluster`: one process against three replicas behind HAProxy; RSS per sealed session.
async fn cluster_overhead(
    seconds: f64,
    idle_sessions: usize,
    memory_only: bool,
) -> anyhow::Result<()> {
    const KEY: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    let upstream = Fixture::http("bench").await;
    let redis = RedisServer::start();
    let plugins = PluginDir::new();
    plugins.add(
        "rate-limit",
        "rate-limit",
        "[config]\n[[config.limits]]\nname = \"per-session\"\nmethods = [\"*\"]\nper = [\"session\"]\nrate = \"1000000/h\"\n",
    );
    let server = "[server]\nlisten = \"127.0.0.1:0\"\nmax-sessions = 100000\nmax-sessions-per-caller = 100000\n\n";
    let local = format!(
        "{server}{}{}",
        plugins.policy_toml(),
        upstream.upstream_toml("bench")
    );
    let clustered = format!(
        "{server}{}[cluster]\nsession-key = \"{KEY}\"\nredis = \"{}\"\n\n{}",
        plugins.policy_toml(),
        redis.url(),
        upstream.upstream_toml("bench")
    );
    let redis_pid = redis.pid().context("redis-server is not running")?;

    // Memory: idle sessions on one process without `[cluster]` (random ids), the same on a
    // replica with sealed ids, then resumed on another replica by a `ping` each (the gateway
    // answers it itself: no upstream session is opened).
    {
        let plain = Gateway::start(&local).await;
        let opener = Gateway::start(&clustered).await;
        let resumer = Gateway::start(&clustered).await;
        let http = client();
        let per =
            |kib: u64, base: u64| kib.saturating_sub(base) as f64 / idle_sessions.max(1) as f64;
        println!("| gateway RSS (rate-limit plugin in the chain) | MiB | per session |");
        println!("| --- | ---: | ---: |");
        let base_p = rss_kib(plain.pid());
        for _ in 0..idle_sessions {
            open_session(&http, plain.url()).await?;
        }
        let idle_p = rss_kib(plain.pid());
        println!(
            "| no `[cluster]`: after start | {:.1} | |",
            base_p as f64 / 1024.0
        );
        println!(
            "| no `[cluster]`: {idle_sessions} idle sessions | {:.1} | {:.1} KiB |",
            idle_p as f64 / 1024.0,
            per(idle_p, base_p)
        );
        let (base_a, base_b) = (rss_kib(opener.pid()), rss_kib(resumer.pid()));
        let mut sids = Vec::new();
        for _ in 0..idle_sessions {
            sids.push(open_session(&http, opener.url()).await?);
        }
        let idle = rss_kib(opener.pid());
        let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string();
        for chunk in sids.chunks(64) {
            let pings = chunk
                .iter()
                .map(|sid| post(&http, resumer.url(), Some(sid), ping.clone()));
            for r in futures_util::future::join_all(pings).await {
                r?;
            }
        }
        let resumed = rss_kib(resumer.pid());
        println!(
            "| sealed ids: after start | {:.1} | |",
            base_a as f64 / 1024.0
        );
        println!(
            "| sealed ids: {idle_sessions} idle sessions opened here | {:.1} | {:.1} KiB |",
            idle as f64 / 1024.0,
            per(idle, base_a)
        );
        println!(
            "| sealed ids: another replica after resuming them (one `ping` each) | {:.1} | {:.1} KiB |",
            resumed as f64 / 1024.0,
            per(resumed, base_b)
        );
    }
    if memory_only {
        return Ok(());
    }

    let single = Gateway::start(&local).await;
    let one = Gateway::start(&clustered).await;
    let replicas = [
        Gateway::start(&clustered).await,
        Gateway::start(&clustered).await,
        Gateway::start(&clustered).await,
    ];
    let lb = Haproxy::start(&replicas.iter().map(Gateway::addr).collect::<Vec<_>>());
    let lb_url = format!("http://{}/mcp", lb.addr());
    let mut cluster_pids: Vec<u32> = replicas.iter().map(Gateway::pid).collect();
    cluster_pids.extend([lb.pid(), redis_pid, upstream.pid()]);
    let targets = [
        Target {
            label: "1 process, state in memory",
            url: single.url(),
            echo: "bench__echo",
            pids: vec![single.pid(), upstream.pid()],
        },
        Target {
            label: "1 process, `[cluster]` (Redis)",
            url: one.url(),
            echo: "bench__echo",
            pids: vec![one.pid(), redis_pid, upstream.pid()],
        },
        Target {
            label: "3 replicas + HAProxy (Redis)",
            url: &lb_url,
            echo: "bench__echo",
            pids: cluster_pids,
        },
    ];
    println!(
        "\n| op | clients | target | calls/s | p50 ms | p99 ms | CPU µs/call (all servers) | errors |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for op in [Op::Call, Op::List] {
        for c in CONCURRENCY {
            for t in &targets {
                let cell = measure(t, op, c, seconds).await?;
                println!(
                    "| {} | {c} | {} | {:.0} | {} | {} | {:.0} | {} |",
                    op.label(),
                    t.label,
                    cell.rps,
                    ms(cell.p50),
                    ms(cell.p99),
                    cell.cpu_per_call.as_secs_f64() * 1e6,
                    cell.errors
                );
            }
        }
    }
    let spread: Vec<String> = lb
        .servers()
        .iter()
        .map(|s| format!("{} {}", s.name, s.total))
        .collect();
    println!("\nrequests per replica (HAProxy): {}", spread.join(", "));
    Ok(())
}
