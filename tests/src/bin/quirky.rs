//! `quirky [--notify-before-initialize] [--hang-lists]`: a tiny stdio MCP server (session
//! era only) with the habits of real servers that a gateway must survive.
//!
//! - `--notify-before-initialize`: on `initialize`, first writes
//!   `notifications/tools/list_changed`, `notifications/prompts/list_changed` and a
//!   `notifications/message` log line, then the answer (as
//!   `@modelcontextprotocol/server-everything` does).
//! - `--hang-lists`: never answers `tools/list`, `prompts/list` or `resources/list` (a
//!   hung server); everything else is answered.
//! - `--list-delay MS`: answers those lists only after `MS` milliseconds (a slow server).
//!
//! Tools: `hello` and `echo(text)`; prompt: `greeting`. It does not know `server/discover`
//! (a JSON-RPC "method not found", like session-era SDKs).

use std::io::{BufRead, Write};

use serde_json::{Value, json};

fn main() {
    let mut notify_first = false;
    let mut hang_lists = false;
    let mut list_delay = std::time::Duration::ZERO;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--notify-before-initialize" => notify_first = true,
            "--hang-lists" => hang_lists = true,
            "--list-delay" => {
                let ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                list_delay = std::time::Duration::from_millis(ms);
            }
            other => {
                eprintln!(
                    "unexpected argument {other:?}; usage: quirky [--notify-before-initialize] [--hang-lists] [--list-delay MS]"
                );
                std::process::exit(2);
            }
        }
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut write = |v: Value| {
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    };
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = msg.get("id").cloned() else {
            continue; // a notification
        };
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            continue; // an answer
        };
        let result = match method {
            "initialize" => {
                if notify_first {
                    for m in [
                        "notifications/tools/list_changed",
                        "notifications/prompts/list_changed",
                    ] {
                        write(json!({ "jsonrpc": "2.0", "method": m }));
                    }
                    write(json!({ "jsonrpc": "2.0", "method": "notifications/message",
                        "params": { "level": "info", "data": "quirky is starting" } }));
                }
                json!({
                    "protocolVersion": msg["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
                    "capabilities": { "tools": { "listChanged": true }, "prompts": { "listChanged": true }, "logging": {} },
                    "serverInfo": { "name": "quirky", "version": "1.0.0" },
                })
            }
            "tools/list" | "prompts/list" | "resources/list" if hang_lists => continue,
            "tools/list" | "prompts/list" if !list_delay.is_zero() => {
                std::thread::sleep(list_delay);
                lists(method)
            }
            "tools/list" | "prompts/list" => lists(method),
            "tools/call" => {
                let text = match msg["params"]["name"].as_str() {
                    Some("hello") => "hello from quirky".to_string(),
                    _ => msg["params"]["arguments"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                };
                json!({ "content": [ { "type": "text", "text": text } ] })
            }
            "ping" | "logging/setLevel" => json!({}),
            _ => {
                write(json!({ "jsonrpc": "2.0", "id": id,
                    "error": { "code": -32601, "message": format!("Method not found: {method}") } }));
                continue;
            }
        };
        write(json!({ "jsonrpc": "2.0", "id": id, "result": result }));
    }
}

fn lists(method: &str) -> Value {
    if method == "prompts/list" {
        return json!({ "prompts": [ { "name": "greeting" } ] });
    }
    json!({ "tools": [
        { "name": "hello", "inputSchema": { "type": "object" } },
        { "name": "echo", "inputSchema": { "type": "object", "properties": { "text": { "type": "string" } } } },
    ] })
}
