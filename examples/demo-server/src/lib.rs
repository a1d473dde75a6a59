//! The demo upstream MCP server that Portcullis' embedded default configuration runs.
//!
//! `portcullis serve` without `--config` starts this server as a child process
//! (`portcullis demo-upstream`, which calls [`serve_stdio`]) so that a fresh install has
//! something friendly to route to. It is also a small, complete example of an MCP server
//! written with `rmcp`, and the end-to-end tests use it as a well-behaved upstream.
//!
//! What it offers (all of it harmless, deterministic fake data):
//!
//! - tools: `echo` (text back), `add` (two numbers; structured content plus a text
//!   rendering, with an `outputSchema`), `get_weather` (made-up weather for a city, with an
//!   `outputSchema`) and `slow_count` (counts slowly, reporting `notifications/progress` when
//!   the caller sends a progress token and a `notifications/message` log line per step; it
//!   stops early when the call is cancelled);
//! - a prompt, `review_code` (`code` required, `language` optional);
//! - resources `demo://readme` and `demo://cities`, and the template
//!   `demo://greeting/{name}`;
//! - completion for the prompt's `language` and the template's `name`, and
//!   `logging/setLevel`, which filters the log lines `slow_count` sends.
//!
//! Two transports: [`serve_stdio`] (newline-delimited JSON-RPC on stdin/stdout, until EOF)
//! and [`serve_http`] (MCP Streamable HTTP at one path, with sessions, served by hyper).

mod server;

use std::{convert::Infallible, sync::Arc};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
};
use hyper_util::rt::TokioIo;
use rmcp::{
    ServiceExt,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};

pub use server::DemoServer;

/// Serves one MCP client on this process' stdin and stdout until stdin reaches EOF (or the
/// client otherwise closes the connection).
pub async fn serve_stdio() -> anyhow::Result<()> {
    let running = DemoServer::new()
        .serve(rmcp::transport::stdio_pipes())
        .await?;
    running.waiting().await?;
    Ok(())
}

/// Serves MCP over Streamable HTTP on `listener`, answering at `path` (for example `/mcp`)
/// and with 404 everywhere else. Every client session gets its own [`DemoServer`].
///
/// Runs until accepting a connection fails; drop (abort) the future to stop it.
/// Requests whose `Host` is not a loopback name are refused with 403 (DNS-rebinding
/// protection, rmcp's default).
pub async fn serve_http(listener: tokio::net::TcpListener, path: &str) -> anyhow::Result<()> {
    let mcp = StreamableHttpService::new(
        || Ok(DemoServer::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let path: Arc<str> = Arc::from(path);
    loop {
        let (stream, _) = listener.accept().await?;
        // Without it, Nagle + delayed ACK hold back each small SSE event by ~40 ms.
        stream.set_nodelay(true)?;
        let mcp = mcp.clone();
        let path = path.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mcp = mcp.clone();
            let path = path.clone();
            async move {
                let response = if request.uri().path() == &*path {
                    mcp.handle(request).await
                } else {
                    not_found()
                };
                Ok::<_, Infallible>(response)
            }
        });
        tokio::spawn(async move {
            // A client that goes away mid-stream is routine for SSE; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn not_found() -> Response<BoxBody<Bytes, Infallible>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"Not Found")).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}
