//! One loaded plugin: its compiled component, pre-linked, plus what its sidecar says.
//!
//! **A fresh instance per evaluation.** Every call gets a new `Store` and a new instance from
//! the plugin's `InstancePre` (imports resolved once, at load). Nothing a plugin keeps in
//! memory survives the call, so one caller's data can never leak into another caller's
//! request, and a plugin that corrupted its own state is gone after one call. With the
//! pooling allocator this costs microseconds; guests whose start-up is expensive (JavaScript
//! and Python engines) can opt into `warm` reuse in their sidecar: an instance then serves up
//! to N calls, one at a time, and is discarded on any trap or limit breach.
//!
//! **Pre-initialized.** Once loaded, a plugin is pre-initialized in the background
//! (`snapshot.rs`): its state right after `init` becomes the starting state of a component
//! of its own, and fresh instances are made from that one without running `init` again.
//! Until then, or if a plugin cannot be pre-initialized, each fresh instance runs `init`.
//!
//! **Baseline code first, for big newcomers.** A large component the compile cache does not
//! hold (a JavaScript or Python engine) is first compiled by the baseline compiler
//! (`engine.rs`), so it joins the chain within about a second; Cranelift then compiles it in
//! the background, and once that is ready new instances come from the optimised code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::Resource;
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::bindings::{Plugin as PluginWorld, PluginPre, types};
use super::engine::Runtime;
use super::host::{CappedOutput, HostState, MessageRes};
use super::http_grant::{HttpGrant, HttpState};
use super::limits::Limits;
use super::loader::{self, LoadError};
use super::sidecar::{Grants, Methods, Sidecar};
use super::snapshot;
use super::{Phase, Stage};

/// Calls after which a plugin not found pre-initialized in the compile cache is
/// pre-initialized (see [`Plugin::preinitialize_in_background`]).
pub const PREINIT_AFTER_CALLS: u64 = 64;

/// ... or sooner, once its calls before the snapshot took this long altogether: a plugin
/// whose `init` is expensive (redact builds its detectors and warms them, ~30 ms) does not
/// pay it 64 times.
pub const PREINIT_AFTER_SPENT: std::time::Duration = std::time::Duration::from_millis(100);

/// Why an evaluation failed (as opposed to the plugin denying).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    #[error("exceeded its CPU deadline of {0:?}")]
    Timeout(Duration),
    #[error("exceeded its memory limit of {0} MiB")]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {0} bytes, over its output limit of {1} bytes")]
    Output(usize, usize),
    #[error("returned an invalid verdict: {0}")]
    BadVerdict(String),
    #[error("rejected its configuration: {0}")]
    Config(String),
}

/// A plugin ready to run.
pub struct Plugin {
    /// The file's stem: what logs, metrics, sidecars and `required` call it.
    pub name: Arc<str>,
    /// The name `describe()` gave (may differ from the file's; a warning at load says so).
    pub declared_name: String,
    pub version: String,
    pub stage: Stage,
    pub priority: i32,
    /// The phases its `describe` declares.
    pub request: bool,
    pub response: bool,
    /// The messages it is called for in each phase: what it declares, narrowed by the
    /// sidecar's `[phases]`. A message it is not called for costs no instance.
    pub request_methods: Methods,
    pub response_methods: Methods,
    pub file: PathBuf,
    pub sha256: String,
    pub size: usize,
    pub limits: Limits,
    pub fail_open: bool,
    pub warm: u32,
    /// True when the compiled code came from the disk cache.
    pub cached: bool,
    /// True when it was loaded with the baseline compiler's code (see the module doc).
    pub baseline: bool,
    pub compile_time: Duration,
    config_json: String,
    exposed_headers: Arc<[String]>,
    grants: Option<Grants>,
    http: Option<Arc<HttpGrant>>,
    pre: PluginPre<HostState>,
    /// The engine `pre` was compiled for (the baseline one for a `baseline` plugin).
    engine: Engine,
    /// Cranelift's code for a plugin loaded with the baseline compiler's, once ready.
    optimized: OnceLock<PluginPre<HostState>>,
    /// The `.wasm` bytes of a `baseline` plugin, until the optimising compilation takes them.
    unoptimized: Mutex<Option<Vec<u8>>>,
    /// The component pre-initialized with this plugin's `init` (see `snapshot.rs`), once
    /// ready: fresh instances come from it and skip `init`.
    preinit: OnceLock<PluginPre<HostState>>,
    /// The `.wasm` bytes, kept from load until pre-initialization takes them (`None` for a
    /// plugin that is not to be pre-initialized).
    source: Mutex<Option<Vec<u8>>>,
    /// Microseconds its calls took before the snapshot was ready ([`PREINIT_AFTER_SPENT`]).
    spent_before_preinit_us: AtomicU64,
    /// Pre-initialization was asked for after calls (once).
    preinit_asked: AtomicBool,
    warm_pool: Mutex<Vec<WarmInstance>>,
    /// Calls, denials and failures (traps, timeouts, limit breaches) since load.
    pub counters: Counters,
}

/// What a plugin has done since it was loaded (read by the status view and the metrics).
#[derive(Debug)]
pub struct Counters {
    pub calls: AtomicU64,
    pub denials: AtomicU64,
    /// Every failure, of which these two kinds are also counted apart:
    pub failures: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    /// Seconds per evaluation, waiting for an instance slot included.
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

/// Plugin evaluations take microseconds (a fresh Rust guest) to the CPU deadline (1 s at most
/// by default): 10 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0,
];

impl Default for Counters {
    fn default() -> Self {
        Counters {
            calls: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            latency: prometheus_client::metrics::histogram::Histogram::new(
                LATENCY_BUCKETS.iter().copied(),
            ),
        }
    }
}

struct WarmInstance {
    store: Store<HostState>,
    bindings: PluginWorld,
    uses: u32,
}

impl Plugin {
    /// Loads `wasm` (with its sidecar, if any): compiles or takes it from the cache, links it,
    /// asks it to describe itself and validates its configuration in a fresh instance.
    pub async fn load(rt: &Arc<Runtime>, wasm: &Path) -> Result<Plugin, LoadError> {
        Self::load_with(rt, wasm, &wasm.with_extension("toml")).await
    }

    /// [`Plugin::load`] with the sidecar at an explicit path (`portcullis plugin test --config`).
    pub async fn load_with(
        rt: &Arc<Runtime>,
        wasm: &Path,
        sidecar: &Path,
    ) -> Result<Plugin, LoadError> {
        let sidecar = Sidecar::load(sidecar).map_err(LoadError::Sidecar)?;
        let bytes = std::fs::read(wasm).map_err(|e| LoadError::Read(wasm.to_path_buf(), e))?;
        let rt2 = rt.clone();
        // Compilation is CPU-heavy (seconds for big guests): keep it off the async workers.
        let (compiled, bytes) = tokio::task::spawn_blocking(move || {
            (
                loader::compile_quick(&rt2, &bytes, rt2.cache.as_ref()),
                bytes,
            )
        })
        .await
        .map_err(|e| LoadError::Invalid(e.to_string()))?;
        let compiled = compiled?;
        let http = HttpGrant::from_sidecar(sidecar.grants.as_ref()).map_err(LoadError::Sidecar)?;
        // A plugin granted a directory may read files in `init` that change later: it runs
        // `init` in every instance. A warm plugin runs `init` once per instance it reuses
        // N times: not worth two more compilations.
        let preinit = sidecar.preinit.unwrap_or(true)
            && sidecar.grants.is_none()
            && sidecar.warm.unwrap_or(0) == 0;
        let (engine, linker) = match (&rt.baseline, compiled.baseline) {
            (Some(b), true) => (&b.engine, &b.linker),
            _ => (&rt.engine, &rt.linker),
        };
        let instance_pre = linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre =
            PluginPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;

        let file_stem = wasm
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_string();
        let limits = Limits::default().with(&sidecar.limits, rt.config.max_memory);
        let mut headers: Vec<String> = sidecar
            .expose_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let mut plugin = Plugin {
            name: file_stem.as_str().into(),
            declared_name: String::new(),
            version: String::new(),
            stage: Stage::Custom,
            priority: sidecar.priority.unwrap_or(0),
            request: true,
            response: false,
            request_methods: Methods::All,
            response_methods: Methods::Skip,
            file: wasm.to_path_buf(),
            sha256: compiled.sha256,
            size: compiled.size,
            limits,
            fail_open: sidecar.fail_open.unwrap_or(false),
            warm: sidecar.warm.unwrap_or(0),
            cached: compiled.cached,
            baseline: compiled.baseline,
            compile_time: compiled.took,
            config_json: sidecar.config_json(),
            exposed_headers: Arc::from(Vec::new()),
            grants: sidecar.grants.clone(),
            http,
            pre,
            engine: engine.clone(),
            optimized: OnceLock::new(),
            unoptimized: Mutex::new(compiled.baseline.then(|| bytes.clone())),
            preinit: OnceLock::new(),
            source: Mutex::new(preinit.then_some(bytes)),
            spent_before_preinit_us: AtomicU64::new(0),
            preinit_asked: AtomicBool::new(false),
            warm_pool: Mutex::new(Vec::new()),
            counters: Counters::default(),
        };

        // Describe and validate in one instance, under the plugin's own limits.
        let mut store = plugin
            .new_store(rt, &plugin.engine)
            .map_err(|e| LoadError::Describe(e.to_string()))?;
        plugin.arm_deadline(&mut store);
        let bindings = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| LoadError::Describe(plugin.classify(e).to_string()))?;
        let policy = bindings.portcullis_policy_policy();
        let info = policy
            .call_describe(&mut store)
            .await
            .map_err(|e| LoadError::Describe(plugin.classify(e).to_string()))?;
        let init = policy
            .call_init(&mut store, &plugin.config_json)
            .await
            .map_err(|e| LoadError::Config(plugin.classify(e).to_string()))?;
        store.data().flush_stdio();
        init.map_err(LoadError::Config)?;

        plugin.version = info.version;
        let declared = Stage::from(info.stage);
        plugin.stage = sidecar.stage.unwrap_or(declared);
        plugin.request = info.phases.contains(&types::Phase::Request);
        plugin.response = info.phases.contains(&types::Phase::Response);
        (plugin.request_methods, plugin.response_methods) = sidecar
            .phases
            .filters(plugin.request, plugin.response, plugin.stage)
            .map_err(LoadError::Sidecar)?;
        if !info.name.is_empty() && info.name != file_stem {
            tracing::warn!(
                file = %wasm.display(), declared = %info.name, name = %file_stem,
                "plugin is named after its file, not the name it declares; rename the file to match"
            );
        }
        plugin.declared_name = info.name;
        if plugin.stage == Stage::Authn && !headers.iter().any(|h| h == "authorization") {
            headers.push("authorization".into());
        }
        plugin.exposed_headers = headers.into();
        if sidecar.enabled == Some(false) {
            return Err(LoadError::Sidecar("disabled (enabled = false)".into()));
        }
        Ok(plugin)
    }

    /// A store on `engine` (the one of the code to instantiate) with this plugin's limits.
    fn new_store(&self, rt: &Runtime, engine: &Engine) -> wasmtime::Result<Store<HostState>> {
        let (stdout, stderr) = (CappedOutput::default(), CappedOutput::default());
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        if let Some(g) = &self.grants
            && let Some(dir) = &g.dir
        {
            let perms = if g.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(dir, "/data", perms)?;
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(
            self.name.clone(),
            rt.kv.clone(),
            self.exposed_headers.clone(),
            wasi.build(),
            limits,
            stdout,
            stderr,
        );
        let mut store = Store::new(engine, state);
        store.data_mut().epoch = Some(rt.epoch_hold());
        if self.http.is_some() {
            store.data_mut().http = HttpState::new(self.name.clone(), self.http.clone());
        }
        store.limiter(|s| &mut s.limits);
        Ok(store)
    }

    /// Arms the CPU deadline for one call. The callback runs only when an epoch tick finds
    /// this plugin executing, so counting callbacks counts (about) milliseconds of CPU the
    /// plugin used — time spent waiting for a worker thread after yielding does not count.
    /// At every tick the plugin yields to the runtime; when its ticks are spent, it traps.
    fn arm_deadline(&self, store: &mut Store<HostState>) {
        let mut ticks =
            (self.limits.timeout.as_micros() / super::engine::EPOCH_TICK.as_micros()).max(1) as u64;
        store.data_mut().http.begin_call();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            ticks = ticks.saturating_sub(1);
            Ok(if ticks == 0 {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
    }

    fn classify(&self, e: wasmtime::Error) -> Failure {
        if let Some(trap) = e.downcast_ref::<Trap>() {
            return match trap {
                Trap::Interrupt => Failure::Timeout(self.limits.timeout),
                Trap::UnreachableCodeReached => {
                    Failure::Trap("unreachable executed (a panic or abort in the plugin)".into())
                }
                other => Failure::Trap(other.to_string()),
            };
        }
        let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        // The store's limiter refuses growth past the cap with these messages.
        if causes.iter().any(|c| {
            c.contains("forcing trap when growing memory") || c.contains("memory growth failure")
        }) {
            return Failure::OutOfMemory(self.limits.memory >> 20);
        }
        // The first line of each cause (backtraces follow on later lines).
        let text: Vec<&str> = causes
            .iter()
            .filter_map(|c| c.lines().next())
            .filter(|l| !l.trim().is_empty())
            .collect();
        Failure::Trap(text.join(": "))
    }

    /// Runs `evaluate` on one message. The semaphore bounds live instances: a burst waits for
    /// a free slot rather than failing.
    pub async fn evaluate(
        self: &Arc<Self>,
        rt: &Arc<Runtime>,
        msg: MessageRes,
    ) -> Result<types::Verdict, Failure> {
        let span = crate::observe::plugin_span(
            &self.name,
            &self.version,
            self.stage.as_str(),
            match msg.phase {
                types::Phase::Request => "request",
                types::Phase::Response => "response",
            },
        );
        let calls = self.counters.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if calls == PREINIT_AFTER_CALLS {
            self.ask_preinit(rt);
        }
        let started = std::time::Instant::now();
        let outcome =
            tracing::Instrument::instrument(self.evaluate_counted(rt, msg), span.clone()).await;
        let took = started.elapsed();
        self.counters.latency.observe(took.as_secs_f64());
        if !self.preinit_asked.load(Ordering::Relaxed) && self.preinit.get().is_none() {
            let us = took.as_micros() as u64;
            let spent = self
                .spent_before_preinit_us
                .fetch_add(us, Ordering::Relaxed)
                + us;
            if spent >= PREINIT_AFTER_SPENT.as_micros() as u64 {
                self.ask_preinit(rt);
            }
        }
        crate::observe::record_plugin_verdict(
            &span,
            match &outcome {
                Ok(types::Verdict::Allow) => "allow",
                Ok(types::Verdict::Modify(_)) => "modify",
                Ok(types::Verdict::Deny(_)) => "deny",
                Err(_) => "error",
            },
        );
        match &outcome {
            Ok(types::Verdict::Deny(_)) => self.counters.denials.fetch_add(1, Ordering::Relaxed),
            Err(failure) => {
                match failure {
                    Failure::Trap(_) => self.counters.traps.fetch_add(1, Ordering::Relaxed),
                    Failure::Timeout(_) => self.counters.timeouts.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                self.counters.failures.fetch_add(1, Ordering::Relaxed)
            }
            Ok(_) => 0,
        };
        outcome
    }

    async fn evaluate_counted(
        &self,
        rt: &Runtime,
        msg: MessageRes,
    ) -> Result<types::Verdict, Failure> {
        let _permit = rt
            .instances
            .acquire()
            .await
            .map_err(|_| Failure::Trap("runtime closed".into()))?;
        if self.warm > 0 {
            return self.evaluate_warm(rt, msg).await;
        }
        let (pre, needs_init, engine) = self.template(rt);
        let mut store = self.new_store(rt, engine).map_err(|e| self.classify(e))?;
        self.arm_deadline(&mut store);
        let result = async {
            let bindings = pre.instantiate_async(&mut store).await?;
            let policy = bindings.portcullis_policy_policy();
            if needs_init && let Err(e) = policy.call_init(&mut store, &self.config_json).await? {
                return Ok(Err(Failure::Config(e)));
            }
            let res: Resource<MessageRes> = store.data_mut().table.push(msg)?;
            let borrow = Resource::<MessageRes>::new_borrow(res.rep());
            Ok::<_, wasmtime::Error>(Ok(policy.call_evaluate(&mut store, borrow).await?))
        }
        .await;
        store.data().flush_stdio();
        let verdict = result.map_err(|e| self.classify(e))??;
        self.check_output(&verdict)?;
        Ok(verdict)
    }

    async fn evaluate_warm(
        &self,
        rt: &Runtime,
        msg: MessageRes,
    ) -> Result<types::Verdict, Failure> {
        let reused = self
            .warm_pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut instance = match reused {
            Some(i) => i,
            None => {
                let (pre, needs_init, engine) = self.template(rt);
                let mut store = self.new_store(rt, engine).map_err(|e| self.classify(e))?;
                self.arm_deadline(&mut store);
                let bindings = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| self.classify(e))?;
                if needs_init {
                    let init = bindings
                        .portcullis_policy_policy()
                        .call_init(&mut store, &self.config_json)
                        .await;
                    init.map_err(|e| self.classify(e))?
                        .map_err(Failure::Config)?;
                }
                WarmInstance {
                    store,
                    bindings,
                    uses: 0,
                }
            }
        };
        self.arm_deadline(&mut instance.store);
        let result = async {
            // Lend the message as a borrow and remove it after the call: an instance that is
            // reused must not accumulate one handle per call.
            let res: Resource<MessageRes> = instance.store.data_mut().table.push(msg)?;
            let borrow = Resource::<MessageRes>::new_borrow(res.rep());
            let verdict = instance
                .bindings
                .portcullis_policy_policy()
                .call_evaluate(&mut instance.store, borrow)
                .await;
            let _ = instance.store.data_mut().table.delete(res);
            verdict
        }
        .await;
        instance.store.data().flush_stdio();
        // On any failure the instance is dropped, never reused.
        let verdict = result.map_err(|e| self.classify(e))?;
        self.check_output(&verdict)?;
        instance.uses += 1;
        if instance.uses < self.warm {
            self.warm_pool
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(instance);
        }
        Ok(verdict)
    }

    /// What a new instance is made from, and the engine of its code: the pre-initialized
    /// component once it is ready (no `init` to run), else the optimised code of a plugin
    /// loaded with the baseline compiler's once ready, else the plugin as loaded (`init`
    /// runs first in both).
    fn template<'a>(&'a self, rt: &'a Runtime) -> (&'a PluginPre<HostState>, bool, &'a Engine) {
        if let Some(pre) = self.preinit.get() {
            return (pre, false, &rt.engine);
        }
        match self.optimized.get() {
            Some(pre) => (pre, true, &rt.engine),
            None => (&self.pre, true, &self.engine),
        }
    }

    /// Whether calls still run the baseline compiler's code.
    pub fn on_baseline_code(&self) -> bool {
        self.baseline && self.optimized.get().is_none() && self.preinit.get().is_none()
    }

    /// For a plugin loaded with the baseline compiler's code: compiles it with Cranelift on
    /// the background thread (keeping the result in the compile cache), then moves new
    /// instances to that code. A plugin replaced before its turn is skipped.
    pub fn optimize_in_background(self: &Arc<Self>, rt: &Arc<Runtime>) {
        let Some(wasm) = self
            .unoptimized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let (plugin, rt) = (Arc::downgrade(self), rt.clone());
        snapshot::in_background(async move {
            let Some(plugin) = plugin.upgrade() else {
                return;
            };
            let started = Instant::now();
            let linked = loader::compile(&rt, &wasm, rt.cache.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    rt.linker
                        .instantiate_pre(&c.component)
                        .map_err(|e| format!("{e:#}"))
                })
                .and_then(|pre| PluginPre::new(pre).map_err(|e| format!("{e:#}")));
            match linked {
                Ok(pre) => {
                    let _ = plugin.optimized.set(pre);
                    tracing::info!(
                        plugin = %plugin.name, took_ms = started.elapsed().as_millis() as u64,
                        "plugin optimised: new instances run Cranelift's code"
                    );
                }
                Err(e) => tracing::warn!(
                    plugin = %plugin.name, error = %e,
                    "plugin not optimised: it keeps running the baseline compiler's code (slower, same isolation)"
                ),
            }
        });
    }

    /// Whether fresh instances start from the pre-initialized component.
    pub fn preinitialized(&self) -> bool {
        self.preinit.get().is_some()
    }

    /// Pre-initializes the plugin on the background thread (`snapshot.rs`): from the compile
    /// cache when it holds this plugin with this configuration (`cached_only`: only then),
    /// else by running `init` in an instrumented copy and compiling the snapshot. Calls keep
    /// running `init` in their instances until it is ready; a plugin that cannot be
    /// pre-initialized keeps doing so (logged once).
    ///
    /// The loader asks for the cached snapshot only; the compilation waits for the plugin's
    /// [`PREINIT_AFTER_CALLS`]th call (or [`PREINIT_AFTER_SPENT`] of calls), so a plugin that serves a handful of calls (a test, a
    /// demo's first minute, a plugin replaced soon after) never pays for it, and start-up
    /// and reloads do not compile twice.
    /// Asks for pre-initialization after calls ([`PREINIT_AFTER_CALLS`] or
    /// [`PREINIT_AFTER_SPENT`], whichever comes first), once.
    fn ask_preinit(self: &Arc<Self>, rt: &Arc<Runtime>) {
        if !self.preinit_asked.swap(true, Ordering::Relaxed) {
            self.preinitialize_in_background(rt, false);
        }
    }

    pub fn preinitialize_in_background(self: &Arc<Self>, rt: &Arc<Runtime>, cached_only: bool) {
        let wasm = {
            let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
            if source.is_none() {
                return;
            }
            if cached_only { None } else { source.take() }
        };
        let (plugin, rt) = (Arc::downgrade(self), rt.clone());
        snapshot::in_background(async move {
            // Replaced or removed before its turn came: nothing to do.
            let Some(plugin) = plugin.upgrade() else {
                return;
            };
            if plugin.preinitialized() {
                return;
            }
            let started = Instant::now();
            match plugin.preinitialize(&rt, wasm).await {
                Ok(Some(cached)) => tracing::info!(
                    plugin = %plugin.name, cached, took_ms = started.elapsed().as_millis() as u64,
                    "plugin pre-initialized: fresh instances start from its state after init"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    plugin = %plugin.name, error = %e,
                    "plugin not pre-initialized: every fresh instance runs init (same isolation, more CPU per call)"
                ),
            }
        });
    }

    /// `Ok(Some(cached))` once pre-initialized; `Ok(None)`: not in the cache and no `wasm`
    /// to make it from.
    async fn preinitialize(
        &self,
        rt: &Arc<Runtime>,
        wasm: Option<Vec<u8>>,
    ) -> Result<Option<bool>, String> {
        let identity = snapshot::identity(&self.sha256, &self.config_json);
        let rt2 = rt.clone();
        let id2 = identity.clone();
        let cached = tokio::task::spawn_blocking(move || snapshot::from_cache(&rt2, &id2))
            .await
            .map_err(|e| e.to_string())?;
        let (pre, cached) = match (cached, wasm) {
            (Some(component), _) => {
                // Nothing left to make it from: let the bytes go.
                self.source.lock().unwrap_or_else(|p| p.into_inner()).take();
                (snapshot::link(rt, &component)?, true)
            }
            (None, None) => return Ok(None),
            (None, Some(wasm)) => {
                // The instrumented instance takes a pool slot like any other.
                let _permit = rt
                    .instances
                    .acquire()
                    .await
                    .map_err(|_| "runtime closed".to_string())?;
                let mut store = self.new_store(rt, &rt.engine).map_err(|e| e.to_string())?;
                self.arm_deadline(&mut store);
                let snap = snapshot::snapshot(rt, wasm, &self.config_json, store).await?;
                (snapshot::compile_and_link(rt, snap, identity).await?, false)
            }
        };
        let _ = self.preinit.set(pre);
        Ok(Some(cached))
    }

    fn check_output(&self, verdict: &types::Verdict) -> Result<(), Failure> {
        let size = match verdict {
            types::Verdict::Allow => 0,
            types::Verdict::Modify(c) => {
                c.params.as_ref().map_or(0, String::len)
                    + c.result.as_ref().map_or(0, String::len)
                    + c.attributes
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            types::Verdict::Deny(d) => {
                d.error.message.len() + d.error.data.as_ref().map_or(0, String::len)
            }
        };
        if size > self.limits.output {
            return Err(Failure::Output(size, self.limits.output));
        }
        Ok(())
    }

    /// Whether the plugin is called in this phase, for some method at least.
    pub fn handles(&self, phase: Phase) -> bool {
        self.methods(phase) != &Methods::Skip
    }

    /// The methods it is called for in `phase` (its declared phases, narrowed by the
    /// sidecar's `[phases]`).
    pub fn methods(&self, phase: Phase) -> &Methods {
        match phase {
            Phase::Request => &self.request_methods,
            Phase::Response => &self.response_methods,
        }
    }

    /// Whether the plugin is called for a message with this method in `phase`.
    pub fn calls(&self, phase: Phase, method: &str) -> bool {
        self.methods(phase).matches(method)
    }

    /// Whether it declares `phase` (whatever its sidecar narrowed).
    pub fn declares(&self, phase: Phase) -> bool {
        match phase {
            Phase::Request => self.request,
            Phase::Response => self.response,
        }
    }
}
