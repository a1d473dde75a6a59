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

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use portcullis::catalog::ListKind;
use portcullis::front::offline::{Outcome, Rehearsal};
use portcullis::mcp::{Kind, Message};
use portcullis::policy::trace::{Pass, Trace, Verdict};
use portcullis::policy::{Denial, Identity, Phase, Policies, RuntimeConfig};
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

/// Longest wait for what the session screens outside any request (a safety net: the wait
/// ends as soon as the chain is done with every message).
const PATIENCE: Duration = Duration::from_secs(5);

fn read_message(path: &Path) -> anyhow::Result<Message> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
    };
    Message::parse(text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// What `--message` may be: a client's request or notification.
fn check_client_message(msg: &Message) -> anyhow::Result<()> {
    match msg.kind() {
        Kind::Response => anyhow::bail!(
            "--message is a response (it has `result` or `error`): give it with \
             --upstream-answer (or --response), after the --message request it answers"
        ),
        _ if SERVER_ONLY.contains(&msg.method()) => anyhow::bail!(
            "--message is `{}`, which an upstream sends the client: the request phase never sees \
             it. Give it with --upstream-message (or --response), after the --message request \
             that caused it, or alone to screen it as outside any request",
            msg.method()
        ),
        _ => Ok(()),
    }
}

/// What an upstream may send the client besides answers.
fn check_server_message(flag: &str, msg: &Message) -> anyhow::Result<()> {
    if msg.kind() == Kind::Request && !SERVER_ONLY.contains(&msg.method()) {
        anyhow::bail!(
            "{flag} is a `{}` request, which a client sends: the response phase sees answers \
             (with `result` or `error`) and what an upstream sends the client (notifications, \
             sampling/elicitation/roots requests)",
            msg.method()
        );
    }
    Ok(())
}

/// The recorded exchange the command line describes.
struct Input {
    request: Option<Message>,
    answer: Option<Message>,
    /// What the upstream sends besides its answer, in order.
    sent: Vec<Message>,
}

fn read_input(args: &TestArgs) -> anyhow::Result<Input> {
    let request = args.message.as_deref().map(read_message).transpose()?;
    if let Some(r) = &request {
        check_client_message(r)?;
    }
    let mut answer = None;
    let mut sent = Vec::new();
    for path in &args.upstream_messages {
        let m = read_message(path)?;
        if m.kind() == Kind::Response {
            anyhow::bail!(
                "--upstream-message {} is an answer: give it with --upstream-answer",
                path.display()
            );
        }
        check_server_message("--upstream-message", &m)?;
        sent.push(m);
    }
    if let Some(r) = args.response.as_deref().map(read_message).transpose()? {
        check_server_message("--response", &r)?;
        if r.kind() == Kind::Response {
            answer = Some(r);
        } else {
            sent.push(r);
        }
    }
    if let Some(path) = &args.upstream_answer {
        let a = read_message(path)?;
        if a.kind() != Kind::Response {
            anyhow::bail!(
                "--upstream-answer {} is not an answer (it has no `result` or `error`): give a \
                 notification or request the upstream sends with --upstream-message",
                path.display()
            );
        }
        if answer.is_some() {
            anyhow::bail!("--response and --upstream-answer are both an answer: give one");
        }
        answer = Some(a);
    }
    if answer.is_some() && request.is_none() {
        let flag = match args.upstream_answer {
            Some(_) => "--upstream-answer",
            None => "--response",
        };
        anyhow::bail!("{flag} is an answer: give the request it answers with --message");
    }
    Ok(Input {
        request,
        answer,
        sent,
    })
}

/// The recorded upstream's name and what its lists offer, so that the gateway resolves the
/// requested name to it (as a gateway with this one upstream would).
fn recorded_upstream(
    request: Option<&Message>,
    hint: Option<&str>,
) -> anyhow::Result<(String, Option<(ListKind, Value)>)> {
    let kind = request.and_then(|r| match r.method() {
        "tools/call" => Some(ListKind::Tools),
        "prompts/get" => Some(ListKind::Prompts),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Some(ListKind::Resources)
        }
        _ => None,
    });
    let asked = request
        .and_then(|r| r.param_str("name").or(r.param_str("uri")))
        .unwrap_or_default();
    let (name, own) = match hint.map(|h| h.split_once(':').unwrap_or((h, ""))) {
        Some((up, own)) if !own.is_empty() => {
            let prefixed = format!("{up}__{own}");
            if kind.is_some() && asked != own && asked != prefixed {
                anyhow::bail!(
                    "--upstream {up}:{own}: the gateway would route `{asked}` elsewhere; name it \
                     `{prefixed}` (or `{own}`) in --message"
                );
            }
            (up.to_string(), own.to_string())
        }
        Some((up, _)) => {
            let own = asked.strip_prefix(&format!("{up}__")).unwrap_or(asked);
            (up.to_string(), own.to_string())
        }
        None => match asked.split_once("__") {
            Some((up, own))
                if !up.is_empty() && !own.is_empty() && kind != Some(ListKind::Resources) =>
            {
                (up.to_string(), own.to_string())
            }
            _ => ("upstream".to_string(), asked.to_string()),
        },
    };
    anyhow::ensure!(
        !name.is_empty() && !name.contains('+'),
        "--upstream {name:?}: not an upstream name"
    );
    let offers = kind.map(|k| {
        let item = match k {
            ListKind::Resources => json!({ "uri": own, "name": own }),
            _ => json!({ "name": own, "inputSchema": { "type": "object" } }),
        };
        (k, item)
    });
    Ok((name, offers))
}

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

/// One entry per message the chain ran over, in order: where it came from, each plugin's
/// verdict, what became of it.
fn reports(passes: &[Pass], upstream_received: &[Message]) -> Vec<Value> {
    // The upstream gets one answer per request of its that a policy refused, in order.
    let mut refusals = upstream_received
        .iter()
        .filter(|m| m.kind() == Kind::Response);
    passes
        .iter()
        .map(|p| {
            let (from, message, after) = match (p.phase, p.is_answer()) {
                (Phase::Request, _) => (
                    "client",
                    p.start.request.as_ref(),
                    p.end.as_ref().map(|e| e.request.as_ref()),
                ),
                (Phase::Response, true) => (
                    "upstream",
                    p.start
                        .response
                        .as_deref()
                        .unwrap_or(p.start.request.as_ref()),
                    p.end.as_ref().and_then(|e| e.response.as_deref()),
                ),
                (Phase::Response, false) => (
                    "upstream",
                    p.start.request.as_ref(),
                    p.end.as_ref().map(|e| e.request.as_ref()),
                ),
            };
            let steps: Vec<Value> = p
                .steps
                .iter()
                .map(|s| match &s.verdict {
                    Verdict::Allow => json!({ "plugin": &*s.plugin, "verdict": "allow" }),
                    Verdict::Modify(what) => {
                        json!({ "plugin": &*s.plugin, "verdict": "modify", "changed": what })
                    }
                    Verdict::Deny(d) => json!({
                        "plugin": &*s.plugin, "verdict": "deny",
                        "error": { "code": d.code, "message": d.message },
                    }),
                    Verdict::FailedOpen(why) => {
                        json!({ "plugin": &*s.plugin, "verdict": "failed-open", "error": why })
                    }
                    Verdict::Skipped => json!({
                        "plugin": &*s.plugin, "verdict": "skipped",
                        "reason": "its sidecar's [phases] leaves this method out: not called",
                    }),
                })
                .collect();
            let outcome = match (p.phase, &p.end, message.kind()) {
                _ if p.steps.is_empty() => {
                    "passed unseen: no plugin in the chain handles this phase"
                }
                _ if !p.seen() => {
                    "passed unseen: every plugin of this phase skips this method ([phases])"
                }
                (Phase::Request, Some(_), _) => "forwarded",
                (Phase::Request, None, _) => "denied; the client gets the error",
                (_, Some(_), _) => "to the client",
                (_, None, Kind::Request) => {
                    "answered to the upstream with the error; the client never sees it"
                }
                (_, None, Kind::Response) => "replaced by the error; the client gets the error",
                (_, None, Kind::Notification) => "dropped; the client never sees it",
            };
            let mut report = json!({
                "from": from,
                "phase": if p.phase == Phase::Request { "request" } else { "response" },
                "method": match p.is_answer() {
                    true => format!("answer to {}", p.start.request.method()),
                    false => message.method().to_string(),
                },
                "message": message.clone().into_value(),
                "plugins": steps,
                "outcome": outcome,
            });
            if let Some(after) = after {
                report["after"] = after.clone().into_value();
            }
            if p.phase == Phase::Response
                && p.end.is_none()
                && message.kind() == Kind::Request
                && let Some(answer) = refusals.next()
            {
                report["upstream_got"] = answer.clone().into_value();
            }
            report
        })
        .collect()
}

/// The overall verdict and the summary fields (request as forwarded, identity, route,
/// answer, server message) from the passes.
fn summarize(out: &mut Value, passes: &[Pass], supplied: Option<&Identity>, client: &[Message]) {
    let seen: Vec<&Pass> = passes.iter().filter(|p| p.seen()).collect();
    let refusal = seen.iter().find_map(|p| {
        p.steps.iter().find_map(|s| match &s.verdict {
            Verdict::Deny(d) => Some((*p, d.clone())),
            _ => None,
        })
    });
    let changed = seen.iter().any(|p| {
        p.steps
            .iter()
            .any(|s| matches!(s.verdict, Verdict::Modify(_)))
    });
    out["verdict"] = match (&refusal, changed, seen.is_empty()) {
        (Some(_), _, _) => "deny",
        (None, true, _) => "modify",
        (None, false, false) => "allow",
        (None, false, true) => "unseen",
    }
    .into();
    if let Some(request) = passes.iter().find(|p| p.phase == Phase::Request)
        && let Some(end) = &request.end
    {
        out["request"] = end.request.as_ref().clone().into_value();
        out["identity"] = json!(end.identity);
        out["identity_changed"] = (end.identity.as_ref() != supplied).into();
        out["attributes"] = json!(end.attributes);
        if request.routed {
            out["route"] = json!({ "upstream": end.upstream, "target": end.upstream_target });
        }
    }
    if let Some(answer) = client.iter().rev().find(|m| m.kind() == Kind::Response) {
        out["response"] = answer.clone().into_value();
    }
    if let Some(first) = passes
        .iter()
        .find(|p| p.phase == Phase::Response && !p.is_answer())
        && let Some(end) = &first.end
    {
        out["server_message"] = end.request.as_ref().clone().into_value();
        let set: serde_json::Map<String, Value> = end
            .attributes
            .iter()
            .filter(|(k, v)| first.start.attributes.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out["server_message_attributes"] = set.into();
    }
    if let Some((pass, denial)) = refusal {
        let phase = if pass.phase == Phase::Request {
            "request"
        } else {
            "response"
        };
        let summary = denied(&denial, phase, Value::Null);
        for key in ["phase", "denied_by", "error", "http_status", "http_headers"] {
            out[key] = summary[key].clone();
        }
        if pass.phase == Phase::Response && !pass.is_answer() {
            out["server_message_outcome"] = if pass.start.request.kind() == Kind::Request {
                "answered to the upstream with the error; the client never sees it"
            } else {
                "dropped; the client never sees it"
            }
            .into();
        }
    }
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
    for (n, m) in o["messages"].as_array().into_iter().flatten().enumerate() {
        println!(
            "message {}:  {} {} ({} phase)",
            n + 1,
            m["from"].as_str().unwrap_or("?"),
            m["method"].as_str().unwrap_or("?"),
            m["phase"].as_str().unwrap_or("?")
        );
        for s in m["plugins"].as_array().into_iter().flatten() {
            let detail = match s["verdict"].as_str() {
                Some("modify") => format!(" ({})", join(&s["changed"])),
                Some("deny") => format!(
                    " ({} {})",
                    s["error"]["code"],
                    s["error"]["message"].as_str().unwrap_or("")
                ),
                Some("failed-open") => format!(" ({})", s["error"].as_str().unwrap_or("")),
                Some("skipped") => " (not called: [phases] in its sidecar)".to_string(),
                _ => String::new(),
            };
            println!(
                "  {:<18} {}{detail}",
                s["plugin"].as_str().unwrap_or("?"),
                s["verdict"].as_str().unwrap_or("?")
            );
        }
        println!("  → {}", m["outcome"].as_str().unwrap_or("?"));
        if !m["upstream_got"].is_null() {
            println!("  upstream gets: {}", m["upstream_got"]);
        }
    }
    if o["messages"].as_array().is_some()
        && o["answer_recorded"] == false
        && o["response"].is_null()
        && o["verdict"] != "deny"
    {
        println!("answer:     not recorded (give it with --upstream-answer)");
    }
    if !o["request"].is_null() {
        println!("request:    {}", o["request"]);
    }
    for m in o["client"].as_array().into_iter().flatten() {
        println!("client:     {m}");
    }
    for m in o["session_stream"].as_array().into_iter().flatten() {
        println!("client:     {m} (on the session's stream)");
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

fn join(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
