//! The plugins folder: every `*.wasm` in it is a plugin, `<name>.toml` beside it its sidecar.
//!
//! [`Policies`] holds the live [`Chain`] behind an atomic pointer. A reload compiles and
//! validates changed plugins off the request path, then swaps the whole chain at once:
//! requests already running finish on the chain they started with, new ones get the new
//! chain, and none waits. A plugin whose new version fails to load keeps its last good
//! version in the chain (and the failure is logged and shown in [`Policies::status`]).
//! The watcher debounces file events, so a file being copied in is loaded once, complete.
//! A Kubernetes ConfigMap volume works too: kubelet swaps a `..data` symlink instead of
//! touching the files, and that swap counts as a change.
//!
//! **Required plugins.** Operators name the plugins (or stages) the chain must hold
//! (`[policy] required`); after every reload [`Policies::missing`] lists those the chain
//! lacks, and the front refuses MCP traffic while it is not empty: removing `authz.wasm`
//! from the folder stops the gateway serving, it does not turn authorization off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use serde::Serialize;

use super::chain::Chain;
use super::engine::{Runtime, RuntimeConfig};
use super::plugin::Plugin;
use super::{KvStore, Stage};

/// How long file events must settle before a reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// One plugin file, as the status view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub file: String,
    pub name: String,
    pub version: String,
    pub stage: Option<Stage>,
    pub priority: i32,
    pub sha256: String,
    /// `active`, `rejected` (never loaded), `stale` (new version rejected, last good serving),
    /// or `disabled`.
    pub state: &'static str,
    pub error: Option<String>,
    pub calls: u64,
    pub denials: u64,
    pub failures: u64,
    /// Fresh instances start from the plugin's state after `init` (see `snapshot.rs`).
    pub preinitialized: bool,
}

/// The outcome of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub at: SystemTime,
    pub took_ms: u128,
    pub active: usize,
    pub loaded: Vec<String>,
    pub errors: Vec<String>,
}

struct Entry {
    /// Hash of the .wasm and sidecar contents this entry was loaded from.
    key: String,
    plugin: Option<Arc<Plugin>>,
    status: PluginStatus,
}

pub struct Policies {
    runtime: Arc<Runtime>,
    dir: Option<PathBuf>,
    current: ArcSwap<Chain>,
    entries: tokio::sync::Mutex<BTreeMap<PathBuf, Entry>>,
    last: Mutex<Option<ReloadReport>>,
    /// Plugin files with no version loaded, as of the last reload (for readiness probes,
    /// which must not wait for a reload in progress).
    rejected: std::sync::atomic::AtomicUsize,
    /// Reloads done, and of those, reloads that rejected a plugin (for the metrics).
    reloads: [std::sync::atomic::AtomicU64; 2],
    /// The plugin files as the last reload found them (see [`FolderState`]).
    seen: Mutex<FolderState>,
    /// `[policy] required`: plugin names or stage names the chain must hold.
    required: Vec<String>,
    /// Those of `required` the current chain lacks (read on every request: an atomic load).
    missing: ArcSwap<Vec<String>>,
}

/// The plugin files of a folder as `stat` sees them: name, size, modification time, inode.
/// Reading a file changes none of these, so the events the gateway's own reads cause (inotify
/// reports every open) are told apart from changes.
type FolderState = Vec<(PathBuf, u64, Option<SystemTime>, u64)>;

fn folder_state(dir: &Path) -> FolderState {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut state: FolderState = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_plugin_file(p))
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?;
            Some((p, m.len(), m.modified().ok(), m.ino()))
        })
        .collect();
    state.sort();
    state
}

impl Policies {
    /// The policy runtime with the plugins of `dir` loaded (none without a folder).
    pub async fn open(
        dir: Option<&Path>,
        config: RuntimeConfig,
        required: Vec<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let runtime = Runtime::new(config)?;
        let policies = Arc::new(Policies {
            runtime,
            dir: dir.map(Path::to_path_buf),
            current: ArcSwap::from_pointee(Chain::empty()),
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            last: Mutex::new(None),
            rejected: Default::default(),
            reloads: Default::default(),
            seen: Mutex::new(Vec::new()),
            missing: Default::default(),
            required,
        });
        if let Some(dir) = dir {
            anyhow::ensure!(
                dir.is_dir(),
                "plugins folder {} does not exist",
                dir.display()
            );
            policies.reload().await;
        } else {
            // No folder, no plugins: every required one is missing.
            policies.missing.store(Arc::new(policies.required.clone()));
        }
        Ok(policies)
    }

    /// A runtime whose chain is exactly one plugin, with an explicit sidecar: what
    /// `portcullis plugin test` runs a single `.wasm` with.
    pub async fn single(
        wasm: &Path,
        sidecar: &Path,
        config: RuntimeConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let runtime = Runtime::new(config)?;
        let plugin = Plugin::load_with(&runtime, wasm, sidecar)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
        let chain = Chain::new(runtime.clone(), vec![Arc::new(plugin)]);
        Ok(Arc::new(Policies {
            runtime,
            dir: None,
            current: ArcSwap::from_pointee(chain),
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
            last: Mutex::new(None),
            rejected: Default::default(),
            reloads: Default::default(),
            seen: Mutex::new(Vec::new()),
            required: Vec::new(),
            missing: Default::default(),
        }))
    }

    /// The chain new requests use.
    pub fn chain(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    pub fn kv(&self) -> Arc<dyn KvStore> {
        self.runtime.kv.clone()
    }

    /// Every plugin file: loaded or not, why, and what it has done.
    pub async fn status(&self) -> Vec<PluginStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let entries = self.entries.lock().await;
        entries
            .values()
            .map(|e| {
                let mut s = e.status.clone();
                if let Some(p) = &e.plugin {
                    s.calls = p.counters.calls.load(Relaxed);
                    s.denials = p.counters.denials.load(Relaxed);
                    s.failures = p.counters.failures.load(Relaxed);
                    s.preinitialized = p.preinitialized();
                }
                s
            })
            .collect()
    }

    /// How many plugin files have no version serving (`rejected`): the chain is not what
    /// the folder asks for. Never waits for a reload in progress.
    pub fn rejected(&self) -> usize {
        self.rejected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Required plugins (`[policy] required`) the current chain lacks: while any is missing
    /// the gateway must not serve MCP traffic. Never waits for a reload in progress.
    pub fn missing(&self) -> Arc<Vec<String>> {
        self.missing.load_full()
    }

    /// What keeps this policy set from serving as configured, one line each: plugin files
    /// that did not load (with the reason) and required plugins the chain lacks. `serve`
    /// and `check` refuse to start on any of them (unless `[policy] on-error = "skip"`
    /// lets the first kind through).
    pub async fn problems(&self) -> (Vec<String>, Vec<String>) {
        let entries = self.entries.lock().await;
        let rejected = entries
            .values()
            .filter(|e| e.status.state == "rejected")
            .map(|e| {
                format!(
                    "{}: {}",
                    e.status.file,
                    e.status.error.as_deref().unwrap_or("not loaded")
                )
            })
            .collect();
        let missing = self
            .missing()
            .iter()
            .map(|r| format!("required plugin or stage {r:?} is not in the chain"))
            .collect();
        (rejected, missing)
    }

    /// Reloads since start, and how many of them rejected a plugin.
    pub fn reloads(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.reloads[0].load(Relaxed), self.reloads[1].load(Relaxed))
    }

    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rescans the folder, loads what changed, and swaps in the new chain.
    pub async fn reload(&self) -> ReloadReport {
        let started = Instant::now();
        let mut entries = self.entries.lock().await;
        let mut report = ReloadReport {
            at: SystemTime::now(),
            took_ms: 0,
            active: 0,
            loaded: Vec::new(),
            errors: Vec::new(),
        };
        if let Some(dir) = &self.dir {
            // Before reading: a change made while the files are read is seen next time.
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = folder_state(dir);
        }
        let files = self.dir.as_deref().map(scan).unwrap_or_default();
        entries.retain(|path, e| {
            let keep = files.contains(path);
            if !keep {
                tracing::info!(plugin = %e.status.name, "plugin removed");
            }
            keep
        });
        let changed: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|file| {
                let key = content_key(&file);
                (file, key)
            })
            .filter(|(file, key)| entries.get(file).is_none_or(|e| &e.key != key))
            .collect();
        // Compiling is most of a load and runs on blocking threads: load as many plugins at
        // once as there are cores (the demo's authn and authz compile side by side), and
        // take the results in file order.
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
        let loads: Vec<_> = changed
            .iter()
            .map(|(file, _)| {
                let (runtime, file) = (self.runtime.clone(), file.clone());
                async move { Plugin::load(&runtime, &file).await }
            })
            .collect();
        let loaded: Vec<_> = futures_util::stream::iter(loads)
            .buffered(parallel)
            .collect()
            .await;
        for ((file, key), outcome) in changed.into_iter().zip(loaded) {
            let name = file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("?")
                .to_string();
            match outcome {
                Ok(plugin) => {
                    tracing::info!(
                        plugin = %plugin.name, version = %plugin.version, stage = ?plugin.stage,
                        sha256 = %&plugin.sha256[..12], cached = plugin.cached,
                        baseline = plugin.baseline, compile_ms = plugin.compile_time.as_millis() as u64,
                        request = %plugin.methods(super::Phase::Request).describe(),
                        response = %plugin.methods(super::Phase::Response).describe(), "plugin loaded"
                    );
                    report.loaded.push(name.clone());
                    let status = PluginStatus {
                        file: file.display().to_string(),
                        name: plugin.name.to_string(),
                        version: plugin.version.clone(),
                        stage: Some(plugin.stage),
                        priority: plugin.priority,
                        sha256: plugin.sha256.clone(),
                        state: "active",
                        error: None,
                        calls: 0,
                        denials: 0,
                        failures: 0,
                        preinitialized: false,
                    };
                    let plugin = Arc::new(plugin);
                    plugin.optimize_in_background(&self.runtime);
                    plugin.preinitialize_in_background(&self.runtime, true);
                    entries.insert(
                        file,
                        Entry {
                            key,
                            plugin: Some(plugin),
                            status,
                        },
                    );
                }
                Err(e) => {
                    let disabled = e.to_string().contains("enabled = false");
                    let error = e.to_string();
                    let entry = entries.entry(file.clone()).or_insert_with(|| Entry {
                        key: String::new(),
                        plugin: None,
                        status: PluginStatus {
                            file: file.display().to_string(),
                            name: name.clone(),
                            version: String::new(),
                            stage: None,
                            priority: 0,
                            sha256: String::new(),
                            state: "rejected",
                            error: None,
                            calls: 0,
                            denials: 0,
                            failures: 0,
                            preinitialized: false,
                        },
                    });
                    entry.key = key;
                    if disabled {
                        entry.plugin = None;
                        entry.status.state = "disabled";
                        entry.status.error = None;
                        tracing::info!(plugin = %name, "plugin disabled by its sidecar");
                        continue;
                    }
                    entry.status.state = if entry.plugin.is_some() {
                        "stale"
                    } else {
                        "rejected"
                    };
                    entry.status.error = Some(error.clone());
                    if entry.plugin.is_some() {
                        tracing::error!(plugin = %name, error = %error, "new plugin version rejected; the last good version keeps serving");
                    } else {
                        tracing::error!(plugin = %name, error = %error, "plugin rejected");
                    }
                    report.errors.push(format!("{name}: {error}"));
                }
            }
        }
        let plugins: Vec<Arc<Plugin>> = entries.values().filter_map(|e| e.plugin.clone()).collect();
        report.active = plugins.len();
        let rejected = entries.values().filter(|e| e.status.state == "rejected");
        self.rejected
            .store(rejected.count(), std::sync::atomic::Ordering::Relaxed);
        let missing: Vec<String> = self
            .required
            .iter()
            .filter(|r| {
                !plugins
                    .iter()
                    .any(|p| &*p.name == r.as_str() || p.stage.as_str() == r.as_str())
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            tracing::error!(
                missing = %missing.join(", "),
                "required plugins are not in the chain: the MCP endpoint refuses traffic until they load"
            );
        } else if !self.missing.load().is_empty() {
            tracing::info!("every required plugin is in the chain again: serving");
        }
        self.missing.store(Arc::new(missing));
        self.current
            .store(Arc::new(Chain::new(self.runtime.clone(), plugins)));
        report.took_ms = started.elapsed().as_millis();
        self.reloads[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !report.errors.is_empty() {
            self.reloads[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::info!(
            active = report.active,
            errors = report.errors.len(),
            took_ms = report.took_ms as u64,
            "policy chain ready"
        );
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    /// Watches the folder and reloads on every settled change, until the returned guard is
    /// dropped.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Option<WatchGuard>> {
        use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode};
        let Some(dir) = self.dir.clone() else {
            return Ok(None);
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut debouncer = new_debouncer(
            DEBOUNCE,
            move |events: notify_debouncer_mini::DebounceEventResult| {
                if let Ok(events) = events
                    && events.iter().any(|e| is_plugin_event(&e.path))
                {
                    let _ = tx.send(());
                }
            },
        )?;
        debouncer
            .watcher()
            .watch(&dir, RecursiveMode::NonRecursive)?;
        let policies = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let Some(p) = policies.upgrade() else { return };
                let unchanged =
                    *p.seen.lock().unwrap_or_else(|p| p.into_inner()) == folder_state(&dir);
                if unchanged {
                    // Only opened (by this gateway's reload, or another one sharing the
                    // folder): reloading would read them again, and so on forever.
                    continue;
                }
                p.reload().await;
            }
        });
        Ok(Some(WatchGuard {
            _debouncer: Box::new(debouncer),
            task,
        }))
    }
}

/// Keeps the folder watched; dropping it stops watching.
pub struct WatchGuard {
    _debouncer: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether an event at `path` may change the chain: a plugin file or sidecar, or the `..data`
/// symlink of a Kubernetes ConfigMap, Secret or projected volume. kubelet publishes a new
/// version of such a volume by writing a hidden timestamped directory and renaming a
/// `..data` symlink over the old one; the files a Pod sees are symlinks through `..data`, so
/// a changed key moves `..data` and nothing else (docs/deploy.md, "Plugins from a ConfigMap").
fn is_plugin_event(path: &Path) -> bool {
    is_plugin_file(path) || path.file_name().is_some_and(|n| n == "..data")
}

fn is_plugin_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("wasm" | "toml")
    )
}

/// The `.wasm` files directly in `dir`, sorted.
fn scan(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("wasm") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Identifies what a plugin was loaded from: its bytes and its sidecar's.
fn content_key(wasm: &Path) -> String {
    let bytes = std::fs::read(wasm).unwrap_or_default();
    let sidecar = std::fs::read(wasm.with_extension("toml")).unwrap_or_default();
    format!(
        "{}:{}",
        super::loader::sha256_hex(&bytes),
        super::loader::sha256_hex(&sidecar)
    )
}
