//! `portcullis plugin inspect`: what a `.wasm` file is, without running it in the chain.

use std::path::Path;

use serde::Serialize;

use super::Stage;
use super::engine::{Runtime, RuntimeConfig};
use super::loader;
use super::plugin::Plugin;

/// What `plugin inspect` reports.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub file: String,
    pub size: usize,
    pub sha256: String,
    /// The component's imports and exports (WIT interface names with versions).
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Whether it exports `portcullis:policy/policy@0.1.0`, the world the gateway runs.
    pub implements_policy_world: bool,
    /// The name the gateway gives it: the file's stem.
    pub loaded_as: String,
    /// From `describe()`, when the plugin loads.
    pub name: Option<String>,
    pub version: Option<String>,
    pub stage: Option<Stage>,
    pub phases: Vec<&'static str>,
    /// Why it would not load (wrong world, rejected default config, …).
    pub error: Option<String>,
}

pub const POLICY_EXPORT: &str = "portcullis:policy/policy@0.1.0";

pub async fn inspect(path: &Path) -> anyhow::Result<Inspection> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })?;
    let mut report = Inspection {
        file: path.display().to_string(),
        size: bytes.len(),
        sha256: loader::sha256_hex(&bytes),
        imports: Vec::new(),
        exports: Vec::new(),
        implements_policy_world: false,
        loaded_as: path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_string(),
        name: None,
        version: None,
        stage: None,
        phases: Vec::new(),
        error: None,
    };
    if let Err(e) = loader::check_header(&bytes) {
        report.error = Some(e.to_string());
        return Ok(report);
    }
    // Through the compile cache, as the server loads it: a big (Python, JavaScript) component
    // is compiled once, and `Plugin::load` below finds it there.
    let compiled = {
        let rt = rt.clone();
        tokio::task::spawn_blocking(move || loader::compile(&rt, &bytes, rt.cache.as_ref())).await?
    };
    let component = match compiled {
        Ok(c) => c.component,
        Err(e) => {
            report.error = Some(e.to_string());
            return Ok(report);
        }
    };
    let ty = component.component_type();
    report.imports = ty.imports(&rt.engine).map(|(n, _)| n.to_string()).collect();
    report.exports = ty.exports(&rt.engine).map(|(n, _)| n.to_string()).collect();
    report.implements_policy_world = report.exports.iter().any(|e| e == POLICY_EXPORT);
    match Plugin::load(&rt, path).await {
        Ok(p) => {
            report.name = Some(p.declared_name.clone());
            report.version = Some(p.version.clone());
            report.stage = Some(p.stage);
            if p.request {
                report.phases.push("request");
            }
            if p.response {
                report.phases.push("response");
            }
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    Ok(report)
}
