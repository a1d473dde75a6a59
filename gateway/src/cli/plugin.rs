//! `portcullis plugin …`: `new` (`plugin_new.rs`), `test` (`plugin_test/`), `list` and
//! `inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use portcullis::policy::{Policies, RuntimeConfig};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a policy project (source with one rule, sidecar, sample messages, README) in
    /// Rust, Python, JavaScript or Go.
    New(super::plugin_new::NewArgs),
    /// Run a recorded exchange (the client's message, what the upstream sends, its answer)
    /// through a plugin or a whole plugins folder, on the pipeline `serve` runs, and print
    /// each plugin's verdict per message and what the client receives.
    Test(super::plugin_test::TestArgs),
    /// Load a plugins folder exactly as `serve` would and show each plugin: stage, order,
    /// hash, and whether it loaded (and why not).
    List {
        /// The plugins folder.
        folder: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's metadata, WIT world, imports, size and SHA-256.
    Inspect {
        /// The `.wasm` file.
        wasm: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Test(args) => super::plugin_test::test(args).await,
        PluginCommand::New(args) => match super::plugin_new::run(args) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("portcullis plugin new: {e:#}");
                Ok(ExitCode::from(2))
            }
        },
        PluginCommand::List { folder, json } => {
            let policies = Policies::open(
                Some(&folder),
                RuntimeConfig {
                    max_instances: 8,
                    ..RuntimeConfig::default()
                },
                Vec::new(),
            )
            .await?;
            let status = policies.status().await;
            let order: Vec<String> = policies
                .chain()
                .plugins()
                .iter()
                .map(|p| p.name.to_string())
                .collect();
            let rejected = status.iter().any(|s| s.error.is_some());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "chain": order, "plugins": status, "reload": policies.last_reload() })
                    )?
                );
            } else {
                println!(
                    "chain: {}",
                    if order.is_empty() {
                        "(empty)".to_string()
                    } else {
                        order.join(" → ")
                    }
                );
                for s in &status {
                    let stage = s
                        .stage
                        .map(|st| format!("{st:?}").to_lowercase())
                        .unwrap_or_else(|| "-".into());
                    let sha = s.sha256.get(..12).unwrap_or("-");
                    println!(
                        "  {:<20} {:<9} {:<10} prio {:<4} {sha}  {}",
                        s.name,
                        s.state,
                        stage,
                        s.priority,
                        s.error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(if rejected {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        PluginCommand::Inspect { wasm, json } => {
            let report = portcullis::policy::inspect(&wasm).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("file:     {}", report.file);
                println!("size:     {} bytes", report.size);
                println!("sha256:   {}", report.sha256);
                println!(
                    "world:    {}",
                    if report.implements_policy_world {
                        "portcullis:policy/plugin@0.1.0"
                    } else {
                        "(not the portcullis policy world)"
                    }
                );
                if let Some(name) = &report.name {
                    println!(
                        "name:     {name} {}",
                        report.version.as_deref().unwrap_or("")
                    );
                    if *name == report.loaded_as {
                        println!("loads as: {} (its file name)", report.loaded_as);
                    } else {
                        println!(
                            "loads as: {} (its file name, which the gateway uses; rename it to {name}.wasm to match)",
                            report.loaded_as
                        );
                    }
                    println!(
                        "stage:    {:?}",
                        report
                            .stage
                            .map(|s| format!("{s:?}").to_lowercase())
                            .unwrap_or_default()
                    );
                    println!("phases:   {}", report.phases.join(", "));
                }
                println!("imports:  {}", report.imports.join("\n          "));
                println!("exports:  {}", report.exports.join("\n          "));
                if let Some(e) = &report.error {
                    println!("error:    {e}");
                }
            }
            Ok(if report.error.is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
