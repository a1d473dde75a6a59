//! `portcullis-demo-server [--http ADDR]`: the demo upstream MCP server as a program.
//!
//! Without arguments it serves one client on stdin/stdout until EOF. With `--http ADDR`
//! (for example `127.0.0.1:0`) it binds `ADDR`, prints exactly one line,
//! `listening on http://BOUND/mcp`, and serves MCP Streamable HTTP at `/mcp`.

use std::io::Write as _;

const USAGE: &str = "usage: portcullis-demo-server [--http ADDR]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut http = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => match args.next() {
                Some(addr) => http = Some(addr),
                None => anyhow::bail!("--http needs an address\n{USAGE}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    match http {
        None => portcullis_demo_server::serve_stdio().await,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let bound = listener.local_addr()?;
            let mut stdout = std::io::stdout();
            writeln!(stdout, "listening on http://{bound}/mcp")?;
            stdout.flush()?;
            portcullis_demo_server::serve_http(listener, "/mcp").await
        }
    }
}
