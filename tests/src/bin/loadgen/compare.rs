//! `loadgen --compare`: one comparison in one run (issue 18), `tools/call` of the fixture's
//! `echo` at 1, 16 and 64 clients against:
//!
//! - **direct**: the fixture server over Streamable HTTP, no gateway;
//! - **Portcullis, no policies**: the gateway in front of that same HTTP fixture;
//! - **Portcullis, shipped chain**: the same with the four shipped policies and the sidecars
//!   they ship with (`authn` with the demo admin API key, sent by every client; `authz`;
//!   `rate-limit` with its rates and bursts raised so every call passes, the same work per
//!   call;
//!   `redact`), as `gateway/benches/isolation.rs` configures them;
//! - **Portcullis, stdio upstream**: the fixture as a stdio child, `share = "shared"` (one
//!   child for every session, as mcp-proxy runs it) and the default `"per-session"` (a child
//!   per client session);
//! - **mcp-proxy, stdio upstream**: the PyPI `mcp-proxy` (installed by
//!   `scripts/ensure-mcp-proxy` into a virtualenv under `target/`) serving the same stdio
//!   fixture over Streamable HTTP (`--log-level WARNING`: its per-request INFO line is off,
//!   as the gateway logs nothing per request by default).
//!
//! CPU per call counts each target's server processes and their children (the stdio
//! fixtures), from /proc. Prints Markdown and the Portcullis/mcp-proxy ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_tests::harness::{Fixture, Gateway, PluginDir, plugin_wasm, stdio_fixture_toml};
use serde_json::{Value, json};

use super::{CONCURRENCY, client, cpu_time, ms};

/// The shipped demo admin key (`plugins/default/authn.toml` holds its SHA-256).
const DEMO_KEY: &str = "pk_demo_admin_do_not_use_in_production";

struct Peer<'a> {
    label: &'static str,
    url: &'a str,
    echo: &'static str,
    /// `Authorization`, for the chain with authn.
    bearer: Option<&'static str>,
    /// Server processes charged, with all their descendants.
    roots: Vec<u32>,
}

struct Row {
    calls: usize,
    errors: usize,
    /// What the first failed call got, to say in the report what the errors were.
    first_error: Option<String>,
    rps: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_call: Duration,
}

/// mcp-proxy serving a stdio command over Streamable HTTP on a loopback port; stopped on
/// drop.
struct McpProxy {
    child: Child,
    url: String,
}

impl McpProxy {
    async fn start(exe: &Path, command: &Path, args: &[&str]) -> anyhow::Result<McpProxy> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(exe)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-level", "WARNING", "--"])
            .arg(command)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let proxy = McpProxy {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("mcp-proxy did not listen on port {port} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(proxy)
    }
}

impl Drop for McpProxy {
    fn drop(&mut self) {
        // SIGTERM first, so it closes its stdio child's stdin and the child exits too.
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pid` and its descendants, now.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all.sort_unstable();
    all.dedup();
    all
}

async fn post(
    http: &reqwest::Client,
    (url, bearer): (&str, Option<&str>),
    session: Option<(&str, &str)>,
    body: String,
) -> anyhow::Result<(String, Option<String>)> {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some((sid, version)) = session {
        req = req
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", version);
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

/// A session on `peer`: its id and the protocol version it negotiated.
async fn open(http: &reqwest::Client, peer: &Peer<'_>) -> anyhow::Result<(String, String)> {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "loadgen", "version": "1"}}});
    let to = (peer.url, peer.bearer);
    let (text, sid) = post(http, to, None, init.to_string()).await?;
    let sid = sid.with_context(|| format!("{}: no Mcp-Session-Id: {text}", peer.label))?;
    // The answer is JSON, or an SSE stream with an event carrying it (after a priming one).
    let version = std::iter::once(text.as_str())
        .chain(text.lines().filter_map(|l| l.strip_prefix("data:")))
        .filter_map(|json| serde_json::from_str::<Value>(json.trim()).ok())
        .find_map(|v| v["result"]["protocolVersion"].as_str().map(str::to_string))
        .with_context(|| format!("{}: no protocolVersion in {text}", peer.label))?;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(http, to, Some((&sid, &version)), initialized.to_string()).await?;
    Ok((sid, version))
}

async fn measure(peer: &Peer<'_>, clients: usize, seconds: f64) -> anyhow::Result<Row> {
    let http = client();
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(open(&http, peer).await?);
    }
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": peer.echo, "arguments": {"text": "hello"}}})
    .to_string();
    let run = |until: Instant, record: bool| {
        let workers = sessions.iter().map(|(sid, version)| {
            let (http, body) = (http.clone(), body.clone());
            let (sid, version) = (sid.clone(), version.clone());
            let (url, bearer) = (peer.url.to_string(), peer.bearer);
            // A task per client, as in the other modes: the clients use both cores too.
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                let mut first = None;
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let to = (url.as_str(), bearer);
                    let answer = post(&http, to, Some((&sid, &version)), body.clone()).await;
                    match answer {
                        Ok((text, _)) if text.contains("\"result\"") => {
                            if record {
                                lat.push(t0.elapsed());
                            }
                        }
                        other => {
                            errors += 1;
                            let what = match other {
                                Ok((text, _)) => text,
                                Err(e) => e.to_string(),
                            };
                            first.get_or_insert(what.chars().take(300).collect::<String>());
                        }
                    }
                }
                (lat, errors, first)
            })
        });
        futures_util::future::join_all(workers)
    };
    // Warm up: connections, upstream links and children, caches, warm instances.
    run(Instant::now() + Duration::from_secs(1), false).await;
    let pids: Vec<u32> = peer.roots.iter().flat_map(|p| tree(*p)).collect();
    let cpu0: Duration = pids.iter().map(|p| cpu_time(*p)).sum();
    let start = Instant::now();
    let results = run(start + Duration::from_secs_f64(seconds), true).await;
    let elapsed = start.elapsed();
    let cpu = pids
        .iter()
        .map(|p| cpu_time(*p))
        .sum::<Duration>()
        .saturating_sub(cpu0);
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for r in results {
        let (l, e, f) = r?;
        lat.extend(l);
        errors += e;
        first_error = first_error.or(f);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Row {
        calls: lat.len(),
        errors,
        first_error,
        rps: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_call: cpu / lat.len().max(1) as u32,
    })
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The four shipped policies with their shipped sidecars, rate-limit's rates raised.
fn shipped_chain() -> anyhow::Result<PluginDir> {
    let plugins = PluginDir::new();
    for name in ["authn", "authz", "rate-limit", "redact"] {
        let sidecar = match name {
            "authn" => repo("plugins/default/authn.toml"),
            other => repo(&format!("plugins/{other}/{other}.toml")),
        };
        let text = std::fs::read_to_string(&sidecar)
            .with_context(|| format!("read {}", sidecar.display()))?;
        let text: String = text
            .lines()
            .map(|l| {
                // Bursts too: with the shipped burst (20) at this rate a bucket holds 20 ns of
                // slack, and a request that read the clock and then waited for a core is
                // refused behind those that did not. Every limit is still checked per call.
                if name == "rate-limit" && l.starts_with("rate = ") {
                    "rate = \"1000000000/s\"\n".to_string()
                } else if name == "rate-limit" && l.starts_with("burst = ") {
                    "burst = 1000000000\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        // plugin_wasm checks the component was built (scripts/build-plugins).
        plugin_wasm(name);
        plugins.add(name, name, &text);
    }
    Ok(plugins)
}

/// `scripts/ensure-mcp-proxy`: installs mcp-proxy if needed, gives its path.
fn ensure_mcp_proxy() -> anyhow::Result<PathBuf> {
    let script = repo("scripts/ensure-mcp-proxy");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    let path = String::from_utf8(out.stdout)?.trim().to_string();
    Ok(PathBuf::from(path))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `--compare`.
pub(super) async fn compare(seconds: f64, only: Option<&str>) -> anyhow::Result<()> {
    let mcp_proxy = ensure_mcp_proxy()?;
    println!("load average at start: {}", load_average());
    let upstream = Fixture::http("bench").await;
    let chain = shipped_chain()?;
    let server = "[server]\nlisten = \"127.0.0.1:0\"\nmax-sessions = 100000\nmax-sessions-per-caller = 100000\n\n";
    let bare = Gateway::start(&format!("{server}{}", upstream.upstream_toml("bench"))).await;
    let guarded = Gateway::start(&format!(
        "{server}{}{}",
        chain.policy_toml(),
        upstream.upstream_toml("bench")
    ))
    .await;
    let stdio = stdio_fixture_toml("bench");
    let shared = Gateway::start(&format!("{server}{stdio}share = \"shared\"\n\n")).await;
    let per_session = Gateway::start(&format!("{server}{stdio}max-children = 1000\n\n")).await;
    let fixture = portcullis_tests::harness::bin_path("fixture");
    let proxy = McpProxy::start(&mcp_proxy, &fixture, &["--stdio", "--name", "bench"]).await?;

    let peers = [
        Peer {
            label: "direct (fixture over HTTP)",
            url: upstream.url(),
            echo: "echo",
            bearer: None,
            roots: vec![upstream.pid()],
        },
        Peer {
            label: "Portcullis, no policies (HTTP upstream)",
            url: bare.url(),
            echo: "bench__echo",
            bearer: None,
            roots: vec![bare.pid(), upstream.pid()],
        },
        Peer {
            label: "Portcullis, shipped chain (HTTP upstream)",
            url: guarded.url(),
            echo: "bench__echo",
            bearer: Some(DEMO_KEY),
            roots: vec![guarded.pid(), upstream.pid()],
        },
        Peer {
            label: "Portcullis, stdio upstream (one shared child)",
            url: shared.url(),
            echo: "bench__echo",
            bearer: None,
            roots: vec![shared.pid()],
        },
        Peer {
            label: "Portcullis, stdio upstream (a child per session)",
            url: per_session.url(),
            echo: "bench__echo",
            bearer: None,
            roots: vec![per_session.pid()],
        },
        Peer {
            label: "mcp-proxy 0.13.0, stdio upstream (one child)",
            url: &proxy.url,
            echo: "echo",
            bearer: None,
            roots: vec![proxy.child.id()],
        },
    ];
    println!(
        "\n| clients | target | calls/s | p50 ms | p99 ms | CPU µs/call (servers + children) | errors |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let mut ratios = Vec::new();
    for c in CONCURRENCY {
        let mut rows = Vec::new();
        for peer in &peers {
            if only.is_some_and(|o| !peer.label.contains(o)) {
                rows.push(None);
                continue;
            }
            let row = measure(peer, c, seconds).await?;
            println!(
                "| {c} | {} | {:.0} | {} | {} | {:.0} | {} |",
                peer.label,
                row.rps,
                ms(row.p50),
                ms(row.p99),
                row.cpu_per_call.as_secs_f64() * 1e6,
                row.errors
            );
            if let Some(e) = &row.first_error {
                eprintln!(
                    "{c} clients, {}: {} errors, the first: {e}",
                    peer.label, row.errors
                );
            }
            rows.push(Some(row));
        }
        let (Some(ours), Some(theirs)) = (&rows[3], &rows[5]) else {
            continue;
        };
        if ours.calls == 0 || theirs.calls == 0 {
            continue;
        }
        ratios.push((
            c,
            ours.rps / theirs.rps,
            theirs.p50.as_secs_f64() / ours.p50.as_secs_f64().max(1e-9),
            theirs.cpu_per_call.as_secs_f64() / ours.cpu_per_call.as_secs_f64().max(1e-9),
        ));
    }
    println!(
        "\n| clients | Portcullis/mcp-proxy throughput | mcp-proxy/Portcullis p50 | mcp-proxy/Portcullis CPU per call |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for (c, rps, p50, cpu) in ratios {
        println!("| {c} | {rps:.1}× | {p50:.1}× | {cpu:.1}× |");
    }
    println!(
        "\n(Portcullis = the stdio row with one shared child, the same shape as mcp-proxy's)\nload average at end: {}",
        load_average()
    );
    Ok(())
}
