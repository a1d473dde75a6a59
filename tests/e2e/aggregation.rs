//! One catalog out of many upstreams: merged lists, namespacing modes, pagination and
//! routing of calls, prompts, resources and completions to the right upstream.

use portcullis_tests::harness::{
    FIXTURE_SIMPLE_TEXT, Fixture, Gateway, McpClient, call_tool, client, server_toml,
    stdio_fixture_toml, text_of,
};
use rmcp::model::{
    ArgumentInfo, CompleteRequestParams, GetPromptRequestParams, ReadResourceRequestParams,
    Reference, ResourceContents,
};
use serde_json::{Value, json};

fn namespacing(prefix: &str, separator: &str) -> String {
    format!("[namespacing]\nseparator = \"{separator}\"\nprefix = \"{prefix}\"\n\n")
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

fn whoami_server(result: &rmcp::model::CallToolResult) -> String {
    let v: Value = serde_json::from_str(&text_of(result)).expect("whoami returns JSON");
    v["server"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_prefixes_everything_and_routes_each_kind() {
    let beta = Fixture::http("beta").await;
    let config = format!(
        "{}{}{}{}",
        server_toml(),
        namespacing("always", "__"),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;

    let names = tool_names(&client).await;
    assert!(
        names.contains(&"alpha__whoami".to_string()) && names.contains(&"beta__whoami".to_string()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("alpha__") || n.starts_with("beta__")),
        "{names:?}"
    );
    // Other fields of a tool pass through unchanged.
    let tools = client.list_all_tools().await.unwrap();
    let echo = tools
        .iter()
        .find(|t| t.name == "beta__echo")
        .expect("beta__echo listed");
    assert_eq!(
        echo.description.as_deref(),
        Some("Returns `text` unchanged")
    );

    // Calls reach the upstream the prefix names.
    let alpha = call_tool(&client, "alpha__whoami", Value::Null)
        .await
        .unwrap();
    let beta_r = call_tool(&client, "beta__whoami", Value::Null)
        .await
        .unwrap();
    assert_eq!(
        (
            whoami_server(&alpha).as_str(),
            whoami_server(&beta_r).as_str()
        ),
        ("alpha", "beta")
    );

    // Prompts.
    let prompts = client.list_all_prompts().await.unwrap();
    assert!(
        prompts
            .iter()
            .any(|p| p.name == "alpha__test_simple_prompt"),
        "{prompts:?}"
    );
    let args = serde_json::from_value(json!({ "arg1": "one", "arg2": "two" })).unwrap();
    let prompt = client
        .get_prompt(
            GetPromptRequestParams::new("beta__test_prompt_with_arguments").with_arguments(args),
        )
        .await
        .unwrap();
    let text = serde_json::to_string(&prompt.messages).unwrap();
    assert!(text.contains("one") && text.contains("two"), "{text}");

    // Resources: URIs become <upstream>+<uri>, and reads route back and keep that URI.
    let resources = client.list_all_resources().await.unwrap();
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert!(
        uris.contains(&"alpha+test://static-text") && uris.contains(&"beta+test://static-text"),
        "{uris:?}"
    );
    let read = client
        .read_resource(ReadResourceRequestParams::new("beta+test://static-text"))
        .await
        .unwrap();
    match &read.contents[0] {
        ResourceContents::TextResourceContents { uri, .. } => {
            assert_eq!(uri, "beta+test://static-text")
        }
        other => panic!("unexpected contents {other:?}"),
    }
    // Templates are prefixed too, and a URI from a template routes by the prefix.
    let templates = client.list_all_resource_templates().await.unwrap();
    assert!(
        templates
            .iter()
            .any(|t| t.uri_template == "alpha+test://template/{id}/data"),
        "{templates:?}"
    );
    let read = client
        .read_resource(ReadResourceRequestParams::new(
            "alpha+test://template/42/data",
        ))
        .await
        .unwrap();
    assert!(serde_json::to_string(&read).unwrap().contains("42"));
    // An unprefixed URI that only one upstream could serve still routes (e.g. a link in a result)…
    // …but here both upstreams serve it, so it must be prefixed: the gateway says not found.
    let err = client
        .read_resource(ReadResourceRequestParams::new("test://nope"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("-32002") || err.to_string().contains("not found"),
        "{err}"
    );

    // Completions route by the prompt reference.
    let completion = client
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("alpha__test_prompt_with_arguments"),
            ArgumentInfo::new("arg1", "a"),
        ))
        .await;
    assert!(completion.is_ok(), "{completion:?}");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_needed_prefixes_only_shared_names_with_a_custom_separator() {
    let beta = Fixture::http("beta").await;
    let config = format!(
        "{}{}{}{}",
        server_toml(),
        namespacing("when-needed", "."),
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    let names = tool_names(&client).await;
    // Both fixtures expose the same tools, so all collide and all get the prefix.
    assert!(
        names.contains(&"alpha.echo".to_string()) && names.contains(&"beta.echo".to_string()),
        "{names:?}"
    );
    let r = call_tool(&client, "beta.whoami", Value::Null)
        .await
        .unwrap();
    assert_eq!(whoami_server(&r), "beta");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_in_when_needed_mode_keeps_original_names() {
    let config = format!(
        "{}{}{}",
        server_toml(),
        namespacing("when-needed", "__"),
        stdio_fixture_toml("solo")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    let names = tool_names(&client).await;
    assert!(names.contains(&"test_simple_text".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("__")), "{names:?}");
    let r = call_tool(&client, "test_simple_text", Value::Null)
        .await
        .unwrap();
    assert_eq!(text_of(&r), FIXTURE_SIMPLE_TEXT);
    // Unprefixed resource URIs route too.
    let read = client
        .read_resource(ReadResourceRequestParams::new("test://static-text"))
        .await
        .unwrap();
    assert!(!read.contents.is_empty());
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_lists_are_paged_with_gateway_cursors() {
    let beta = Fixture::http("beta").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nlist-page-size = 3\n\n{}{}",
        stdio_fixture_toml("alpha"),
        beta.upstream_toml("beta")
    );
    let gateway = Gateway::start(&config).await;
    let client = client(gateway.url()).await;
    let first = client.list_tools(None).await.unwrap();
    assert_eq!(first.tools.len(), 3);
    let cursor = first.next_cursor.clone().expect("a next cursor");
    let second = client
        .list_tools(Some(
            rmcp::model::PaginatedRequestParams::default().with_cursor(Some(cursor)),
        ))
        .await
        .unwrap();
    assert_eq!(second.tools.len(), 3);
    assert!(
        first
            .tools
            .iter()
            .all(|a| second.tools.iter().all(|b| a.name != b.name)),
        "pages overlap"
    );
    // Following all cursors yields every tool of both upstreams exactly once.
    let all = tool_names(&client).await;
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(all, dedup);
    let per_upstream = all.iter().filter(|n| n.starts_with("alpha__")).count();
    assert!(per_upstream > 3 && all.len() == 2 * per_upstream, "{all:?}");
    // A cursor the gateway did not issue is an invalid-params error.
    let bad = client
        .list_tools(Some(
            rmcp::model::PaginatedRequestParams::default().with_cursor(Some("bogus".into())),
        ))
        .await
        .unwrap_err();
    assert!(
        bad.to_string().contains("-32602") || bad.to_string().contains("cursor"),
        "{bad}"
    );
    client.cancel().await.unwrap();
}
