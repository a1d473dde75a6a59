//! A policy author outside the repository: `portcullis plugin new` scaffolds a project that
//! builds against the *packaged* SDK (the `.crate` `cargo package` makes, unpacked in a
//! temporary folder) and passes `portcullis plugin test` on its own samples; and `plugin test`
//! is honest about phases (server messages go through the response phase; a message that does
//! not fit the phase, or a phase no plugin handles, is refused; "allow" means allowed).

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::harness::{PluginDir, TempDir, bin_path, plugin_wasm};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// Runs `portcullis ARGS` in `cwd`: (exit code, stdout, stderr).
fn portcullis(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_path("portcullis"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cargo for the author's project: nothing from this workspace's build leaks in, and the
/// target directory is a warm one under ours (so dependencies build once per machine).
fn cargo(dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `cargo package -p portcullis-sdk`, unpacked into `into`: the SDK as a registry serves it.
fn packaged_sdk(into: &Path) -> PathBuf {
    let target = repo().join("target/sdk-package");
    run_ok(
        cargo(&repo(), &target).args([
            "package",
            "-p",
            "portcullis-sdk",
            "--allow-dirty",
            "--no-verify",
            "--quiet",
        ]),
        "cargo package -p portcullis-sdk",
    );
    let version = env!("CARGO_PKG_VERSION");
    let crate_file = target.join(format!("package/portcullis-sdk-{version}.crate"));
    let listing = run_ok(Command::new("tar").arg("-tzf").arg(&crate_file), "tar -t");
    assert!(
        listing
            .lines()
            .any(|l| l == format!("portcullis-sdk-{version}/wit/policy.wit")),
        "the WIT does not travel in the crate:\n{listing}"
    );
    assert!(
        listing.lines().any(|l| l.ends_with("/README.md")),
        "no README in the crate:\n{listing}"
    );
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(into),
        "tar -x",
    );
    let manifest =
        std::fs::read_to_string(into.join(format!("portcullis-sdk-{version}/Cargo.toml")))
            .expect("the packaged manifest");
    for key in ["description", "license", "readme", "keywords"] {
        assert!(
            manifest.lines().any(|l| l.starts_with(&format!("{key} ="))),
            "the packaged manifest has no `{key}`:\n{manifest}"
        );
    }
    into.join(format!("portcullis-sdk-{version}"))
}

#[test]
fn rust_scaffold_builds_outside_the_repository_against_the_packaged_sdk() {
    let tmp = TempDir::new();
    assert!(
        !tmp.path().starts_with(repo()),
        "the temporary folder must be outside the repository"
    );
    let sdk = packaged_sdk(tmp.path());
    let project = tmp.path().join("block-delete");
    let (code, out, err) = portcullis(
        tmp.path(),
        &[
            "plugin",
            "new",
            "--lang",
            "rust",
            "block-delete",
            "--sdk-path",
            sdk.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    for file in [
        "Cargo.toml",
        "build.rs",
        "src/lib.rs",
        "README.md",
        "block-delete.toml",
        "samples/delete-call.json",
        "samples/tools-list-result.json",
    ] {
        assert!(project.join(file).is_file(), "{file} not scaffolded");
    }
    // A second scaffold into a folder that is not empty loses nothing.
    let (code, _, err) = portcullis(
        tmp.path(),
        &["plugin", "new", "--lang", "rust", "block-delete"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("not empty"), "{err}");

    // The commands of the project's README, as written.
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(
        readme.contains("cargo build --release --target wasm32-wasip2"),
        "{readme}"
    );
    let target = repo().join("target/scaffold-rust");
    run_ok(
        cargo(&project, &target).args(["build", "--release", "--target", "wasm32-wasip2"]),
        "cargo build (the scaffold)",
    );
    run_ok(
        cargo(&project, &target).args(["test", "--quiet"]),
        "cargo test (the scaffold)",
    );
    std::fs::copy(
        target.join("wasm32-wasip2/release/block_delete.wasm"),
        project.join("block-delete.wasm"),
    )
    .expect("the build wrote the component");

    samples_pass(&project, "block-delete");

    // Without `crate-type = ["cdylib"]` the build fails and says why, instead of writing no .wasm.
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let without: String = manifest
        .lines()
        .filter(|l| !l.starts_with("crate-type"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(project.join("Cargo.toml"), without).unwrap();
    let out = cargo(&project, &target)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .output()
        .expect("cargo build");
    assert!(!out.status.success(), "a build without cdylib must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cdylib"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The checks every scaffold's samples must pass, run from the project folder as its README
/// says (`NAME.wasm` and the sidecar `NAME.toml` beside it).
fn samples_pass(project: &Path, name: &str) {
    let wasm = format!("{name}.wasm");
    let test = |args: &[&str]| {
        let mut all = vec!["plugin", "test", wasm.as_str(), "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = portcullis(project, &all);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, v)
    };
    let (code, v) = test(&["--message", "samples/delete-call.json"]);
    assert_eq!((code, v["verdict"].as_str()), (1, Some("deny")), "{v:#}");
    assert_eq!(v["denied_by"], name);
    let (code, v) = test(&[
        "--message",
        "samples/delete-call.json",
        "--identity",
        r#"{"subject":"alice","roles":["admin"]}"#,
    ]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (0, Some("allow")),
        "an admin's call is allowed, unchanged: {v:#}"
    );
    assert_eq!(v["caller"]["subject"], "alice", "{v:#}");
    let (code, v) = test(&["--message", "samples/read-call.json"]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("allow")), "{v:#}");
    let (code, v) = test(&[
        "--message",
        "samples/tools-list.json",
        "--response",
        "samples/tools-list-result.json",
    ]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("modify")), "{v:#}");
    let names: Vec<&str> = v["response"]["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["files__read_file"], "{v:#}");
}

/// Two builds of the same input: the same bytes, or the language's page says exactly that
/// they differ (and what to pin instead), so the docs stay true either way.
fn reproducible_or_documented(first: &str, second: &str, doc: &str) {
    if first == second {
        return;
    }
    let page = std::fs::read_to_string(repo().join("docs").join(doc)).expect("the page");
    let page = page.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        page.contains("not reproducible") && page.contains("pin the SHA-256 of the component"),
        "two builds gave different components ({first} vs {second}) and docs/{doc} does not say so"
    );
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path), "sha256sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Python: the toolchain `examples/policies/build --setup` installs (target/guest-tools) stands
/// in for the project's own venv; the build runs from another folder with a relative `-o`.
#[test]
fn python_scaffold_builds_outside_the_repository() {
    let componentize = repo().join("target/guest-tools/venv/bin/componentize-py");
    if !componentize.is_file() {
        run_ok(
            Command::new(repo().join("examples/policies/build")).arg("--setup"),
            "examples/policies/build --setup",
        );
    }
    let tmp = TempDir::new();
    let (code, out, err) = portcullis(
        tmp.path(),
        &["plugin", "new", "--lang", "python", "block-delete"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let project = tmp.path().join("block-delete");
    let build = |out: &str| {
        run_ok(
            Command::new(project.join("build.sh"))
                .current_dir(tmp.path())
                .env("COMPONENTIZE_PY", &componentize)
                .args(["-o", out]),
            "build.sh",
        )
    };
    let printed = build("block-delete/block-delete.wasm");
    assert_eq!(
        printed.trim(),
        project.join("block-delete.wasm").display().to_string(),
        "the build prints the path it wrote, relative to the caller"
    );
    let first = sha256(&project.join("block-delete.wasm"));
    build("second.wasm");
    reproducible_or_documented(
        &first,
        &sha256(&tmp.path().join("second.wasm")),
        "policies-python.md",
    );
    samples_pass(&project, "block-delete");
}

/// JavaScript: the pinned componentize-js the suite installs (examples/policies/js) stands in
/// for the project's own `npm install`.
#[test]
fn javascript_scaffold_builds_outside_the_repository() {
    let modules = repo().join("examples/policies/js/node_modules");
    if !modules.join(".bin/componentize-js").is_file() {
        run_ok(
            Command::new(repo().join("examples/policies/build")).arg("--setup"),
            "examples/policies/build --setup",
        );
    }
    let tmp = TempDir::new();
    let (code, out, err) = portcullis(
        tmp.path(),
        &["plugin", "new", "--lang", "js", "block-delete"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let project = tmp.path().join("block-delete");
    std::os::unix::fs::symlink(&modules, project.join("node_modules")).unwrap();
    let build = || {
        run_ok(
            Command::new("npm")
                .current_dir(&project)
                .args(["run", "--silent", "build"]),
            "npm run build",
        )
    };
    let printed = build();
    assert!(printed.trim().ends_with("block-delete.wasm"), "{printed}");
    let first = sha256(&project.join("block-delete.wasm"));
    std::fs::rename(
        project.join("block-delete.wasm"),
        project.join("first.wasm"),
    )
    .unwrap();
    build();
    reproducible_or_documented(
        &first,
        &sha256(&project.join("block-delete.wasm")),
        "policies-javascript.md",
    );
    samples_pass(&project, "block-delete");
}

#[test]
fn go_is_not_scaffolded_and_says_where_to_start() {
    let tmp = TempDir::new();
    let (code, _, err) = portcullis(
        tmp.path(),
        &["plugin", "new", "--lang", "go", "block-delete"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("examples/policies/go/template"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn plugin_new_refuses_a_bad_name() {
    let tmp = TempDir::new();
    let (code, _, err) = portcullis(tmp.path(), &["plugin", "new", "--lang", "rust", "../evil"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid name"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

mod honest_plugin_test {
    use super::*;

    fn write(dir: &TempDir, name: &str, json: &str) -> String {
        dir.write(name, json).display().to_string()
    }

    fn run(args: &[&str]) -> (i32, String, String) {
        portcullis(Path::new("."), args)
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fs__read","arguments":{"path":"/srv/data/a"}}}"#;
    const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1,"message":"half"}}"#;
    const SAMPLING: &str = r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{"messages":[],"maxTokens":10}}"#;

    #[test]
    fn a_server_notification_runs_through_the_response_phase_and_can_be_dropped() {
        let dir = TempDir::new();
        let (call, progress) = (
            write(&dir, "call.json", CALL),
            write(&dir, "p.json", PROGRESS),
        );
        let sidecar = dir.write(
            "drop.toml",
            "[config]\nmode = \"deny\"\nphases = [\"response\"]\nmethods = [\"notifications/progress\"]\n",
        );
        let wasm = plugin_wasm("chaos");
        let (code, out, err) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--config",
            sidecar.to_str().unwrap(),
            "--message",
            &call,
            "--response",
            &progress,
            "--json",
        ]);
        assert_eq!(code, 1, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["phase"], "response");
        assert_eq!(
            v["server_message_outcome"],
            "dropped; the client never sees it"
        );
        // Alone, it is screened as outside any request (as a session screens it).
        let (code, out, _) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--config",
            sidecar.to_str().unwrap(),
            "--response",
            &progress,
        ]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("verdict:    deny"), "{out}");
    }

    #[test]
    fn a_sampling_request_is_rewritten_in_the_response_phase() {
        let dir = TempDir::new();
        let (call, sampling) = (
            write(&dir, "call.json", CALL),
            write(&dir, "s.json", SAMPLING),
        );
        let sidecar = dir.write(
            "rewrite.toml",
            "[config]\nmode = \"modify-params\"\nphases = [\"response\"]\nmethods = [\"sampling/createMessage\"]\n",
        );
        let wasm = plugin_wasm("chaos");
        let (code, out, err) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--config",
            sidecar.to_str().unwrap(),
            "--message",
            &call,
            "--response",
            &sampling,
            "--json",
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"], "modify", "{v:#}");
        assert_eq!(v["server_message"]["method"], "sampling/createMessage");
        assert_ne!(
            v["server_message"]["params"],
            serde_json::json!({"messages":[],"maxTokens":10}),
            "{v:#}"
        );
    }

    #[test]
    fn a_message_that_does_not_fit_its_phase_is_refused() {
        let dir = TempDir::new();
        let (call, sampling) = (
            write(&dir, "call.json", CALL),
            write(&dir, "s.json", SAMPLING),
        );
        let result = write(&dir, "r.json", r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let wasm = plugin_wasm("chaos");
        let wasm = wasm.to_str().unwrap();
        for (args, says) in [
            (
                vec!["--message", &sampling],
                "which an upstream sends the client",
            ),
            (vec!["--message", &result], "is a response"),
            (
                vec!["--message", &call, "--response", &call],
                "which a client sends",
            ),
            (vec!["--response", &result], "give the request it answers"),
        ] {
            let mut all = vec!["plugin", "test", wasm];
            all.extend(args);
            let (code, out, err) = run(&all);
            assert_eq!(code, 2, "{all:?}: {out}{err}");
            assert!(err.contains(says), "{all:?}: {err}");
            assert!(
                !out.contains("verdict"),
                "{all:?}: no verdict for a refused input: {out}"
            );
        }
    }

    #[test]
    fn a_phase_no_plugin_handles_is_refused_not_passed() {
        let dir = TempDir::new();
        let (call, progress) = (
            write(&dir, "call.json", CALL),
            write(&dir, "p.json", PROGRESS),
        );
        let sidecar = dir.write("pg.toml", "[config]\nallowed-prefixes = [\"/srv/data\"]\n");
        let wasm = plugin_wasm("path-guard");
        let (code, out, err) = run(&[
            "plugin",
            "test",
            wasm.to_str().unwrap(),
            "--config",
            sidecar.to_str().unwrap(),
            "--message",
            &call,
            "--response",
            &progress,
        ]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains("no plugin in the chain handles the response phase"),
            "{err}"
        );
        assert!(!out.contains("verdict"), "{out}");
    }

    #[test]
    fn an_identity_given_is_shown_apart_and_an_untouched_call_is_allow() {
        let dir = TempDir::new();
        let call = write(&dir, "call.json", CALL);
        let plugins = PluginDir::new();
        plugins.add("pass", "chaos", "[config]\nmode = \"allow\"\n");
        let (code, out, err) = run(&[
            "plugin",
            "test",
            plugins.path().to_str().unwrap(),
            "--message",
            &call,
            "--identity",
            r#"{"subject":"alice","roles":["dev"]}"#,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("verdict:    allow"), "{out}");
        assert!(out.contains("caller:     {"), "{out}");
        assert!(out.contains("(given with --identity)"), "{out}");
        assert!(!out.contains("(set by the chain)"), "{out}");
    }

    #[test]
    fn inspect_shows_the_declared_name_beside_the_file_name() {
        let dir = TempDir::new();
        let copy = dir.path().join("renamed.wasm");
        std::fs::copy(plugin_wasm("chaos"), &copy).unwrap();
        let (code, out, _) = run(&["plugin", "inspect", copy.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["name"], "chaos");
        assert_eq!(v["loaded_as"], "renamed");
        let (_, out, _) = run(&["plugin", "inspect", copy.to_str().unwrap()]);
        assert!(out.contains("rename it to chaos.wasm"), "{out}");
    }
}
