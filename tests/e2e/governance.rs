//! Governance through the real binary: the audit trail (who did what, which policies decided,
//! the keyed chain and its signed checkpoints, tampering and forgery found at the right
//! record, the gateway refusing to continue a forged tail, new segments, rotation) and the
//! Prometheus metrics after real traffic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, RawSession, TempDir, bin_path, initialize_request,
    jsonrpc_request, server_toml, session_tag, sha256_hex, stdio_fixture_toml, toml_str,
};
use serde_json::{Value, json};

const DEV_KEY: &str = "pk_dev_0123456789abcdefghijklmnopqrstuvwxyzABCD";
const ADMIN_KEY: &str = "pk_admin_0123456789abcdefghijklmnopqrstuvwxyzAB";
const ADMIN_TOKEN: &str = "e2e-governance-admin-token";
/// `prev` of a segment's first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// authn (two API keys: dev-bot of tenant acme, root), authz (devs may use echo and whoami,
/// admins anything), chaos denying `tools/call` of `add`, and redact on results and arguments.
fn policies() -> PluginDir {
    let plugins = PluginDir::new();
    plugins.add(
        "authn",
        "authn",
        &format!(
            "[config]\nresource-metadata = \"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\"\n\
             [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"dev-bot\"\nroles = [\"dev\"]\ntenant = \"acme\"\n\
             [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"root\"\nroles = [\"admin\"]\n",
            sha256_hex(DEV_KEY.as_bytes()),
            sha256_hex(ADMIN_KEY.as_bytes())
        ),
    );
    plugins.add(
        "authz",
        "authz",
        "[config]\n\
         [[config.rules]]\nname = \"devs-use-echo\"\neffect = \"allow\"\nroles = [\"dev\"]\nupstreams = [\"alpha\"]\ntools = [\"echo\", \"whoami\"]\n\
         [[config.rules]]\nname = \"admins\"\neffect = \"allow\"\nroles = [\"admin\"]\n",
    );
    plugins.add(
        "chaos",
        "chaos",
        "[config]\nmode = \"deny\"\ncode = -32003\nmessage = \"adding is not allowed\"\nmethods = [\"tools/call\"]\ntargets = [\"add\"]\n",
    );
    plugins.add(
        "redact",
        "redact",
        "stage = \"redaction\"\n[config]\narguments = true\n",
    );
    plugins
}

/// The trail's keys, made with `portcullis audit keygen` beside it (once per folder).
struct Keys {
    chain: PathBuf,
    checkpoint: PathBuf,
    public: String,
}

fn keys(dir: &Path) -> Keys {
    let chain = dir.join("chain.key");
    let checkpoint = dir.join("checkpoint.key");
    let public_file = dir.join("checkpoint.pub");
    if !chain.exists() {
        let out = portcullis(&["audit", "keygen", "--chain", &chain.to_string_lossy()]);
        assert!(out.0, "{}", out.1);
        let (ok, text) = portcullis(&["audit", "keygen", &checkpoint.to_string_lossy()]);
        assert!(ok, "{text}");
        let public = text
            .lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .unwrap_or_else(|| panic!("no public key in:\n{text}"));
        std::fs::write(&public_file, public).unwrap();
    }
    Keys {
        chain,
        checkpoint,
        public: std::fs::read_to_string(&public_file).unwrap(),
    }
}

fn audit_toml(path: &Path, extra: &str) -> String {
    let keys = keys(path.parent().unwrap());
    format!(
        "[audit]\nenabled = true\npath = {}\nkey-file = {}\ncheckpoint-key-file = {}\n{extra}\n",
        toml_str(&path.to_string_lossy()),
        toml_str(&keys.chain.to_string_lossy()),
        toml_str(&keys.checkpoint.to_string_lossy())
    )
}

fn admin_toml() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n")
}

async fn session_as(gateway: &Gateway, key: &str) -> RawSession {
    let auth = format!("Bearer {key}");
    let (resp, session) = RawHttp::new(gateway.url())
        .initialize(&[("authorization", &auth)])
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    session
}

async fn call(session: &RawSession, id: i64, tool: &str, args: Value) -> Value {
    let resp = session
        .post(&jsonrpc_request(
            id,
            "tools/call",
            json!({ "name": tool, "arguments": args }),
        ))
        .await;
    resp.response(&json!(id))
        .unwrap_or_else(|| panic!("no answer: {} {}", resp.status, resp.body))
}

/// The records in the trail once it has at least `n` lines (the writer is asynchronous).
async fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only complete lines: the writer may be half-way through one.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<&str> = complete.lines().collect();
        if lines.len() >= n {
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).expect("a record is JSON"))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "the audit trail has {} lines, expected {n}:\n{text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `portcullis ARGS...`: exit success and output.
fn portcullis(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_AUDIT_KEY")
        .output()
        .expect("run portcullis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `portcullis audit verify` with both keys of the first file's folder and the checkpoints
/// of its `audit.jsonl`.
fn verify(files: &[PathBuf]) -> (bool, String) {
    let dir = files[0].parent().unwrap();
    let keys = keys(dir);
    let checkpoints = dir.join("audit.jsonl.checkpoints");
    let mut args: Vec<String> = [
        "audit",
        "verify",
        "--key-file",
        &keys.chain.to_string_lossy(),
        "--public-key",
        &keys.public,
        "--checkpoints",
        &checkpoints.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    portcullis(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn find(records: &[Value], pred: impl Fn(&Value) -> bool) -> &Value {
    records
        .iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| panic!("no such record in:\n{records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_says_who_did_what_and_which_policies_decided() {
    let dir = TempDir::new();
    let trail = dir.path().join("audit.jsonl");
    let plugins = policies();
    let config = format!(
        "{}{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        audit_toml(&trail, "record-arguments = true\nrecord-results = true"),
        stdio_fixture_toml("alpha")
    );
    let mut gateway = Gateway::start(&config).await;
    let dev = session_as(&gateway, DEV_KEY).await;
    let root = session_as(&gateway, ADMIN_KEY).await;

    let ok = call(
        &dev,
        1,
        "alpha__echo",
        json!({ "text": "mail ann@example.com" }),
    )
    .await;
    let echoed = ok["result"]["content"][0]["text"].as_str().unwrap();
    assert!(!echoed.contains("ann@example.com"), "{ok}");
    let by_authz = call(&dev, 2, "alpha__crash", json!({})).await;
    assert_eq!(by_authz["error"]["code"], -32602, "{by_authz}");
    let by_chaos = call(&root, 3, "alpha__add", json!({ "a": 1, "b": 2 })).await;
    assert_eq!(by_chaos["error"]["code"], -32003, "{by_chaos}");
    // A 2026-07-28 stateless request is recorded too.
    let modern = RawHttp::new(gateway.url())
        .post(
            &json!({ "jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": { "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {} } } }),
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("authorization", &format!("Bearer {ADMIN_KEY}")),
            ],
        )
        .await;
    assert_eq!(modern.status, 200, "{}", modern.body);
    // And a request over the legacy HTTP+SSE transport (2024-11-05).
    let auth = format!("Bearer {ADMIN_KEY}");
    let headers = [("authorization", auth.as_str())];
    let mut stream = RawHttp::new(&format!("{}/sse", gateway.base()))
        .open_stream(reqwest::Method::GET, &headers, None)
        .await;
    let endpoint = stream
        .next_event(Duration::from_secs(10))
        .await
        .expect("an endpoint event");
    let legacy = RawHttp::new(&format!("{}{}", gateway.base(), endpoint.data));
    let mut post_legacy = async |body: Value| {
        let resp = legacy.post(&body, &headers).await;
        assert_eq!(resp.status, 202, "{}", resp.body);
        loop {
            let event = stream
                .next_event(Duration::from_secs(10))
                .await
                .expect("an answer");
            if event.event.as_deref() == Some("message") {
                return event.json();
            }
        }
    };
    post_legacy(initialize_request(0, "2024-11-05")).await;
    let echoed = post_legacy(jsonrpc_request(
        5,
        "tools/call",
        json!({ "name": "alpha__echo", "arguments": { "text": "old" } }),
    ))
    .await;
    assert_eq!(echoed["id"], 5, "{echoed}");

    // start, then the five requests (initialize is the gateway's own answer: not a record).
    let all = records(&trail, 6).await;
    assert_eq!(all[0]["event"], "start");
    let hashes: Vec<String> = ["authn", "authz", "chaos", "redact"]
        .iter()
        .map(|p| sha256_hex(std::fs::read(plugins.path().join(format!("{p}.wasm"))).unwrap()))
        .collect();

    let allowed = find(&all, |r| r["target"] == "alpha__echo");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["outcome"], "ok");
    assert_eq!(allowed["subject"], "dev-bot");
    assert_eq!(allowed["tenant"], "acme");
    assert_eq!(allowed["rule"], "devs-use-echo");
    assert_eq!(allowed["upstream"], "alpha");
    assert_eq!(allowed["method"], "tools/call");
    assert_eq!(allowed["protocol"], "2025-11-25");
    // The session by its tag, never by its id (the id is the session's bearer value).
    let dev_id = dev.session_id.as_deref().unwrap();
    assert_eq!(allowed["session"], session_tag(dev_id), "{allowed}");
    let trail_text = std::fs::read_to_string(&trail).unwrap();
    assert!(
        !trail_text.contains(dev_id),
        "the audit trail holds a session id"
    );
    assert!(
        !gateway.logs().contains(dev_id),
        "the log holds a session id"
    );
    assert_eq!(allowed["redactions"]["email"], 1, "{allowed}");
    assert!(allowed["latency_us"].as_u64().unwrap() > 0);
    assert!(allowed["upstream_us"].as_u64().unwrap() <= allowed["latency_us"].as_u64().unwrap());
    // Every plugin ran, in chain order in the request phase, then those with a response
    // phase (redact last).
    let ran: Vec<String> = allowed["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ran[..4], hashes[..], "{allowed}");
    assert!(ran[4..].iter().all(|h| hashes.contains(h)), "{allowed}");
    assert_eq!(ran.last(), Some(&hashes[3]), "{allowed}");
    // Arguments and results are recorded as forwarded and answered: redacted.
    assert!(allowed["arguments"]["text"].is_string(), "{allowed}");
    assert!(allowed["result"]["content"].is_array(), "{allowed}");

    let denied = find(&all, |r| r["target"] == "alpha__crash");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["plugin"], "authz");
    assert_eq!(denied["code"], -32602);
    assert_eq!(denied["subject"], "dev-bot");
    assert!(
        denied.get("arguments").is_none(),
        "a refused request's arguments are not recorded"
    );
    assert_eq!(denied["plugins"], json!([hashes[0], hashes[1]]));

    let by_chaos = find(&all, |r| r["target"] == "alpha__add");
    assert_eq!(by_chaos["plugin"], "chaos");
    assert_eq!(by_chaos["subject"], "root");
    assert_eq!(by_chaos["code"], -32003);
    assert_eq!(by_chaos["message"], "adding is not allowed");
    assert_eq!(by_chaos["rule"], Value::Null);

    let stateless = find(&all, |r| r["protocol"] == "2026-07-28");
    assert_eq!(stateless["method"], "tools/list");
    assert_eq!(stateless["subject"], "root");
    assert_eq!(stateless["outcome"], "ok");

    let old = find(&all, |r| r["protocol"] == "2024-11-05");
    assert_eq!(old["target"], "alpha__echo");
    assert_eq!(old["subject"], "root");
    assert_eq!(old["rule"], "admins");
    assert_eq!(old["outcome"], "ok");

    gateway.stop().await;
    let text = std::fs::read_to_string(&trail).unwrap();
    for secret in [DEV_KEY, ADMIN_KEY, "ann@example.com"] {
        assert!(!text.contains(secret), "{secret} reached the audit trail");
    }

    // Intact: verify says so.
    let (ok, out) = verify(std::slice::from_ref(&trail));
    assert!(ok, "{out}");
    assert!(out.contains("intact: 6 records"), "{out}");

    // Tampering is named at the right line.
    let lines: Vec<&str> = text.lines().collect();
    let tampered = |name: &str, lines: Vec<String>| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        verify(&[p])
    };
    let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let mut edited = own(&lines);
    edited[2] = edited[2].replace("dev-bot", "dev-bat");
    let (ok, out) = tampered("edited.jsonl", edited);
    assert!(!ok);
    assert!(out.contains("edited.jsonl:3: altered:"), "{out}");

    let mut removed = own(&lines);
    removed.remove(2);
    let (ok, out) = tampered("removed.jsonl", removed);
    assert!(!ok);
    assert!(
        out.contains("removed.jsonl:3: removed: record 3 is missing"),
        "{out}"
    );

    let mut swapped = own(&lines);
    swapped.swap(2, 3);
    let (ok, out) = tampered("swapped.jsonl", swapped);
    assert!(!ok);
    assert!(out.contains("swapped.jsonl:3: reordered:"), "{out}");
}

/// A record's line without its seal (`,"prev":…,"hash":…`), closed again: what an attacker
/// edits before re-sealing.
fn unsealed(line: &str) -> String {
    let at = line.find(",\"prev\":\"").expect("a sealed record");
    format!("{}}}", &line[..at])
}

/// Seals `records` (unsealed JSON objects) after `prev` the way the trail was sealed before
/// it was keyed: plain SHA-256, which anyone who can write the file can compute.
fn plain_chain(records: &[String], prev: &str) -> Vec<String> {
    let mut prev = prev.to_string();
    records
        .iter()
        .map(|r| {
            let body = format!("{},\"prev\":\"{prev}\"}}", &r[..r.len() - 1]);
            let hash = sha256_hex(body.as_bytes());
            prev = hash.clone();
            format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1])
        })
        .collect()
}

fn hash_of(line: &str) -> String {
    serde_json::from_str::<Value>(line).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A gateway run of three calls: start and three request records, checkpoints after the
/// start record and at shutdown. Returns the gateway's configuration.
async fn a_short_trail(trail: &Path) -> String {
    let config = format!(
        "{}{}{}",
        server_toml(),
        audit_toml(trail, ""),
        stdio_fixture_toml("alpha")
    );
    let mut gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    for id in 1..=3 {
        call(&session, id, "alpha__echo", json!({ "text": "hi" })).await;
    }
    gateway.stop().await;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_forged_appends_resealed_files_renumbering_and_a_cut_tail() {
    let dir = TempDir::new();
    let trail = dir.path().join("audit.jsonl");
    a_short_trail(&trail).await;
    let (ok, out) = verify(std::slice::from_ref(&trail));
    assert!(ok, "{out}");
    assert!(out.contains("intact: 4 records"), "{out}");
    assert!(
        out.contains("every record checked with the chain key"),
        "{out}"
    );
    assert!(out.contains("the last signs record 4"), "{out}");

    let text = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{text}");
    let keys = keys(dir.path());
    assert!(!text.contains(std::fs::read_to_string(&keys.chain).unwrap().trim()));
    let tampered = |name: &str, lines: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };

    // A forged append: a record sealed without the key after the real last one.
    let forged = unsealed(&lines[3]).replace("\"seq\":4", "\"seq\":5");
    let appended = [lines.clone(), plain_chain(&[forged], &hash_of(&lines[3]))].concat();
    let (ok, out) = verify(&[tampered("appended.jsonl", &appended)]);
    assert!(!ok, "{out}");
    assert!(out.contains("appended.jsonl:5: altered:"), "{out}");
    assert!(out.contains("without the chain key"), "{out}");

    // The whole file edited and re-sealed with plain SHA-256: every link holds, the keyed
    // hashes do not.
    let edited: Vec<String> = lines
        .iter()
        .map(|l| unsealed(l).replace("alpha__echo", "alpha__other"))
        .collect();
    let (ok, out) = verify(&[tampered("resealed.jsonl", &plain_chain(&edited, GENESIS))]);
    assert!(!ok, "{out}");
    assert!(out.contains("resealed.jsonl:1: altered:"), "{out}");

    // Record 3 deleted, the later ones renumbered and re-sealed.
    let renumbered_tail = [unsealed(&lines[3]).replace("\"seq\":4", "\"seq\":3")];
    let renumbered = [
        lines[..2].to_vec(),
        plain_chain(&renumbered_tail, &hash_of(&lines[1])),
    ]
    .concat();
    let renumbered = tampered("renumbered.jsonl", &renumbered);
    let (ok, out) = verify(std::slice::from_ref(&renumbered));
    assert!(!ok, "{out}");
    assert!(out.contains("renumbered.jsonl:3: altered:"), "{out}");
    // An auditor with only the public key still sees it: the trail no longer reaches the
    // record the last checkpoint signs.
    let checkpoints = dir.path().join("audit.jsonl.checkpoints");
    let (ok, out) = portcullis(&[
        "audit",
        "verify",
        "--public-key",
        &keys.public,
        "--checkpoints",
        &checkpoints.to_string_lossy(),
        &renumbered.to_string_lossy(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("renumbered.jsonl:4: truncated: record 4 is missing at the end"),
        "{out}"
    );

    // The last record cut off: a valid chain, but short of the last checkpoint.
    let (ok, out) = verify(&[tampered("cut.jsonl", &lines[..3])]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("cut.jsonl:4: truncated: record 4 is missing at the end"),
        "{out}"
    );
    assert!(out.contains("audit.jsonl.checkpoints:"), "{out}");

    // Verifying with the wrong key names the first record; with no key at all, verify refuses.
    let wrong = dir.write("wrong.key", &"w".repeat(40));
    let (ok, out) = portcullis(&[
        "audit",
        "verify",
        "--key-file",
        &wrong.to_string_lossy(),
        &trail.to_string_lossy(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("audit.jsonl:1: altered:"), "{out}");
    let (ok, out) = portcullis(&["audit", "verify", &trail.to_string_lossy()]);
    assert!(!ok, "{out}");
    assert!(out.contains("PORTCULLIS_AUDIT_KEY"), "{out}");
}

/// Why the gateway refused to start on `config`.
async fn refusal(config: &str) -> String {
    match Gateway::try_start_with_env(config, &[]).await {
        Ok(_) => panic!("the gateway continued a trail it cannot verify"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_a_forged_or_cut_tail_and_starts_after_a_new_segment() {
    let dir = TempDir::new();
    let trail = dir.path().join("audit.jsonl");
    let config = a_short_trail(&trail).await;
    let good = std::fs::read_to_string(&trail).unwrap();
    let lines: Vec<String> = good.lines().map(str::to_string).collect();

    // The tail cut off.
    std::fs::write(&trail, lines[..2].join("\n") + "\n").unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("cannot be continued"), "{e}");
    assert!(e.contains("truncated: records 3 to 4 are missing"), "{e}");

    // A forged append.
    let forged = unsealed(&lines[3]).replace("\"seq\":4", "\"seq\":5");
    let forged = format!("{good}{}\n", plain_chain(&[forged], &hash_of(&lines[3]))[0]);
    std::fs::write(&trail, &forged).unwrap();
    let e = refusal(&config).await;
    assert!(e.contains("audit.jsonl:5: altered"), "{e}");
    assert!(e.contains("portcullis audit new-segment"), "{e}");
    // Nothing was written to the trail it refused.
    assert_eq!(std::fs::read_to_string(&trail).unwrap(), forged);

    // The documented way on: a new segment.
    let config_file = dir.write("portcullis.toml", &config);
    let (ok, out) = portcullis(&[
        "audit",
        "new-segment",
        "--config",
        &config_file.to_string_lossy(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("moved 2 files to"), "{out}");
    let moved_to = out
        .lines()
        .find_map(|l| l.strip_prefix("moved 2 files to "))
        .map(PathBuf::from)
        .unwrap();

    let mut gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    call(&session, 1, "alpha__echo", json!({ "text": "after" })).await;
    gateway.stop().await;
    let (ok, out) = verify(std::slice::from_ref(&trail));
    assert!(ok, "{out}");
    assert!(out.contains("intact: 3 records"), "{out}");
    let all = records(&trail, 3).await;
    assert_eq!(all[0]["event"], "segment");
    assert_eq!(all[0]["previous"]["seq"], 5, "{}", all[0]);
    assert_eq!(all[0]["previous"]["intact"], false, "{}", all[0]);
    assert_eq!(all[0]["previous"]["checkpoint_seq"], 4, "{}", all[0]);
    assert_eq!(all[0]["previous"]["checkpoint_hash"], hash_of(&lines[3]));
    assert_eq!(all[1]["event"], "start");

    // The old segment, moved aside, still shows the forgery.
    let old = moved_to.join("audit.jsonl");
    let keys = keys(dir.path());
    let (ok, out) = portcullis(&[
        "audit",
        "verify",
        "--key-file",
        &keys.chain.to_string_lossy(),
        "--public-key",
        &keys.public,
        &old.to_string_lossy(),
        &moved_to.join("audit.jsonl.checkpoints").to_string_lossy(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("audit.jsonl:5: altered:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_continues_the_chain_across_files() {
    let dir = TempDir::new();
    let trail = dir.path().join("audit.jsonl");
    let config = format!(
        "{}{}{}",
        server_toml(),
        audit_toml(
            &trail,
            "max-file-mib = 0.004\nkeep-files = 0\nrecord-results = true"
        ),
        stdio_fixture_toml("alpha")
    );
    let mut gateway = Gateway::start(&config).await;
    let (_, session) = RawHttp::new(gateway.url()).initialize(&[]).await;
    for id in 1..=40 {
        call(
            &session,
            id,
            "alpha__echo",
            json!({ "text": "x".repeat(200) }),
        )
        .await;
    }
    gateway.stop().await;

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.contains("audit.jsonl") && !name.ends_with(".checkpoints")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    // Each file starts where the one before ended.
    let first_of = |p: &Path| -> Value {
        serde_json::from_str(std::fs::read_to_string(p).unwrap().lines().next().unwrap()).unwrap()
    };
    let last_of = |p: &Path| -> Value {
        serde_json::from_str(std::fs::read_to_string(p).unwrap().lines().last().unwrap()).unwrap()
    };
    let rotated_1 = dir.path().join("audit.jsonl.1");
    let rotated_2 = dir.path().join("audit.jsonl.2");
    assert_eq!(first_of(&rotated_2)["prev"], last_of(&rotated_1)["hash"]);

    let (ok, out) = verify(&files);
    assert!(ok, "{out}");
    assert!(out.contains("intact: 41 records"), "{out}");
    assert!(
        out.contains(&format!("across {} files", files.len())),
        "{out}"
    );

    // Without a file in the middle, the gap is named at the first record after it.
    let without: Vec<PathBuf> = files.iter().filter(|p| **p != rotated_2).cloned().collect();
    let (ok, out) = verify(&without);
    assert!(!ok);
    let expected = format!("{}:1: removed:", dir.path().join("audit.jsonl.3").display());
    assert!(out.contains(&expected), "{out}");
}

/// The value of one sample line, e.g. `portcullis_requests_total{method="tools/call",…}`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

async fn admin_url(gateway: &Gateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(url) = gateway
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("portcullis admin listening on "))
        {
            return url.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no admin line: {}",
            gateway.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_real_traffic_has_the_expected_series() {
    let plugins = policies();
    plugins.add(
        "spin",
        "chaos",
        "[limits]\ntimeout = \"50ms\"\n[config]\nmode = \"loop\"\nmethods = [\"tools/call\"]\ntargets = [\"whoami\"]\n",
    );
    plugins.add(
        "boom",
        "chaos",
        "[config]\nmode = \"trap\"\nmethods = [\"tools/call\"]\ntargets = [\"crash\"]\n",
    );
    let dir = TempDir::new();
    let config = format!(
        "{}{}{}{}{}",
        server_toml(),
        plugins.policy_toml(),
        admin_toml(),
        audit_toml(&dir.path().join("audit.jsonl"), ""),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let dev = session_as(&gateway, DEV_KEY).await;
    let root = session_as(&gateway, ADMIN_KEY).await;
    for id in 1..=3 {
        let ok = call(&dev, id, "alpha__echo", json!({ "text": "hi" })).await;
        assert!(ok.get("result").is_some(), "{ok}");
    }
    call(&dev, 4, "alpha__crash", json!({})).await; // authz
    call(&root, 5, "alpha__add", json!({ "a": 1, "b": 2 })).await; // chaos
    call(&root, 6, "alpha__whoami", json!({})).await; // spin: CPU deadline
    call(&root, 7, "alpha__crash", json!({})).await; // boom: trap
    dev.call(8, "tools/list", json!({})).await;

    // The audit writer is asynchronous: let it catch up before counting its records.
    records(&dir.path().join("audit.jsonl"), 9).await;

    let admin = admin_url(&gateway).await;
    let http = reqwest::Client::new();
    let unauthorized = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let resp = http
        .get(format!("{admin}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = resp.text().await.unwrap();

    let requests = |method: &str, upstream: &str, outcome: &str| {
        sample(
            &m,
            &format!(
                "portcullis_requests_total{{method=\"{method}\",upstream=\"{upstream}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(requests("tools/call", "alpha", "ok"), 3.0);
    assert_eq!(requests("tools/call", "alpha", "denied"), 4.0);
    assert_eq!(requests("tools/list", "", "ok"), 1.0);
    assert_eq!(
        sample(
            &m,
            "portcullis_request_duration_seconds_count{method=\"tools/call\"}"
        ),
        7.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_gateway_overhead_seconds_count{method=\"tools/call\"}"
        ),
        7.0
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_upstream_duration_seconds_count{upstream=\"alpha\"}"
        ),
        3.0
    );

    let plugin = |name: &str, plugin: &str| {
        sample(
            &m,
            &format!("portcullis_plugin_{name}{{plugin=\"{plugin}\"}}"),
        )
    };
    assert_eq!(plugin("denials_total", "authz"), 1.0);
    assert_eq!(plugin("denials_total", "chaos"), 1.0);
    assert_eq!(plugin("timeouts_total", "spin"), 1.0);
    assert_eq!(plugin("traps_total", "boom"), 1.0);
    assert_eq!(plugin("failures_total", "boom"), 1.0);
    assert_eq!(plugin("traps_total", "spin"), 0.0);
    // authn ran on every message: 2 × (initialize, initialized) and 8 requests.
    assert_eq!(plugin("invocations_total", "authn"), 12.0);
    assert_eq!(
        plugin("duration_seconds_count", "authn"),
        plugin("invocations_total", "authn")
    );
    assert_eq!(sample(&m, "portcullis_plugins_active"), 6.0);

    assert_eq!(sample(&m, "portcullis_sessions_active"), 2.0);
    assert_eq!(
        sample(&m, "portcullis_upstream_up{upstream=\"alpha\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "portcullis_policy_reloads_total{result=\"ok\"}"),
        1.0
    );
    // start + 8 requests (initialize is the gateway's own answer, not a record).
    assert_eq!(sample(&m, "portcullis_audit_records_total"), 9.0);
    assert_eq!(sample(&m, "portcullis_audit_dropped_total"), 0.0);

    // Bounded labels: no subject, no session, no argument.
    for leak in ["dev-bot", "root", dev.session_id.as_deref().unwrap(), "hi"] {
        assert!(
            !m.contains(&format!("\"{leak}\"")),
            "{leak} is a label value:\n{m}"
        );
    }
}
