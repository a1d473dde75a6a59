//! The embedded demo's default plugins folder: the `authn` and `authz` components (built from
//! `plugins/` by `build.rs` and embedded in the binary) with the sidecars from
//! `plugins/default/`. `portcullis serve` without `--config` writes them to a fresh folder
//! and runs the gateway on it, so a newcomer sees the policy chain at work from the first
//! command: anonymous callers get the `guest` role, [`ADMIN_KEY`] the `admin` role.

use std::path::{Path, PathBuf};

/// The demo's admin API key. Public by design: it is printed at start-up and its hash is in
/// `plugins/default/authn.toml`.
pub const ADMIN_KEY: &str = "pk_demo_admin_do_not_use_in_production";

/// `(file name, contents)` of the default plugins folder.
const FILES: [(&str, &[u8]); 4] = [
    (
        "authn.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/authn.wasm")),
    ),
    (
        "authn.toml",
        include_bytes!("../../plugins/default/authn.toml"),
    ),
    (
        "authz.wasm",
        include_bytes!(concat!(env!("OUT_DIR"), "/authz.wasm")),
    ),
    (
        "authz.toml",
        include_bytes!("../../plugins/default/authz.toml"),
    ),
];

/// A default plugins folder written for this process; removed when dropped.
pub struct DemoPlugins {
    dir: PathBuf,
}

impl DemoPlugins {
    /// Writes the folder under the system's temporary directory. `None` when this binary was
    /// built without the components (no `wasm32-wasip2` target at build time).
    pub fn write() -> std::io::Result<Option<DemoPlugins>> {
        if FILES.iter().any(|(_, bytes)| bytes.is_empty()) {
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let plugins = DemoPlugins { dir };
        for (name, bytes) in FILES {
            std::fs::write(plugins.dir.join(name), bytes)?;
        }
        Ok(Some(plugins))
    }

    /// The folder, for `[policy] plugins`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for DemoPlugins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
