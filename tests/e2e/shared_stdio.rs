//! `share = "shared"`: many client sessions served by one stdio child. Each session must
//! still see its own server: its own answers, its own progress, its own subscriptions, its
//! own cancellations, and a crashed child comes back for everyone.
#![allow(deprecated)] // resources/subscribe and logging: session-era API, exercised on purpose

use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    ClientEvent, Gateway, McpClient, RawHttp, RawResponse, RecordingClient, call_tool,
    call_tool_tracked, client, client_with, jsonrpc_notification, jsonrpc_request, server_toml,
    stdio_fixture_toml, text_of,
};
use rmcp::model::{
    LoggingLevel, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
};
use serde_json::{Value, json};

const WATCHED: &str = "shared+test://watched-resource";
const WAIT: Duration = Duration::from_secs(20);

/// A gateway with one stdio fixture upstream named `shared`, `share = "shared"`, plus `extra`
/// lines in its section.
async fn gateway(extra: &str) -> Gateway {
    let config = format!(
        "{}{}share = \"shared\"\n{extra}\n",
        server_toml(),
        stdio_fixture_toml("shared")
    );
    Gateway::start(&config).await
}

/// The pid of the child that answered `whoami` for this client.
async fn child_pid(c: &McpClient) -> u64 {
    let r = call_tool(c, "shared__whoami", Value::Null)
        .await
        .expect("whoami");
    let report: Value = serde_json::from_str(&text_of(&r)).expect("whoami is JSON");
    report["pid"].as_u64().expect("whoami reports a pid")
}

/// How many child processes of the gateway have `name` among their arguments.
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

/// Waits until `c` has heard `notifications/tools/list_changed` `n` times. The child writes
/// its notifications in order and each session's stream keeps that order, so whatever the
/// child sent a session before the n-th change has arrived by then: what has not, was never
/// sent to it.
async fn barrier(handler: &RecordingClient, n: usize) {
    handler
        .wait_for_count(n, WAIT, |e| matches!(e, ClientEvent::ToolListChanged))
        .await;
}

/// Makes the child announce a tool list change to every session.
async fn flip_tool_list(c: &McpClient, enabled: bool) {
    call_tool(c, "shared__set_dynamic_tool", json!({ "enabled": enabled }))
        .await
        .expect("set_dynamic_tool");
}

fn updates(handler: &RecordingClient) -> usize {
    handler
        .events()
        .iter()
        .filter(|e| matches!(e, ClientEvent::ResourceUpdated(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_are_served_by_one_child() {
    let gateway = gateway("").await;
    let mut clients = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..6 {
        let c = client(gateway.url()).await;
        pids.push(child_pid(&c).await);
        clients.push(c);
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(children_named(gateway.pid(), "shared"), 1);
    for c in clients {
        c.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spreads_sessions_over_its_children() {
    let gateway = gateway("pool = 2").await;
    let mut clients = Vec::new();
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let c = client(gateway.url()).await;
        pids.insert(child_pid(&c).await);
        clients.push(c);
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_eq!(children_named(gateway.pid(), "shared"), 2);
    for c in clients {
        c.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_many_sessions_each_get_their_own_answer() {
    let gateway = gateway("").await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client(gateway.url()).await);
    }
    // Every client's request ids count up from the same start, so the child would see
    // colliding ids if the gateway did not give each request its own.
    let calls = clients.iter().enumerate().flat_map(|(i, c)| {
        (0..5).map(move |j| async move {
            let text = format!("session {i} call {j}");
            let r = call_tool(c, "shared__echo", json!({ "text": text }))
                .await
                .expect("echo");
            (text, text_of(&r))
        })
    });
    for (asked, answered) in futures_util::future::join_all(calls).await {
        assert_eq!(asked, answered);
    }
    assert_eq!(children_named(gateway.pid(), "shared"), 1);
    for c in clients {
        c.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_only_the_caller() {
    let gateway = gateway("").await;
    let (ha, hb) = (RecordingClient::new(), RecordingClient::new());
    let a = client_with(gateway.url(), ha.clone()).await;
    let b = client_with(gateway.url(), hb.clone()).await;
    // Both clients number their progress tokens alike; both calls run at once.
    let (ra, rb) = tokio::join!(
        call_tool_tracked(&a, "shared__report", json!({ "text": "from a" })),
        call_tool_tracked(&b, "shared__report", json!({ "text": "from b" })),
    );
    let ((token_a, _), (token_b, _)) = (ra.expect("a's call"), rb.expect("b's call"));
    let progress = |h: &RecordingClient| -> Vec<String> {
        h.events()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Progress(p) => Some(p.message.clone().unwrap_or_default()),
                _ => None,
            })
            .collect()
    };
    // The client's handler records a notification in its own task: it may land just
    // after the answer.
    for h in [&ha, &hb] {
        h.wait_for(WAIT, |e| matches!(e, ClientEvent::Progress(_)))
            .await;
    }
    assert_eq!(ha.progress_for(&token_a).len(), 1, "{:?}", ha.events());
    assert_eq!(hb.progress_for(&token_b).len(), 1, "{:?}", hb.events());
    assert_eq!(progress(&ha), ["from a"]);
    assert_eq!(progress(&hb), ["from b"]);
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_during_a_call_goes_to_the_caller() {
    let gateway = gateway("").await;
    let (ha, hb) = (RecordingClient::new(), RecordingClient::new());
    let a = client_with(gateway.url(), ha.clone()).await;
    let b = client_with(gateway.url(), hb.clone()).await;
    call_tool(&b, "shared__echo", json!({ "text": "b was here" }))
        .await
        .expect("b's call");
    let r = call_tool(&a, "shared__test_sampling", json!({ "prompt": "for a" }))
        .await
        .expect("a's sampling call");
    assert_eq!(text_of(&r), "LLM response: sampled: for a");
    let asked = |h: &RecordingClient| {
        h.events()
            .iter()
            .filter(|e| matches!(e, ClientEvent::Sampling(_)))
            .count()
    };
    assert_eq!(asked(&ha), 1);
    assert_eq!(asked(&hb), 0);
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_delivers_updates_only_to_its_sessions() {
    let gateway = gateway("").await;
    let (ha, hb, hc) = (
        RecordingClient::new(),
        RecordingClient::new(),
        RecordingClient::new(),
    );
    let a = client_with(gateway.url(), ha.clone()).await;
    let b = client_with(gateway.url(), hb.clone()).await;
    let c = client_with(gateway.url(), hc.clone()).await;
    for s in [&a, &c] {
        s.subscribe(SubscribeRequestParams::new(WATCHED))
            .await
            .expect("subscribe");
    }
    call_tool(&b, "shared__touch_watched_resource", Value::Null)
        .await
        .expect("touch");
    let updated = ha
        .wait_for(WAIT, |e| matches!(e, ClientEvent::ResourceUpdated(_)))
        .await;
    let ClientEvent::ResourceUpdated(u) = updated else {
        unreachable!()
    };
    assert_eq!(u.uri, WATCHED, "the URI as the client knows it");
    hc.wait_for(WAIT, |e| matches!(e, ClientEvent::ResourceUpdated(_)))
        .await;
    flip_tool_list(&b, true).await;
    barrier(&hb, 1).await;
    assert_eq!(updates(&hb), 0, "b never subscribed: {:?}", hb.events());

    // a leaves; c still holds the child's subscription, so c still hears of changes.
    a.unsubscribe(UnsubscribeRequestParams::new(WATCHED))
        .await
        .expect("unsubscribe");
    let (before_a, before_c) = (updates(&ha), updates(&hc));
    call_tool(&b, "shared__touch_watched_resource", Value::Null)
        .await
        .expect("touch");
    hc.wait_for_count(before_c + 1, WAIT, |e| {
        matches!(e, ClientEvent::ResourceUpdated(_))
    })
    .await;
    flip_tool_list(&b, false).await;
    barrier(&ha, 2).await;
    assert_eq!(updates(&ha), before_a, "a unsubscribed: {:?}", ha.events());
    for s in [a, b, c] {
        s.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_gets_the_log_lines_of_its_own_level() {
    let gateway = gateway("").await;
    let (ha, hb) = (RecordingClient::new(), RecordingClient::new());
    let a = client_with(gateway.url(), ha.clone()).await;
    let b = client_with(gateway.url(), hb.clone()).await;
    // Both sessions on the child first, so each level is in force when it is answered.
    child_pid(&a).await;
    child_pid(&b).await;
    a.set_level(SetLevelRequestParams::new(LoggingLevel::Error))
        .await
        .expect("a's level");
    b.set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .expect("b's level");
    // `report` logs at info during the call and once more after it.
    call_tool(&b, "shared__report", json!({ "text": "b's line" }))
        .await
        .expect("b's call");
    call_tool(&a, "shared__report", json!({ "text": "a's line" }))
        .await
        .expect("a's call");
    hb.wait_for(
        WAIT,
        |e| matches!(e, ClientEvent::Log(l) if l.data == json!("later: a's line")),
    )
    .await;
    flip_tool_list(&b, true).await;
    barrier(&ha, 1).await;
    assert!(
        ha.logs().is_empty(),
        "a asked for errors only: {:?}",
        ha.logs()
    );
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

/// `tools/call` of `name` with `arguments`, as raw JSON-RPC.
fn call(id: i64, name: &str, arguments: Value) -> Value {
    jsonrpc_request(
        id,
        "tools/call",
        json!({ "name": name, "arguments": arguments }),
    )
}

fn outcome(response: &RawResponse, id: i64) -> Value {
    response
        .response(&json!(id))
        .unwrap_or_else(|| panic!("no response with id {id}: {}", response.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_in_one_session_leaves_the_others_alone() {
    let gateway = gateway("").await;
    let (_, a) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let (_, b) = RawHttp::new(gateway.url()).initialize(&[]).await;
    // The same request id in both sessions; a's would sleep for a minute.
    let sleeper = |s: &portcullis_tests::harness::RawSession, ms: u64| {
        let s = s.clone();
        tokio::spawn(async move { s.post(&call(7, "shared__sleep", json!({ "ms": ms }))).await })
    };
    let a_call = sleeper(&a, 60_000);
    let b_call = sleeper(&b, 3_000);
    let cancel = jsonrpc_notification(
        "notifications/cancelled",
        json!({ "requestId": 7, "reason": "a changed its mind" }),
    );
    // The client cannot see when the gateway has the request: repeat until answered.
    let deadline = Instant::now() + WAIT;
    while !a_call.is_finished() {
        assert!(
            Instant::now() < deadline,
            "a's cancelled call was not answered"
        );
        a.post(&cancel).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a_answer = outcome(&a_call.await.unwrap(), 7);
    assert_eq!(a_answer["error"]["code"], -32800, "{a_answer}");
    let b_answer = outcome(&b_call.await.unwrap(), 7);
    assert_eq!(
        b_answer["result"]["content"][0]["text"], "slept 3000 ms",
        "{b_answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_child_comes_back_for_every_session() {
    let gateway = gateway("").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(client(gateway.url()).await);
    }
    let mut before = Vec::new();
    for c in &clients {
        before.push(child_pid(c).await);
    }
    assert!(before.iter().all(|p| *p == before[0]));
    call_tool(&clients[0], "shared__crash", Value::Null)
        .await
        .expect_err("the child crashed under the call");
    // Each session's next calls wait out the restart backoff, then reach the new child.
    let mut after = Vec::new();
    for c in &clients {
        let deadline = Instant::now() + WAIT;
        let pid = loop {
            match call_tool(c, "shared__whoami", Value::Null).await {
                Ok(r) => {
                    let report: Value = serde_json::from_str(&text_of(&r)).unwrap();
                    break report["pid"].as_u64().unwrap();
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "not recovered: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        after.push(pid);
    }
    assert!(after.iter().all(|p| *p == after[0]), "{after:?}");
    assert_ne!(after[0], before[0], "a new child");
    assert_eq!(children_named(gateway.pid(), "shared"), 1);
    for c in clients {
        c.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_a_misplaced_pool() {
    let config = format!(
        "{}{}pool = 2\n",
        server_toml(),
        stdio_fixture_toml("shared")
    );
    let out = portcullis_tests::harness::check_config(&config).await;
    assert!(!out.status.success(), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("upstreams.shared.pool") && said.contains("share = \"shared\""),
        "{said}"
    );
}

/// Resident memory of a process and of all its descendants: (processes, RSS KiB, PSS KiB).
/// RSS counts pages shared between processes (the binary's text, libraries) once per
/// process; PSS divides them among the processes that share them.
fn memory_of_tree(pid: u32) -> (usize, u64, u64) {
    let field = |path: String, key: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut todo = vec![pid.to_string()];
    let (mut count, mut rss, mut pss) = (0, 0, 0);
    while let Some(p) = todo.pop() {
        count += 1;
        rss += field(format!("/proc/{p}/status"), "VmRSS:");
        pss += field(format!("/proc/{p}/smaps_rollup"), "Pss:");
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    todo.extend(children.split_whitespace().map(str::to_owned));
                }
            }
        }
    }
    (count, rss, pss)
}

/// Opens `n` sessions that each list tools once (so each has its link to the upstream),
/// leaves them idle, and reports the processes and memory of the gateway and its children.
async fn idle_sessions(share: &str, n: usize) -> (usize, u64, u64) {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nmax-sessions-per-caller = {}\n\n{}share = \"{share}\"\nmax-children = {}\n",
        n + 10,
        stdio_fixture_toml("shared"),
        n + 10,
    );
    let gateway = Gateway::start(&config).await;
    let http = RawHttp::new(gateway.url());
    let mut sessions = Vec::new();
    let started = Instant::now();
    for chunk in 0..n.div_ceil(16) {
        let opened = (0..16.min(n - chunk * 16)).map(|_| {
            let http = http.clone();
            async move {
                let (_, s) = http.initialize(&[]).await;
                s.call(1, "tools/list", json!({})).await;
                s
            }
        });
        sessions.extend(futures_util::future::join_all(opened).await);
    }
    let opening = started.elapsed();
    // Let start-up allocations settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let measured = memory_of_tree(gateway.pid());
    eprintln!(
        "share = {share}: {n} idle sessions opened in {opening:?}: {} processes, RSS {} MiB, PSS {} MiB",
        measured.0,
        measured.1 / 1024,
        measured.2 / 1024
    );
    drop(sessions);
    measured
}

/// The numbers in docs/BENCHMARKS.md ("Shared stdio upstreams"):
/// `cargo test -p portcullis-tests --test e2e shared_stdio::thousand_idle_sessions -- --ignored --nocapture`
/// (`SESSIONS=200` for fewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: starts 1,000 child processes"]
async fn thousand_idle_sessions() {
    let n = std::env::var("SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let shared = idle_sessions("shared", n).await;
    let per_session = idle_sessions("per-session", n).await;
    assert_eq!(shared.0, 2, "the gateway and one child");
    assert_eq!(per_session.0, n + 1, "the gateway and a child per session");
}
