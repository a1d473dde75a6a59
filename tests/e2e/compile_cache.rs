//! The compile cache holds native code the gateway runs outside every sandbox, so it trusts
//! only artifacts it made itself: each attack on the cache below — a flipped byte, a
//! truncated file, another plugin's artifact copied under this one's name, an artifact made
//! under another gateway's key, a file rewritten while the gateway runs — is refused (or has
//! no effect), logged, and the right plugin still sits in its slot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_tests::harness::{
    Gateway, PluginDir, RawHttp, TempDir, plugin_wasm, server_toml, stdio_fixture_toml, toml_str,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(15);

/// Writes an attacker's version of an artifact.
type Plant<'a> = Box<dyn Fn(&Path) + 'a>;

/// `guard` denies `alpha__crash`; `other` is a different component (path-guard), whose
/// artifact an attacker can swap in.
fn plugins() -> PluginDir {
    let plugins = PluginDir::new();
    plugins.add(
        "guard",
        "chaos",
        "stage = \"authz\"\n[config]\nmode = \"deny\"\nmethods = [\"tools/call\"]\ntargets = [\"crash\"]\n",
    );
    plugins.add(
        "other",
        "path-guard",
        "[config]\nallowed-prefixes = [\"/\"]\n",
    );
    plugins
}

async fn start(plugins: &PluginDir, cache: &Path) -> Gateway {
    let config = format!(
        "{}{}cache = {}\n{}",
        server_toml(),
        plugins.policy_toml(),
        toml_str(&cache.to_string_lossy()),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    gateway.wait_for_log("policy chain ready", WAIT).await;
    gateway
}

/// The artifact compiled from `wasm` (its name starts with the `.wasm`'s SHA-256).
fn artifact(cache: &Path, wasm: &str) -> PathBuf {
    let bytes = std::fs::read(plugin_wasm(wasm)).expect("read plugin");
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::read_dir(cache)
        .expect("cache folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&sha) && n.ends_with(".cwasm"))
        })
        .unwrap_or_else(|| panic!("no artifact for {wasm} in {}", cache.display()))
}

/// The guard is in its slot and the rest of the chain lets calls through.
async fn assert_guarded(gateway: &Gateway, when: &str) {
    let (_, s) = RawHttp::new(gateway.url()).initialize(&[]).await;
    let call = |id: i64, name: &str| json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": name, "arguments": { "text": "hi" } } });
    let denied = s.post(&call(1, "alpha__crash")).await;
    let denied = denied.response(&json!(1)).unwrap_or(Value::Null);
    assert!(
        denied["error"].is_object(),
        "{when}: the guard is not in the chain: {denied}"
    );
    let echoed = s.post(&call(2, "alpha__echo")).await;
    let echoed = echoed.response(&json!(2)).unwrap_or(Value::Null);
    assert_eq!(
        echoed["result"]["content"][0]["text"], "hi",
        "{when}: {echoed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_artifacts_the_gateway_made_are_run() {
    let plugins = plugins();
    let dir = TempDir::new();
    let cache = dir.path().join("cache");
    let mut first = start(&plugins, &cache).await;
    assert_guarded(&first, "first start").await;
    first.stop().await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache is private");
    assert_eq!(mode(&cache.join("key")), 0o600, "the key is private");
    let guard = artifact(&cache, "chaos");
    let other = artifact(&cache, "path-guard");
    let good = std::fs::read(&guard).unwrap();

    // An artifact for the same component, made under another gateway's key.
    let foreign_cache = dir.path().join("foreign");
    start(&plugins, &foreign_cache).await.stop().await;
    let foreign = std::fs::read(artifact(&foreign_cache, "chaos")).unwrap();

    let attacks: [(&str, Plant); 4] = [
        (
            "a flipped byte",
            Box::new(|p| {
                let mut b = good.clone();
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
                std::fs::write(p, b).unwrap();
            }),
        ),
        (
            "a truncated file",
            Box::new(|p| std::fs::write(p, &good[..good.len() / 2]).unwrap()),
        ),
        (
            "another plugin's artifact",
            Box::new(|p| {
                std::fs::copy(&other, p).unwrap();
            }),
        ),
        (
            "an artifact made under another key",
            Box::new(|p| std::fs::write(p, &foreign).unwrap()),
        ),
    ];
    for (attack, plant) in attacks {
        plant(&guard);
        let mut gateway = start(&plugins, &cache).await;
        let logs = gateway.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("compile cache entry refused")
                    && l.contains(&*guard.to_string_lossy())),
            "{attack}: not refused\n{logs}"
        );
        assert!(
            logs.lines().any(|l| l.contains("plugin loaded")
                && l.contains("plugin=guard")
                && l.contains("cached=false")),
            "{attack}: the guard was not compiled again\n{logs}"
        );
        assert_guarded(&gateway, attack).await;
        gateway.stop().await;
        assert_eq!(
            std::fs::read(&guard).unwrap(),
            good,
            "{attack}: the artifact is rewritten by the gateway"
        );
    }

    // Rewriting the files under a running gateway changes nothing it runs (it read them into
    // its own memory), and a reload then compiles again instead of loading them.
    let gateway = start(&plugins, &cache).await;
    for file in [&guard, &other] {
        let len = std::fs::metadata(file).unwrap().len() as usize;
        std::fs::write(file, vec![0xcc; len]).unwrap();
    }
    assert_guarded(&gateway, "files overwritten while running").await;
    plugins.set_sidecar(
        "guard",
        "stage = \"authz\"\npriority = 1\n[config]\nmode = \"deny\"\nmethods = [\"tools/call\"]\ntargets = [\"crash\"]\n",
    );
    gateway
        .wait_for_log("compile cache entry refused", WAIT)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_guarded(&gateway, "after a reload over overwritten files").await;
}
