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

use portcullis::mcp::{Kind, Message};
use portcullis::policy::{Call, CallView, Chain, Denial, Identity, Phase, Policies, RuntimeConfig};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a policy project (source with one rule, sidecar, sample messages, README) in
    /// Rust, Python, JavaScript or Go.
    New(super::plugin_new::NewArgs),
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
    /// The client's request (or notification), a JSON-RPC message in a file (`-` for stdin):
    /// runs the request phase.
    #[arg(long, required_unless_present = "response")]
    pub message: Option<PathBuf>,
    /// What comes back, run through the response phase: the upstream's answer to --message
    /// (e.g. a recorded `tools/list` result), or a notification or request an upstream sends
    /// the client (progress, log lines, sampling, elicitation) — screened with --message as
    /// the request that caused it, or without --message as outside any request.
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

/// Methods only a server sends a client (requests) or sends mostly to clients (notifications
/// a client never sends): they pass the response phase, never the request phase.
const SERVER_ONLY: &[&str] = &[
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "notifications/message",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
];

/// What `--message` may be: a client's request or notification.
fn check_client_message(msg: &Message) -> anyhow::Result<()> {
    match msg.kind() {
        Kind::Response => anyhow::bail!(
            "--message is a response (it has `result` or `error`): give it with --response, after \
             the --message request it answers"
        ),
        _ if SERVER_ONLY.contains(&msg.method()) => anyhow::bail!(
            "--message is `{}`, which an upstream sends the client: the request phase never sees \
             it. Give it with --response (the response phase), after the --message request that \
             caused it, or alone to screen it as outside any request",
            msg.method()
        ),
        _ => Ok(()),
    }
}

/// What `--response` may be: an answer, or what an upstream sends the client besides answers.
fn check_server_message(msg: &Message) -> anyhow::Result<()> {
    if msg.kind() == Kind::Request && !SERVER_ONLY.contains(&msg.method()) {
        anyhow::bail!(
            "--response is a `{}` request, which a client sends: the response phase sees answers \
             (with `result` or `error`) and what an upstream sends the client (notifications, \
             sampling/elicitation/roots requests)",
            msg.method()
        );
    }
    Ok(())
}

async fn evaluate(args: &TestArgs) -> anyhow::Result<Value> {
    let runtime = RuntimeConfig {
        max_instances: 8,
        ..RuntimeConfig::default()
    };
    // Read and check the input before loading anything: a wrong input costs no compile.
    let request = args.message.as_deref().map(read_message).transpose()?;
    let response = args.response.as_deref().map(read_message).transpose()?;
    if let Some(r) = &request {
        check_client_message(r)?;
    }
    if let Some(r) = &response {
        check_server_message(r)?;
        if r.kind() == Kind::Response && request.is_none() {
            anyhow::bail!("--response is an answer: give the request it answers with --message");
        }
    }
    let supplied: Option<Identity> = args
        .identity
        .as_deref()
        .map(|i| serde_json::from_str(i).map_err(|e| anyhow::anyhow!("--identity: {e}")))
        .transpose()?;
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
    // A phase no plugin handles would pass unseen and print a verdict nobody gave.
    if response.is_some() && !chain.wants(Phase::Response) {
        anyhow::bail!(
            "no plugin in the chain handles the response phase: --response would pass unseen"
        );
    }
    if request.is_some() && !chain.wants(Phase::Request) {
        if response.is_none() {
            anyhow::bail!(
                "no plugin in the chain handles the request phase: --message would pass unseen \
                 (give --response to test the response phase)"
            );
        }
        eprintln!(
            "portcullis plugin test: note: no plugin in the chain handles the request phase; \
             --message only sets the context of --response"
        );
    }
    let plugins: Value = chain
        .plugins()
        .iter()
        .map(|p| json!({ "name": &*p.name, "version": p.version, "stage": p.stage, "sha256": p.sha256 }))
        .collect::<Vec<_>>()
        .into();

    let Some(request) = request else {
        // A server message outside any request, screened as a session screens one.
        let response = response.expect("checked above: one of them is given");
        let view = CallView::unrelated(
            response,
            Some("plugin-test".into()),
            supplied.clone(),
            args.upstream.clone(),
        );
        let mut out = json!({ "plugins": plugins, "caller": supplied });
        return server_message(&chain, view, &mut out).await.map(|()| out);
    };

    let original = request.clone().into_value();
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
    if let Some(identity) = &supplied {
        call.set_identity(identity.clone());
    }
    if let Err(denial) = chain.on_request(&mut call).await {
        let mut out = denied(&denial, "request", plugins);
        out["caller"] = json!(supplied);
        return Ok(out);
    }
    let request = call.take_request(true).into_value();
    let identity_changed = call.identity() != supplied.as_ref();
    let changed = request != original
        || identity_changed
        || call.routed
        || !call.view().attributes.is_empty();
    let mut out = json!({
        "verdict": if changed { "modify" } else { "allow" },
        "plugins": plugins,
        "caller": supplied,
        "request": request,
        "identity": call.identity(),
        "identity_changed": identity_changed,
        "route": call.routed.then(|| json!({ "upstream": call.view().upstream, "target": call.view().upstream_target })),
        "attributes": call.view().attributes,
    });
    let Some(response) = response else {
        return Ok(out);
    };
    if response.kind() != Kind::Response {
        let view = call.view().relayed(response);
        server_message(&chain, view, &mut out).await?;
        return Ok(out);
    }
    let before = response.clone().into_value();
    match chain.on_response(&mut call, response).await {
        Ok(after) => {
            let after = after.into_value();
            if after != before {
                out["verdict"] = "modify".into();
            }
            out["response"] = after;
        }
        Err(denial) => {
            let mut d = denied(&denial, "response", out["plugins"].take());
            d["caller"] = out["caller"].take();
            return Ok(d);
        }
    }
    Ok(out)
}

/// Runs a server→client message through the response phase exactly as the server does
/// (`Chain::on_server_message`), into `out`.
async fn server_message(chain: &Chain, view: CallView, out: &mut Value) -> anyhow::Result<()> {
    let before = view.request.as_ref().clone();
    let is_request = before.kind() == Kind::Request;
    match chain.on_server_message(view).await {
        Ok((after, attributes)) => {
            let after = after.into_value();
            if after != before.into_value() || !attributes.is_empty() {
                out["verdict"] = "modify".into();
            } else if out["verdict"].is_null() {
                out["verdict"] = "allow".into();
            }
            out["server_message"] = after;
            out["server_message_attributes"] = json!(attributes);
        }
        Err(denial) => {
            let plugins = out["plugins"].take();
            let caller = out["caller"].take();
            *out = denied(&denial, "response", plugins);
            out["caller"] = caller;
            out["server_message_outcome"] = if is_request {
                "answered to the upstream with the error; the client never sees it"
            } else {
                "dropped; the client never sees it"
            }
            .into();
        }
    }
    Ok(())
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
    if !o["caller"].is_null() {
        println!("caller:     {} (given with --identity)", o["caller"]);
    }
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
        if let Some(what) = o["server_message_outcome"].as_str() {
            println!("message:    {what}");
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
    if o["identity_changed"] == true {
        println!("identity:   {} (set by the chain)", o["identity"]);
    }
    if !o["route"].is_null() {
        println!("route:      {}", o["route"]);
    }
    if o["attributes"].as_object().is_some_and(|a| !a.is_empty()) {
        println!("attributes: {}", o["attributes"]);
    }
    if !o["request"].is_null() {
        println!("request:    {}", o["request"]);
    }
    if !o["response"].is_null() {
        println!("response:   {}", o["response"]);
    }
    if !o["server_message"].is_null() {
        println!("server msg: {}", o["server_message"]);
    }
    if o["server_message_attributes"]
        .as_object()
        .is_some_and(|a| !a.is_empty())
    {
        println!(
            "attributes: {} (on the server message)",
            o["server_message_attributes"]
        );
    }
}
