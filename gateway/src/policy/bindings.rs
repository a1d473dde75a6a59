//! Host bindings generated from `wit/policy.wit`.

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "plugin",
    // Host functions may fail the call (a trap naming the plugin) instead of returning a
    // value, e.g. when a plugin exceeds its log budget.
    // The key-value imports are async: a store reached over the network (Redis) is awaited,
    // never waited for on a runtime worker.
    imports: {
        "portcullis:policy/host.kv-get": async | trappable,
        "portcullis:policy/host.kv-set": async | trappable,
        "portcullis:policy/host.kv-incr": async | trappable,
        "portcullis:policy/host.kv-compare-and-swap": async | trappable,
        "portcullis:policy/host.kv-delete": async | trappable,
        default: trappable,
    },
    // Calls into plugins are async so a long-running plugin yields to the runtime at every
    // epoch tick instead of blocking a worker thread.
    exports: { default: async },
    with: {
        "portcullis:policy/types.message": super::host::MessageRes,
    },
});

pub use self::portcullis::policy::host as host_api;
pub use self::portcullis::policy::types;
