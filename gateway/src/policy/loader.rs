//! From `.wasm` bytes to a compiled [`Component`], through the compile cache.
//!
//! Compiling a component with Cranelift takes 30 ms (small Rust policy) to 6 s (a JavaScript or
//! Python engine); loading a cached compilation takes 0.1–20 ms. The cache key is the
//! SHA-256 of the `.wasm` plus the engine fingerprint (wasmtime version and every setting
//! that affects code generation), so a changed file or a different gateway build never
//! loads stale code; `cache.rs` says why a cached artifact can be trusted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::cache::CompileCache;
use super::engine::{BASELINE_MIN_SIZE, Runtime};

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
    /// True when the baseline compiler made it, for the runtime's baseline engine
    /// ([`compile_quick`]).
    pub baseline: bool,
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

/// Compiles `bytes` with Cranelift, or loads the compilation from `cache` when it holds an
/// authentic one.
pub fn compile(
    rt: &Runtime,
    bytes: &[u8],
    cache: Option<&CompileCache>,
) -> Result<Compiled, LoadError> {
    compile_tiered(rt, bytes, cache, false)
}

/// [`compile`], except that a component of at least [`BASELINE_MIN_SIZE`] the cache does
/// not hold is compiled by the runtime's baseline compiler when it has one (not cached: the
/// plugin compiles it again with [`compile`] in the background). Should the baseline compiler
/// refuse it (a WebAssembly feature it lacks), Cranelift compiles it here.
pub fn compile_quick(
    rt: &Runtime,
    bytes: &[u8],
    cache: Option<&CompileCache>,
) -> Result<Compiled, LoadError> {
    compile_tiered(rt, bytes, cache, true)
}

fn compile_tiered(
    rt: &Runtime,
    bytes: &[u8],
    cache: Option<&CompileCache>,
    quick: bool,
) -> Result<Compiled, LoadError> {
    check_header(bytes)?;
    let started = Instant::now();
    let sha256 = sha256_hex(bytes);
    let fingerprint = rt.engine_fingerprint();
    if let Some(component) = cache.and_then(|c| c.load(&rt.engine, &sha256, &fingerprint)) {
        return Ok(Compiled {
            component,
            sha256,
            size: bytes.len(),
            cached: true,
            baseline: false,
            took: started.elapsed(),
        });
    }
    if let Some(baseline) = rt.baseline.as_ref().filter(|_| quick)
        && bytes.len() >= BASELINE_MIN_SIZE
    {
        match Component::new(&baseline.engine, bytes) {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    sha256,
                    size: bytes.len(),
                    cached: false,
                    baseline: true,
                    took: started.elapsed(),
                });
            }
            Err(e) => tracing::info!(
                error = %format!("{e:#}"),
                "the baseline compiler cannot compile this plugin; Cranelift compiles it now"
            ),
        }
    }
    let component =
        Component::new(&rt.engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
    if let Some(cache) = cache {
        cache.store(&component, &sha256, &fingerprint);
    }
    Ok(Compiled {
        component,
        sha256,
        size: bytes.len(),
        cached: false,
        baseline: false,
        took: started.elapsed(),
    })
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
