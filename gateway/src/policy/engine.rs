//! The one wasmtime `Engine`, its linker, the epoch ticker and the instance bound.
//!
//! Performance defaults, and why:
//! - **Pooling allocator**: instance memories and tables come from pre-reserved slots, so a
//!   fresh instance costs a few microseconds instead of mmap/munmap per call (it halved
//!   instantiation time when measured here). Slots are sized by `max-instances` and the
//!   largest per-plugin memory cap.
//! - **Epoch interruption**, ticking every [`EPOCH_TICK`]: compiled code checks a counter at
//!   loop heads and calls, far cheaper than fuel. At each tick a running plugin yields to the
//!   tokio runtime (it never holds a worker thread for long) and, once past its deadline, traps.
//!   The ticker thread ticks only while a plugin store exists ([`EpochHold`], held by every
//!   store from its creation): a gateway without policies, or between calls, does not wake
//!   every millisecond. No wasm runs outside a store, so no code runs without its deadline.
//! - **Async calls**: required for that yielding; the key-value host imports are async too
//!   (a Redis round trip is awaited, not waited for), the others stay synchronous.
//! - **A semaphore of `max-instances` permits**: a burst of requests waits for an instance
//!   slot (backpressure) instead of failing when the pool is exhausted.
//! - **A baseline compiler for newcomers**: Cranelift needs ~0.75 s (release) for the demo's
//!   authn and authz and seconds for a JavaScript or Python engine (12–18 MB). In `serve`, a
//!   component of at least [`BASELINE_MIN_SIZE`] that is not in the compile cache is first
//!   compiled by wasmtime's single-pass compiler, Winch (a second [`Baseline`] engine), so a
//!   cold start and a policy dropped into the folder are enforced sooner; Cranelift compiles
//!   it in the background and calls move to that code once ready (`plugin.rs`). Same sandbox
//!   either way: the same limits, deadline and imports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin as PluginWorld;
use super::cache::CompileCache;
use super::host::HostState;
use super::kv::{KvStore, MemoryKv};

/// How often the epoch advances: the granularity of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Components at least this large, not in the compile cache, are compiled by the baseline
/// compiler first. Below it Cranelift takes tens of milliseconds (a 190 KB Rust policy), not
/// worth a second compilation; the demo's built-in authn (550 KB) and authz (280 KB) are above
/// it, so a first start serves on Winch's code instead of waiting ~0.75 s (release) for
/// Cranelift's (docs/BENCHMARKS.md, "Start-up").
pub const BASELINE_MIN_SIZE: usize = 256 << 10;

/// Knobs of the policy runtime, from `[policy]` in the gateway config.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most plugin instances alive at once (pool slots and semaphore permits).
    pub max_instances: u32,
    /// Largest linear memory any plugin may be granted, in bytes (pool slot size).
    pub max_memory: usize,
    /// The compile cache's directory (see `cache.rs`); `None` compiles every time.
    pub cache: Option<PathBuf>,
    /// The plugins' key-value store; `None`: an in-process one (`[cluster] redis` sets it).
    pub kv: Option<Arc<dyn KvStore>>,
    /// Compile big new components with the baseline compiler first (see the module doc).
    /// Only `serve` sets it: one-shot commands (`check`, `plugin test`) would exit before
    /// the optimised code they are waiting for is ready anyway.
    pub baseline: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_instances: 256,
            max_memory: 64 << 20,
            cache: crate::config::default_cache_dir(),
            kv: None,
            baseline: false,
        }
    }
}

pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    /// The baseline compiler's engine, when `config.baseline`.
    pub baseline: Option<Baseline>,
    pub kv: Arc<dyn KvStore>,
    pub instances: Semaphore,
    /// Where compilations are kept between runs, when the configured directory is usable.
    pub cache: Option<CompileCache>,
    pub config: RuntimeConfig,
    ticker: EpochTicker,
}

impl Runtime {
    /// Keeps the epoch ticking for as long as it lives: every plugin store holds one.
    pub fn epoch_hold(&self) -> EpochHold {
        self.ticker.hold()
    }

    pub fn new(config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(config.max_instances)
            // Rust, Go and C guests use a handful of core instances and one memory; JS and
            // Python engines a few more.
            .total_core_instances(config.max_instances * 4)
            .max_core_instances_per_component(16)
            .total_memories(config.max_instances * 2)
            .max_memories_per_component(4)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory)
            // JS/Python engines bring large component instances.
            .max_component_instance_size(1 << 20)
            .max_unused_warm_slots(config.max_instances.min(64))
            // Reset a freed slot by rewriting only the pages the last instance dirtied (found
            // with Linux's PAGEMAP_SCAN), keeping them resident: no madvise, no TLB shootdown
            // on every core, no page faults on the next instantiation. Without PAGEMAP_SCAN
            // (kernels before 6.7) wasmtime falls back to madvise beyond what it memsets.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10)
            // Same for the fiber stacks async calls run on.
            .async_stack_keep_resident(256 << 10)
            // Return what is not kept to the kernel in batches: fewer syscalls and IPIs.
            .decommit_batch_size(32);
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&cfg)?;
        let linker = plugin_linker(&engine)?;
        let baseline = if config.baseline {
            Some(Baseline::new()?)
        } else {
            None
        };
        let mut ticked = vec![engine.clone()];
        ticked.extend(baseline.as_ref().map(|b| b.engine.clone()));
        let ticker = EpochTicker::start(ticked)?;
        // A cache that cannot be used only costs compile time: say so and go on without it.
        let cache = config
            .cache
            .as_deref()
            .and_then(|dir| match CompileCache::open(dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::error!(error = %e, "compile cache not used; plugins are compiled at every start");
                    None
                }
            });
        Ok(Arc::new(Runtime {
            engine,
            linker,
            baseline,
            kv: config
                .kv
                .clone()
                .unwrap_or_else(|| Arc::new(MemoryKv::default())),
            instances: Semaphore::new(config.max_instances as usize),
            cache,
            config,
            ticker,
        }))
    }

    /// What a compiled component was built for; part of the disk cache key.
    pub fn engine_fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("wasmtime48-{:016x}", h.finish())
    }
}

/// The imports every plugin may use, on `engine`.
fn plugin_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    PluginWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    // Every plugin may import wasi:http; requests go out only to origins its sidecar
    // grants (`http_grant.rs`), so without a grant every request is refused.
    super::http_grant::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// wasmtime's baseline compiler (Winch): compiles about ten times faster than Cranelift, to
/// code that runs a few times slower. Used only until Cranelift's code for the same
/// component is ready. Instances come from the on-demand allocator (a baseline plugin lives
/// seconds, not worth a second reserved pool); the store limits and the shared instance
/// semaphore bound them as any other.
pub struct Baseline {
    pub engine: Engine,
    pub linker: Linker<HostState>,
}

impl Baseline {
    fn new() -> anyhow::Result<Baseline> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .strategy(wasmtime::Strategy::Winch)
            // Winch compiles the functions, but wasmtime still has Cranelift compile a
            // trampoline for every function the component exports or puts in a table (about
            // 8,000 in an 18 MB Python policy): as much work as Winch's own. They only move
            // arguments between calling conventions, and Cranelift's code replaces them within
            // seconds, so they are not worth optimising: ~10 % less CPU for that policy.
            .cranelift_opt_level(wasmtime::OptLevel::None);
        let engine = Engine::new(&cfg)?;
        let linker = plugin_linker(&engine)?;
        Ok(Baseline { engine, linker })
    }
}

/// A thread that advances the engines' epoch every [`EPOCH_TICK`] while an [`EpochHold`]
/// exists, and sleeps (parked) while none does; it ends when dropped.
struct EpochTicker {
    shared: Arc<TickerShared>,
}

struct TickerShared {
    /// Live holds: plugin stores.
    holds: AtomicUsize,
    stop: AtomicBool,
    /// The ticker thread, to wake when the first hold appears (unset if it could not start).
    thread: OnceLock<std::thread::Thread>,
}

/// Keeps the epoch ticking while it lives (see [`Runtime::epoch_hold`]).
pub struct EpochHold {
    shared: Arc<TickerShared>,
}

impl EpochTicker {
    fn start(engines: Vec<Engine>) -> anyhow::Result<Self> {
        let shared = Arc::new(TickerShared {
            holds: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name("portcullis-epoch".into())
            .spawn(move || {
                while !state.stop.load(Ordering::Acquire) {
                    if state.holds.load(Ordering::Acquire) == 0 {
                        // Woken by the first hold (or the stop); a wake-up that came before
                        // the park makes it return at once.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            })
            // Without the ticker no deadline would ever fire: refuse to run plugins at all.
            .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker thread: {e}"))?;
        let _ = shared.thread.set(handle.thread().clone());
        Ok(EpochTicker { shared })
    }

    fn hold(&self) -> EpochHold {
        if self.shared.holds.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(t) = self.shared.thread.get()
        {
            t.unpark();
        }
        EpochHold {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EpochHold {
    fn drop(&mut self) {
        self.shared.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.shared.thread.get() {
            t.unpark();
        }
    }
}
