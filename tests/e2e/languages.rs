//! The example policy `path-guard` in Rust, Python, JavaScript and Go (examples/policies/)
//! behaves the same in each language: one table of calls (examples/policies/cases.json) goes
//! through each language's component, dropped into a running gateway's plugins folder, with a
//! real MCP client, and every verdict must be the table's. A later stage (`authz`) lets a call
//! through only if path-guard tagged the caller's identity, so the tag is checked end to end;
//! `portcullis plugin test --json` checks the exact attributes and identity.
//!
//! The components are built by `examples/policies/build` (Python, JavaScript, Go) and
//! `scripts/build-plugins` (Rust); `scripts/test` runs both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    Gateway, McpClient, PluginDir, TempDir, bin_path, call_tool, client, plugin_wasm, server_toml,
    stdio_fixture_toml, toml_str,
};
use rmcp::ServiceError;
use serde_json::{Value, json};

/// How long a component may take to compile and load. Python and JavaScript components carry
/// a whole language runtime (12–18 MB): a debug build of the gateway compiles one in 15–20 s
/// on an idle machine, and these tests run beside others on two cores.
const LOAD_WAIT: Duration = Duration::from_secs(300);

/// The callers' identity (authn's anonymous identity) and the later stage that relies on
/// path-guard's tag: `authz` allows a tool call only when the identity carries it.
const AUTHN: &str = "[config]\nanonymous = { subject = \"anonymous\", roles = [\"guest\"] }\n";
const AUTHZ: &str = "priority = 100\n\n[config]\n[[config.rules]]\nname = \"path-checked\"\neffect = \"allow\"\nattributes = { \"path-guard.checked\" = \"true\" }\n";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// One row of the table.
#[derive(Debug, serde::Deserialize)]
struct Case {
    name: String,
    arguments: Option<Value>,
    expect: String,
    paths: Option<u64>,
    argument: Option<String>,
}

#[derive(serde::Deserialize)]
struct Table {
    config: Value,
    cases: Vec<Case>,
}

fn table() -> Table {
    let path = examples().join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The sidecar: the table's configuration, in the authz stage ahead of `authz`, with the
/// default limits (16 MiB, 50 ms), which suit every language.
fn sidecar(config: &Value) -> String {
    let prefixes: Vec<String> = config["allowed-prefixes"]
        .as_array()
        .expect("allowed-prefixes")
        .iter()
        .map(|p| toml_str(p.as_str().expect("a string")))
        .collect();
    format!(
        "stage = \"authz\"\npriority = 0\n\n[config]\nallowed-prefixes = [{}]\ntag-identity = {}\n",
        prefixes.join(", "),
        config["tag-identity"]
    )
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// The call reached the upstream (and came back with a result).
    Passed,
    /// The gateway answered with this JSON-RPC error.
    Refused {
        code: i32,
        message: String,
        data: Option<Value>,
    },
}

/// What the table says the client must see.
fn expected(case: &Case) -> Seen {
    match case.expect.as_str() {
        // Tagged by path-guard, so authz lets it through to the upstream.
        "tag" => Seen::Passed,
        "deny" => {
            let at = case.argument.as_deref().expect("deny needs `argument`");
            Seen::Refused {
                code: -32003,
                message: format!(
                    "path-guard: argument `{at}` names a path outside the allowed folders"
                ),
                data: Some(json!({ "argument": at })),
            }
        }
        // path-guard has nothing to check and does not tag: authz, which relies on the tag,
        // answers as for a tool that does not exist.
        "allow" => Seen::Refused {
            code: -32602,
            message: "Unknown tool: alpha__whoami".into(),
            data: None,
        },
        other => panic!("{}: unknown expect {other:?}", case.name),
    }
}

async fn send(client: &McpClient, case: &Case) -> Seen {
    match call_tool(
        client,
        "alpha__whoami",
        case.arguments.clone().unwrap_or(Value::Null),
    )
    .await
    {
        Ok(_) => Seen::Passed,
        Err(ServiceError::McpError(e)) => Seen::Refused {
            code: e.code.0,
            message: e.message.to_string(),
            data: e.data,
        },
        Err(e) => panic!("{}: {e}", case.name),
    }
}

/// Starts a gateway whose chain is authn → authz, drops `wasm` into its plugins folder as
/// `name` (as an operator would), waits until it is enforced, and runs the table.
async fn run_table(name: &str, wasm: &str) {
    let table = table();
    let plugins = PluginDir::new();
    plugins
        .add("authn", "authn", AUTHN)
        .add("authz", "authz", AUTHZ);
    // A compile cache of its own: the component must be new to this gateway, as a policy an
    // operator drops in for the first time is.
    let cache = TempDir::new();
    let config = format!(
        "{}{}cache = {}\n\n{}",
        server_toml(),
        plugins.policy_toml(),
        toml_str(&cache.path().join("compiled").to_string_lossy()),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;

    plugins.add(name, wasm, &sidecar(&table.config));
    gateway
        .wait_for_log(&format!("plugin loaded plugin={name}"), LOAD_WAIT)
        .await;
    // A component of a language runtime's size joins the chain on the baseline compiler's
    // code while Cranelift compiles it in the background (policy/engine.rs): the table must
    // hold on both.
    let big = std::fs::metadata(plugin_wasm(wasm)).map_or(0, |m| m.len()) >= 2 << 20;
    let loaded = gateway.logs();
    let line = loaded
        .lines()
        .find(|l| l.contains(&format!("plugin loaded plugin={name}")))
        .unwrap_or_default();
    assert_eq!(
        line.contains("baseline=true"),
        big,
        "a {} component should load on {} code: {line}",
        if big { "big" } else { "small" },
        if big {
            "the baseline compiler's"
        } else {
            "Cranelift's"
        }
    );
    // The chain is swapped right after the load is logged: wait until a refusal shows it.
    let probe = table
        .cases
        .iter()
        .find(|c| c.expect == "deny")
        .expect("a deny case");
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(&client, probe).await != expected(probe) {
        assert!(Instant::now() < deadline, "{name} never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_table(&client, &table, name, &gateway, "as loaded").await;
    if big {
        gateway
            .wait_for_log(&format!("run Cranelift's code plugin={name}"), LOAD_WAIT)
            .await;
        check_table(&client, &table, name, &gateway, "on Cranelift's code").await;
    }
    client.cancel().await.ok();
}

/// Sends every case of the table and fails listing the calls whose verdict differs.
async fn check_table(client: &McpClient, table: &Table, name: &str, gateway: &Gateway, when: &str) {
    let mut wrong = Vec::new();
    for case in &table.cases {
        let seen = send(client, case).await;
        if seen != expected(case) {
            wrong.push(format!(
                "  {}: expected {:?}, got {seen:?}",
                case.name,
                expected(case)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{name} ({when}) disagrees with examples/policies/cases.json:\n{}\n--- gateway log ---\n{}",
        wrong.join("\n"),
        gateway.logs()
    );
}

/// `portcullis plugin test --json` with the sidecar shipped beside the example (its `[config]`
/// is the table's), on the table's tagged case with the most paths, for a caller whose
/// identity already has attributes: the attributes and the tagged identity.
fn plugin_test(wasm: &str, sidecar: &str) -> Value {
    let table = table();
    let case = table
        .cases
        .iter()
        .filter(|c| c.expect == "tag")
        .max_by_key(|c| c.paths)
        .expect("a tag case");
    let dir = TempDir::new();
    let message = dir.write(
        "call.json",
        &json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                 "params": { "name": "fs__copy", "arguments": case.arguments } })
        .to_string(),
    );
    let sidecar = examples().join(sidecar);
    let out = Command::new(bin_path("portcullis"))
        .args(["plugin", "test"])
        .arg(plugin_wasm(wasm))
        .arg("--message")
        .arg(&message)
        .arg("--config")
        .arg(&sidecar)
        .args([
            "--identity",
            r#"{"subject":"alice","roles":["dev"],"attributes":[["team","infra"]]}"#,
            "--json",
        ])
        .output()
        .expect("run portcullis plugin test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_str(&stdout).expect("JSON outcome");
    assert_eq!(outcome["verdict"], "modify", "{outcome:#}");
    assert_eq!(
        outcome["attributes"],
        json!({ "path-guard.checked": "true", "path-guard.paths": case.paths.expect("paths").to_string() }),
        "{wasm}: {outcome:#}"
    );
    assert_eq!(
        outcome["identity"],
        json!({ "subject": "alice", "roles": ["dev"], "scopes": [], "tenant": null,
                "attributes": [["team", "infra"], ["path-guard.checked", "true"]] }),
        "{wasm}: {outcome:#}"
    );
    assert_eq!(
        outcome["request"]["params"]["arguments"],
        case.arguments.clone().unwrap_or_default(),
        "path-guard never changes the arguments"
    );
    outcome
}

mod rust {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn path_guard_verdicts_match_the_table() {
        super::run_table("path-guard-rust", "path-guard").await;
    }

    #[test]
    fn plugin_test_shows_the_tags() {
        super::plugin_test("path-guard", "rust/path-guard.toml");
    }
}

mod python {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn path_guard_verdicts_match_the_table() {
        super::run_table("path-guard-python", "path-guard-python").await;
    }

    #[test]
    fn plugin_test_shows_the_tags() {
        super::plugin_test("path-guard-python", "python/path-guard/path-guard.toml");
    }
}

mod javascript {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn path_guard_verdicts_match_the_table() {
        super::run_table("path-guard-js", "path-guard-js").await;
    }

    #[test]
    fn plugin_test_shows_the_tags() {
        super::plugin_test("path-guard-js", "js/path-guard/path-guard.toml");
    }
}

mod go {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn path_guard_verdicts_match_the_table() {
        super::run_table("path-guard-go", "path-guard-go").await;
    }

    #[test]
    fn plugin_test_shows_the_tags() {
        super::plugin_test("path-guard-go", "go/path-guard/path-guard.toml");
    }
}
