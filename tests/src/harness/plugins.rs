//! Plugin folders for policy tests: copies of the test plugins built by
//! `scripts/build-plugins` (into `target/plugins/`), each with its own sidecar.

use std::path::{Path, PathBuf};

use super::process::{TempDir, bin_path};

/// A built plugin, `target/plugins/<name>.wasm`.
///
/// # Panics
///
/// If it was not built: run `scripts/build-plugins` (the test script does).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let profile_dir = bin_path("portcullis")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = profile_dir
        .parent()
        .unwrap_or(&profile_dir)
        .join("plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} not found: run scripts/build-plugins first",
        path.display()
    );
    path
}

/// A plugins folder (a temporary directory) that tests fill and change while a gateway
/// watches it.
#[derive(Debug)]
pub struct PluginDir {
    dir: TempDir,
}

impl PluginDir {
    pub fn new() -> Self {
        PluginDir {
            dir: TempDir::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Installs built plugin `wasm` as `<name>.wasm` with `sidecar` as `<name>.toml`. The
    /// sidecar goes first, so a watching gateway sees a complete plugin.
    pub fn add(&self, name: &str, wasm: &str, sidecar: &str) -> &Self {
        self.dir.write(&format!("{name}.toml"), sidecar);
        self.write_wasm(
            name,
            &std::fs::read(plugin_wasm(wasm)).expect("read plugin"),
        );
        self
    }

    /// Writes `<name>.wasm` with these exact bytes (e.g. garbage), atomically.
    pub fn write_wasm(&self, name: &str, bytes: &[u8]) {
        let tmp = self.path().join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes).expect("write plugin");
        std::fs::rename(&tmp, self.path().join(format!("{name}.wasm"))).expect("rename plugin");
    }

    pub fn set_sidecar(&self, name: &str, sidecar: &str) {
        self.dir.write(&format!("{name}.toml"), sidecar);
    }

    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path().join(format!("{name}.wasm")));
        let _ = std::fs::remove_file(self.path().join(format!("{name}.toml")));
    }

    /// The `[policy]` section pointing a gateway at this folder.
    pub fn policy_toml(&self) -> String {
        format!(
            "[policy]\nplugins = {}\n\n",
            super::process::toml_str(&self.path().to_string_lossy())
        )
    }
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}
