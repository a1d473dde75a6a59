//! `examples/portcullis.toml` works as written once the README's first command has built the
//! gateway: `portcullis check` accepts it and the gateway serves the demo upstream through it.

use std::path::PathBuf;
use std::process::Stdio;

use portcullis_tests::harness::{Gateway, bin_path, call_tool, client, text_of};
use serde_json::json;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/portcullis.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_checks_and_serves_the_demo_tools() {
    let checked = tokio::process::Command::new(bin_path("portcullis"))
        .arg("check")
        .arg("--config")
        .arg(example())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run portcullis check");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let gateway = Gateway::start_file(&example()).await;
    let client = client(gateway.url()).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(
        tools.iter().any(|t| t.name == "demo__echo"),
        "{tools:?}\n{}",
        gateway.logs()
    );
    let echoed = call_tool(&client, "demo__echo", json!({ "text": "from the example" }))
        .await
        .expect("demo__echo");
    assert!(text_of(&echoed).contains("from the example"), "{echoed:?}");
    client.cancel().await.unwrap();
}
