//! Upstream input bounds under attack (DESIGN.md, "Trust boundaries"): the real gateway in
//! front of hostile upstreams written here — an SSE event that never ends, a JSON answer
//! declaring `Content-Length: 8 GiB` followed by endless bytes, a body without a length that
//! never ends, a stdio child writing a line that never ends, and more client sessions than a
//! stdio upstream may have children.
//!
//! Each attack must end in a JSON-RPC error naming the upstream and the limit, cost the
//! gateway a bounded amount of memory (its VmRSS, sampled during the attack, stays under
//! [`PEAK_CEILING_MIB`] over the baseline) that it gives back afterwards (under
//! [`AFTER_CEILING_MIB`] over the baseline), log the upstream and the key but no payload, and
//! leave the gateway serving: a normal call works right after. The numbers are printed
//! (`--nocapture`) and the ceilings are documented in docs/configuration.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis_tests::harness::{
    FIXTURE_SIMPLE_TEXT, Gateway, McpClient, TempDir, call_tool, client, server_toml,
    stdio_fixture_toml, text_of, toml_str,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Most the gateway's RSS may grow over its baseline during one attack, MiB. With the default
/// bounds (16 MiB per message) one attack holds one message's worth: measured peaks were
/// 0-16.5 MiB over the baseline (debug build), so 64 leaves a wide margin while an unbounded
/// gateway (GiBs within seconds) fails by far.
const PEAK_CEILING_MIB: u64 = 64;
/// Most the RSS may stay over the baseline once the attack is over, MiB: the breach's memory
/// goes back to the OS (measured: 0-0.3 MiB left over).
const AFTER_CEILING_MIB: u64 = 8;
/// Guard against a hang: an attack that is bounded ends long before this.
const ATTACK_GUARD: Duration = Duration::from_secs(30);

/// The gateway's resident set, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs `attack` while sampling the gateway's RSS every few milliseconds; its output and the
/// peak (KiB).
async fn sampled<F: Future>(pid: u32, attack: F) -> (F::Output, u64) {
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let done = CancellationToken::new();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    _ = done.cancelled() => return,
                }
            }
        })
    };
    let out = attack.await;
    done.cancel();
    let _ = sampler.await;
    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
    (out, peak.load(Ordering::Relaxed))
}

/// The lowest RSS (KiB) seen while waiting, a few seconds at most, for it to come back to
/// `baseline` (within 2 MiB): memory is handed back shortly after a breach, not at once.
async fn settled_rss(pid: u32, baseline: u64) -> u64 {
    let mut lowest = rss_kib(pid);
    for _ in 0..30 {
        if lowest <= baseline + 2048 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lowest = lowest.min(rss_kib(pid));
    }
    lowest
}

async fn good_call_works(client: &McpClient) {
    let r = call_tool(client, "good__test_simple_text", Value::Null)
        .await
        .expect("a normal call after the attack");
    assert_eq!(text_of(&r), FIXTURE_SIMPLE_TEXT);
}

/// One attack: a call to `tool` that must fail naming `upstream` and `key`, with RSS before,
/// at peak and after checked against the ceilings.
async fn attack(gateway: &Gateway, client: &McpClient, tool: &str, upstream: &str, key: &str) {
    let pid = gateway.pid();
    good_call_works(client).await;
    let before = rss_kib(pid);
    let (outcome, peak) = sampled(
        pid,
        tokio::time::timeout(ATTACK_GUARD, call_tool(client, tool, Value::Null)),
    )
    .await;
    let err = outcome
        .unwrap_or_else(|_| panic!("{tool}: the attack was not cut off"))
        .expect_err("a call that breaks a bound fails")
        .to_string();
    assert!(
        err.contains(&format!("upstream '{upstream}'"))
            && err.contains("over the limit of 16 MiB")
            && err.contains(&format!("upstreams.{upstream}.{key}")),
        "{tool}: {err}"
    );
    good_call_works(client).await;
    let after = settled_rss(pid, before).await;
    eprintln!(
        "{tool}: gateway RSS before {:.1} MiB, peak {:.1} MiB (+{:.1}), after {:.1} MiB (+{:.1})",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        mib(after),
        mib(after.saturating_sub(before)),
    );
    assert!(
        peak <= before + PEAK_CEILING_MIB * 1024,
        "{tool}: RSS peaked at {:.1} MiB over a baseline of {:.1} MiB",
        mib(peak),
        mib(before)
    );
    assert!(
        after <= before + AFTER_CEILING_MIB * 1024,
        "{tool}: RSS stayed at {:.1} MiB after the attack (baseline {:.1} MiB)",
        mib(after),
        mib(before)
    );
    let logs = gateway.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(upstream) && l.contains(key) && l.contains("dropped")),
        "{tool}: no log line names the upstream and the limit:\n{logs}"
    );
}

/// A Streamable HTTP server (session era) that answers `initialize` and `tools/list` well,
/// and each tool call with its attack. One request per connection.
async fn hostile_http() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve_hostile(sock));
        }
    });
    addr
}

async fn serve_hostile(mut sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let Some((head, body)) = read_request(&mut sock).await else {
        return;
    };
    if !head.starts_with("POST ") {
        // No GET stream; DELETE is fine.
        let status = if head.starts_with("GET ") {
            "405 Method Not Allowed"
        } else {
            "200 OK"
        };
        let _ = sock
            .write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        return;
    }
    let msg: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = msg["id"].clone();
    let answer = |result: Value| json!({ "jsonrpc": "2.0", "id": id, "result": result });
    let json_reply = |v: Value| {
        let body = v.to_string();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let reply = match msg["method"].as_str() {
        Some("initialize") => json_reply(answer(json!({
            "protocolVersion": "2025-11-25",
            "capabilities": { "tools": {} },
            "serverInfo": { "name": "hostile", "version": "0" },
        }))),
        Some("tools/list") => json_reply(answer(json!({ "tools": [
            { "name": "endless_event", "inputSchema": { "type": "object" } },
            { "name": "huge_length", "inputSchema": { "type": "object" } },
            { "name": "endless_body", "inputSchema": { "type": "object" } },
        ] }))),
        Some("tools/call") => {
            let (head, prefix): (&str, &[u8]) = match msg["params"]["name"].as_str() {
                // One event whose data line never ends.
                Some("endless_event") => (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
                    b"data: ",
                ),
                Some("huge_length") => (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8589934592\r\nConnection: close\r\n\r\n",
                    b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"",
                ),
                // No length: the body is what comes until the connection closes.
                _ => (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                    b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"",
                ),
            };
            if sock.write_all(head.as_bytes()).await.is_err()
                || sock.write_all(prefix).await.is_err()
            {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            // Until the gateway hangs up.
            while sock.write_all(&chunk).await.is_ok() {}
            return;
        }
        _ => "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
    };
    let _ = sock.write_all(reply.as_bytes()).await;
}

/// One HTTP/1.1 request: its head and its body (by `Content-Length`).
async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some((head, body))
}

/// A stdio MCP server in shell: answers `initialize` (as `name`) and `tools/list` (one tool,
/// `tool`), and runs `on_call` on a `tools/call`.
fn sh_server(name: &str, tool: &str, on_call: &str) -> String {
    format!(
        r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"initialize"'*)
      printf '%s\n' '{{"jsonrpc":"2.0","id":0,"result":{{"protocolVersion":"2025-11-25","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"{name}","version":"0"}}}}}}' ;;
    *'"tools/list"'*)
      printf '{{"jsonrpc":"2.0","id":%s,"result":{{"tools":[{{"name":"{tool}","inputSchema":{{"type":"object"}}}}]}}}}\n' "$id" ;;
    *'"tools/call"'*)
      {on_call} ;;
  esac
done
"#
    )
}

/// [`sh_server`] that answers a call with a line that never ends.
fn endless_line_sh() -> String {
    sh_server("endless", "endless_line", "tr '\\0' x < /dev/zero")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstreams_cost_bounded_memory_and_only_their_own_calls() {
    let evil = hostile_http().await;
    let dir = TempDir::new();
    let script = dir.write("endless-line.sh", &endless_line_sh());
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "{}[upstreams.evil]\nurl = {}\ntransport = \"streamable-http\"\nprotocol = \"2025-11-25\"\n\n\
         [upstreams.liar]\ncommand = {}\nprotocol = \"2025-11-25\"\n\n{}",
        server_toml(),
        toml_str(&format!("http://{evil}/mcp")),
        toml_str(&script.to_string_lossy()),
        stdio_fixture_toml("good"),
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;

    attack(
        &gateway,
        &client,
        "evil__endless_event",
        "evil",
        "max-sse-event-mib",
    )
    .await;
    attack(
        &gateway,
        &client,
        "evil__huge_length",
        "evil",
        "max-response-mib",
    )
    .await;
    attack(
        &gateway,
        &client,
        "evil__endless_body",
        "evil",
        "max-response-mib",
    )
    .await;
    attack(
        &gateway,
        &client,
        "liar__endless_line",
        "liar",
        "max-line-mib",
    )
    .await;

    let logs = gateway.logs();
    assert!(
        !logs.contains("xxxxxxxxxxxxxxxx"),
        "an upstream's payload reached the log"
    );
    client.cancel().await.unwrap();
}

/// Pids of the gateway's child processes whose command line mentions `name`.
fn children_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == name.as_bytes()))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_upstream_runs_at_most_max_children() {
    let config = format!(
        "{}{}max-children = 2\n\n{}",
        server_toml(),
        stdio_fixture_toml("capped"),
        stdio_fixture_toml("good"),
    );
    let gateway = Gateway::start(&config).await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let c = client(gateway.url()).await;
        let r = call_tool(&c, "capped__test_simple_text", Value::Null)
            .await
            .expect("a session within the cap");
        assert_eq!(text_of(&r), FIXTURE_SIMPLE_TEXT);
        sessions.push(c);
    }
    // Three more sessions: each is refused a child of `capped`, clearly, and keeps the rest.
    let mut late = Vec::new();
    for _ in 0..3 {
        let c = client(gateway.url()).await;
        let err = call_tool(&c, "capped__test_simple_text", Value::Null)
            .await
            .expect_err("a session over the cap")
            .to_string();
        assert!(
            err.contains("upstream 'capped'")
                && err.contains("2 child processes")
                && err.contains("upstreams.capped.max-children"),
            "{err}"
        );
        good_call_works(&c).await;
        late.push(c);
    }
    assert_eq!(children_named(gateway.pid(), "capped"), 2);
    assert!(
        gateway
            .logs()
            .lines()
            .any(|l| l.contains("capped") && l.contains("max-children")),
        "the refusal is logged"
    );

    // A session that ends lets its child go; a refused session gets one on its next call.
    let first = sessions.remove(0);
    first.cancel().await.unwrap();
    let mut answer = None;
    for _ in 0..50 {
        match call_tool(&late[0], "capped__test_simple_text", Value::Null).await {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let r = answer.expect("a child is free again once a session ended");
    assert_eq!(text_of(&r), FIXTURE_SIMPLE_TEXT);
    assert_eq!(children_named(gateway.pid(), "capped"), 2);
    for c in sessions.into_iter().chain(late) {
        c.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_stops_reading_its_stdin_is_sent_no_more_than_its_bound() {
    use portcullis_tests::harness::{RawHttp, jsonrpc_request};
    let dir = TempDir::new();
    let script = dir.write(
        "deaf.sh",
        // On its first call it says so on stderr and never reads its stdin again.
        &sh_server(
            "deaf",
            "stop",
            "echo 'deaf from now on' >&2; exec sleep 3600",
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "{}[upstreams.deaf]\ncommand = {}\nprotocol = \"2025-11-25\"\nmax-line-mib = 1\n\n{}",
        server_toml(),
        toml_str(&script.to_string_lossy()),
        stdio_fixture_toml("good"),
    );
    let gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let call = |id: i64, text: String| {
        let session = session.clone();
        async move {
            let params = json!({ "name": "deaf__stop", "arguments": { "text": text } });
            session
                .post(&jsonrpc_request(id, "tools/call", params))
                .await
        }
    };
    // The first call makes the child stop reading; it never answers.
    let first = tokio::spawn(call(1, "stop".into()));
    gateway
        .wait_for_log("deaf from now on", Duration::from_secs(30))
        .await;
    // 2 MB more: taken (nothing waits unread), and stuck in the pipe. Its client gives up
    // waiting (the gateway has long queued it by then; a disconnect does not cancel it).
    let big = tokio::time::timeout(Duration::from_secs(5), call(2, "x".repeat(2 << 20))).await;
    assert!(big.is_err(), "the child cannot have answered: {big:?}");
    // Anything more is refused at once, naming the upstream and the key, not queued.
    let answer = tokio::time::timeout(Duration::from_secs(30), call(3, "more".into()))
        .await
        .expect("refused, not left waiting");
    let refused = answer.response(&json!(3)).map(|m| m["error"].clone());
    let error = refused.expect("an answer to the third call");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("deaf")
            && message.contains("not reading its stdin")
            && message.contains("max-line-mib"),
        "{error}"
    );
    // The other upstream is not affected.
    let good = session
        .call(
            500,
            "tools/call",
            json!({ "name": "good__echo", "arguments": { "text": "hi" } }),
        )
        .await;
    assert!(good.to_string().contains("hi"), "{good}");
    first.abort();
}
