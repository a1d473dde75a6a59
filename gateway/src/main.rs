//! The `portcullis` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use anyhow::Context as _;
use portcullis::config::{self, Config};
use portcullis::demo::DemoPlugins;
use portcullis::observe;

mod cli;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An MCP gateway with a WebAssembly policy chain"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config, runs the embedded demo: one demo upstream on
    /// http://127.0.0.1:8080/mcp.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on this address instead of `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file and exit: 0 when valid, 1 with the field at fault.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// API keys for the authn plugin.
    Authn {
        #[command(subcommand)]
        command: cli::authn::AuthnCommand,
    },
    /// Test and inspect policy plugins.
    Plugin {
        #[command(subcommand)]
        command: cli::plugin::PluginCommand,
    },
    /// The audit trail: verify its keyed chain and checkpoints, make its keys, start a new segment.
    Audit {
        #[command(subcommand)]
        command: cli::audit::AuditCommand,
    },
    /// Ask a running gateway's admin API how it is: exit 0 when ready, 1 when not ready,
    /// 2 when it cannot be asked.
    Status(cli::status::StatusArgs),
    /// Run the demo upstream MCP server on stdin/stdout (used by the embedded default).
    #[command(hide = true)]
    DemoUpstream,
}

fn main() -> ExitCode {
    // Before any thread starts: the memory of a bounded upstream breach goes back to the OS.
    portcullis::memory::tune_allocator();
    let cli = Cli::parse();
    // The commands that print reports (`plugin inspect | head`, `audit verify | less`) stop
    // quietly when the reader goes away, as command-line tools do. Not `serve` or the demo
    // upstream: there a closed pipe (a stdio upstream that exited) must be an error to
    // handle, not a signal that kills the gateway.
    if !matches!(cli.command, Command::Serve { .. } | Command::DemoUpstream) {
        // SAFETY: before any thread starts; restores the default disposition Rust's runtime
        // replaced with "ignore".
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The demo upstream's stderr lands in the gateway's log; keep it to what matters there.
    let default_level = match &cli.command {
        Command::DemoUpstream => "warn",
        // `plugin test` runs a gateway in-process: its plugins' lines matter, its own
        // session and upstream lines are not the author's business.
        Command::Plugin {
            command: cli::plugin::PluginCommand::Test(_),
        } => "info,portcullis::front=warn,portcullis::session=warn,portcullis::upstream=warn",
        _ => "info",
    };
    // `serve` reads its configuration first: `[log]` and `[tracing]` shape the subscriber.
    let mut serve_config = match &cli.command {
        Command::Serve {
            config: Some(path), ..
        } => match config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("portcullis: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Serve { config: None, .. } => Some(config::embedded_default()),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // After the configuration: `serve` runs its connections on threads of their own
    // (`portcullis::workers`), started before the gateway is built. `[server] worker-threads`
    // of them, by default as many as the runtime has: one per CPU the process may use, a
    // CPU quota rounded up.
    let workers = match &serve_config {
        Some(cfg) => {
            let n = cfg
                .server
                .worker_threads
                .unwrap_or_else(|| runtime.metrics().num_workers());
            match portcullis::workers::Workers::start(n) {
                Ok(w) => Some(w),
                Err(e) => {
                    eprintln!("portcullis: cannot start the connection threads: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let telemetry = match &serve_config {
        Some(cfg) => match observe::init(&cfg.log, &cfg.tracing, runtime.handle().clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("portcullis: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        None => {
            observe::init_default(default_level);
            None
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config, listen } => match serve_config.take() {
                Some(cfg) => serve(cfg, config.is_none(), listen, workers.as_ref())
                    .await
                    .map(|()| ExitCode::SUCCESS),
                None => Err(anyhow::anyhow!("no configuration")),
            },
            Command::Check { config } => check(config).await.map(|()| ExitCode::SUCCESS),
            Command::Authn { command } => cli::authn::run(command),
            Command::Plugin { command } => cli::plugin::run(command).await,
            Command::Audit { command } => cli::audit::run(command),
            Command::Status(args) => Ok(cli::status::run(args).await),
            Command::DemoUpstream => portcullis_demo_server::serve_stdio()
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    // The connections are drained: stop their threads before the main runtime goes.
    drop(workers);
    // Flush the last spans while the runtime that sends them is still there.
    if let Some(t) = telemetry {
        t.shutdown();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Validates the file, then loads its plugins folder exactly as `serve` would (each
/// plugin's own configuration validation included) and fails on the same errors.
async fn check(path: PathBuf) -> anyhow::Result<()> {
    let cfg = config::load(&path)?;
    for (name, upstream) in &cfg.upstreams {
        if let Some(command) = &upstream.command
            && !on_path(command)
        {
            eprintln!(
                "warning: upstreams.{name}: command {command:?} is not found (not a file, not on PATH); the upstream will fail to start"
            );
        }
    }
    if cfg.policy.plugins.is_some() || !cfg.policy.required.is_empty() {
        let policies = portcullis::open_policies(&cfg.policy).await?;
        let chain = policies.chain();
        let names: Vec<&str> = chain.plugins().iter().map(|p| &*p.name).collect();
        println!(
            "policy chain: {}",
            if names.is_empty() {
                "(empty)".to_string()
            } else {
                names.join(" → ")
            }
        );
    }
    println!(
        "{}: ok ({} upstreams: {})",
        path.display(),
        cfg.upstreams.len(),
        cfg.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Whether `command` names an executable: a path to a file, or a name found on `PATH`.
fn on_path(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        return executable(std::path::Path::new(command));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(command))))
}

async fn serve(
    mut cfg: Config,
    embedded: bool,
    listen: Option<std::net::SocketAddr>,
    workers: Option<&portcullis::workers::Workers>,
) -> anyhow::Result<()> {
    if let Some(addr) = listen {
        cfg.server.listen = addr;
    }
    // Kept alive while serving: the folder is removed when it drops.
    let demo_plugins = if embedded {
        let plugins = DemoPlugins::write().context("cannot write the demo's plugins folder")?;
        if let Some(p) = &plugins {
            cfg.policy.plugins = Some(p.dir().to_path_buf());
            // The demo's chain is its point: without either plugin it does not serve.
            cfg.policy.required = vec!["authn".into(), "authz".into()];
        }
        plugins
    } else {
        None
    };
    // Armed before the address is announced: a SIGTERM sent as soon as the line below is read
    // (a test, an orchestrator) is never lost to the moment before the handler exists.
    let signals = Signals::arm();
    let gateway = portcullis::Gateway::bind(cfg).await?;
    // Tests and scripts read this line to learn the bound address.
    println!("portcullis listening on {}", gateway.url());
    if let Some(url) = gateway.admin_url() {
        println!("portcullis admin listening on {url}");
    }
    if embedded {
        let url = gateway.url();
        let policies = match &demo_plugins {
            Some(p) => format!(
                "  Policies: authn + authz from {dir} (drop a .wasm there: it is hot-loaded)\n    \
                 without a credential you are \"anonymous\" (role guest: demo__echo, demo__add)\n    \
                 with  Authorization: Bearer {key}  you are the admin (everything)\n",
                dir = p.dir().display(),
                key = portcullis::demo::ADMIN_KEY,
            ),
            None => "  Policies: none (this binary was built without the wasm32-wasip2 target)\n"
                .to_string(),
        };
        eprintln!(
            "\nPortcullis is running the embedded demo (no --config given).\n  MCP endpoint: {url}\n{policies}  Try: npx @modelcontextprotocol/inspector  (transport \"Streamable HTTP\", URL {url})\n"
        );
    }
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            signals.wait().await;
            tracing::info!("shutdown requested");
            shutdown.cancel();
        });
    }
    gateway.serve_on(shutdown, workers).await;
    drop(demo_plugins);
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, listened for from [`Signals::arm`] on.
struct Signals {
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
}

impl Signals {
    fn arm() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()),
            int: signal(SignalKind::interrupt()),
        }
    }

    async fn wait(self) {
        match (self.term, self.int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
