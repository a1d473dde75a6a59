//! Builds the default policy plugins (`plugins/authn`, `plugins/authz`) as wasm32-wasip2
//! components so the binary can embed them: `portcullis serve` without `--config` runs them in
//! front of the demo upstream (see `src/demo.rs`).
//!
//! The nested `cargo build` uses the same target directory and profile as
//! `scripts/build-plugins`, so whichever runs second finds the components already built.
//! If the components cannot be built (no `wasm32-wasip2` target and no rustup to add it),
//! the gateway still builds: it embeds nothing and the demo runs without policies, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: [&str; 2] = ["authn", "authz"];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("the gateway lives in the workspace")
        .to_path_buf();
    for watched in ["plugins/authn", "plugins/authz", "sdk", "Cargo.lock"] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));

    let built = build(&root, &out);
    for name in PLUGINS {
        let dest = out.join(format!("{name}.wasm"));
        let copied = match &built {
            Ok(dir) => std::fs::copy(dir.join(format!("{name}.wasm")), &dest).map(|_| ()),
            Err(_) => Err(std::io::Error::other("not built")),
        };
        if copied.is_err() {
            // An empty file: the demo sees no embedded plugin and says so.
            std::fs::write(&dest, b"").expect("OUT_DIR is writable");
        }
    }
    if let Err(why) = built {
        println!(
            "cargo::warning=the default policy plugins were not built ({why}); `portcullis serve` without --config will run the demo without policies"
        );
    }
}

/// Runs the nested build; returns the directory holding `<crate>.wasm`.
fn build(root: &Path, out: &Path) -> Result<PathBuf, String> {
    ensure_target()?;
    let target_dir = target_dir(out);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            TARGET,
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for name in PLUGINS {
        cmd.args(["-p", name]);
    }
    // Settings meant for this build script's own compilation must not leak into the nested
    // one (clippy's wrapper would turn it into a lint run with different fingerprints).
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of the plugins failed ({status})"));
    }
    Ok(target_dir.join(TARGET).join("plugin"))
}

/// The workspace's target directory: `OUT_DIR` is `<target>/[<triple>/]<profile>/build/<pkg>/out`.
fn target_dir(out: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the documented shape");
    let parent = profile_dir
        .parent()
        .expect("OUT_DIR has the documented shape");
    // With `--target <triple>` there is one more level.
    if parent.join("CACHEDIR.TAG").exists() {
        parent.to_path_buf()
    } else {
        parent.parent().unwrap_or(parent).to_path_buf()
    }
}

/// Adds the wasm32-wasip2 target through rustup when it is missing.
fn ensure_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            let added = Command::new("rustup")
                .args(["target", "add", TARGET])
                .status()
                .map_err(|e| format!("cannot run rustup: {e}"))?;
            if added.success() {
                Ok(())
            } else {
                Err(format!("`rustup target add {TARGET}` failed"))
            }
        }
        // Without rustup the toolchain may still have the target; let cargo find out.
        Err(_) => Ok(()),
    }
}
