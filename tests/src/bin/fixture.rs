//! `fixture (--stdio [--initialize-first] | --http ADDR) [--name NAME] [--dynamic-tool-after MS] [--era SHAPE]`: the
//! conformance fixture server (see `portcullis_tests::fixture`) as a program.
//!
//! `--http ADDR` binds `ADDR` (for example `127.0.0.1:0`), prints exactly one line,
//! `listening on http://BOUND/mcp`, and serves MCP Streamable HTTP at `/mcp`. `--stdio`
//! serves one client on stdin/stdout until EOF; with `--initialize-first` it exits if the first
//! message is not `initialize`, as older SDKs do. `--name` sets `serverInfo.name`. `--era`
//! picks the eras it serves: `dual` (default), `session`, `stateless` (2026-07-28 only) or
//! `dual-advertising-stateless` (both, but `server/discover` names only 2026-07-28).

use std::{io::Write as _, time::Duration};

use portcullis_tests::fixture::{self, Options};

const USAGE: &str = "usage: fixture (--stdio [--initialize-first] | --http ADDR) [--name NAME] [--dynamic-tool-after MS] [--era dual|session|stateless|dual-advertising-stateless]";

enum Mode {
    Stdio,
    Http(String),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut mode = None;
    let mut options = Options::default();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--stdio" => mode = Some(Mode::Stdio),
            "--http" => mode = Some(Mode::Http(value("--http")?)),
            "--name" => options.name = value("--name")?,
            "--initialize-first" => options.initialize_first = true,
            "--era" => options.era = value("--era")?.parse()?,
            "--dynamic-tool-after" => {
                let ms: u64 = value("--dynamic-tool-after")?.parse()?;
                options.dynamic_tool_after = Some(Duration::from_millis(ms));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    match mode {
        Some(Mode::Stdio) => fixture::serve_stdio(options).await,
        Some(Mode::Http(addr)) => {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let bound = listener.local_addr()?;
            let mut stdout = std::io::stdout();
            writeln!(stdout, "listening on http://{bound}{}", fixture::MCP_PATH)?;
            stdout.flush()?;
            fixture::serve_http(listener, options).await
        }
        None => anyhow::bail!("choose --stdio or --http ADDR\n{USAGE}"),
    }
}
