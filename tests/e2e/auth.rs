//! Identity and access: the gateway as an OAuth protected resource (RFC 9728).

use portcullis_tests::harness::{Gateway, RawHttp, server_toml, stdio_fixture_toml};
use reqwest::Method;
use serde_json::{Value, json};

const OAUTH: &str = "[oauth]\npublic-url = \"https://mcp.example.com\"\nauthorization-servers = [\"https://login.example.com/realms/acme\"]\nscopes-supported = [\"mcp:tools\"]\nresource-name = \"Acme MCP\"\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_resource_metadata_is_served_in_both_forms() {
    let config = format!("{}{OAUTH}{}", server_toml(), stdio_fixture_toml("alpha"));
    let gateway = Gateway::start(&config).await;
    let expected = json!({
        "resource": "https://mcp.example.com/mcp",
        "authorization_servers": ["https://login.example.com/realms/acme"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
        "resource_name": "Acme MCP",
    });
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let url = format!("{}{path}", gateway.base());
        let resp = RawHttp::new(&url).request(Method::GET, &[], None).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let doc: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(doc, expected, "{path}");
    }
    // Other well-known paths are not served.
    let other = RawHttp::new(&format!(
        "{}/.well-known/oauth-protected-resource/other",
        gateway.base()
    ))
    .request(Method::GET, &[], None)
    .await;
    assert_eq!(other.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_oauth_configuration_there_is_no_metadata() {
    let config = format!("{}{}", server_toml(), stdio_fixture_toml("alpha"));
    let gateway = Gateway::start(&config).await;
    let url = format!("{}/.well-known/oauth-protected-resource", gateway.base());
    assert_eq!(
        RawHttp::new(&url)
            .request(Method::GET, &[], None)
            .await
            .status,
        404
    );
}
