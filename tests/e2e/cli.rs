//! The command line: `portcullis check --config FILE` accepts a valid file and rejects bad
//! ones with `FILE:LINE: field: problem`; `portcullis serve` refuses to start when
//! `namespacing.prefix = "never"` cannot tell two upstreams' tools apart.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use portcullis_tests::harness::{
    STARTUP_TIMEOUT, TempDir, bin_path, server_toml, stdio_fixture_toml, toml_str,
};

/// An environment variable no test sets.
const UNSET_VAR: &str = "PORTCULLIS_E2E_CLI_SURELY_UNSET";

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `portcullis ARGS… --config FILE` on `config` (written to a temporary file), with
/// [`UNSET_VAR`] removed from its environment. Returns the result and the file's path.
async fn portcullis(subcommand: &str, config: &str, dir: &TempDir) -> (Run, PathBuf) {
    let path = dir.write("portcullis.toml", config);
    let run = tokio::process::Command::new(bin_path("portcullis"))
        .arg(subcommand)
        .arg("--config")
        .arg(&path)
        .env("NO_COLOR", "1")
        .env_remove(UNSET_VAR)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // `serve` that wrongly starts would run forever: the bound turns that into a failure.
    let bound = STARTUP_TIMEOUT + Duration::from_secs(10);
    let output = tokio::time::timeout(bound, run)
        .await
        .unwrap_or_else(|_| {
            panic!("`portcullis {subcommand}` did not exit within {bound:?} for:\n{config}")
        })
        .expect("cannot run portcullis");
    let run = Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    (run, path)
}

/// Asserts `check` failed with a message naming `FILE:LINE:` and `field`, where `lines` are
/// the acceptable lines (the offending key's, or the header of the table it is in).
fn assert_rejected(run: &Run, path: &Path, lines: &[usize], field: &str) {
    assert!(
        !run.status.success(),
        "check accepted a bad file:\n{}",
        run.output()
    );
    let locations: Vec<String> = lines
        .iter()
        .map(|line| format!("{}:{line}:", path.display()))
        .collect();
    let text = run.output();
    let message = text
        .lines()
        .find(|l| locations.iter().any(|at| l.contains(at)))
        .unwrap_or_else(|| panic!("no line naming one of {locations:?}:\n{text}"));
    assert!(
        message.contains(field),
        "the message does not name the field {field:?}: {message}"
    );
}

/// A stdio upstream section with a command that needs not exist (`check` starts nothing).
const STDIO: &str = "[upstreams.local]\ncommand = \"some-mcp-server\"\nargs = [\"--stdio\"]\n";

#[tokio::test]
async fn check_accepts_a_valid_file() {
    let dir = TempDir::new();
    let config = format!(
        "{}max-body-bytes = 1024\n\n[namespacing]\nseparator = \"__\"\nprefix = \"when-needed\"\n\n\
         {STDIO}env = {{ \"TOKEN\" = \"$${{NOT_EXPANDED}}\" }}\n\n\
         [upstreams.remote]\nurl = \"https://mcp.example.com/mcp\"\ntimeout = \"5s\"\n\
         headers = {{ \"X-Team\" = \"platform\" }}\n",
        server_toml()
    );
    let (run, path) = portcullis("check", &config, &dir).await;
    assert!(
        run.status.success(),
        "check rejected a valid file:\n{}\n--- file ---\n{config}",
        run.output()
    );
    assert_eq!(run.status.code(), Some(0));
    assert!(
        run.stdout.contains(&path.display().to_string()),
        "{}",
        run.output()
    );
}

#[tokio::test]
async fn check_rejects_an_unknown_key_naming_file_line_and_key() {
    let dir = TempDir::new();
    // Line 4 has the typo.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/mcp\"\nmax-body-byte = 1024\n\n{STDIO}"
    );
    let (run, path) = portcullis("check", &config, &dir).await;
    assert_rejected(&run, &path, &[4], "max-body-byte");

    // An unknown key inside an upstream table (line 3).
    let config = "[upstreams.local]\ncommand = \"srv\"\ncomand = \"typo\"\n";
    let (run, path) = portcullis("check", config, &dir).await;
    assert_rejected(&run, &path, &[3], "comand");
}

#[tokio::test]
async fn check_rejects_a_bad_url_naming_file_line_and_field() {
    let dir = TempDir::new();
    for url in ["not a url", "ftp://example.com/mcp", "http//missing-colon"] {
        // The upstream's table starts on line 5, its `url` is on line 6.
        let config = format!(
            "{}[upstreams.remote]\nurl = {}\n",
            server_toml(),
            toml_str(url)
        );
        let (run, path) = portcullis("check", &config, &dir).await;
        assert_rejected(&run, &path, &[5, 6], "upstreams.remote.url");
    }
}

#[tokio::test]
async fn check_rejects_command_and_url_together() {
    let dir = TempDir::new();
    let config = format!(
        "{}{STDIO}\n[upstreams.both]\ncommand = \"srv\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
        server_toml()
    );
    // [upstreams.both] is on line 9, its `url` on line 11.
    let (run, path) = portcullis("check", &config, &dir).await;
    assert_rejected(&run, &path, &[9, 10, 11], "upstreams.both");
    assert!(
        run.output().contains("command") && run.output().contains("url"),
        "{}",
        run.output()
    );
}

#[tokio::test]
async fn check_rejects_a_missing_environment_variable_naming_the_field() {
    let dir = TempDir::new();
    let config = format!(
        "{}[upstreams.remote]\nurl = \"https://mcp.example.com/mcp\"\nbearer-token = \"${{{UNSET_VAR}}}\"\n",
        server_toml()
    );
    // [upstreams.remote] is on line 5, `bearer-token` on line 7.
    let (run, path) = portcullis("check", &config, &dir).await;
    assert_rejected(&run, &path, &[5, 7], "upstreams.remote.bearer-token");
    assert!(run.output().contains(UNSET_VAR), "{}", run.output());

    let config = format!("{STDIO}env = {{ \"API_KEY\" = \"${{{UNSET_VAR}}}\" }}\n");
    // [upstreams.local] is on line 1, `env` on line 4.
    let (run, path) = portcullis("check", &config, &dir).await;
    assert_rejected(&run, &path, &[1, 4], "upstreams.local.env.API_KEY");
    assert!(run.output().contains(UNSET_VAR), "{}", run.output());
}

#[tokio::test]
async fn serve_refuses_to_start_when_prefix_never_meets_a_name_collision() {
    let dir = TempDir::new();
    let config = format!(
        "{}[namespacing]\nprefix = \"never\"\n\n{}{}",
        server_toml(),
        stdio_fixture_toml("alpha"),
        stdio_fixture_toml("beta")
    );
    let (run, _) = portcullis("serve", &config, &dir).await;
    let text = run.output();
    assert!(
        !run.status.success(),
        "serve started (and exited successfully) despite colliding names:\n{text}"
    );
    assert!(
        !run.stdout.contains("listening on"),
        "serve listened despite colliding names:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("\"echo\""))
        .unwrap_or_else(|| panic!("no message naming the colliding tool \"echo\":\n{text}"));
    // The message may list many names; the part about `echo` must name both upstreams.
    let part = line
        .split(';')
        .find(|p| p.contains("\"echo\""))
        .unwrap_or(line);
    assert!(
        part.contains("alpha") && part.contains("beta"),
        "the message does not name both upstreams for \"echo\": {part}"
    );
}

mod plugin_cli {
    //! `portcullis plugin test` / `plugin inspect`: the offline path policy authors use, on
    //! the same chain code as `serve`.

    use portcullis_tests::harness::{PluginDir, TempDir, bin_path, plugin_wasm};
    use serde_json::Value;

    fn run(args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(bin_path("portcullis"))
            .args(args)
            .output()
            .expect("run portcullis");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn files() -> (TempDir, String, String) {
        let dir = TempDir::new();
        let call = dir.write(
            "call.json",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fs__read","arguments":{"path":"/etc/shadow"}}}"#,
        );
        let list = dir.write(
            "list.json",
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a__keep"},{"name":"a__secret_dump"}]}}"#,
        );
        (dir, call.display().to_string(), list.display().to_string())
    }

    #[test]
    fn test_prints_a_denial_and_exits_1() {
        let (dir, call, _) = files();
        let sidecar = dir.write(
            "deny.toml",
            "[config]\nmode = \"deny\"\ncode = -32003\nmessage = \"no\"\n",
        );
        let wasm = plugin_wasm("chaos");
        let (code, out, _) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--message",
            &call,
            "--config",
            sidecar.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 1, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["error"]["code"], -32003);
        assert_eq!(v["denied_by"], "chaos");
    }

    #[test]
    fn test_runs_a_folder_in_chain_order_including_the_response_phase() {
        let (dir, _, list) = files();
        let request = dir.write(
            "list-request.json",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        );
        let call = request.display().to_string();
        let plugins = PluginDir::new();
        plugins
            .add(
                "tagger",
                "chaos",
                "stage = \"authn\"\n[config]\nmode = \"tag\"\nsubject = \"alice\"\n",
            )
            .add(
                "filter",
                "chaos",
                "[config]\nmode = \"filter-list\"\ncontains = \"secret\"\n",
            );
        let (code, out, err) = run(&[
            "plugin",
            "test",
            plugins.path().to_str().unwrap(),
            "--message",
            &call,
            "--response",
            &list,
            "--json",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"], "modify");
        assert_eq!(v["identity"]["subject"], "alice");
        let names: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["tagger", "filter"], "authn stage first");
        let tools = v["response"]["result"]["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0]["name"], "a__keep");
    }

    #[test]
    fn the_example_path_guard_policy_denies_a_path_outside_its_prefix() {
        let (dir, call, _) = files();
        let sidecar = dir.write("pg.toml", "[config]\nallowed-prefixes = [\"/srv/data\"]\n");
        let wasm = plugin_wasm("path-guard");
        let (code, out, _) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--message",
            &call,
            "--config",
            sidecar.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("verdict:    deny"), "{out}");
        assert!(
            !out.contains("/etc/shadow"),
            "the denial must not echo the path: {out}"
        );
    }

    #[test]
    fn test_exits_2_when_the_plugin_cannot_load() {
        let (dir, call, _) = files();
        let garbage = dir.write("bad.wasm", "garbage");
        let (code, _, err) = run(&[
            "plugin",
            "test",
            garbage.to_str().unwrap(),
            "--message",
            &call,
        ]);
        assert_eq!(code, 2);
        assert!(err.contains("not a WebAssembly file"), "{err}");
    }

    #[test]
    fn inspect_shows_world_metadata_and_hash() {
        let wasm = plugin_wasm("chaos");
        let (code, out, _) = run(&["plugin", "inspect", wasm.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["implements_policy_world"], true);
        assert_eq!(v["name"], "chaos");
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
        assert!(
            v["imports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i == "portcullis:policy/host@0.1.0")
        );
        let (code, out, _) = run(&[
            "plugin",
            "inspect",
            plugin_wasm("wrong-world").to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 2);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["implements_policy_world"], false);
    }
}
