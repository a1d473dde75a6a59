//! Pre-initialization: a plugin's state right after `init`, baked into the component.
//!
//! A fresh instance per call is the isolation the chain promises (nothing a call leaves in a
//! plugin's memory reaches the next call), but a fresh instance must then run `init` again —
//! parse its configuration, build its rule tables, compile its regexes — on every call, and
//! for the shipped plugins that was most of the cost of a call. So once a plugin has loaded,
//! the gateway runs `init` one more time, in an instrumented copy of the component, captures
//! every core instance's linear memory and mutable globals (wasmtime's Wizer,
//! `wasmtime-wizer`), and writes them into a new component as its initial state. Each call
//! then instantiates *that* component and goes straight to `evaluate`: a fresh instance,
//! exactly the state `init` left, nothing from any earlier call. The pooling allocator maps
//! the captured memory copy-on-write and resets only the pages a call dirtied.
//!
//! This happens off the request path, after the plugin has joined the chain; until it is
//! ready (and for a plugin that cannot be pre-initialized) calls run `init` in their fresh
//! instance as before, with the same isolation. The pre-initialized component is compiled
//! once and kept in the compile cache under the identity of what it was made from (the
//! `.wasm`'s SHA-256 and the configuration `init` received), so a restart with the same
//! plugin and sidecar loads it in milliseconds without running `init` or Cranelift again.
//!
//! What is frozen into the snapshot: whatever `init` read from WASI's clocks and random
//! source (e.g. the hash keys of a Rust `HashMap` built in `init`) is the same in every
//! instance made from it. Plugins granted a directory are not pre-initialized (what `init`
//! reads there may change), and a sidecar may opt out with `preinit = false`.

use std::future::Future;

use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::bindings::{Plugin as PluginWorld, PluginPre};
use super::engine::Runtime;
use super::host::HostState;

/// Bumped when the way a snapshot is made changes: old cache entries are then not used.
const VERSION: &str = "portcullis preinit v1";

/// What the compile cache keeps a pre-initialized component under: the `.wasm` it was made
/// from and the configuration its `init` ran with.
pub fn identity(wasm_sha256: &str, config_json: &str) -> String {
    let mut bytes = Vec::with_capacity(VERSION.len() + wasm_sha256.len() + config_json.len() + 2);
    bytes.extend_from_slice(VERSION.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(wasm_sha256.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(config_json.as_bytes());
    super::loader::sha256_hex(&bytes)
}

/// Takes the pre-initialized component from the compile cache, if it holds one.
pub fn from_cache(rt: &Runtime, identity: &str) -> Option<Component> {
    let cache = rt.cache.as_ref()?;
    cache.load(&rt.engine, identity, &rt.engine_fingerprint())
}

/// Runs `init(config_json)` once in an instrumented copy of `wasm` (in `store`, which carries
/// the plugin's limits) and returns the component rewritten to start from the state it left.
/// Compilation runs on blocking threads.
pub async fn snapshot(
    rt: &Runtime,
    wasm: Vec<u8>,
    config_json: &str,
    mut store: Store<HostState>,
) -> Result<Vec<u8>, String> {
    let wizer = Wizer::new();
    {
        let (cx, instrumented) = wizer
            .instrument_component(&wasm)
            .map_err(|e| format!("cannot be pre-initialized: {e:#}"))?;
        let engine = rt.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &instrumented))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("instrumented copy does not compile: {e:#}"))?;
        let instance = rt
            .linker
            .instantiate_async(&mut store, &component)
            .await
            .map_err(|e| format!("instrumented copy does not instantiate: {e:#}"))?;
        let bindings = PluginWorld::new(&mut store, &instance).map_err(|e| format!("{e:#}"))?;
        bindings
            .portcullis_policy_policy()
            .call_init(&mut store, &config_json.to_owned())
            .await
            .map_err(|e| format!("init trapped: {e:#}"))?
            .map_err(|e| format!("init rejected the configuration: {e}"))?;
        store.data().flush_stdio();
        let mut state = Access {
            store: &mut store,
            instance,
            error: None,
        };
        let rewritten = wizer
            .snapshot_component(&cx, &mut state)
            .await
            .map_err(|e| format!("snapshot failed: {e:#}"))?;
        match state.error {
            Some(e) => Err(format!("snapshot failed: {e}")),
            None => Ok(rewritten),
        }
    }
}

/// Compiles a snapshot, keeps it in the compile cache under `identity` and links it.
pub async fn compile_and_link(
    rt: &std::sync::Arc<Runtime>,
    snapshot: Vec<u8>,
    identity: String,
) -> Result<PluginPre<HostState>, String> {
    let rt2 = rt.clone();
    let component = tokio::task::spawn_blocking(move || {
        let component = Component::new(&rt2.engine, &snapshot)
            .map_err(|e| format!("pre-initialized copy does not compile: {e:#}"))?;
        if let Some(cache) = &rt2.cache {
            cache.store(&component, &identity, &rt2.engine_fingerprint());
        }
        Ok::<_, String>(component)
    })
    .await
    .map_err(|e| e.to_string())??;
    link(rt, &component)
}

/// Links a pre-initialized component with the gateway's host imports.
pub fn link(rt: &Runtime, component: &Component) -> Result<PluginPre<HostState>, String> {
    let pre = rt
        .linker
        .instantiate_pre(component)
        .map_err(|e| format!("{e:#}"))?;
    PluginPre::new(pre).map_err(|e| format!("{e:#}"))
}

/// Wizer reads the instrumented instance's memories and globals through exported functions;
/// this calls them. A failure is kept (the trait's methods cannot return one) and fails the
/// snapshot afterwards.
struct Access<'a> {
    store: &'a mut Store<HostState>,
    instance: Instance,
    error: Option<String>,
}

impl Access<'_> {
    async fn call<R, R2: Default>(
        &mut self,
        instance: &str,
        func: &str,
        use_ret: impl FnOnce(&Store<HostState>, R) -> R2,
    ) -> R2
    where
        R: Lift + Send + Sync + 'static,
    {
        if self.error.is_some() {
            return R2::default();
        }
        let found = self
            .instance
            .get_export_index(&mut *self.store, None, instance)
            .and_then(|i| {
                self.instance
                    .get_export_index(&mut *self.store, Some(&i), func)
            })
            .and_then(|f| {
                self.instance
                    .get_typed_func::<(), (R,)>(&mut *self.store, f)
                    .ok()
            });
        let Some(f) = found else {
            self.error = Some(format!("no accessor {instance}#{func}"));
            return R2::default();
        };
        match f.call_async(&mut *self.store, ()).await {
            Ok((ret,)) => use_ret(&*self.store, ret),
            Err(e) => {
                self.error = Some(format!("{instance}#{func}: {e:#}"));
                R2::default()
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let mut contents = Some(contents);
        self.call(instance, func, |store, list: WasmList<u8>| {
            if let Some(f) = contents.take() {
                f(list.as_le_slice(store));
            }
        })
        .await;
        // On a failure the snapshot is thrown away; wizer still wants the callback.
        if let Some(f) = contents.take() {
            f(&[]);
        }
    }

    fn call_func_ret_s32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i32> + Send {
        self.call(instance, func, |_, r: i32| r)
    }

    fn call_func_ret_s64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i64> + Send {
        self.call(instance, func, |_, r: i64| r)
    }

    fn call_func_ret_f32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u32> + Send {
        self.call(instance, func, |_, r: f32| r.to_bits())
    }

    fn call_func_ret_f64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u64> + Send {
        self.call(instance, func, |_, r: f64| r.to_bits())
    }
}

/// Work queued for the pre-initialization thread.
type Job = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `job` on the gateway's one pre-initialization thread, one job at a time, so plugins
/// loading together do not all compile at once beside the request path. A plain thread
/// with its own single-threaded runtime: a command that exits (`check`) does not wait for
/// it, and an interrupted job leaves nothing behind (cache entries are renamed into place).
pub fn in_background(job: impl Future<Output = ()> + Send + 'static) {
    static QUEUE: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no pre-initialization thread: plugins run init in every instance");
                return None;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("portcullis-preinit".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    runtime.block_on(job);
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "no pre-initialization thread: plugins run init in every instance");
                None
            }
        }
    });
    if let Some(queue) = queue {
        let _ = queue.send(Box::pin(job));
    }
}
