//! The policy chain: sandboxed WebAssembly components (`wit/policy.wit`) that every message
//! passes through. This module is the only code in the gateway that names wasmtime types;
//! everything else talks to [`Policies`], [`Chain`], [`Call`] and [`Denial`].
//!
//! | file | job |
//! | --- | --- |
//! | `engine.rs` | the one `Engine` (pooling allocator, epochs), linker, instance bound |
//! | `loader.rs` | `.wasm` → compiled component, through the compile cache |
//! | `cache.rs` | the compile cache: private, every artifact authenticated before use |
//! | `plugin.rs` | one plugin: link, describe, validate config, evaluate in a fresh instance |
//! | `snapshot.rs` | pre-initialization: fresh instances start from the state `init` left |
//! | `host.rs` | what a plugin can reach: its message, log, key-value, an empty WASI |
//! | `http_grant.rs` | outgoing `wasi:http`, for plugins granted origins in their sidecar |
//! | `chain.rs` | plugins in order over one message; verdicts applied |
//! | `watcher.rs` | the plugins folder: initial load, hot reload, status |
//! | `trace.rs` | what each plugin made of each message, kept for `plugin test` only |
//! | `sidecar.rs`, `limits.rs`, `kv.rs` | per-plugin settings, limits, storage |

mod bindings;
mod cache;
mod chain;
mod engine;
mod host;
mod http_grant;
mod inspect;
mod kv;
mod kv_redis;
mod limits;
mod loader;
pub mod log_budget;
mod plugin;
mod sidecar;
mod snapshot;
pub mod trace;
mod watcher;

use serde::{Deserialize, Serialize};

pub use cache::CompileCache;
pub use chain::{Call, CallView, Chain, Denial, add_attributes};
pub use engine::RuntimeConfig;
pub use inspect::{Inspection, inspect};
pub use kv::{KV_TIMEOUTS, KV_UNAVAILABLE, KvError, KvStore, MemoryKv};
pub(crate) use kv_redis::lazy_connection as redis_connection;
pub use kv_redis::{RedisKv, plugin_kv};
pub use loader::{LoadError, sha256_hex};
pub use plugin::{Counters, Failure};
pub use watcher::{PluginStatus, Policies, ReloadReport, WatchGuard};

/// Where in the chain a plugin runs; the order of the variants is the order of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Authn,
    Authz,
    Custom,
    Routing,
    Redaction,
}

impl Stage {
    /// The name sidecars and the admin API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Authn => "authn",
            Stage::Authz => "authz",
            Stage::Custom => "custom",
            Stage::Routing => "routing",
            Stage::Redaction => "redaction",
        }
    }
}

impl From<bindings::types::Stage> for Stage {
    fn from(s: bindings::types::Stage) -> Self {
        use bindings::types::Stage as W;
        match s {
            W::Authn => Stage::Authn,
            W::Authz => Stage::Authz,
            W::Custom => Stage::Custom,
            W::Routing => Stage::Routing,
            W::Redaction => Stage::Redaction,
        }
    }
}

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Response,
}

/// Who is calling, as an authn policy established it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    pub subject: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
    pub attributes: Vec<(String, String)>,
}

impl Identity {
    fn to_wit(&self) -> bindings::types::Identity {
        bindings::types::Identity {
            subject: self.subject.clone(),
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
            tenant: self.tenant.clone(),
            attributes: self.attributes.clone(),
        }
    }

    fn from_wit(i: bindings::types::Identity) -> Self {
        Identity {
            subject: i.subject,
            roles: i.roles,
            scopes: i.scopes,
            tenant: i.tenant,
            attributes: i.attributes,
        }
    }
}
