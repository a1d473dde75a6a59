//! Subcommands beyond `serve` and `check`.

pub mod plugin;
