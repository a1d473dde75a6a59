//! Plugin hot reload from a Kubernetes ConfigMap (or projected) volume.
//!
//! kubelet never edits the files a Pod sees. It writes every version of the volume into a new
//! hidden directory (`..2026_12_07_04_00_00.123456789/`), points the `..data` symlink at it with
//! one atomic rename, and shows each key as a symlink `name -> ..data/name`. A changed key
//! therefore produces no event on `name` at all: only `..data` moves. This module lays a
//! plugins folder out exactly that way, runs the real gateway on it, and swaps versions the
//! way kubelet does (docs/deploy.md, "Plugins from a ConfigMap").

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_tests::harness::{
    Gateway, RawHttp, RawSession, TempDir, plugin_wasm, server_toml, stdio_fixture_toml, toml_str,
};
use serde_json::{Value, json};

/// How long a swap may take to show: the watcher debounces, then compiles.
const WAIT: Duration = Duration::from_secs(20);

/// The error code the test's denying plugins answer with.
const DENIED: i64 = -32077;

/// A plugins folder kept the way kubelet's atomic writer keeps a ConfigMap volume.
struct KubeletVolume {
    root: TempDir,
    version: u32,
    /// The keys of the current version (the user-visible symlinks).
    keys: Vec<String>,
}

impl KubeletVolume {
    fn new() -> Self {
        KubeletVolume {
            root: TempDir::new(),
            version: 0,
            keys: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// Publishes a new version holding exactly `files` (key, contents), in kubelet's order:
    /// write the new timestamped directory, point `..data_tmp` at it, rename it over `..data`,
    /// add symlinks for new keys, remove symlinks of keys that went away, delete the old
    /// directory.
    fn publish(&mut self, files: &[(&str, Vec<u8>)]) {
        self.version += 1;
        let dir_name = format!("..2026_12_07_04_00_00.{:09}", self.version);
        let dir = self.path().join(&dir_name);
        std::fs::create_dir(&dir).expect("create the version directory");
        for (key, bytes) in files {
            std::fs::write(dir.join(key), bytes).expect("write a key");
        }
        let old = std::fs::read_link(self.path().join("..data")).ok();
        let tmp = self.path().join("..data_tmp");
        symlink(&dir_name, &tmp).expect("create ..data_tmp");
        std::fs::rename(&tmp, self.path().join("..data")).expect("swap ..data");
        let new_keys: Vec<String> = files.iter().map(|(k, _)| k.to_string()).collect();
        for key in &new_keys {
            if !self.keys.contains(key) {
                symlink(format!("..data/{key}"), self.path().join(key)).expect("link a key");
            }
        }
        for key in &self.keys {
            if !new_keys.contains(key) {
                std::fs::remove_file(self.path().join(key)).expect("unlink a key");
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.path().join(old)).expect("remove the old version");
        }
        self.keys = new_keys;
    }
}

fn chaos() -> Vec<u8> {
    std::fs::read(plugin_wasm("chaos")).expect("read chaos.wasm")
}

/// A sidecar that denies `tools/call` of targets containing `target`.
fn deny(target: &str) -> Vec<u8> {
    format!(
        "[config]\nmode = \"deny\"\nmethods = [\"tools/call\"]\ntargets = [\"{target}\"]\ncode = {DENIED}\nmessage = \"closed by the ConfigMap\"\n"
    )
    .into_bytes()
}

fn allow() -> Vec<u8> {
    b"[config]\nmode = \"allow\"\n".to_vec()
}

async fn call(session: &RawSession, id: i64, tool: &str) -> Value {
    let args = if tool.ends_with("echo") {
        json!({ "text": "hi" })
    } else {
        json!({})
    };
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": args } });
    let resp = session.post(&body).await;
    resp.response(&json!(id))
        .unwrap_or_else(|| panic!("no response: {} {}", resp.status, resp.body))
}

fn denied(v: &Value) -> bool {
    v["error"]["code"] == DENIED
}

/// Calls `tool` until `want(answer)` holds, failing after [`WAIT`].
async fn until(
    session: &RawSession,
    gateway: &Gateway,
    tool: &str,
    what: &str,
    want: fn(&Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut id = 0;
    loop {
        id += 1;
        let answer = call(session, id, tool).await;
        if want(&answer) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {tool} still answers {answer}\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_swap_reloads_the_chain() {
    let mut volume = KubeletVolume::new();
    volume.publish(&[("gate.wasm", chaos()), ("gate.toml", allow())]);
    let config = format!(
        "{}[policy]\nplugins = {}\n\n{}",
        server_toml(),
        toml_str(&volume.path().to_string_lossy()),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let (_, s) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let answer = call(&s, 1, "alpha__echo").await;
    assert!(!denied(&answer), "the first version allows: {answer}");

    // A changed key: only `..data` moves, `gate.toml` (a symlink) is untouched.
    volume.publish(&[("gate.wasm", chaos()), ("gate.toml", deny("echo"))]);
    until(&s, &gateway, "alpha__echo", "a changed sidecar", denied).await;

    // A new key: a second plugin joins the chain; the first is allowing again.
    volume.publish(&[
        ("gate.wasm", chaos()),
        ("gate.toml", allow()),
        ("extra.wasm", chaos()),
        ("extra.toml", deny("whoami")),
    ]);
    until(&s, &gateway, "alpha__whoami", "a new plugin", denied).await;
    until(
        &s,
        &gateway,
        "alpha__echo",
        "the first plugin changed back",
        |v| !denied(v),
    )
    .await;

    // A removed key: the plugin leaves the chain.
    volume.publish(&[("gate.wasm", chaos()), ("gate.toml", allow())]);
    until(&s, &gateway, "alpha__whoami", "a removed plugin", |v| {
        !denied(v)
    })
    .await;

    // The hidden version directories are not plugins, and the old ones are gone.
    let entries: Vec<PathBuf> = std::fs::read_dir(volume.path())
        .expect("read the volume")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(entries.len(), 4, "{entries:?}");
    let logs = gateway.logs();
    assert!(!logs.contains("rejected"), "{logs}");
}
