//! Bounds on client input and plugin output, under attack: the real binary on loopback.
//!
//! Each attack reads the gateway's resident memory (`VmRSS` in `/proc/<pid>/status`) before,
//! at its peak (sampled while the attack runs) and after, and the size of its log; it asserts
//! that memory stays under a ceiling and comes back near where it started, and that the log
//! stays small. The numbers are printed (`--nocapture`) for BENCHMARKS-style reports.
//!
//! Ceilings, in MiB above the gateway's resident memory before the attack:
//! - 100 × `initialize` with a 4 MB `clientInfo.name`, 10 at a time: peak under
//!   [`INIT_PEAK_MIB`] (each request's 4 MB body and its parsed JSON exist while it is
//!   read), after under [`AFTER_MIB`]. Unbounded, this kept 4 MB per session and logged each
//!   name: 469 MB resident and 391 MiB of log.
//! - 12 unread GET streams fed 12 MB each (and as much read back on the calls' own streams):
//!   peak under [`SSE_PEAK_MIB`] (see there), after under [`AFTER_MIB`]. Unbounded, every
//!   byte a socket did not take stayed queued, and every streamed answer stayed in replay.
//! - a plugin writing 100 log lines on each of 300 calls: log under 20 lines a second plus
//!   the burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, RawSession, initialize_request, jsonrpc_request, server_toml,
    session_tag, stdio_fixture_toml,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Upper bound for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(30);
/// Peak growth allowed during the `initialize` flood, MiB.
const INIT_PEAK_MIB: u64 = 160;
/// Peak growth allowed during the unread-streams attack, MiB: per session, 4 MiB queued
/// toward its unread GET stream, 4 MiB of finished POST streams kept for replay and half a
/// MiB of socket write buffer (12 × 8.5 ≈ 102), plus the calls in flight.
const SSE_PEAK_MIB: u64 = 160;
/// Growth allowed once an attack is over, MiB (allocator caches, lazily returned pages).
const AFTER_MIB: u64 = 32;

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Samples a process's resident memory every 5 ms until [`Sampler::peak`].
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak.max(rss_kib(pid))
        });
        Sampler { stop, task }
    }

    async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler")
    }
}

/// Resident memory once it is at most `ceiling` KiB, or what it is after [`WAIT`] (freed
/// memory goes back to the system a little after it is freed).
async fn settled_rss(pid: u32, ceiling: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let rss = rss_kib(pid);
        if rss <= ceiling || Instant::now() > deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's log once it has `n` lines containing `needle` (or after [`WAIT`]).
async fn wait_for_count(gateway: &Gateway, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let logs = gateway.logs();
        if logs.lines().filter(|l| l.contains(needle)).count() >= n || Instant::now() > deadline {
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one attack did to the gateway, printed for the record.
struct Measured {
    before: u64,
    peak: u64,
    after: u64,
    log_bytes: usize,
}

impl Measured {
    fn print(&self, attack: &str) {
        let mib = |k: u64| k as f64 / 1024.0;
        eprintln!(
            "limits_client: {attack}: RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; log +{} bytes",
            mib(self.before),
            mib(self.peak),
            mib(self.after),
            self.log_bytes
        );
    }

    fn assert_within(&self, attack: &str, peak_mib: u64) {
        self.print(attack);
        assert!(
            self.peak <= self.before + peak_mib * 1024,
            "{attack}: peak RSS {} KiB, more than {peak_mib} MiB over {} KiB",
            self.peak,
            self.before
        );
        assert!(
            self.after <= self.before + AFTER_MIB * 1024,
            "{attack}: RSS {} KiB after the attack, more than {AFTER_MIB} MiB over {} KiB",
            self.after,
            self.before
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_with_a_4_mb_client_name_is_refused_and_costs_no_memory_or_log() {
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("alpha"));
    let gateway = Gateway::start(&config).await;
    let pid = gateway.pid();
    let http = RawHttp::new(gateway.url());
    // Warm: the first session, so what follows measures the attack only.
    let (_, session) = http.initialize(&[]).await;
    let before = rss_kib(pid);
    let log_before = gateway.logs().len();

    let mut init = initialize_request(1, "2025-11-25");
    init["params"]["clientInfo"]["name"] = json!("n".repeat(4_000_000));
    let body = Arc::new(init.to_string());
    let sampler = Sampler::start(pid);
    let answers: Vec<_> = futures_util::stream::iter(0..100)
        .map(|_| {
            let (http, body) = (http.clone(), body.clone());
            async move {
                http.request(
                    Method::POST,
                    &[
                        ("content-type", "application/json"),
                        ("accept", "application/json, text/event-stream"),
                    ],
                    Some(body.to_string()),
                )
                .await
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let peak = sampler.peak().await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(
            answer.session_id().is_none(),
            "no session for an oversized clientInfo"
        );
        let error = &answer.json()["error"];
        assert_eq!(error["code"], -32602, "{error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("clientInfo") && m.contains("max-client-info-bytes")),
            "{error}"
        );
    }
    let after = settled_rss(pid, before + AFTER_MIB * 1024).await;
    let measured = Measured {
        before,
        peak,
        after,
        log_bytes: gateway.logs().len() - log_before,
    };
    measured.assert_within("100 initialize with a 4 MB clientInfo.name", INIT_PEAK_MIB);
    assert!(
        measured.log_bytes < 64 * 1024,
        "the log grew by {} bytes",
        measured.log_bytes
    );
    // Still serving, and a normal client is not refused.
    let result = session.call(2, "tools/list", json!({})).await;
    assert!(result["tools"].is_array(), "{result}");
    let (_, again) = http.initialize(&[]).await;
    assert!(again.session_id.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_client_name_within_the_limit_is_clipped_in_the_log() {
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("alpha"));
    let gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let mut init = initialize_request(1, "2025-11-25");
    init["params"]["clientInfo"]["name"] = json!(format!("agent-{}", "y".repeat(3000)));
    let answer = http.post(&init, &[]).await;
    assert!(answer.session_id().is_some(), "{}", answer.body);
    let line = gateway
        .wait_for_log("session started", WAIT)
        .await
        .lines()
        .find(|l| l.contains("session started"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(line.contains("agent-yyy"), "{line}");
    assert!(line.contains("(3006 bytes)"), "{line}");
    assert!(line.len() < 1024, "{} bytes: {line}", line.len());
}

/// Opens the session's GET stream on a socket with a tiny receive buffer, reads the response
/// head, and then reads no more.
async fn unread_get_stream(gateway: &Gateway, session: &RawSession) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    // Without this, loopback autotuning would let the kernel absorb tens of MB.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(gateway.addr()).await.expect("connect");
    let head = format!(
        "GET /mcp HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {}\r\n\
         MCP-Protocol-Version: {}\r\n\r\n",
        gateway.addr(),
        session.session_id.as_deref().unwrap_or_default(),
        session.protocol_version
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "stream closed before its head");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_sse_streams_are_cut_off_and_their_memory_returned() {
    const STREAMS: usize = 12;
    // 24 MiB of late log lines per session: three times what its unread GET stream can take
    // (4 MiB queued + up to 4 MiB of socket send buffer), because a late line that finds
    // another call of its session running goes to that call's (read) stream instead, and
    // how many do depends on the machine's load.
    const CALLS: usize = 96;
    const TEXT: usize = 256 * 1024;
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("alpha"));
    // glibc hands 256 KB blocks out of its arenas once one was freed, and keeps what is
    // freed there: a fixed mmap threshold makes freed messages go back to the system, so
    // the resident size shows what the gateway holds rather than what malloc cached.
    let gateway = Gateway::start_with_env(&config, &[("MALLOC_MMAP_THRESHOLD_", "131072")]).await;
    let pid = gateway.pid();
    let http = RawHttp::new(gateway.url());
    let mut sessions = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..STREAMS {
        let (_, session) = http.initialize(&[]).await;
        session
            .call(1, "logging/setLevel", json!({ "level": "debug" }))
            .await;
        sockets.push(unread_get_stream(&gateway, &session).await);
        sessions.push(session);
    }
    let before = rss_kib(pid);
    let log_before = gateway.logs().len();

    // Each `report` sends its text as a log line on the POST's stream (read here) and, 100 ms
    // after answering, once more outside any request: on the GET stream nobody reads.
    let text = "z".repeat(TEXT);
    let sampler = Sampler::start(pid);
    // Round robin: calls running at once are on different sessions, so a session's late log
    // lines find no request of it running and take the GET stream.
    let calls = (0..CALLS).flat_map(|i| sessions.iter().map(move |s| (s, i)));
    futures_util::stream::iter(calls)
        .map(|(session, i)| {
            let body = jsonrpc_request(
                i as i64 + 10,
                "tools/call",
                json!({ "name": "alpha__report", "arguments": { "text": text } }),
            );
            async move {
                let answer = session.post(&body).await;
                assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let logs = wait_for_count(&gateway, "fell behind", STREAMS).await;
    let peak = sampler.peak().await;
    for session in &sessions {
        let tag = session_tag(session.session_id.as_deref().unwrap_or_default());
        assert!(
            logs.lines()
                .any(|l| l.contains("fell behind") && l.contains(&tag)),
            "no cut-off logged for session {tag}"
        );
    }
    // The connections are closed: what the kernel holds drains, then the end.
    for mut socket in sockets {
        let mut buf = vec![0u8; 64 * 1024];
        let ended = tokio::time::timeout(WAIT, async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an unread stream was never closed");
    }
    for session in &sessions {
        session.delete().await;
    }
    let after = settled_rss(pid, before + AFTER_MIB * 1024).await;
    let measured = Measured {
        before,
        peak,
        after,
        log_bytes: gateway.logs().len() - log_before,
    };
    measured.assert_within("12 unread GET streams fed 12 MB each", SSE_PEAK_MIB);
    assert!(
        measured.log_bytes < 256 * 1024,
        "the log grew by {} bytes",
        measured.log_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_caller_are_bounded_with_429() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nmax-sessions-per-caller = 3\n\n{}",
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(http.initialize(&[]).await.1);
    }
    let refused = http.post(&initialize_request(9, "2025-11-25"), &[]).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert!(refused.session_id().is_none());
    let error = &refused.json()["error"];
    assert_eq!(error["code"], -32600, "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("max-sessions-per-caller")),
        "{error}"
    );
    gateway
        .wait_for_log("per-caller session limit reached", WAIT)
        .await;
    // Ending one makes room for one.
    assert_eq!(sessions[0].delete().await.status, StatusCode::OK);
    let (_, again) = http.initialize(&[]).await;
    assert!(again.session_id.is_some());
    let refused = http.post(&initialize_request(10, "2025-11-25"), &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_logging_on_every_call_is_held_to_its_rate() {
    const CALLS: usize = 300;
    let plugins = PluginDir::new();
    plugins.add(
        "chatty",
        "chaos",
        "[config]\nmode = \"flood\"\nmethods = [\"tools/call\"]\ntargets = [\"test_simple_text\"]\n\
         lines = 100\nline-bytes = 200\nstdio-bytes = 4096\n",
    );
    let config = format!(
        "{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let pid = gateway.pid();
    let http = RawHttp::new(gateway.url());
    let (_, session) = http.initialize(&[]).await;
    session
        .call(
            1,
            "tools/call",
            json!({ "name": "alpha__test_simple_text" }),
        )
        .await;
    let before = rss_kib(pid);
    let log_before = gateway.logs().len();
    let lines_before = gateway.logs().matches("chaos flood").count();
    let started = Instant::now();
    let sampler = Sampler::start(pid);
    let session = &session;
    futures_util::stream::iter(0..CALLS)
        .map(|i| async move {
            let body = jsonrpc_request(
                i as i64 + 10,
                "tools/call",
                json!({ "name": "alpha__test_simple_text" }),
            );
            let result: Value = session.post(&body).await.json();
            assert!(result["result"].is_object(), "{result}");
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let elapsed = started.elapsed().as_secs() + 1;
    let peak = sampler.peak().await;
    // Printed lines take a moment to reach the log: wait for the summary of the drops.
    let logs = gateway.wait_for_log("plugin log lines dropped", WAIT).await;
    let after = rss_kib(pid);
    let printed = logs.matches("chaos flood").count() - lines_before;
    let measured = Measured {
        before,
        peak,
        after,
        log_bytes: logs.len() - log_before,
    };
    measured.print("a plugin writing 100 log lines on each of 300 calls");
    // Unbounded: 300 × 100 lines and as many stdout/stderr lines.
    let allowed = 100 + 20 * elapsed as usize;
    assert!(
        printed <= allowed,
        "{printed} plugin lines in {elapsed} s, over the burst of 100 and 20 a second"
    );
    assert!(
        measured.log_bytes < allowed * 512 + 64 * 1024,
        "the log grew by {} bytes",
        measured.log_bytes
    );
}

/// Sends `head` and then `body_len` bytes of body on a plain socket (no
/// `Expect: 100-continue`), then reads the whole answer. The write must complete: the
/// gateway reads and discards what it refused.
async fn send_oversized(gateway: &Gateway, head: &str, body_len: usize) -> String {
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    let body = vec![b' '; body_len];
    let written = tokio::time::timeout(WAIT, stream.write_all(&body)).await;
    assert!(
        matches!(written, Ok(Ok(()))),
        "writing the body failed: {written:?}"
    );
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "reading the answer failed: {read:?}"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_reaches_a_client_that_sends_its_body_without_expect() {
    const LIMIT: usize = 1 << 20;
    // Several times what the kernel's buffers take in without the gateway reading.
    const BODY: usize = 3 * LIMIT + LIMIT / 2;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nmax-body-bytes = {LIMIT}\n\n{}",
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let host = gateway.addr();
    let mcp = |extra: &str| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{extra}Content-Length: {BODY}\r\n\r\n"
        )
    };
    // Streamable HTTP (an initialize), and 2026-07-28.
    for extra in [
        "",
        "MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/list\r\n",
    ] {
        let answer = send_oversized(&gateway, &mcp(extra), BODY).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{extra:?}: {answer}");
        assert!(answer.contains("Payload Too Large"), "{answer}");
    }
    // The legacy HTTP+SSE transport.
    let mut stream = RawHttp::new(&format!("{}/sse", gateway.base()))
        .open_stream(Method::GET, &[("accept", "text/event-stream")], None)
        .await;
    let endpoint = stream
        .next_event(WAIT)
        .await
        .expect("an endpoint event")
        .data;
    let head = format!(
        "POST {endpoint} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {BODY}\r\n\r\n"
    );
    let answer = send_oversized(&gateway, &head, BODY).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "legacy: {answer}");
    // And a refusal decided from the head alone (a wrong Content-Type) arrives the same way.
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {BODY}\r\n\r\n"
    );
    let answer = send_oversized(&gateway, &head, BODY).await;
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
}
