//! Host bindings generated from `wit/policy.wit`.

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "plugin",
    // Host functions may fail the call (a trap naming the plugin) instead of returning a
    // value, e.g. when a plugin exceeds its log budget.
    imports: { default: trappable },
    // Calls into plugins are async so a long-running plugin yields to the runtime at every
    // epoch tick instead of blocking a worker thread.
    exports: { default: async },
    with: {
        "portcullis:policy/types.message": super::host::MessageRes,
    },
});

pub use self::portcullis::policy::host as host_api;
pub use self::portcullis::policy::types;
