//! Subcommands beyond `serve` and `check`.

pub mod audit;
pub mod authn;
pub mod plugin;
pub mod plugin_new;
pub mod plugin_test;
pub mod status;
