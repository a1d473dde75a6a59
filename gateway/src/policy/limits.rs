//! Per-plugin limits: defaults, and overrides from the sidecar's `[limits]`.

use std::time::Duration;

use super::sidecar::LimitsOverride;

/// What one plugin call may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU deadline per call (epoch-based, 1 ms granularity).
    pub timeout: Duration,
    /// Linear memory cap, bytes.
    pub memory: usize,
    /// Largest params/result/attributes a verdict may carry, bytes.
    pub output: usize,
}

impl Default for Limits {
    /// 50 ms of CPU, 16 MiB of memory, 8 MiB of output: generous for policies written in
    /// Rust or Go; JavaScript and Python guests usually need more memory (raise it in the
    /// sidecar).
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(50),
            memory: 16 << 20,
            output: 8 << 20,
        }
    }
}

impl Limits {
    /// Applies sidecar overrides; memory is capped at the pool's slot size.
    pub fn with(mut self, o: &LimitsOverride, max_memory: usize) -> Self {
        if let Some(t) = o.timeout {
            self.timeout = t;
        }
        if let Some(m) = o.memory_mib {
            self.memory = (m as usize) << 20;
        }
        if let Some(k) = o.output_kib {
            self.output = (k as usize) << 10;
        }
        self.memory = self.memory.min(max_memory);
        self
    }
}
