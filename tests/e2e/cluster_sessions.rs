//! Sealed session ids (`[cluster] session-key`): a session opened on one gateway process is
//! served by every other process holding the key, request after request on a different
//! replica each time (stdio upstreams get a fresh child there; HTTP upstream sessions opened
//! at `initialize` travel in the id, so every replica goes on with the same one, and one the
//! upstream forgot is re-initialized); forged, tampered and ended ids are HTTP 404 like
//! unknown ones and are never logged; a key rotation keeps the sessions sealed with the
//! previous key alive.

use portcullis_tests::harness::{
    Fixture, Gateway, RawHttp, RawSession, jsonrpc_request, server_toml, sha256_hex,
    stdio_fixture_toml,
};
use serde_json::{Value, json};
use std::time::Duration;

const KEY_1: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
const KEY_2: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A gateway with the stdio fixture `alpha`, the HTTP fixture `beta`, and these keys.
async fn replica(beta: &Fixture, current: &str, previous: Option<&str>) -> Gateway {
    let previous_toml = match previous {
        Some(_) => "previous-session-keys = [\"${E2E_OLD_KEY}\"]\n",
        None => "",
    };
    let config = format!(
        "{}[cluster]\nsession-key = \"${{PORTCULLIS_SESSION_KEY}}\"\n{previous_toml}\n{}{}",
        server_toml(),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta"),
    );
    Gateway::start_with_env(
        &config,
        &[
            ("PORTCULLIS_SESSION_KEY", current),
            ("E2E_OLD_KEY", previous.unwrap_or("")),
        ],
    )
    .await
}

/// The same session, addressed to another replica.
fn on(session: &RawSession, gateway: &Gateway) -> RawSession {
    RawSession {
        http: RawHttp::new(gateway.url()),
        ..session.clone()
    }
}

async fn echo(session: &RawSession, id: i64, tool: &str) -> String {
    let result = session
        .call(
            id,
            "tools/call",
            json!({ "name": tool, "arguments": { "text": format!("hi {id}") } }),
        )
        .await;
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_with_the_key_serves_any_session() {
    let beta = Fixture::http("beta").await;
    let replicas = [
        replica(&beta, KEY_1, None).await,
        replica(&beta, KEY_1, None).await,
        replica(&beta, KEY_1, None).await,
    ];
    let (_, session) = RawHttp::new(replicas[0].url()).initialize(&[]).await;
    let id = session.session_id.clone().expect("a session id");
    // It carries beta's upstream session now; ids stay within about 4 KiB (docs/cluster.md).
    assert!(id.starts_with("ps1.") && id.len() <= 4140, "{id}");

    // Every request on a different replica than the one before: all succeed.
    for i in 1..=6 {
        let here = on(&session, &replicas[i % 3]);
        let tools = here.call(100 + i as i64, "tools/list", json!({})).await;
        let names: Vec<&str> = tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(
            names.contains(&"alpha__echo") && names.contains(&"beta__echo"),
            "{names:?}"
        );
        assert!(
            echo(&here, i as i64, "alpha__echo")
                .await
                .contains(&format!("hi {i}"))
        );
        assert!(
            echo(&here, 50 + i as i64, "beta__echo")
                .await
                .contains(&format!("hi {}", 50 + i))
        );
    }
    for r in &replicas[1..] {
        assert!(
            r.logs().contains("session resumed from its sealed id"),
            "{}",
            r.logs()
        );
    }

    // Forged and tampered ids: 404, like an unknown id, and not logged.
    let forged = "ps1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut tampered = id.clone().into_bytes();
    let at = tampered.len() - 3;
    tampered[at] = if tampered[at] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        forged,
        tampered.as_str(),
        "0123456789abcdef0123456789abcdef",
    ] {
        let s = RawSession {
            session_id: Some(bad.to_string()),
            ..on(&session, &replicas[1])
        };
        let resp = s.post(&jsonrpc_request(7, "tools/list", json!({}))).await;
        assert_eq!(resp.status, 404, "{bad}: {}", resp.body);
        assert!(!replicas[1].logs().contains(bad), "a bad id is not logged");
    }

    // DELETE on a replica: that replica refuses the id from then on.
    let there = on(&session, &replicas[2]);
    assert_eq!(there.delete().await.status, 200);
    let after = there
        .post(&jsonrpc_request(8, "tools/list", json!({})))
        .await;
    assert_eq!(after.status, 404, "{}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_keeps_existing_sessions() {
    let beta = Fixture::http("beta").await;
    let old = replica(&beta, KEY_1, None).await;
    let (_, session) = RawHttp::new(old.url()).initialize(&[]).await;
    assert!(echo(&session, 1, "beta__echo").await.contains("hi 1"));

    // Restarted with a new current key and the old one as previous.
    let rotated = replica(&beta, KEY_2, Some(KEY_1)).await;
    drop(old);
    let moved = on(&session, &rotated);
    assert!(echo(&moved, 2, "alpha__echo").await.contains("hi 2"));
    assert!(echo(&moved, 3, "beta__echo").await.contains("hi 3"));

    // New sessions are sealed with the new key: a replica with only the old key refuses them.
    let (_, fresh) = RawHttp::new(rotated.url()).initialize(&[]).await;
    let stale = replica(&beta, KEY_1, None).await;
    let resp = on(&fresh, &stale)
        .post(&jsonrpc_request(4, "tools/list", json!({})))
        .await;
    assert_eq!(resp.status, 404, "{}", resp.body);
}

/// What `beta` saw of a `whoami` call of `session`: the upstream session it came on, and
/// how many upstream sessions (`initialize` requests) the `beta` process has had so far.
async fn beta_whoami(session: &RawSession, id: i64) -> (String, u64) {
    let result = session
        .call(
            id,
            "tools/call",
            json!({ "name": "beta__whoami", "arguments": {} }),
        )
        .await;
    whoami_of(&result)
}

/// [`beta_whoami`] while another replica's `DELETE` of the upstream session may be under
/// way: `None` if the call raced it (the upstream ended the call's stream as it ended the
/// session, and the gateway said so).
async fn beta_whoami_racing_delete(session: &RawSession, id: i64) -> Option<(String, u64)> {
    let body = jsonrpc_request(
        id,
        "tools/call",
        json!({ "name": "beta__whoami", "arguments": {} }),
    );
    let response = session.post(&body).await;
    let message = response.response(&json!(id)).unwrap_or_else(|| {
        panic!(
            "no response to whoami (id {id}); status {}, body:\n{}",
            response.status, response.body
        )
    });
    if let Some(error) = message.get("error") {
        let text = error.to_string();
        assert!(
            text.contains("SSE stream ended before the response"),
            "whoami failed: {message}"
        );
        return None;
    }
    Some(whoami_of(&message["result"]))
}

fn whoami_of(result: &Value) -> (String, u64) {
    let report = &result["structuredContent"];
    let upstream_session = report["headers"]["mcp-session-id"]
        .as_str()
        .unwrap_or_else(|| panic!("no upstream session id in {result}"));
    let initializations = report["initializations"]
        .as_u64()
        .unwrap_or_else(|| panic!("no initializations in {result}"));
    (upstream_session.to_string(), initializations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_goes_on_with_the_upstream_session_opened_at_initialize() {
    // A session-era HTTP upstream (no 2026-07-28): one upstream session per client session.
    let mut beta = Fixture::http_with_args("beta", &["--era", "session"]).await;
    let addr = beta.addr();
    // Replicas let a session's copy go after a second without traffic.
    let config = format!(
        "{}\nsession-idle-timeout = \"1s\"\n\n[cluster]\nsession-key = \"${{PORTCULLIS_SESSION_KEY}}\"\n\n{}{}",
        server_toml().trim_end(),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta"),
    );
    let env = [("PORTCULLIS_SESSION_KEY", KEY_1)];
    let replicas = [
        Gateway::start_with_env(&config, &env).await,
        Gateway::start_with_env(&config, &env).await,
        Gateway::start_with_env(&config, &env).await,
    ];
    let (_, session) = RawHttp::new(replicas[0].url()).initialize(&[]).await;
    let (opened, count) = beta_whoami(&session, 1).await;
    assert_eq!(count, 1);

    // B, C, B, C, A: every call reaches the same upstream session; beta never sees another.
    for (n, r) in [1, 2, 1, 2, 0].into_iter().enumerate() {
        let here = on(&session, &replicas[r]);
        let id = 10 + 10 * n as i64;
        assert_eq!(
            beta_whoami(&here, id).await,
            (opened.clone(), 1),
            "on replica {r}"
        );
        assert!(echo(&here, id + 1, "beta__echo").await.contains("hi"));
        assert!(echo(&here, id + 2, "alpha__echo").await.contains("hi"));
    }
    for r in &replicas[1..] {
        let logs = r.logs();
        assert!(
            logs.contains("upstream session resumed from the sealed session id"),
            "{logs}"
        );
        assert!(
            !logs
                .lines()
                .any(|l| l.contains("upstream connected") && l.contains("beta")),
            "only A initialized beta: {logs}"
        );
    }

    // A replica that lets its copy go (idle here; shutdown alike) leaves the sealed upstream
    // session open: the others go on with it.
    let [a, b, c] = replicas;
    a.wait_for_log("session idle; closing", Duration::from_secs(30))
        .await;
    let on_b = on(&session, &b);
    assert_eq!(beta_whoami(&on_b, 90).await, (opened.clone(), 1));

    // The client's DELETE ends it upstream too, even sent to A, whose copy had gone (A
    // resumes the id to end it). C still serves the id (it was not told) and finds the
    // upstream session gone: its next calls succeed on a new one. A sends the upstream's
    // DELETE after answering the client's, so C's first call may still reach the old
    // session, or race its end (the upstream then closes that call's stream).
    assert_eq!(on(&session, &a).delete().await.status, 200);
    let on_c = on(&session, &c);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 100;
    let (renewed, count) = loop {
        if let Some(seen) = beta_whoami_racing_delete(&on_c, n).await
            && seen.0 != opened
        {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the DELETE never reached beta"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(count, 2);
    c.wait_for_log("re-initializing", Duration::from_secs(30))
        .await;
    assert_eq!(beta_whoami(&on_c, 200).await, (renewed.clone(), 2));

    // beta restarts on the same address and forgets every session: the next call, on C,
    // still succeeds, on an upstream session C opened in its place.
    beta.kill();
    let _again = Fixture::http_on_with_args("beta", addr, &["--era", "session"]).await;
    let (after_restart, count) = beta_whoami(&on_c, 201).await;
    assert_ne!(after_restart, renewed);
    assert_eq!(count, 1);
    assert!(echo(&on_c, 202, "beta__echo").await.contains("hi 202"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_at_initialize_is_opened_later_on_each_replica() {
    let mut beta = Fixture::http_with_args("beta", &["--era", "session"]).await;
    let addr = beta.addr();
    let a = replica(&beta, KEY_1, None).await;
    let b = replica(&beta, KEY_1, None).await;
    beta.kill();
    // beta is down: initialize still succeeds, without beta's session in the id.
    let (_, session) = RawHttp::new(a.url()).initialize(&[]).await;
    a.wait_for_log(
        "upstream session not opened at initialize",
        Duration::from_secs(5),
    )
    .await;
    let _again = Fixture::http_on_with_args("beta", addr, &["--era", "session"]).await;
    // Back up: each replica opens its own upstream session on first use.
    let on_a = beta_whoami(&session, 1).await;
    let on_b = beta_whoami(&on(&session, &b), 2).await;
    assert_ne!(on_a.0, on_b.0);
    assert_eq!(on_b.1, 2);
    assert!(
        echo(&on(&session, &b), 3, "beta__echo")
            .await
            .contains("hi 3")
    );
}

const ALICE: &str = "pk_alice_0123456789abcdefghijklmnopqrstuvwxyzABC";
const BOB: &str = "pk_bob_0123456789abcdefghijklmnopqrstuvwxyzABCDE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_travels_in_the_sealed_id() {
    let plugins = portcullis_tests::harness::PluginDir::new();
    plugins.add(
        "authn",
        "authn",
        &format!(
            "[config]\nresource-metadata = \"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"\n\
             [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"alice\"\n\
             [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"bob\"\n",
            sha256_hex(ALICE),
            sha256_hex(BOB)
        ),
    );
    let config = format!(
        "{}{}[cluster]\nsession-key = \"${{PORTCULLIS_SESSION_KEY}}\"\n\n{}",
        server_toml(),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha"),
    );
    let env = [("PORTCULLIS_SESSION_KEY", KEY_1)];
    let a = Gateway::start_with_env(&config, &env).await;
    let b = Gateway::start_with_env(&config, &env).await;
    let alice_auth = format!("Bearer {ALICE}");
    let (_, alice) = RawHttp::new(a.url())
        .initialize(&[("authorization", &alice_auth)])
        .await;

    // Bob, with the id of Alice's session, on a replica that never saw it: no such session.
    let as_bob = RawSession {
        extra_headers: vec![("authorization".into(), format!("Bearer {BOB}"))],
        ..on(&alice, &b)
    };
    let resp = as_bob
        .post(&jsonrpc_request(1, "tools/list", json!({})))
        .await;
    assert_eq!(resp.status, 404, "{}", resp.body);
    // Alice there: served.
    assert!(
        echo(&on(&alice, &b), 2, "alpha__echo")
            .await
            .contains("hi 2")
    );
}
