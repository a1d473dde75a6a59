//! End-to-end tests: the real `portcullis` binary in front of real upstreams, driven by
//! real MCP clients. One test binary; each area is a module.
//!
//! Build everything first (`cargo build --workspace`), then `cargo test -p portcullis-tests`.

mod aggregation;
mod auth;
mod cli;
mod cluster_balanced;
mod cluster_clients;
mod cluster_kv;
mod cluster_sessions;
mod cluster_streams;
mod compile_cache;
mod configmap_reload;
mod conformance;
mod conformance_diff;
mod deploy;
mod era_choice;
mod example;
mod front;
mod governance;
mod harness_selftest;
mod identity_provider;
mod languages;
mod legacy_sse;
mod limits_client;
mod limits_upstream;
mod lists;
mod observability;
mod oidc_provider;
mod plugin_authoring;
mod plugin_test;
mod policy;
mod preinit;
mod rate_limit;
mod real_servers;
mod redact;
mod relay;
mod route;
mod shared_stdio;
mod smoke;
mod stateless;
mod tasks;
mod tls;
mod token_exchange;
mod transparency;
mod upstreams;
