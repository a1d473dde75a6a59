//! `portcullis plugin test` on the pipeline `serve` runs, with a recorded upstream: what the
//! upstream sends before its answer (progress, log lines, sampling requests) and the answer
//! pass the response phase, and the test prints what the client receives. The assertions
//! read that — the messages a client would get — with the shipped `redact` plugin and the
//! `chaos` test plugin.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::harness::{TempDir, bin_path, plugin_wasm};
use serde_json::Value;

/// A call asking for progress, as a client sends it.
const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"files__read_file","arguments":{"path":"/srv/a"},"_meta":{"progressToken":"p1"}}}"#;
/// Progress whose message carries an e-mail address.
const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p1","progress":1,"total":2,"message":"mailing alice@example.com"}}"#;
/// A sampling request whose prompt carries a secret, under the upstream's own id.
const SAMPLING: &str = r#"{"jsonrpc":"2.0","id":41,"method":"sampling/createMessage","params":{"messages":[{"role":"user","content":{"type":"text","text":"deploy with password=hunter2 now"}}],"maxTokens":50}}"#;
/// A log line with an e-mail address.
const LOG: &str = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"sent to carol@example.net"}}"#;
/// The upstream's answer (its own id), with an e-mail address.
const ANSWER: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"write to bob@example.org"}]}}"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// `portcullis plugin test ARGS`: (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_path("portcullis"))
        .args(["plugin", "test"])
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--json` outcome of the shipped redact plugin with its shipped sidecar.
fn redact(args: &[&str]) -> (i32, Value) {
    let wasm = plugin_wasm("redact");
    let sidecar = repo().join("plugins/redact/redact.toml");
    let mut all = vec![
        wasm.to_str().unwrap(),
        "--config",
        sidecar.to_str().unwrap(),
        "--json",
    ];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, v)
}

fn files(dir: &TempDir, files: &[(&str, &str)]) -> Vec<String> {
    files
        .iter()
        .map(|(name, json)| dir.write(name, json).display().to_string())
        .collect()
}

fn client(v: &Value) -> &Vec<Value> {
    v["client"].as_array().expect("what the client receives")
}

#[test]
fn a_progress_notification_with_an_email_reaches_the_client_redacted_before_the_answer() {
    let dir = TempDir::new();
    let f = files(
        &dir,
        &[
            ("call.json", CALL),
            ("p.json", PROGRESS),
            ("a.json", ANSWER),
        ],
    );
    let (code, v) = redact(&[
        "--message",
        &f[0],
        "--upstream-message",
        &f[1],
        "--upstream-answer",
        &f[2],
    ]);
    assert_eq!(code, 0, "{v:#}");
    let got = client(&v);
    assert_eq!(got.len(), 2, "the progress, then the answer: {v:#}");
    assert_eq!(got[0]["method"], "notifications/progress", "{v:#}");
    let message = got[0]["params"]["message"].as_str().unwrap();
    assert!(!message.contains("alice@example.com"), "{v:#}");
    assert!(message.starts_with("mailing "), "{v:#}");
    assert_eq!(got[0]["params"]["progressToken"], "p1", "{v:#}");
    // The answer passes the response phase too, under the client's own id.
    assert_eq!(got[1]["id"], 7, "{v:#}");
    let text = got[1]["result"]["content"][0]["text"].as_str().unwrap();
    assert!(!text.contains("bob@example.org"), "{v:#}");
    assert!(text.starts_with("write to "), "{v:#}");
    assert_eq!(v["verdict"], "modify", "{v:#}");
    let verdicts: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["plugins"][0]["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["skipped", "modify", "modify"],
        "the call not even shown to redact (its shipped sidecar's [phases] leaves tools/call \
         out of the request phase), the progress and the answer redacted: {v:#}"
    );
    assert_eq!(
        v["plugins"][0]["phases"]["request"],
        serde_json::json!(["notifications/progress", "notifications/message"]),
        "{v:#}"
    );
    assert_eq!(v["plugins"][0]["phases"]["response"], "all", "{v:#}");
}

#[test]
fn a_sampling_request_carrying_a_secret_reaches_the_client_rewritten() {
    let dir = TempDir::new();
    let f = files(
        &dir,
        &[
            ("call.json", CALL),
            ("s.json", SAMPLING),
            ("a.json", ANSWER),
        ],
    );
    let (code, v) = redact(&[
        "--message",
        &f[0],
        "--upstream-message",
        &f[1],
        "--upstream-answer",
        &f[2],
    ]);
    assert_eq!(code, 0, "{v:#}");
    let got = client(&v);
    assert_eq!(got[0]["method"], "sampling/createMessage", "{v:#}");
    // The client sees the gateway's id for the question, never the upstream's.
    assert_ne!(got[0]["id"], 41, "{v:#}");
    let text = got[0]["params"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap();
    assert!(!text.contains("hunter2"), "{v:#}");
    assert!(text.starts_with("deploy with password="), "{v:#}");
    assert_eq!(got.last().unwrap()["id"], 7, "{v:#}");
}

#[test]
fn a_policy_that_drops_a_notification_shows_it_dropped_and_the_answer_still_arrives() {
    let dir = TempDir::new();
    let f = files(
        &dir,
        &[
            ("call.json", CALL),
            ("p.json", PROGRESS),
            ("a.json", ANSWER),
        ],
    );
    let sidecar = dir.write(
        "drop.toml",
        "[config]\nmode = \"deny\"\nphases = [\"response\"]\nmethods = [\"notifications/progress\"]\n",
    );
    let wasm = plugin_wasm("chaos");
    let args = [
        wasm.to_str().unwrap(),
        "--config",
        sidecar.to_str().unwrap(),
        "--message",
        &f[0],
        "--upstream-message",
        &f[1],
        "--upstream-answer",
        &f[2],
    ];
    let mut json = args.to_vec();
    json.push("--json");
    let (code, out, err) = run(&json);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "deny", "{v:#}");
    let got = client(&v);
    assert_eq!(got.len(), 1, "only the answer reaches the client: {v:#}");
    assert_eq!(got[0]["id"], 7, "{v:#}");
    assert_eq!(
        got[0]["result"]["content"][0]["text"], "write to bob@example.org",
        "{v:#}"
    );
    let progress = &v["messages"][1];
    assert_eq!(progress["method"], "notifications/progress", "{v:#}");
    assert_eq!(progress["plugins"][0]["verdict"], "deny", "{v:#}");
    assert_eq!(progress["outcome"], "dropped; the client never sees it");
    // The text output says the same.
    let (code, out, _) = run(&args);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("→ dropped; the client never sees it"), "{out}");
    assert!(!out.contains("mailing alice"), "{out}");
    assert!(out.contains("client:     {"), "{out}");
}

#[test]
fn a_sampling_request_a_policy_refuses_is_answered_to_the_upstream_and_never_reaches_the_client() {
    let dir = TempDir::new();
    let f = files(
        &dir,
        &[
            ("call.json", CALL),
            ("s.json", SAMPLING),
            ("a.json", ANSWER),
        ],
    );
    let sidecar = dir.write(
        "refuse.toml",
        "[config]\nmode = \"deny\"\ncode = -32003\nmessage = \"no sampling\"\nphases = [\"response\"]\nmethods = [\"sampling/createMessage\"]\n",
    );
    let wasm = plugin_wasm("chaos");
    let (code, out, err) = run(&[
        wasm.to_str().unwrap(),
        "--config",
        sidecar.to_str().unwrap(),
        "--message",
        &f[0],
        "--upstream-message",
        &f[1],
        "--upstream-answer",
        &f[2],
        "--json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        client(&v)
            .iter()
            .all(|m| m["method"] != "sampling/createMessage"),
        "{v:#}"
    );
    let answered = &v["upstream_received"][0];
    assert_eq!(answered["id"], 41, "under the upstream's own id: {v:#}");
    assert_eq!(answered["error"]["code"], -32003, "{v:#}");
    assert_eq!(
        v["server_message_outcome"],
        "answered to the upstream with the error; the client never sees it"
    );
}

#[test]
fn a_log_line_outside_any_request_reaches_the_session_stream_redacted() {
    let dir = TempDir::new();
    let f = files(&dir, &[("log.json", LOG)]);
    let (code, v) = redact(&["--upstream-message", &f[0]]);
    assert_eq!(code, 0, "{v:#}");
    assert!(
        client(&v).is_empty(),
        "no request, no request stream: {v:#}"
    );
    let got = v["session_stream"].as_array().unwrap();
    assert_eq!(got.len(), 1, "{v:#}");
    assert_eq!(got[0]["method"], "notifications/message", "{v:#}");
    let data = got[0]["params"]["data"].as_str().unwrap();
    assert!(!data.contains("carol@example.net"), "{v:#}");
    assert!(data.starts_with("sent to "), "{v:#}");
}

#[test]
fn a_message_no_plugin_sees_is_reported_unseen_not_allowed() {
    let dir = TempDir::new();
    let f = files(
        &dir,
        &[
            ("call.json", CALL),
            ("p.json", PROGRESS),
            ("a.json", ANSWER),
        ],
    );
    // path-guard reads requests only: the progress and the answer pass unseen.
    let sidecar = dir.write("pg.toml", "[config]\nallowed-prefixes = [\"/srv\"]\n");
    let wasm = plugin_wasm("path-guard");
    let (code, out, err) = run(&[
        wasm.to_str().unwrap(),
        "--config",
        sidecar.to_str().unwrap(),
        "--message",
        &f[0],
        "--upstream-message",
        &f[1],
        "--upstream-answer",
        &f[2],
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("no plugin in the chain handles the response phase"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["messages"][0]["plugins"][0]["plugin"], "path-guard",
        "{v:#}"
    );
    assert_ne!(
        v["verdict"], "deny",
        "path-guard let the call through: {v:#}"
    );
    let got = client(&v);
    assert_eq!(got.len(), 2, "{v:#}");
    assert_eq!(
        got[0]["params"]["message"], "mailing alice@example.com",
        "unseen, so unchanged: {v:#}"
    );
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        1,
        "only the call was seen by a plugin: {v:#}"
    );
}

#[test]
fn a_recording_that_does_not_fit_is_refused_before_anything_runs() {
    let dir = TempDir::new();
    let f = files(
        &dir,
        &[
            ("call.json", CALL),
            ("p.json", PROGRESS),
            ("a.json", ANSWER),
        ],
    );
    let wasm = plugin_wasm("redact");
    let wasm = wasm.to_str().unwrap();
    for (args, says) in [
        (
            vec!["--message", &f[0], "--upstream-answer", &f[1]],
            "is not an answer",
        ),
        (
            vec!["--message", &f[0], "--upstream-message", &f[2]],
            "is an answer: give it with --upstream-answer",
        ),
        (vec!["--upstream-answer", &f[2]], "--message"),
        (
            vec!["--message", &f[0], "--upstream", "other:thing"],
            "would route `files__read_file` elsewhere",
        ),
    ] {
        let mut all = vec![wasm];
        all.extend(args);
        let (code, out, err) = run(&all);
        assert_eq!(code, 2, "{all:?}: {out}{err}");
        assert!(err.contains(says), "{all:?}: {err}");
        assert!(!out.contains("verdict"), "{all:?}: {out}");
    }
}
