//! Test harness for the end-to-end tests: run the real `portcullis` binary and fixture
//! upstreams as child processes, and talk to the gateway with rmcp clients or raw HTTP.
//!
//! - [`process`]: [`bin_path`], [`Gateway`], [`Fixture`], [`check_config`], config snippets
//!   ([`server_toml`], [`stdio_fixture_toml`], [`Fixture::upstream_toml`], [`toml_str`]).
//! - [`mcp`]: [`client`] / [`connect`] (rmcp Streamable HTTP clients) and the
//!   [`RecordingClient`] handler that records notifications and answers server requests.
//! - [`raw`]: [`RawHttp`] / [`RawSession`] for transport-level tests, [`parse_sse`].
//!
//! The binaries must be built first: `cargo build --workspace`.

pub mod balancer;
pub mod digest;
pub mod haproxy;
pub mod mcp;
pub mod node;
pub mod plugins;
pub mod process;
pub mod raw;
pub mod recording_proxy;
pub mod redis;
pub mod token_endpoint;

pub use balancer::RoundRobin;
pub use digest::{session_tag, sha256_hex};
pub use haproxy::{Haproxy, ServerState};
pub use mcp::{
    ClientEvent, ConnectOptions, McpClient, RecordingClient, call_tool, call_tool_tracked, client,
    client_with, connect, text_of,
};
pub use node::{node, node_modules};
pub use plugins::{PluginDir, plugin_wasm};
pub use process::{
    CheckOutput, FIXTURE_SIMPLE_TEXT, Fixture, Gateway, SHUTDOWN_TIMEOUT, STARTUP_TIMEOUT, TempDir,
    bin_path, check_config, server_toml, stdio_fixture_toml, strip_ansi, toml_str,
};
pub use raw::{
    RawHttp, RawResponse, RawSession, SseEvent, SseReader, initialize_request,
    jsonrpc_notification, jsonrpc_request, parse_sse,
};
pub use recording_proxy::{Forwarded, RecordingProxy};
pub use redis::RedisServer;
pub use token_endpoint::{DiscoveryAt, ExchangeRequest, TokenEndpoint};

/// Installs rustls' ring provider for this process. reqwest is built with
/// `rustls-no-provider` in this workspace (see the gateway), and building a reqwest client
/// without a provider panics. Idempotent.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
