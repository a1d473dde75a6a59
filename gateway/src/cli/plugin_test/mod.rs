//! `portcullis plugin test`: a recorded exchange through the pipeline `serve` runs.
//!
//! The client's message (`--message`) goes through the server's own steps
//! (`portcullis::front::offline`, the step a session-era POST takes once its body is read):
//! the request phase (authn first), the target resolved once, the forward — to a recorded
//! upstream that first sends what `--upstream-message` holds (progress, log lines, sampling
//! and elicitation requests) and then answers with `--upstream-answer` — and the response
//! phase of each of those and of the answer. It prints, in order, each message with each
//! plugin's verdict on it, and what the client receives.
//!
//! Verdicts are what happened: `allow` means a plugin saw the message and let it through
//! unchanged, `modify` names what changed, a message no plugin saw is `unseen`; an identity
//! given with `--identity` is shown apart as the caller. Exit code: 0 allowed (changed or
//! not), 1 a message was denied, 2 the plugin(s) could not be loaded or the input is invalid.
//!
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | the command: load the plugins, run the rehearsal, gather the passes |
//! | `input.rs` | the files given on the command line: checked messages and the recorded upstream |
//! | `report.rs` | the outcome: one entry per message with each plugin's verdict, as JSON or text |

mod input;
mod report;

use input::{read_input, recorded_upstream};
use report::{denied, print_text, reports, summarize};

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use portcullis::front::offline::{Outcome, Rehearsal};
use portcullis::mcp::{Kind, Message};
use portcullis::policy::trace::{Pass, Trace};
use portcullis::policy::{Identity, Phase, Policies, RuntimeConfig};
use portcullis::upstream::{Recording, Upstream};

#[derive(Args)]
pub struct TestArgs {
    /// A `.wasm` plugin, or a plugins folder (runs the whole chain, sidecars included).
    pub plugin: PathBuf,
    /// The client's request (or notification), a JSON-RPC message in a file (`-` for stdin).
    #[arg(long, required_unless_present_any = ["response", "upstream_messages"])]
    pub message: Option<PathBuf>,
    /// The upstream's answer to --message, as the upstream sends it (e.g. a recorded
    /// `tools/call` result). Without it the answer is not recorded and not reported.
    #[arg(long, value_name = "FILE")]
    pub upstream_answer: Option<PathBuf>,
    /// A notification or request the upstream sends the client before its answer
    /// (`notifications/progress`, `notifications/message`, `sampling/createMessage`,
    /// `elicitation/create`, …), in the order given (repeatable). Without --message, sent
    /// outside any request.
    #[arg(long = "upstream-message", value_name = "FILE")]
    pub upstream_messages: Vec<PathBuf>,
    /// What comes back: an answer (as --upstream-answer) or one message the upstream sends
    /// the client (as --upstream-message).
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
    /// The recorded upstream, `upstream` or `upstream:name` (its own name for the tool,
    /// prompt or resource the request names). Default: the prefix of the requested name
    /// (`files__read_file` → `files`), else `upstream`.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
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

/// Longest wait for what the session screens outside any request (a safety net: the wait
/// ends as soon as the chain is done with every message).
const PATIENCE: Duration = Duration::from_secs(5);

async fn load(args: &TestArgs) -> anyhow::Result<Arc<Policies>> {
    let runtime = RuntimeConfig {
        max_instances: 8,
        ..RuntimeConfig::default()
    };
    if args.plugin.is_dir() {
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
        Ok(p)
    } else {
        let sidecar = args
            .config
            .clone()
            .unwrap_or_else(|| args.plugin.with_extension("toml"));
        Policies::single(&args.plugin, &sidecar, runtime).await
    }
}

async fn evaluate(args: &TestArgs) -> anyhow::Result<Value> {
    // Read and check the input before loading anything: a wrong input costs no compile.
    let input = read_input(args)?;
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
    let (upstream_name, offers) =
        recorded_upstream(input.request.as_ref(), args.upstream.as_deref())?;

    let policies = load(args).await?;
    let chain = policies.chain();
    // A phase no plugin handles would pass unseen and print a verdict nobody gave.
    let screened = chain.wants(Phase::Response);
    if args.response.is_some() && !screened {
        anyhow::bail!(
            "no plugin in the chain handles the response phase: --response would pass unseen"
        );
    }
    let upstream_side = input.answer.is_some() || !input.sent.is_empty();
    if upstream_side && !screened {
        eprintln!(
            "portcullis plugin test: note: no plugin in the chain handles the response phase; \
             what the upstream sends reaches the client unseen"
        );
    }
    if input.request.is_some() && !chain.wants(Phase::Request) {
        if !upstream_side {
            anyhow::bail!(
                "no plugin in the chain handles the request phase: --message would pass unseen \
                 (give --upstream-answer or --upstream-message to test the response phase)"
            );
        }
        eprintln!(
            "portcullis plugin test: note: no plugin in the chain handles the request phase; \
             --message only sets the context of what the upstream sends"
        );
    }
    let plugins: Value = chain
        .plugins()
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name, "version": p.version, "stage": p.stage, "sha256": p.sha256,
                "phases": {
                    "request": p.methods(Phase::Request).describe(),
                    "response": p.methods(Phase::Response).describe(),
                },
            })
        })
        .collect::<Vec<_>>()
        .into();
    let trace = Arc::new(Trace::default());
    chain.keep_trace(trace.clone());

    let answer_recorded = input.answer.is_some();
    let sent_count = input.sent.len();
    let recording = Arc::new(Recording {
        method: input
            .request
            .as_ref()
            .map(|r| r.method().to_string())
            .unwrap_or_default(),
        before: if input.request.is_some() {
            input.sent.clone()
        } else {
            Vec::new()
        },
        answer: input.answer,
        offers,
        received: Default::default(),
        sent: Default::default(),
    });
    let upstream = Upstream::recorded(&upstream_name, recording.clone())?;
    let rehearsal = Rehearsal::open(policies.clone(), upstream, supplied.clone()).await?;

    let mut out = json!({ "plugins": plugins, "caller": supplied, "upstream": upstream_name });
    let mut on_request_stream = Vec::new();
    let has_request = input.request.is_some();
    match input.request {
        Some(request) => match rehearsal.send(request, headers).await {
            Outcome::Denied(denial) => {
                let mut d = denied(&denial, "request", out["plugins"].take());
                d["caller"] = out["caller"].take();
                d["messages"] = reports(&trace.passes(), &[]).into();
                return Ok(d);
            }
            Outcome::Refused(status) => {
                anyhow::bail!("the gateway refused the message with HTTP {status}")
            }
            Outcome::Delivered(got) => on_request_stream = got,
        },
        None => {
            for m in input.sent {
                rehearsal.from_upstream(m);
            }
        }
    }
    if on_request_stream.last().is_some_and(stand_in) {
        // The stand-in for an answer nobody recorded is not what a client would see.
        on_request_stream.pop();
    }
    // What the upstream sent (not all of it, when the request never reached it) went
    // through the session; what it screens outside any request ends on its own stream.
    let sent_count = match has_request {
        true => recording.sent.load(std::sync::atomic::Ordering::Relaxed),
        false => sent_count,
    };
    let passes = settle(&trace, screened, sent_count).await;
    let passed = if screened {
        passes
            .iter()
            .filter(|p| p.phase == Phase::Response && !p.is_answer() && p.end.is_some())
            .count()
    } else {
        sent_count
    };
    let related = on_request_stream
        .iter()
        .filter(|m| m.kind() != Kind::Response)
        .count();
    let on_session_stream = rehearsal
        .session_stream(passed.saturating_sub(related), PATIENCE)
        .await;

    let passes: Vec<Pass> = passes
        .into_iter()
        .filter(|p| !p.start.response.as_deref().is_some_and(stand_in))
        .collect();
    out["messages"] = reports(&passes, &recording.received()).into();
    out["client"] = on_request_stream
        .iter()
        .map(|m| m.clone().into_value())
        .collect::<Vec<_>>()
        .into();
    out["session_stream"] = on_session_stream
        .iter()
        .map(|m| m.clone().into_value())
        .collect::<Vec<_>>()
        .into();
    out["upstream_received"] = recording
        .received()
        .into_iter()
        .map(Message::into_value)
        .collect::<Vec<_>>()
        .into();
    out["answer_recorded"] = answer_recorded.into();
    summarize(&mut out, &passes, supplied.as_ref(), &on_request_stream);
    Ok(out)
}

/// The recorded upstream's answer when none was recorded (the gateway's own answers, to
/// `ping` or `initialize`, are real).
fn stand_in(msg: &Message) -> bool {
    msg.error_value()
        .is_some_and(|e| e["message"] == portcullis::upstream::NOT_RECORDED)
}

/// Waits until the chain is done with every message (the session screens what comes
/// outside a request in its own task), and gives the passes.
async fn settle(trace: &Trace, screened: bool, sent: usize) -> Vec<Pass> {
    let started = Instant::now();
    loop {
        let passes = trace.passes();
        let servers = passes
            .iter()
            .filter(|p| p.phase == Phase::Response && !p.is_answer())
            .count();
        let done = passes.iter().all(|p| p.done) && (!screened || servers >= sent);
        if done || started.elapsed() > PATIENCE {
            return passes;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
