//! The configuration model: `portcullis.toml`.
//!
//! Keys are kebab-case; an unknown key is an error (a typo must not silently fall back to a
//! default). Every field has a default except the upstreams themselves. `${NAME}` in
//! upstream commands, arguments, environment, URLs, headers and tokens is replaced by the
//! environment variable `NAME` at load time (`$$` is a literal `$`); a missing variable is an
//! error naming the field.

mod audit;
mod bounds;
mod cluster;
mod env;
mod load;
mod observe;
mod tls;
mod upstream_auth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use audit::{AuditConfig, Secret};
pub use cluster::{ClusterConfig, RedisUrl};
pub use load::{ConfigError, embedded_default, load, parse};
pub use observe::{AdminConfig, LogConfig, LogFormat, TracingConfig};
pub use tls::{ClientAuth, TlsConfig};
pub use upstream_auth::{
    AuthKind, ClientAuthMethod, DEFAULT_DISCOVERY_TTL, MAX_TOKEN_BYTES, UpstreamAuth,
    secure_endpoint,
};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The client-facing HTTP endpoint.
    #[serde(default)]
    pub server: ServerConfig,
    /// How names from several upstreams are kept apart.
    #[serde(default)]
    pub namespacing: Namespacing,
    /// The WebAssembly policy chain.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// OAuth protected-resource metadata (RFC 9728), for clients that discover how to get a
    /// token. Absent: not served.
    pub oauth: Option<OAuthConfig>,
    /// The gateway's own log lines.
    #[serde(default)]
    pub log: LogConfig,
    /// OpenTelemetry traces (off unless `otlp-endpoint` is set).
    #[serde(default)]
    pub tracing: TracingConfig,
    /// The admin API and health probes on a listener of their own. Absent: none.
    pub admin: Option<AdminConfig>,
    /// The tamper-evident audit trail (off unless `enabled`).
    #[serde(default)]
    pub audit: AuditConfig,
    /// What replicas share (`cluster.rs`): the Redis behind the plugins' key-value store.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The upstream MCP servers, by name. Names become prefixes, so they may contain only
    /// ASCII letters, digits and `-`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

/// `[server]`: where and how the gateway listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Path of the MCP endpoint. Default `/mcp`.
    pub path: String,
    /// Accepted `Host` header names (without port). Default: the loopback names
    /// (`localhost`, `127.0.0.1`, `[::1]`), which is what DNS-rebinding protection needs for a
    /// gateway on loopback. Behind a proxy or on a public address, list the names clients use;
    /// `["*"]` turns the check off.
    pub allowed_hosts: Option<Vec<String>>,
    /// Accepted `Origin` header values (e.g. `https://app.example.com`). Requests without an
    /// `Origin` header (non-browser clients) are always accepted. Default: origins whose host
    /// is a loopback name; `["*"]` turns the check off.
    pub allowed_origins: Option<Vec<String>>,
    /// Largest accepted request body. Default 4 MiB; larger bodies get HTTP 413.
    pub max_body_bytes: usize,
    /// A connection that sends no request head for this long is closed: this bounds both a
    /// slow request head and an idle keep-alive connection. Default 60s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time a client has to send a whole request body once its head arrived; slower uploads
    /// get HTTP 408. Default 30s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A client session with no traffic for this long is ended and its upstream sessions
    /// closed. Default 30m.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests. Default 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Items per page of merged `*/list` results; 0 returns everything in one page. Default 0.
    pub list_page_size: usize,
    /// Most client sessions held at once; `initialize` beyond it gets HTTP 503. Default 10000.
    pub max_sessions: usize,
    /// Serve the legacy HTTP+SSE transport (MCP 2024-11-05) for older clients, beside the
    /// Streamable HTTP endpoint. Default true.
    pub legacy_sse: bool,
    /// Path of the legacy SSE stream (`GET`). Default `/sse`.
    pub legacy_sse_path: String,
    /// Path legacy clients POST their messages to (`?sessionId=…` is added). Default `/message`.
    pub legacy_message_path: String,
    /// Largest `clientInfo` and largest `capabilities` an `initialize` (or a 2026-07-28
    /// request's `_meta`) may carry, each measured as JSON. Both are kept for the session's
    /// life and sent to every upstream; larger ones get JSON-RPC `-32602`. Default 4096.
    pub max_client_info_bytes: usize,
    /// Bytes an SSE stream may hold for a client that does not read them (and bytes kept
    /// for its `Last-Event-ID` replay); a consumer that falls further behind is cut off:
    /// its stream is closed and the memory returned. Default 4096 (4 MiB).
    pub max_stream_buffer_kib: usize,
    /// Most sessions one caller may hold at once (the authenticated subject, or the client
    /// address without authn); `initialize` beyond it gets HTTP 429. Default 64.
    pub max_sessions_per_caller: usize,
    /// `[server.tls]`: HTTPS (and optionally mutual TLS). Absent: plain HTTP/1.1.
    pub tls: Option<TlsConfig>,
    /// Threads that serve client connections (`crate::workers`): a connection, its requests
    /// and the plugins' wasm for them stay on one. Absent: one per CPU available to the
    /// process (a container's CPU quota included).
    pub worker_threads: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            path: "/mcp".into(),
            allowed_hosts: None,
            allowed_origins: None,
            max_body_bytes: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            session_idle_timeout: Duration::from_secs(1800),
            shutdown_grace: Duration::from_secs(30),
            list_page_size: 0,
            max_sessions: 10_000,
            legacy_sse: true,
            legacy_sse_path: "/sse".into(),
            legacy_message_path: "/message".into(),
            // clientInfo is a name, a title, a version, a URL or two: 4 KiB is room to spare,
            // and 10,000 sessions' worth stays under 100 MB.
            max_client_info_bytes: 4096,
            // Room for a burst of large messages (two 2 MB results back to back) toward a
            // reader that keeps up but whose socket buffers are still small; a reader that
            // stopped costs at most this.
            max_stream_buffer_kib: 4096,
            // One agent needs one or two; 64 covers a team behind one NAT address.
            max_sessions_per_caller: 64,
            tls: None,
            worker_threads: None,
        }
    }
}

/// `[policy]`: where the policy plugins live and how many may run at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PolicyConfig {
    /// Folder of plugins: every `*.wasm` in it is a plugin, `<name>.toml` beside it its
    /// sidecar. Relative to the configuration file. Default: none (no policies).
    pub plugins: Option<PathBuf>,
    /// Where compiled plugins are cached (keyed by content hash and engine version), so a
    /// restart does not compile them again. The directory holds native code the gateway
    /// runs, so it must be private to the gateway's user: it is created `0700`, every
    /// artifact in it is authenticated (HMAC under a key kept there, `0600`) before use, and
    /// a directory or key owned by another user or open to others is not used (compiling
    /// at every start instead, with an error in the log). Never put it inside the plugins
    /// folder. Default: `$XDG_CACHE_HOME/portcullis/plugins`, else
    /// `~/.cache/portcullis/plugins`; without either variable, no cache.
    pub cache: Option<PathBuf>,
    /// A plugin that cannot load at start-up (bad `.wasm`, bad sidecar, configuration its
    /// `init` rejects): `refuse` (default) makes `serve` and `check` fail naming the file and
    /// the reason, so a broken policy never means no policy; `skip` starts without it (and
    /// `/readyz` says 503 until it loads). On hot reload a broken new version never replaces
    /// the last good one, whatever this says.
    pub on_error: OnError,
    /// Plugins the chain must hold, by plugin name or by stage (`authn`, `authz`, `custom`,
    /// `routing`, `redaction`): `serve` and `check` refuse to start without each, and while
    /// one is missing (removed from the folder, disabled by its sidecar) the MCP endpoint
    /// answers 503 with a JSON-RPC error instead of serving without it. Default: none.
    pub required: Vec<String>,
    /// Reload when files in the folder change. Default true.
    pub watch: bool,
    /// Most plugin instances running at once; more requests wait for a slot. Default 256.
    pub max_instances: u32,
    /// Largest memory any plugin may be granted, MiB (the pool's slot size). Default 64.
    pub max_memory_mib: u32,
    /// Log lines (host `log` calls and stdout/stderr lines) each plugin may write per second,
    /// across all its calls; the excess is dropped and counted, with one summary line per
    /// second saying how many. Default 20.
    pub plugin_log_lines_per_second: u32,
    /// Lines a quiet plugin may write at once before the rate applies. Default 100.
    pub plugin_log_burst: u32,
    /// Longest plugin log line, bytes; longer ones are cut. Default 4096.
    pub plugin_log_line_bytes: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            plugins: None,
            cache: None,
            on_error: OnError::Refuse,
            required: Vec::new(),
            watch: true,
            max_instances: 256,
            max_memory_mib: 64,
            // A plugin logging on every call at 1,000 calls/s would write ~3.5 MB/s; 20 lines/s
            // is plenty for a plugin reporting what it decided, and the burst lets one call
            // write its whole story.
            plugin_log_lines_per_second: 20,
            plugin_log_burst: 100,
            plugin_log_line_bytes: 4096,
        }
    }
}

/// `[policy] on-error`: what a plugin that cannot load at start-up does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Refuse to start (fail closed).
    Refuse,
    /// Start without the plugin.
    Skip,
}

impl PolicyConfig {
    /// The compile cache's directory: `cache`, else the per-user default.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache.clone().or_else(default_cache_dir)
    }
}

/// The compile cache's default location: `$XDG_CACHE_HOME/portcullis/plugins`, else
/// `$HOME/.cache/portcullis/plugins`. `None` when neither variable is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("portcullis").join("plugins"))
}

/// `[oauth]`: the gateway as an OAuth 2.0 protected resource (RFC 9728). Clients that get a
/// 401 read `resource_metadata` from `WWW-Authenticate` (set by the authn plugin), fetch this
/// document, and learn which authorization server issues tokens for this gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OAuthConfig {
    /// How clients reach the gateway, e.g. `https://mcp.example.com` behind a TLS-terminating
    /// proxy. The resource URI is this plus `server.path`.
    pub public_url: String,
    /// Authorization servers that issue tokens for this resource (their issuer URLs).
    pub authorization_servers: Vec<String>,
    /// Scopes clients may ask for.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// A human-readable name for consent screens.
    pub resource_name: Option<String>,
    /// A page documenting this gateway for developers.
    pub resource_documentation: Option<String>,
}

/// `[namespacing]`: how tool and prompt names (and resource URIs) are made unique.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Namespacing {
    /// Between the upstream name and the item name. Default `__` (`github__create_issue`).
    pub separator: String,
    /// When to prefix. Default `always`.
    pub prefix: PrefixMode,
}

impl Default for Namespacing {
    fn default() -> Self {
        Namespacing {
            separator: "__".into(),
            prefix: PrefixMode::Always,
        }
    }
}

/// When names get the upstream prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefixMode {
    /// Every name is `<upstream><separator><name>`; resource URIs become `<upstream>+<uri>`.
    Always,
    /// Only names that more than one upstream exposes are prefixed.
    WhenNeeded,
    /// Names pass unchanged; two upstreams exposing the same name is an error at start-up.
    Never,
}

/// `[upstreams.<name>]`: one upstream MCP server, either a child process (`command`) or an
/// HTTP server (`url`: Streamable HTTP, or the legacy HTTP+SSE transport).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamConfig {
    /// Program to run for a stdio upstream.
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment for the child (it inherits nothing else but `PATH`, `HOME`, `LANG`
    /// and `TZ`, so gateway secrets do not leak into upstreams).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the child.
    pub cwd: Option<PathBuf>,
    /// Endpoint of an HTTP upstream: the MCP endpoint of a Streamable HTTP server, or the SSE
    /// endpoint of a legacy HTTP+SSE server.
    pub url: Option<String>,
    /// Which HTTP transport `url` speaks. Default `auto`: Streamable HTTP, falling back to the
    /// legacy HTTP+SSE transport when the server refuses the POST (400, 404 or 405 without a
    /// JSON-RPC error), as the MCP spec's backward-compatibility section describes.
    #[serde(default)]
    pub transport: HttpTransport,
    /// Which protocol era to speak to a Streamable HTTP upstream. Default `auto`: ask
    /// `server/discover` on first contact; an upstream that also speaks the session era gets
    /// `initialize` (per-client upstream sessions keep server→client requests, subscriptions
    /// and log levels exact), one that lists only 2026-07-28 is spoken to statelessly for
    /// 2026-07-28 clients and tried with `initialize` for session-era clients, and one that
    /// does not know `server/discover` gets `initialize`. Remembered per upstream.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Static headers sent on every request to an HTTP upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer …` to an HTTP upstream. The client's own
    /// `Authorization` header is never forwarded.
    pub bearer_token: Option<String>,
    /// `[upstreams.<name>.auth]`: a static credential or an RFC 8693 token exchange per
    /// caller (`upstream_auth.rs`). Absent: `bearer-token`, or no credential.
    pub auth: Option<UpstreamAuth>,
    /// Longest wait for one upstream request (a list, a call). Default 60s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait for the upstream to start and answer `initialize`. Default 10s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest an aggregate list (`tools/list`, …) waits for this upstream's part, connect
    /// included; past it the list is answered without it (the fetch goes on, and the client
    /// hears `notifications/*/list_changed` when it arrives). Default 5s.
    #[serde(default = "default_list_timeout", with = "humantime_serde")]
    pub list_timeout: Duration,
    /// [`UpstreamConfig::list_timeout`] while the upstream is seen failing (its last connect
    /// or request failed, or its last list was late). Default 250ms.
    #[serde(default = "default_list_timeout_failing", with = "humantime_serde")]
    pub list_timeout_failing: Duration,
    /// HTTP: largest response body read from the upstream (a JSON answer or an error body),
    /// MiB. A declared `Content-Length` over it is refused before reading; a body without one
    /// is cut off as soon as it passes. Default 16 ([`DEFAULT_MAX_MESSAGE_MIB`]).
    pub max_response_mib: Option<u32>,
    /// HTTP: largest SSE event (the bytes between two blank lines) on any stream from the
    /// upstream, MiB; also what one stream may hold buffered. Default 16.
    pub max_sse_event_mib: Option<u32>,
    /// stdio: longest line (one JSON-RPC message) the child may write to stdout, MiB.
    /// Default 16.
    pub max_line_mib: Option<u32>,
    /// stdio: most child processes running at once (one per client session that uses the
    /// upstream). Default 64 ([`DEFAULT_MAX_CHILDREN`]).
    pub max_children: Option<u32>,
    /// stdio: whether each client session gets its own child (`per-session`, the default) or
    /// the sessions share a few children (`shared`, see `upstream/shared.rs`).
    #[serde(default)]
    pub share: Share,
    /// stdio with `share = "shared"`: how many children the sessions are spread over.
    /// Default 1 ([`DEFAULT_POOL`]).
    pub pool: Option<u32>,
}

/// `share` of a stdio upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// One child per client session: the server's notion of "its client" is exactly one
    /// agent, so per-client state (subscriptions, log level, roots, anything the server keeps
    /// in memory for its client) is exact for every server. The safe default.
    #[default]
    PerSession,
    /// Every client session is served by one child (or `pool` children): the gateway
    /// multiplexes ids, routes progress and server→client requests to the session that
    /// caused them, reference-counts `resources/subscribe`, and filters log lines per
    /// session. For servers that keep no per-client state beyond those.
    Shared,
}

/// Default `pool`: one child serves every session of a shared upstream.
pub const DEFAULT_POOL: u32 = 1;
/// Largest `pool` accepted.
pub const MAX_POOL: u32 = 64;

/// Default bound on one message from an upstream, MiB: HTTP body, SSE event, stdio line.
/// Real MCP messages stay far below it (a tool result with a few images is a few MiB), and
/// it caps what one hostile stream makes the gateway hold.
pub const DEFAULT_MAX_MESSAGE_MIB: u32 = 16;
/// Largest value accepted for the `max-*-mib` keys of an upstream (1 GiB).
pub const MAX_MESSAGE_MIB: u32 = 1024;
/// Default cap on the child processes of one stdio upstream. Each is a whole server process
/// (~9 MB for a small Rust server, 30-80 MB for Node or Python ones), so 64 bounds a stdio
/// upstream at roughly 0.5-5 GB while leaving room for dozens of concurrent agents.
pub const DEFAULT_MAX_CHILDREN: u32 = 64;

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_list_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_list_timeout_failing() -> Duration {
    Duration::from_millis(250)
}

/// `transport` of an HTTP upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpTransport {
    /// Try Streamable HTTP; fall back to HTTP+SSE. The answer is remembered per upstream.
    #[default]
    Auto,
    /// Streamable HTTP only (MCP 2025-03-26 and later).
    StreamableHttp,
    /// The legacy HTTP+SSE transport (MCP 2024-11-05) only; `url` is the SSE endpoint.
    Sse,
}

/// `protocol` of an HTTP upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum UpstreamProtocol {
    /// Decided by `server/discover` on first contact (see [`UpstreamConfig::protocol`]).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// MCP 2026-07-28: stateless, `_meta` on every request, `input_required` results.
    #[serde(rename = "2026-07-28")]
    Stateless,
    /// The session era: `initialize` at 2025-11-25 (or what the upstream negotiates).
    #[serde(rename = "2025-11-25")]
    Session,
}

/// How an upstream is reached, derived from which of `command` / `url` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Stdio,
    Http,
}

impl UpstreamConfig {
    pub fn transport(&self) -> TransportKind {
        if self.command.is_some() {
            TransportKind::Stdio
        } else {
            TransportKind::Http
        }
    }

    /// `max-response-mib` in bytes.
    pub fn max_response_bytes(&self) -> usize {
        mib(self.max_response_mib)
    }

    /// `max-sse-event-mib` in bytes.
    pub fn max_sse_event_bytes(&self) -> usize {
        mib(self.max_sse_event_mib)
    }

    /// `max-line-mib` in bytes.
    pub fn max_line_bytes(&self) -> usize {
        mib(self.max_line_mib)
    }

    /// `max-children`.
    pub fn max_children(&self) -> usize {
        self.max_children.unwrap_or(DEFAULT_MAX_CHILDREN) as usize
    }

    /// `pool` (meaningful with `share = "shared"`).
    pub fn pool(&self) -> usize {
        self.pool.unwrap_or(DEFAULT_POOL) as usize
    }
}

fn mib(value: Option<u32>) -> usize {
    value.unwrap_or(DEFAULT_MAX_MESSAGE_MIB) as usize * 1024 * 1024
}
