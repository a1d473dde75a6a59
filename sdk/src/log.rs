//! Writing to the gateway's log.
//!
//! Lines go to the gateway's log tagged with the policy's name. The gateway caps their size
//! and number per evaluation, so log decisions, not payloads. Never log a secret.
//!
//! Natively (in unit tests) lines are printed to stderr instead.
//!
//! ```
//! use portcullis_sdk::log;
//!
//! log::info("checked 3 paths");
//! log::warn(&format!("unknown tool {}", "rm_rf"));
//! ```

/// How important a line is, as in the gateway's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the policy handled.
    Warn,
    /// Something that went wrong.
    Error,
}

/// Writes one line at `level`.
pub fn log(level: Level, message: &str) {
    write(level, message);
}

/// Writes one line at [`Level::Trace`].
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// Writes one line at [`Level::Debug`].
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Writes one line at [`Level::Info`].
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Writes one line at [`Level::Warn`].
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Writes one line at [`Level::Error`].
pub fn error(message: &str) {
    write(Level::Error, message);
}

#[cfg(target_arch = "wasm32")]
fn write(level: Level, message: &str) {
    use crate::bindings::portcullis::policy::host::{self, Level as L};
    let level = match level {
        Level::Trace => L::Trace,
        Level::Debug => L::Debug,
        Level::Info => L::Info,
        Level::Warn => L::Warn,
        Level::Error => L::Error,
    };
    host::log(level, message);
}

#[cfg(not(target_arch = "wasm32"))]
fn write(level: Level, message: &str) {
    eprintln!("[policy {level:?}] {message}");
}
