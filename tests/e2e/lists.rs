//! Aggregate lists with upstreams that misbehave the way real ones do: notifications before
//! the `initialize` answer, lists that hang, lists that come late.

use std::time::{Duration, Instant};

use portcullis_tests::harness::{
    ClientEvent, Gateway, McpClient, RecordingClient, bin_path, client, client_with, server_toml,
    stdio_fixture_toml, toml_str,
};

const ADMIN_TOKEN: &str = "e2e-lists-admin-token-0123";

/// `[upstreams.NAME]` running `quirky` with these flags.
fn quirky_toml(name: &str, flags: &[&str], extra: &str) -> String {
    let args: Vec<String> = flags.iter().map(|f| toml_str(f)).collect();
    format!(
        "[upstreams.{name}]\ncommand = {}\nargs = [{}]\n{extra}\n",
        toml_str(&bin_path("quirky").to_string_lossy()),
        args.join(", ")
    )
}

async fn tool_names(client: &McpClient) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

async fn metrics(gateway: &Gateway) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = loop {
        if let Some(url) = gateway
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("portcullis admin listening on "))
        {
            break url.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no admin listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    reqwest::Client::new()
        .get(format!("{admin}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_notifies_before_its_initialize_answer_is_in_the_first_list() {
    let config = format!(
        "{}{}{}",
        server_toml(),
        quirky_toml("early", &["--notify-before-initialize"], ""),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    // Every session starts its own child, so every session's first list is a first contact.
    for _ in 0..2 {
        let client = client(gateway.url()).await;
        let names = tool_names(&client).await;
        assert!(
            names.contains(&"early__hello".to_string())
                && names.contains(&"early__echo".to_string()),
            "the first list lost the upstream that spoke before its initialize answer: {names:?}"
        );
        assert!(names.contains(&"alpha__echo".to_string()), "{names:?}");
        let prompts = client.list_all_prompts().await.expect("prompts/list");
        assert!(
            prompts.iter().any(|p| p.name == "early__greeting"),
            "{prompts:?}"
        );
        client.cancel().await.unwrap();
    }
    assert!(
        !gateway.logs().contains("left out of"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_is_left_out_within_its_list_timeout_logged_and_counted() {
    let config = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{}{}",
        server_toml(),
        quirky_toml("hung", &["--hang-lists"], "list-timeout = \"2s\""),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;

    // The upstream's own `timeout` (60 s) would hold the list; its list-timeout does not.
    let first = Instant::now();
    let names = tool_names(&client).await;
    let first = first.elapsed();
    assert!(names.contains(&"alpha__echo".to_string()), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("hung__")), "{names:?}");
    assert!(
        first < Duration::from_secs(20),
        "the list waited {first:?} for a hung upstream"
    );
    let logs = gateway
        .wait_for_log("left out of tools/list", Duration::from_secs(5))
        .await;
    let line = logs
        .lines()
        .find(|l| l.contains("left out of tools/list"))
        .unwrap_or_default();
    assert!(
        line.contains("upstream=hung") && line.contains("list-timeout"),
        "{line}"
    );

    // Seen late once, it is waited for only list-timeout-failing (250 ms) now: well below
    // its list-timeout of 2 s.
    let second = Instant::now();
    let names = tool_names(&client).await;
    let second = second.elapsed();
    assert!(names.contains(&"alpha__echo".to_string()), "{names:?}");
    assert!(
        second < Duration::from_millis(1500),
        "the second list waited {second:?}"
    );

    let m = metrics(&gateway).await;
    let left_out = m
        .lines()
        .find(|l| {
            l.starts_with("portcullis_upstream_lists_left_out_total{")
                && l.contains("upstream=\"hung\"")
                && l.contains("reason=\"timeout\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(left_out >= 2, "{m}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_part_arrives_later_and_the_client_hears_the_list_changed() {
    let config = format!(
        "{}{}{}",
        server_toml(),
        quirky_toml(
            "slow",
            &["--list-delay", "2500"],
            "list-timeout = \"300ms\""
        ),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let recorder = RecordingClient::new();
    let client = client_with(gateway.url(), recorder.clone()).await;
    let names = tool_names(&client).await;
    assert!(names.iter().all(|n| !n.starts_with("slow__")), "{names:?}");
    recorder
        .wait_for(Duration::from_secs(20), |e| {
            matches!(e, ClientEvent::ToolListChanged)
        })
        .await;
    let names = tool_names(&client).await;
    assert!(
        names.contains(&"slow__hello".to_string()) && names.contains(&"alpha__echo".to_string()),
        "{names:?}"
    );
    client.cancel().await.unwrap();
}
