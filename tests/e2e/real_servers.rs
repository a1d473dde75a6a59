//! Real third-party MCP servers behind the gateway, as a new user runs them:
//! `@modelcontextprotocol/server-everything` (stdio and Streamable HTTP),
//! `@modelcontextprotocol/server-filesystem` (stdio, npm) and `mcp-server-time` (stdio,
//! PyPI). `tests/servers/install.sh` installs them (pinned: `package-lock.json`,
//! `requirements.txt`) on first use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_tests::harness::{
    Gateway, McpClient, RecordingClient, TempDir, call_tool, client, client_with, server_toml,
    text_of, toml_str,
};
use rmcp::ServiceExt;
use serde_json::json;

fn servers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("servers")
}

/// Runs `tests/servers/install.sh` once per test process.
fn installed() -> PathBuf {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = std::process::Command::new(servers().join("install.sh"))
            .output()
            .expect("run tests/servers/install.sh");
        assert!(
            out.status.success(),
            "tests/servers/install.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    servers()
}

fn npm_bin(name: &str) -> String {
    installed()
        .join("node_modules/.bin")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The default `list-timeout` (5 s) is meant for a first contact on a machine that is not
/// starting dozens of Node and Python servers at once on two cores, as the whole suite does;
/// these tests are about what arrives, not how fast.
const PATIENT: &str = "list-timeout = \"30s\"\nconnect-timeout = \"30s\"\n";

fn stdio_toml(name: &str, command: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| toml_str(a)).collect();
    format!(
        "[upstreams.{name}]\ncommand = {}\nargs = [{}]\n{PATIENT}\n",
        toml_str(command),
        args.join(", ")
    )
}

async fn names_of(client: &McpClient) -> (Vec<String>, Vec<String>, usize) {
    let mut tools: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    tools.sort();
    let mut prompts: Vec<String> = client
        .list_all_prompts()
        .await
        .expect("prompts/list")
        .into_iter()
        .map(|p| p.name.to_string())
        .collect();
    prompts.sort();
    let resources = client
        .list_all_resources()
        .await
        .expect("resources/list")
        .len();
    (tools, prompts, resources)
}

fn strip(prefix: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| n.strip_prefix(prefix).unwrap_or(n).to_string())
        .collect()
}

/// What server-everything lists to a client with the test client's capabilities, asked
/// directly over stdio.
async fn everything_direct() -> (Vec<String>, Vec<String>, usize) {
    let transport = rmcp::transport::TokioChildProcess::new(tokio::process::Command::new(npm_bin(
        "mcp-server-everything",
    )))
    .expect("start server-everything");
    let direct = RecordingClient::new()
        .serve(transport)
        .await
        .expect("initialize server-everything directly");
    let names = names_of(&direct).await;
    direct.cancel().await.ok();
    names
}

async fn assert_first_lists_complete(
    gateway: &Gateway,
    direct: &(Vec<String>, Vec<String>, usize),
) {
    // Each session is a first contact (a stdio upstream gets a child per session).
    for session in 0..2 {
        let client = client(gateway.url()).await;
        let (tools, prompts, resources) = names_of(&client).await;
        assert_eq!(
            strip("everything__", &tools),
            direct.0,
            "session {session}: the first tools/list differs from the server's own"
        );
        assert_eq!(
            strip("everything__", &prompts),
            direct.1,
            "session {session}"
        );
        assert_eq!(resources, direct.2, "session {session}");
        client.cancel().await.unwrap();
    }
    assert!(
        !gateway.logs().contains("left out of"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_stdio_is_complete_in_every_first_list() {
    let direct = everything_direct().await;
    assert!(
        direct.0.len() >= 10,
        "server-everything lists {:?}",
        direct.0
    );
    let config = format!(
        "{}{}",
        server_toml(),
        stdio_toml("everything", &npm_bin("mcp-server-everything"), &[])
    );
    let gateway = Gateway::start(&config).await;
    assert_first_lists_complete(&gateway, &direct).await;
    let client = client(gateway.url()).await;
    let echoed = call_tool(&client, "everything__echo", json!({ "message": "through" }))
        .await
        .expect("echo");
    assert!(text_of(&echoed).contains("through"), "{echoed:?}");
    client.cancel().await.unwrap();
}

/// server-everything's Streamable HTTP server on a free port; killed on drop.
struct EverythingHttp {
    child: tokio::process::Child,
    url: String,
}

impl EverythingHttp {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(npm_bin("mcp-server-everything"))
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start server-everything over HTTP");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server-everything did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        EverythingHttp {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for EverythingHttp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_streamable_http_is_complete_in_every_first_list() {
    let direct = everything_direct().await;
    let server = EverythingHttp::start().await;
    let config = format!(
        "{}[upstreams.everything]\nurl = {}\n{PATIENT}\n",
        server_toml(),
        toml_str(&server.url)
    );
    let gateway = Gateway::start(&config).await;
    assert_first_lists_complete(&gateway, &direct).await;
    assert!(
        gateway.logs().contains("upstream=everything") && gateway.logs().contains("connected"),
        "no connected line for an HTTP upstream: {}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_filesystem_lists_and_reads_through_the_gateway() {
    let dir = TempDir::new();
    dir.write("notes.txt", "portcullis was here\n");
    let root = dir.path().to_string_lossy().into_owned();
    let config = format!(
        "{}{}",
        server_toml(),
        stdio_toml("files", &npm_bin("mcp-server-filesystem"), &[&root])
    );
    let gateway = Gateway::start(&config).await;
    let recorder = RecordingClient::new();
    let client = client_with(gateway.url(), recorder).await;
    let (tools, _, _) = names_of(&client).await;
    assert!(
        tools.contains(&"files__read_text_file".to_string())
            && tools.contains(&"files__list_directory".to_string()),
        "{tools:?}"
    );
    let path = dir.path().join("notes.txt");
    let read = call_tool(
        &client,
        "files__read_text_file",
        json!({ "path": path.to_string_lossy() }),
    )
    .await
    .expect("read_text_file");
    assert!(text_of(&read).contains("portcullis was here"), "{read:?}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_time_lists_and_answers_through_the_gateway() {
    let command = installed()
        .join(".venv/bin/mcp-server-time")
        .to_string_lossy()
        .into_owned();
    let config = format!(
        "{}{}",
        server_toml(),
        stdio_toml("time", &command, &["--local-timezone", "UTC"])
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    let (tools, _, _) = names_of(&client).await;
    assert!(
        tools.contains(&"time__get_current_time".to_string())
            && tools.contains(&"time__convert_time".to_string()),
        "{tools:?}"
    );
    let now = call_tool(
        &client,
        "time__get_current_time",
        json!({ "timezone": "Europe/Paris" }),
    )
    .await
    .expect("get_current_time");
    assert!(text_of(&now).contains("Europe/Paris"), "{now:?}");
    client.cancel().await.unwrap();
}
