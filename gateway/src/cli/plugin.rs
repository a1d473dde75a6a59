//! `portcullis plugin test` and `portcullis plugin inspect`.
//!
//! `plugin test` runs a recorded message through one plugin or a whole plugins folder with
//! the server's own chain code (`policy::Chain`), so what it prints is what `serve` would do.
//! Exit code: 0 allowed (changed or not), 1 denied, 2 the plugin(s) could not be loaded or the
//! input is invalid.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use portcullis::mcp::Message;
use portcullis::policy::{Call, Denial, Identity, Policies, RuntimeConfig};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Run a recorded MCP message through a plugin (or a whole plugins folder) and print the verdict.
    Test(TestArgs),
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

#[derive(Args)]
pub struct TestArgs {
    /// A `.wasm` plugin, or a plugins folder (runs the whole chain, sidecars included).
    pub plugin: PathBuf,
    /// The request, a JSON-RPC message in a file (`-` for stdin).
    #[arg(long)]
    pub message: PathBuf,
    /// A response to run the response phase on (e.g. a recorded `tools/list` result).
    #[arg(long)]
    pub response: Option<PathBuf>,
    /// The sidecar for a single `.wasm` (default: `<plugin>.toml` beside it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The caller's identity as JSON (`{"subject":"alice","roles":["dev"]}`), as if authn set it.
    #[arg(long)]
    pub identity: Option<String>,
    /// A request header, `Name: value` (repeatable), e.g. `--header 'Authorization: Bearer …'`.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Where the gateway would route the request, `upstream` or `upstream:name`.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Test(args) => test(args).await,
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

fn read_message(path: &Path) -> anyhow::Result<Message> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    Message::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let outcome = match evaluate(&args).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("portcullis plugin test: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_text(&outcome);
    }
    Ok(if outcome["verdict"] == "deny" {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn evaluate(args: &TestArgs) -> anyhow::Result<Value> {
    let runtime = RuntimeConfig {
        max_instances: 8,
        ..RuntimeConfig::default()
    };
    let policies = if args.plugin.is_dir() {
        let p = Policies::open(Some(&args.plugin), runtime, Vec::new()).await?;
        let rejected: Vec<String> = p
            .status()
            .await
            .into_iter()
            .filter_map(|s| s.error.map(|e| format!("{}: {e}", s.name)))
            .collect();
        anyhow::ensure!(
            rejected.is_empty(),
            "plugins rejected:\n  {}",
            rejected.join("\n  ")
        );
        p
    } else {
        let sidecar = args
            .config
            .clone()
            .unwrap_or_else(|| args.plugin.with_extension("toml"));
        Policies::single(&args.plugin, &sidecar, runtime).await?
    };
    let chain = policies.chain();
    let request = read_message(&args.message)?;
    let original = request.clone().into_value();
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected `Name: value`"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes())?,
            HeaderValue::from_str(value.trim())?,
        );
    }
    let hint = args.upstream.as_ref().map(|u| match u.split_once(':') {
        Some((up, name)) => (up.to_string(), name.to_string()),
        None => (
            u.clone(),
            request
                .param_str("name")
                .or(request.param_str("uri"))
                .unwrap_or_default()
                .to_string(),
        ),
    });
    let mut call = Call::new(request, headers, Some("plugin-test".into()), hint);
    if let Some(identity) = &args.identity {
        let identity: Identity =
            serde_json::from_str(identity).map_err(|e| anyhow::anyhow!("--identity: {e}"))?;
        call.set_identity(identity);
    }
    let plugins: Vec<Value> = chain
        .plugins()
        .iter()
        .map(|p| json!({ "name": &*p.name, "version": p.version, "stage": p.stage, "sha256": p.sha256 }))
        .collect();
    if let Err(denial) = chain.on_request(&mut call).await {
        return Ok(denied(&denial, "request", Value::from(plugins)));
    }
    let request = call.take_request(true).into_value();
    let mut out = json!({
        "verdict": if request != original || call.identity().is_some() || call.routed || !call.view().attributes.is_empty() { "modify" } else { "allow" },
        "plugins": plugins,
        "request": request,
        "identity": call.identity(),
        "route": call.routed.then(|| json!({ "upstream": call.view().upstream, "target": call.view().upstream_target })),
        "attributes": call.view().attributes,
    });
    if let Some(path) = &args.response {
        let response = read_message(path)?;
        let before = response.clone().into_value();
        match chain.on_response(&mut call, response).await {
            Ok(after) => {
                let after = after.into_value();
                if after != before {
                    out["verdict"] = "modify".into();
                }
                out["response"] = after;
            }
            Err(denial) => return Ok(denied(&denial, "response", out["plugins"].take())),
        }
    }
    Ok(out)
}

fn denied(d: &Denial, phase: &str, plugins: Value) -> Value {
    json!({
        "verdict": "deny",
        "phase": phase,
        "plugins": plugins,
        "denied_by": &*d.plugin,
        "error": { "code": d.code, "message": d.message, "data": d.data },
        "http_status": d.http_status,
        "http_headers": d.http_headers,
    })
}

fn print_text(o: &Value) {
    let names: Vec<&str> = o["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    println!("chain:      {}", names.join(" → "));
    println!("verdict:    {}", o["verdict"].as_str().unwrap_or("?"));
    if o["verdict"] == "deny" {
        println!(
            "denied by:  {} (in the {} phase)",
            o["denied_by"].as_str().unwrap_or("?"),
            o["phase"].as_str().unwrap_or("?")
        );
        println!(
            "error:      {} {}",
            o["error"]["code"],
            o["error"]["message"].as_str().unwrap_or("")
        );
        if !o["error"]["data"].is_null() {
            println!("data:       {}", o["error"]["data"]);
        }
        if let Some(status) = o["http_status"].as_u64() {
            println!("http:       {status}");
            for h in o["http_headers"].as_array().into_iter().flatten() {
                println!(
                    "            {}: {}",
                    h[0].as_str().unwrap_or(""),
                    h[1].as_str().unwrap_or("")
                );
            }
        }
        return;
    }
    if !o["identity"].is_null() {
        println!("identity:   {}", o["identity"]);
    }
    if !o["route"].is_null() {
        println!("route:      {}", o["route"]);
    }
    if o["attributes"].as_object().is_some_and(|a| !a.is_empty()) {
        println!("attributes: {}", o["attributes"]);
    }
    println!("request:    {}", o["request"]);
    if !o["response"].is_null() {
        println!("response:   {}", o["response"]);
    }
}
