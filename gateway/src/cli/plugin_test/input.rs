//! What `plugin test` reads: the messages in the files given, checked, and the recorded upstream.

use std::path::Path;

use serde_json::{Value, json};

use portcullis::catalog::ListKind;
use portcullis::mcp::{Kind, Message};

use super::TestArgs;

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
pub(super) struct Input {
    pub(super) request: Option<Message>,
    pub(super) answer: Option<Message>,
    /// What the upstream sends besides its answer, in order.
    pub(super) sent: Vec<Message>,
}

pub(super) fn read_input(args: &TestArgs) -> anyhow::Result<Input> {
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
pub(super) fn recorded_upstream(
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
