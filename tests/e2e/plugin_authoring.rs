//! A policy author outside the repository: `portcullis plugin new` scaffolds a project in each
//! language that builds against the SDK *package* from `sdk/` — the Rust crate as `cargo
//! package` packs it, the Python, JavaScript and Go packages installed from their local path
//! as an author installs them — and passes `portcullis plugin test` on its own samples; and
//! `plugin test` is honest about phases (server messages go through the response phase; a
//! message that does not fit the phase, or a phase no plugin handles, is refused; "allow"
//! means allowed).
//!
//! The toolchains are shared by the tests of a run and downloaded into places under
//! `target/guest-tools/` (pip's and npm's caches, the Go toolchain), never into the checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::harness::{PluginDir, TempDir, bin_path, plugin_wasm};
use serde_json::Value;

/// The policy every scaffold test writes.
const NAME: &str = "block-delete";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

/// Where the tests' toolchains and download caches live (shared by the tests of a run).
fn guest_tools() -> PathBuf {
    repo().join("target/guest-tools")
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

/// A command as an author's shell runs it: nothing from this workspace's build leaks in
/// (cargo's and the test harness's variables), downloads go to the caches under target/.
fn author_command(program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env("PIP_CACHE_DIR", guest_tools().join("pip-cache"))
        .env("npm_config_cache", guest_tools().join("npm-cache"))
        .env("PORTCULLIS_POLICY_TOOLS", guest_tools());
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A cargo for the author's project, with a warm target directory under ours (dependencies
/// build once per machine).
fn cargo(dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = author_command(
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
        dir,
    );
    cmd.env("CARGO_TARGET_DIR", target_dir);
    cmd
}

/// A scaffolded project in a temporary folder outside the repository.
struct Project {
    tmp: TempDir,
    dir: PathBuf,
}

impl Project {
    /// `portcullis plugin new --lang LANG block-delete EXTRA…`, run in a fresh temporary
    /// folder; checks the files every language gets plus `own`, and that a second scaffold
    /// into the same folder is refused and loses nothing.
    fn scaffold(lang: &str, extra: &[&str], own: &[&str]) -> Project {
        let tmp = TempDir::new();
        assert!(
            !tmp.path().starts_with(repo()),
            "the temporary folder must be outside the repository"
        );
        let mut args = vec!["plugin", "new", "--lang", lang, NAME];
        args.extend_from_slice(extra);
        let (code, out, err) = portcullis(tmp.path(), &args);
        assert_eq!(code, 0, "{out}{err}");
        let dir = tmp.path().join(NAME);
        let sidecar = format!("{NAME}.toml");
        for file in [
            "README.md",
            sidecar.as_str(),
            "samples/delete-call.json",
            "samples/read-call.json",
            "samples/tools-list.json",
            "samples/tools-list-result.json",
        ]
        .iter()
        .chain(own)
        {
            assert!(dir.join(file).is_file(), "{lang}: {file} not scaffolded");
        }
        let before = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let (code, _, err) = portcullis(tmp.path(), &["plugin", "new", "--lang", lang, NAME]);
        assert_eq!(code, 2);
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("README.md")).unwrap(),
            before
        );
        Project { tmp, dir }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The README says `command` (so the test runs what an author reads).
    fn readme_says(&self, command: &str) {
        let readme = self.file("README.md");
        assert!(
            readme.contains(command),
            "README lacks `{command}`:\n{readme}"
        );
    }

    /// Runs a build command and checks it wrote the file it printed, at `expected`.
    fn build(&self, cmd: &mut Command, expected: &Path, what: &str) -> String {
        let printed = run_ok(cmd, what);
        assert_eq!(
            printed.lines().last().unwrap_or_default().trim(),
            expected.display().to_string(),
            "{what} prints the path it wrote (relative to the caller):\n{printed}"
        );
        assert!(expected.is_file(), "{what} wrote no {}", expected.display());
        sha256(expected)
    }

    /// Builds twice — the README's command in the project, then `again` from the parent
    /// folder with a relative output path — and checks the two components are the same
    /// bytes, or (Python, JavaScript) that the language's page says exactly that they are
    /// not and what to pin instead. Then the samples pass.
    fn build_twice_and_test(&self, first: &mut Command, again: &mut Command, doc: Option<&str>) {
        let wasm = self.dir.join(format!("{NAME}.wasm"));
        let one = self.build(first, &wasm, "the README's build");
        let two = self.build(
            again,
            &self.tmp.path().join("second.wasm"),
            "a second build",
        );
        if one != two {
            let doc = doc.unwrap_or_else(|| panic!("two builds differ: {one} vs {two}"));
            let page = std::fs::read_to_string(repo().join("docs").join(doc)).expect("the page");
            let page = page.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                page.contains("not reproducible")
                    && page.contains("pin the SHA-256 of the component"),
                "two builds gave different components ({one} vs {two}) and docs/{doc} does not say so"
            );
        }
        samples_pass(&self.dir, NAME);
    }
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path), "sha256sum");
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
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
    let unpacked = TempDir::new();
    let sdk = packaged_sdk(unpacked.path());
    let p = Project::scaffold(
        "rust",
        &["--sdk-path", sdk.to_str().unwrap()],
        &["Cargo.toml", "build.rs", "src/lib.rs"],
    );
    p.readme_says("cargo build --release --target wasm32-wasip2");
    let target = repo().join("target/scaffold-rust");
    run_ok(
        cargo(&p.dir, &target).args(["build", "--release", "--target", "wasm32-wasip2"]),
        "cargo build (the scaffold)",
    );
    run_ok(
        cargo(&p.dir, &target).args(["test", "--quiet"]),
        "cargo test (the scaffold)",
    );
    std::fs::copy(
        target.join("wasm32-wasip2/release/block_delete.wasm"),
        p.dir.join(format!("{NAME}.wasm")),
    )
    .expect("the build wrote the component");
    samples_pass(&p.dir, NAME);

    // Without `crate-type = ["cdylib"]` the build fails and says why, instead of writing no .wasm.
    let without: String = p
        .file("Cargo.toml")
        .lines()
        .filter(|l| !l.starts_with("crate-type"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(p.dir.join("Cargo.toml"), without).unwrap();
    let out = cargo(&p.dir, &target)
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

/// Python: the project installs `portcullis-policy` from sdk/python by path into its own
/// venv (pip's cache under target/), then builds with the package's command.
#[test]
fn python_scaffold_builds_outside_the_repository() {
    let p = Project::scaffold("python", &[], &["policy.py", "requirements.txt"]);
    let requirements = p.file("requirements.txt");
    assert!(
        requirements.contains(&format!(
            "portcullis-policy @ file://{}",
            repo().join("sdk/python").display()
        )),
        "the SDK package comes from sdk/python by path:\n{requirements}"
    );
    p.readme_says(".venv/bin/pip install -r requirements.txt");
    p.readme_says(&format!(".venv/bin/portcullis-policy build -o {NAME}.wasm"));
    run_ok(
        author_command("python3", &p.dir).args(["-m", "venv", ".venv"]),
        "python3 -m venv",
    );
    run_ok(
        author_command(p.dir.join(".venv/bin/pip"), &p.dir).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            "requirements.txt",
        ]),
        "pip install -r requirements.txt",
    );
    let tool = p.dir.join(".venv/bin/portcullis-policy");
    p.build_twice_and_test(
        author_command(&tool, &p.dir).args(["build", "-o", &format!("{NAME}.wasm")]),
        author_command(&tool, p.tmp.path()).args(["build", NAME, "-o", "second.wasm"]),
        Some("policies-python.md"),
    );
}

/// JavaScript: `npm install` copies `portcullis-policy` from sdk/js (a `file:` dependency,
/// installed as a copy by the project's .npmrc) with the componentize-js it pins.
#[test]
fn javascript_scaffold_builds_outside_the_repository() {
    let p = Project::scaffold("js", &[], &["policy.js", "package.json", ".npmrc"]);
    let manifest: Value = serde_json::from_str(&p.file("package.json")).unwrap();
    assert_eq!(
        manifest["devDependencies"]["portcullis-policy"],
        format!("file:{}", repo().join("sdk/js").display()),
        "the SDK package comes from sdk/js by path"
    );
    p.readme_says("npm install");
    p.readme_says("npm run build");
    run_ok(
        author_command("npm", &p.dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]),
        "npm install",
    );
    let installed = p.dir.join("node_modules/portcullis-policy");
    assert!(
        !installed.symlink_metadata().unwrap().is_symlink()
            && installed.join("wit/policy.wit").is_file(),
        "the package is installed as a copy, with its WIT"
    );
    p.build_twice_and_test(
        author_command("npm", &p.dir).args(["run", "--silent", "build"]),
        author_command(
            p.dir.join("node_modules/.bin/portcullis-policy"),
            p.tmp.path(),
        )
        .args(["build", NAME, "-o", "second.wasm"]),
        Some("policies-javascript.md"),
    );
}

/// Go: the project's go.mod points the module `portcullis.dev/policy` at sdk/go; its build.sh
/// runs that module's build, which installs the pinned toolchain (under target/ here) on
/// first use. Go builds are reproducible: two builds are the same bytes.
#[test]
fn go_scaffold_builds_outside_the_repository() {
    let p = Project::scaffold("go", &[], &["policy.go", "go.mod", "build.sh"]);
    let go_mod = p.file("go.mod");
    assert!(
        go_mod.contains(&format!(
            "replace portcullis.dev/policy => {}",
            repo().join("sdk/go").display()
        )),
        "the Go SDK comes from sdk/go by path:\n{go_mod}"
    );
    p.readme_says(&format!("./build.sh -o {NAME}.wasm"));
    p.build_twice_and_test(
        author_command(p.dir.join("build.sh"), &p.dir).args(["-o", &format!("{NAME}.wasm")]),
        author_command(p.dir.join("build.sh"), p.tmp.path()).args(["-o", "second.wasm"]),
        None,
    );
}

#[test]
fn the_sdk_packages_carry_the_contract_the_gateway_uses() {
    let contract = std::fs::read_to_string(repo().join("sdk/wit/policy.wit")).unwrap();
    for copy in [
        "sdk/python/portcullis_policy/wit/policy.wit",
        "sdk/js/wit/policy.wit",
        "sdk/go/wit/policy.wit",
    ] {
        assert!(
            std::fs::read_to_string(repo().join(copy)).unwrap() == contract,
            "{copy} differs from sdk/wit/policy.wit: copy it over (each package ships the contract)"
        );
    }
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
