//! What a plugin instance can reach: its `message`, the `host` interface (log, key-value),
//! and a WASI context that grants nothing unless the sidecar says so.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Result, StoreLimits};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{host_api, types};
use super::chain::CallView;
use super::http_grant::HttpState;
use super::kv::{KvError, KvStore};
use super::log_budget;

/// Log lines one call may write (the rest are dropped, with one note saying so). Across
/// calls, the plugin's budget per second applies too (`log_budget.rs`).
const MAX_LOG_LINES: u32 = 100;
/// Bytes of stdout/stderr kept per call.
pub const MAX_STDIO: usize = 16 * 1024;

/// The message a plugin sees, as a WIT resource. Getters copy out only what is asked for.
pub struct MessageRes {
    pub phase: types::Phase,
    pub call: Arc<CallView>,
}

/// Per-store state: one per plugin call.
pub struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: Arc<str>,
    pub kv: Arc<dyn KvStore>,
    pub exposed_headers: Arc<[String]>,
    pub stdout: CappedOutput,
    pub stderr: CappedOutput,
    /// `wasi:http`: refuses everything unless the plugin's grant is set (`http_grant.rs`).
    pub http: HttpState,
    log_lines: u32,
    /// Keeps the epoch ticking, so the plugin's CPU deadline can fire (`engine.rs`).
    pub epoch: Option<super::engine::EpochHold>,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        kv: Arc<dyn KvStore>,
        exposed_headers: Arc<[String]>,
        wasi: WasiCtx,
        limits: StoreLimits,
        stdout: CappedOutput,
        stderr: CappedOutput,
    ) -> Self {
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            http: HttpState::new(plugin.clone(), None),
            plugin,
            kv,
            exposed_headers,
            stdout,
            stderr,
            log_lines: 0,
            epoch: None,
        }
    }

    fn kv_key(&self, key: &str) -> String {
        format!("{}\u{1f}{key}", self.plugin)
    }

    fn msg(&self, res: &Resource<MessageRes>) -> Result<&MessageRes> {
        Ok(self.table.get(res)?)
    }

    /// Writes what the plugin printed to stdout/stderr into the log (capped).
    pub fn flush_stdio(&self) {
        for (stream, out) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let (text, dropped) = out.take();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if log_budget::admit(&self.plugin) {
                    let line = log_budget::cut(line);
                    tracing::info!(target: "portcullis::plugin", plugin = %self.plugin, stream, "{line}");
                }
            }
            if dropped > 0 {
                tracing::warn!(target: "portcullis::plugin", plugin = %self.plugin, stream, dropped, "plugin output over the cap was dropped");
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host_api::Host for HostState {
    fn log(&mut self, level: host_api::Level, message: String) -> Result<()> {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(target: "portcullis::plugin", plugin = %self.plugin, "log limit reached for this call; further lines dropped");
            }
            return Ok(());
        }
        if !log_budget::admit(&self.plugin) {
            return Ok(());
        }
        let line = log_budget::cut(&message);
        let plugin = &*self.plugin;
        match level {
            host_api::Level::Trace => {
                tracing::trace!(target: "portcullis::plugin", plugin, "{line}")
            }
            host_api::Level::Debug => {
                tracing::debug!(target: "portcullis::plugin", plugin, "{line}")
            }
            host_api::Level::Info => tracing::info!(target: "portcullis::plugin", plugin, "{line}"),
            host_api::Level::Warn => tracing::warn!(target: "portcullis::plugin", plugin, "{line}"),
            host_api::Level::Error => {
                tracing::error!(target: "portcullis::plugin", plugin, "{line}")
            }
        }
        Ok(())
    }

    async fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        let key = self.kv_key(&key);
        kv_result(self.kv.get(&key).await)
    }

    async fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<()> {
        let key = self.kv_key(&key);
        kv_result(
            self.kv
                .set(&key, value, ttl_ms.map(Duration::from_millis))
                .await,
        )
    }

    async fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64> {
        let key = self.kv_key(&key);
        kv_result(
            self.kv
                .incr(&key, delta, ttl_ms.map(Duration::from_millis))
                .await,
        )
    }

    async fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<bool> {
        let key = self.kv_key(&key);
        kv_result(
            self.kv
                .compare_and_swap(
                    &key,
                    expected.as_deref(),
                    value,
                    ttl_ms.map(Duration::from_millis),
                )
                .await,
        )
    }

    async fn kv_delete(&mut self, key: String) -> Result<()> {
        let key = self.kv_key(&key);
        kv_result(self.kv.delete(&key).await)
    }
}

/// A store that cannot answer fails the plugin's call (a trap whose message says why); the
/// plugin's `fail-open` setting then decides. Counted for `/metrics`.
fn kv_result<T>(r: std::result::Result<T, KvError>) -> Result<T> {
    r.map_err(|e| {
        super::kv::count_error(&e);
        wasmtime::Error::msg(e.to_string())
    })
}

impl types::Host for HostState {}

fn json(v: Option<&Value>) -> Option<String> {
    v.map(|v| serde_json::to_string(v).unwrap_or_default())
}

impl types::HostMessage for HostState {
    fn phase(&mut self, res: Resource<MessageRes>) -> Result<types::Phase> {
        Ok(self.msg(&res)?.phase)
    }

    fn method(&mut self, res: Resource<MessageRes>) -> Result<String> {
        Ok(self.msg(&res)?.call.method.clone())
    }

    fn target(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(self.msg(&res)?.call.target.clone())
    }

    fn upstream(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(self.msg(&res)?.call.upstream.clone())
    }

    fn upstream_target(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(self.msg(&res)?.call.upstream_target.clone())
    }

    fn session(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(self.msg(&res)?.call.session.clone())
    }

    fn identity(&mut self, res: Resource<MessageRes>) -> Result<Option<types::Identity>> {
        Ok(self.msg(&res)?.call.identity.as_ref().map(|i| i.to_wit()))
    }

    fn attribute(&mut self, res: Resource<MessageRes>, key: String) -> Result<Option<String>> {
        Ok(self.msg(&res)?.call.attributes.get(&key).cloned())
    }

    fn header(&mut self, res: Resource<MessageRes>, name: String) -> Result<Option<String>> {
        let name = name.to_ascii_lowercase();
        if !self.exposed_headers.contains(&name) {
            return Ok(None);
        }
        let call = &self.msg(&res)?.call;
        Ok(call
            .headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    fn params(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(json(self.msg(&res)?.call.request.params()))
    }

    fn argument(&mut self, res: Resource<MessageRes>, name: String) -> Result<Option<String>> {
        let params = self.msg(&res)?.call.request.params();
        Ok(json(
            params
                .and_then(|p| p.get("arguments"))
                .and_then(|a| a.get(&name)),
        ))
    }

    fn result(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(json(
            self.msg(&res)?
                .call
                .response
                .as_ref()
                .and_then(|r| r.result_value()),
        ))
    }

    fn error(&mut self, res: Resource<MessageRes>) -> Result<Option<String>> {
        Ok(json(
            self.msg(&res)?
                .call
                .response
                .as_ref()
                .and_then(|r| r.error_value()),
        ))
    }

    fn drop(&mut self, res: Resource<MessageRes>) -> Result<()> {
        self.table.delete(res)?;
        Ok(())
    }
}

/// stdout/stderr for a plugin: keeps the first [`MAX_STDIO`] bytes for the log and silently
/// drops the rest (a plugin printing too much must not fail because of it).
#[derive(Clone, Default)]
pub struct CappedOutput(Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

impl CappedOutput {
    fn take(&self) -> (String, usize) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&inner.0).into_owned();
        let dropped = inner.1;
        *inner = (Vec::new(), 0);
        (text, dropped)
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_STDIO.saturating_sub(inner.0.len());
        let keep = bytes.len().min(room);
        inner.0.extend_from_slice(&bytes[..keep]);
        inner.1 += bytes.len() - keep;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::cli::IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(AsyncCapped(self.clone()))
    }
}

/// The same sink as an `AsyncWrite`, for WASIp3-style consumers.
struct AsyncCapped(CappedOutput);

impl tokio::io::AsyncWrite for AsyncCapped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let _ = OutputStream::write(&mut self.0, Bytes::copy_from_slice(buf));
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
