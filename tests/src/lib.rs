pub mod fixture;

/// End-to-end test harness (processes, MCP clients, raw HTTP); see [`harness`].
pub mod harness;

pub use harness::*;
