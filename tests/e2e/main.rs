//! End-to-end tests: the real `portcullis` binary in front of real upstreams, driven by
//! real MCP clients. One test binary; each area is a module.
//!
//! Build everything first (`cargo build --workspace`), then `cargo test -p portcullis-tests`.

mod aggregation;
mod auth;
mod cli;
mod compile_cache;
mod configmap_reload;
mod conformance;
mod deploy;
mod front;
mod governance;
mod harness_selftest;
mod languages;
mod legacy_sse;
mod limits_client;
mod limits_upstream;
mod modern;
mod observability;
mod policy;
mod rate_limit;
mod redact;
mod relay;
mod route;
mod smoke;
mod transparency;
mod upstreams;
