//! From `.wasm` bytes to a compiled [`Component`], through a disk cache.
//!
//! Compiling a component with Cranelift takes 30 ms (small Rust policy) to 6 s (a JavaScript or
//! Python engine); deserializing a cached compilation takes 0.1–20 ms. The cache key is the
//! SHA-256 of the `.wasm` plus the engine fingerprint (wasmtime version and every setting
//! that affects code generation), so a changed file or a different gateway build never
//! loads stale code.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::engine::Runtime;

/// Why bytes could not become a component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("does not implement the portcullis:policy plugin world: {0}")]
    WrongWorld(String),
    #[error("describe() failed: {0}")]
    Describe(String),
    #[error("configuration rejected: {0}")]
    Config(String),
    #[error("sidecar: {0}")]
    Sidecar(String),
}

/// A compiled component and where it came from.
pub struct Compiled {
    pub component: Component,
    pub sha256: String,
    pub size: usize,
    /// True when it came from the disk cache.
    pub cached: bool,
    pub took: Duration,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks the header: a component, not a core module or something else.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(LoadError::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', ..]) => Err(LoadError::Invalid(
            "unknown WebAssembly layer or version".into(),
        )),
        _ => Err(LoadError::NotWasm),
    }
}

/// Compiles `bytes`, or loads the compilation from `cache_dir` when it is there.
pub fn compile(
    rt: &Runtime,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Compiled, LoadError> {
    check_header(bytes)?;
    let started = Instant::now();
    let sha256 = sha256_hex(bytes);
    let cache_file =
        cache_dir.map(|d| d.join(format!("{sha256}-{}.cwasm", rt.engine_fingerprint())));
    if let Some(path) = &cache_file
        && path.is_file()
    {
        // SAFETY: the file is one this gateway wrote (below) into its own cache directory,
        // keyed by the engine fingerprint, so it is a valid compilation for this engine.
        match unsafe { Component::deserialize_file(&rt.engine, path) } {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    sha256,
                    size: bytes.len(),
                    cached: true,
                    took: started.elapsed(),
                });
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unusable cache entry; recompiling")
            }
        }
    }
    let component =
        Component::new(&rt.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
    if let Some(path) = &cache_file {
        store_in_cache(&component, path);
    }
    Ok(Compiled {
        component,
        sha256,
        size: bytes.len(),
        cached: false,
        took: started.elapsed(),
    })
}

fn store_in_cache(component: &Component, path: &Path) {
    let written = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            // Write then rename, so a concurrent reader never sees half a file.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "could not write the compilation cache");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_tell_components_from_modules_and_garbage() {
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0rest").is_ok());
        assert!(matches!(
            check_header(b"hello world!"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(check_header(b"\0a"), Err(LoadError::NotWasm)));
    }
}
