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

mod callers {
    //! API-key and JWT callers with different roles, through the real binary with the
    //! built-in authn and authz plugins: different catalogs, allowed and denied calls, and
    //! every bad token refused with the right challenge.

    use base64::Engine as _;
    use portcullis_tests::harness::{
        Gateway, PluginDir, RawHttp, initialize_request, jsonrpc_request, sha256_hex,
        stdio_fixture_toml,
    };
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    const METADATA: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";
    const DEV_KEY: &str = "pk_dev_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    const ADMIN_KEY: &str = "pk_admin_0123456789abcdefghijklmnopqrstuvwxyzAB";

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
        inner.update(k.map(|b| b ^ 0x36));
        inner.update(msg);
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().to_vec()
    }

    /// An HS256 JWT signed here, in the test.
    fn jwt(claims: Value, alg: &str) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let head = b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes());
        let body = b64(claims.to_string().as_bytes());
        let signing = format!("{head}.{body}");
        let sig = if alg == "none" {
            String::new()
        } else {
            b64(&hmac_sha256(SECRET.as_bytes(), signing.as_bytes()))
        };
        format!("{signing}.{sig}")
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn claims(roles: &[&str]) -> Value {
        json!({ "iss": "https://sso.example.com", "aud": "https://mcp.example.com/mcp", "sub": "jay",
                "exp": now() + 600, "nbf": now() - 10, "roles": roles })
    }

    async fn gateway() -> (Gateway, PluginDir) {
        gateway_with("").await
    }

    /// The gateway with authn (`extra` appended to its `[config]`) and authz.
    async fn gateway_with(extra: &str) -> (Gateway, PluginDir) {
        let plugins = PluginDir::new();
        plugins.add(
            "authn",
            "authn",
            &format!(
                "[config]\nresource-metadata = \"{METADATA}\"\n{extra}\
                 [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"dev-bot\"\nroles = [\"dev\"]\n\
                 [[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"root\"\nroles = [\"admin\"]\n\
                 [config.jwt]\nissuer = \"https://sso.example.com\"\naudience = \"https://mcp.example.com/mcp\"\n\
                 hs256-secret = \"{SECRET}\"\nroles-claim = \"roles\"\nscopes-claim = \"scope\"\n",
                sha256_hex(DEV_KEY),
                sha256_hex(ADMIN_KEY)
            ),
        );
        plugins.add(
            "authz",
            "authz",
            "[config]\n\
             [[config.rules]]\nname = \"devs-use-echo\"\neffect = \"allow\"\nroles = [\"dev\"]\nupstreams = [\"alpha\"]\ntools = [\"echo\", \"whoami\"]\n\
             [[config.rules]]\nname = \"admins\"\neffect = \"allow\"\nroles = [\"admin\"]\n",
        );
        (
            Gateway::start_with_plugins(&plugins, &stdio_fixture_toml("alpha")).await,
            plugins,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_authenticated_client_answers_the_upstreams_questions() {
        use portcullis_tests::harness::{
            ConnectOptions, RecordingClient, call_tool, connect, text_of,
        };
        let (gateway, _plugins) = gateway().await;
        let options =
            ConnectOptions::default().header("authorization", &format!("Bearer {ADMIN_KEY}"));
        let client = connect(gateway.url(), RecordingClient::new(), &options)
            .await
            .expect("connects");
        // The answer to the sampling request is a POST of its own: it must reach the session
        // its owner opened, like any other message of that owner.
        let sampled = call_tool(&client, "alpha__test_sampling", json!({ "prompt": "hi" }))
            .await
            .expect("call answers");
        assert_eq!(text_of(&sampled), "LLM response: sampled: hi");
        client.cancel().await.ok();
    }

    /// Initializes with `token` and lists the tools it may see.
    async fn tools_as(gateway: &Gateway, token: &str) -> Vec<String> {
        let auth = format!("Bearer {token}");
        let (resp, session) = RawHttp::new(gateway.url())
            .initialize(&[("authorization", &auth)])
            .await;
        assert_eq!(resp.status, 200, "{}", resp.body);
        let list = session.call(2, "tools/list", json!({})).await;
        let mut names: Vec<String> = list["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roles_decide_what_each_caller_sees_and_may_call() {
        let (gateway, _plugins) = gateway().await;
        assert_eq!(
            tools_as(&gateway, DEV_KEY).await,
            ["alpha__echo", "alpha__whoami"]
        );
        assert_eq!(
            tools_as(&gateway, &jwt(claims(&["dev"]), "HS256")).await,
            ["alpha__echo", "alpha__whoami"]
        );
        let admin = tools_as(&gateway, ADMIN_KEY).await;
        assert!(
            admin.len() > 5 && admin.contains(&"alpha__crash".to_string()),
            "{admin:?}"
        );

        // A dev may call echo; a call to a tool it may not use looks exactly like an unknown tool.
        let auth = format!("Bearer {DEV_KEY}");
        let (_, dev) = RawHttp::new(gateway.url())
            .initialize(&[("authorization", &auth)])
            .await;
        let ok = dev
            .call(
                3,
                "tools/call",
                json!({ "name": "alpha__echo", "arguments": { "text": "hi" } }),
            )
            .await;
        assert_eq!(ok["content"][0]["text"], "hi");
        let denied = dev
            .post(&jsonrpc_request(
                4,
                "tools/call",
                json!({ "name": "alpha__crash", "arguments": {} }),
            ))
            .await;
        let unknown = dev
            .post(&jsonrpc_request(
                5,
                "tools/call",
                json!({ "name": "alpha__nope", "arguments": {} }),
            ))
            .await;
        let (d, u) = (
            denied.response(&json!(4)).unwrap(),
            unknown.response(&json!(5)).unwrap(),
        );
        assert_eq!(d["error"]["code"], -32602, "{d}");
        assert_eq!(d["error"]["message"], "Unknown tool: alpha__crash");
        assert_eq!(
            u["error"]["code"], d["error"]["code"],
            "forbidden and unknown look alike"
        );
        let logs = gateway
            .wait_for_log("alpha__crash", std::time::Duration::from_secs(10))
            .await;
        assert!(
            logs.contains("dev-bot"),
            "denials are logged with the subject:\n{logs}"
        );
        assert!(
            !logs.contains(DEV_KEY) && !logs.contains(SECRET),
            "a credential reached the log"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_and_bad_credentials_get_401_with_the_metadata_challenge() {
        let (gateway, _plugins) = gateway().await;
        let http = RawHttp::new(gateway.url());
        let init = initialize_request(1, "2025-11-25");
        let resp = http.post(&init, &[]).await;
        assert_eq!(resp.status, 401);
        assert_eq!(
            resp.header("www-authenticate"),
            Some(format!("Bearer resource_metadata=\"{METADATA}\"").as_str())
        );

        let mut expired = claims(&["dev"]);
        expired["exp"] = json!(now() - 3600);
        let mut early = claims(&["dev"]);
        early["nbf"] = json!(now() + 3600);
        let mut wrong_iss = claims(&["dev"]);
        wrong_iss["iss"] = json!("https://evil.example.com");
        let mut wrong_aud = claims(&["dev"]);
        wrong_aud["aud"] = json!("https://other.example.com/mcp");
        let good = jwt(claims(&["dev"]), "HS256");
        let bad_signature = format!("{}x", &good[..good.len() - 1]);
        for (case, token) in [
            ("expired", jwt(expired, "HS256")),
            ("not yet valid", jwt(early, "HS256")),
            ("wrong issuer", jwt(wrong_iss, "HS256")),
            ("wrong audience", jwt(wrong_aud, "HS256")),
            ("bad signature", bad_signature),
            ("alg none", jwt(claims(&["admin"]), "none")),
            (
                "unknown api key",
                "pk_not_a_key_we_know_of_0123456789abcdefghij".into(),
            ),
        ] {
            let auth = format!("Bearer {token}");
            let resp = http.post(&init, &[("authorization", &auth)]).await;
            assert_eq!(resp.status, 401, "{case}");
            let challenge = resp.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.contains(&format!("resource_metadata=\"{METADATA}\""))
                    && challenge.contains("error=\"invalid_token\""),
                "{case}: {challenge}"
            );
            let body: Value = resp.json();
            assert_eq!(
                body["error"]["message"], "authentication required",
                "{case}: the client gets a generic message"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_without_the_required_scope_gets_403_insufficient_scope() {
        let (gateway, _plugins) = gateway_with("required-scopes = [\"mcp:tools\"]\n").await;
        let http = RawHttp::new(gateway.url());
        let init = initialize_request(1, "2025-11-25");
        let mut scoped = claims(&["dev"]);
        scoped["scope"] = json!("openid mcp:tools");
        let ok = http
            .post(
                &init,
                &[("authorization", &format!("Bearer {}", jwt(scoped, "HS256")))],
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        let mut unscoped = claims(&["dev"]);
        unscoped["scope"] = json!("openid");
        let resp = http
            .post(
                &init,
                &[(
                    "authorization",
                    &format!("Bearer {}", jwt(unscoped, "HS256")),
                )],
            )
            .await;
        assert_eq!(resp.status, 403, "{}", resp.body);
        assert_eq!(
            resp.header("www-authenticate"),
            Some(format!("Bearer error=\"insufficient_scope\", scope=\"mcp:tools\", resource_metadata=\"{METADATA}\"").as_str())
        );
        // Without credentials the challenge now also names the scope to ask for.
        let resp = http.post(&init, &[]).await;
        assert_eq!(resp.status, 401);
        assert_eq!(
            resp.header("www-authenticate"),
            Some(format!("Bearer resource_metadata=\"{METADATA}\", scope=\"mcp:tools\"").as_str())
        );
    }

    /// A session belongs to the caller that opened it: another caller holding its id gets
    /// 404 (as for an unknown session), a caller without credentials 401.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_belongs_to_the_caller_that_opened_it() {
        let (gateway, _plugins) = gateway().await;
        let dev_auth = format!("Bearer {DEV_KEY}");
        let (_, dev) = RawHttp::new(gateway.url())
            .initialize(&[("authorization", &dev_auth)])
            .await;
        let sid = dev.session_id.clone().expect("a session id");
        let admin_auth = format!("Bearer {ADMIN_KEY}");
        let http = RawHttp::new(gateway.url());
        let as_admin = [
            ("authorization", admin_auth.as_str()),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        let list = jsonrpc_request(9, "tools/list", json!({}));
        assert_eq!(
            http.post(&list, &as_admin).await.status,
            404,
            "POST with someone else's session"
        );
        let mut get = as_admin.to_vec();
        get.push(("accept", "text/event-stream"));
        assert_eq!(
            http.request(reqwest::Method::GET, &get, None).await.status,
            404,
            "GET stream of someone else's session"
        );
        assert_eq!(
            http.request(reqwest::Method::DELETE, &as_admin, None)
                .await
                .status,
            404,
            "DELETE of someone else's session"
        );
        let anonymous = [
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
            ("accept", "text/event-stream"),
        ];
        assert_eq!(
            http.request(reqwest::Method::GET, &anonymous, None)
                .await
                .status,
            401
        );
        // The owner still has it.
        let mine = dev.call(10, "tools/list", json!({})).await;
        assert!(mine["tools"].is_array());
        assert_eq!(dev.delete().await.status, 200);
    }

    /// An HS256 JWT with this header and these claims as JSON text (to write what `json!`
    /// cannot: repeated members, odd numbers), signed with the gateway's secret.
    fn signed(header: &str, claims: &str) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let signing = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let sig = b64(&hmac_sha256(SECRET.as_bytes(), signing.as_bytes()));
        format!("{signing}.{sig}")
    }

    /// Tokens the hand-written verifier used to accept: an HS256 token naming a key that does
    /// not exist, times no clock reaches (1e300, beyond i64, days away, issued in the future),
    /// and a header or claims naming a member twice. Each gets the 401 of a bad token, and
    /// the log says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kids_absurd_times_and_repeated_members_are_refused() {
        let (gateway, _plugins) = gateway().await;
        let http = RawHttp::new(gateway.url());
        let init = initialize_request(1, "2025-11-25");
        let text = claims(&["dev"]).to_string();
        let with = |extra: &str| format!("{},{extra}}}", &text[..text.len() - 1]);
        let replaced = |name: &str, value: &str| {
            let mut c = claims(&["dev"]);
            c.as_object_mut().unwrap().remove(name);
            let t = c.to_string();
            format!("{},\"{name}\":{value}}}", &t[..t.len() - 1])
        };
        let plain = r#"{"alg":"HS256","typ":"JWT"}"#;
        let ok = http
            .post(
                &init,
                &[("authorization", &format!("Bearer {}", signed(plain, &text)))],
            )
            .await;
        assert_eq!(
            ok.status, 200,
            "the same construction, untampered: {}",
            ok.body
        );

        for (case, token, logged) in [
            (
                "unknown kid",
                signed(r#"{"alg":"HS256","kid":"attacker"}"#, &text),
                "unknown key id \"attacker\" for alg HS256",
            ),
            (
                "exp 1e300",
                signed(plain, &replaced("exp", "1e300")),
                "`exp` is 1e+300, not a whole number of seconds",
            ),
            (
                "exp beyond i64",
                signed(plain, &replaced("exp", "99999999999999999999")),
                "not a whole number of seconds",
            ),
            (
                "exp two days away",
                signed(plain, &replaced("exp", &(now() + 2 * 86_400).to_string())),
                "beyond jwt.max-lifetime (86400s)",
            ),
            (
                "iat in an hour",
                signed(plain, &with(&format!("\"iat\":{}", now() + 3600))),
                "issued in the future",
            ),
            (
                "nbf negative",
                signed(plain, &replaced("nbf", "-1")),
                "`nbf` is -1",
            ),
            (
                "repeated sub",
                signed(plain, &with(r#""sub":"root""#)),
                "member \"sub\" appears more than once",
            ),
            (
                "repeated roles",
                signed(plain, &with(r#""roles":["admin"]"#)),
                "member \"roles\" appears more than once",
            ),
            (
                "repeated header member",
                signed(r#"{"alg":"HS256","alg":"HS256"}"#, &text),
                "header: not a JSON object (member \"alg\" appears more than once",
            ),
        ] {
            let auth = format!("Bearer {token}");
            let resp = http.post(&init, &[("authorization", &auth)]).await;
            assert_eq!(resp.status, 401, "{case}: {}", resp.body);
            let challenge = resp.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "{case}: {challenge}"
            );
            let logs = gateway
                .wait_for_log(logged, std::time::Duration::from_secs(10))
                .await;
            assert!(logs.contains(logged), "{case}: the log says why:\n{logs}");
            assert!(!logs.contains(&token), "{case}: the token reached the log");
        }
    }

    /// Two `Authorization` headers on one request: which one counts would be a guess, so the
    /// front refuses the request with 400 before any transport or policy reads it, on every
    /// endpoint: session-era POST, GET and DELETE, 2026-07-28, and the legacy HTTP+SSE stream
    /// and message endpoints. The same requests with one header are served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_authorization_headers_are_refused_with_400_on_every_transport() {
        use portcullis_tests::harness::RawResponse;
        use reqwest::Method;
        let (gateway, _plugins) = gateway().await;
        let dev = format!("Bearer {DEV_KEY}");
        let admin = format!("Bearer {ADMIN_KEY}");
        let one = [("authorization", dev.as_str())];
        let two = [
            ("authorization", dev.as_str()),
            ("authorization", admin.as_str()),
        ];
        let same_twice = [
            ("authorization", dev.as_str()),
            ("authorization", dev.as_str()),
        ];
        let refused = |case: &str, resp: &RawResponse| {
            assert_eq!(resp.status, 400, "{case}: {}", resp.body);
            let body = resp.json();
            assert_eq!(body["error"]["code"], -32600, "{case}: {body}");
            assert_eq!(
                body["error"]["message"], "Bad Request: more than one Authorization header",
                "{case}"
            );
        };

        // 2025-11-25, session era.
        let http = RawHttp::new(gateway.url());
        let init = initialize_request(1, "2025-11-25");
        refused("initialize", &http.post(&init, &two).await);
        refused(
            "initialize, the same value twice",
            &http.post(&init, &same_twice).await,
        );
        let (_, session) = http.initialize(&one).await;
        let sid = session.session_id.clone().expect("a session id");
        let base = [
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        let list = jsonrpc_request(2, "tools/list", json!({}));
        refused(
            "POST in a session",
            &http.post(&list, &[&base[..], &two].concat()).await,
        );
        let stream = [("accept", "text/event-stream")];
        refused(
            "GET stream",
            &http
                .request(Method::GET, &[&base[..], &stream, &two].concat(), None)
                .await,
        );
        refused(
            "DELETE",
            &http
                .request(Method::DELETE, &[&base[..], &two].concat(), None)
                .await,
        );
        let served = http.post(&list, &[&base[..], &one].concat()).await;
        assert_eq!(
            served.status, 200,
            "one header, same session: {}",
            served.body
        );

        // 2026-07-28, stateless.
        let modern = json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": { "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": { "name": "raw-test", "version": "1" },
            "io.modelcontextprotocol/clientCapabilities": {},
        } } });
        let modern_base = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ];
        refused(
            "2026-07-28",
            &http.post(&modern, &[&modern_base[..], &two].concat()).await,
        );
        let served = http.post(&modern, &[&modern_base[..], &one].concat()).await;
        assert_eq!(
            served.status, 200,
            "2026-07-28, one header: {}",
            served.body
        );

        // Legacy HTTP+SSE (2024-11-05): the stream and the message endpoint.
        let sse = RawHttp::new(&format!("{}/sse", gateway.base()));
        refused(
            "legacy GET /sse",
            &sse.request(Method::GET, &two, None).await,
        );
        let mut events = sse.open_stream(Method::GET, &one, None).await;
        assert_eq!(events.status, 200);
        let endpoint = events
            .next_event(std::time::Duration::from_secs(10))
            .await
            .expect("an endpoint event");
        let message = RawHttp::new(&format!("{}{}", gateway.base(), endpoint.data));
        let body = initialize_request(4, "2025-11-25").to_string();
        let json_type = [("content-type", "application/json")];
        refused(
            "legacy POST /message",
            &message
                .request(
                    Method::POST,
                    &[&json_type[..], &two].concat(),
                    Some(body.clone()),
                )
                .await,
        );
        let served = message
            .request(Method::POST, &[&json_type[..], &one].concat(), Some(body))
            .await;
        assert_eq!(
            served.status, 202,
            "legacy POST, one header: {}",
            served.body
        );
        let logs = gateway.logs();
        assert!(
            logs.contains("more than one Authorization header"),
            "{logs}"
        );
        assert!(
            !logs.contains(DEV_KEY) && !logs.contains(ADMIN_KEY),
            "a key reached the log"
        );
    }
}

mod signed_tokens {
    //! JWTs signed with asymmetric keys (RS256, ES256, EdDSA) against an inline JWKS, the
    //! HS/RS confusion attack, and API keys made by `portcullis authn new-key`, all through
    //! the real binary with the authn and authz plugins.

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::Signer as _;
    use portcullis_tests::harness::{
        Gateway, PluginDir, RawHttp, TempDir, bin_path, initialize_request, stdio_fixture_toml,
        toml_str,
    };
    use rsa::traits::PublicKeyParts as _;
    use serde_json::{Value, json};
    use sha2::{Digest as _, Sha256};

    const ISS: &str = "https://idp.example.com/realms/acme";
    const AUD: &str = "https://mcp.example.com/mcp";

    struct Keys {
        rsa: rsa::PrivateKey,
        ec: p256::ecdsa::SigningKey,
        ed: ed25519_dalek::SigningKey,
    }

    fn random32() -> [u8; 32] {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("randomness");
        bytes
    }

    fn keys() -> Keys {
        let rsa = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA key");
        let ec = loop {
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&random32()) {
                break key;
            }
        };
        Keys {
            rsa,
            ec,
            ed: ed25519_dalek::SigningKey::from_bytes(&random32()),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The public JWKS of `keys`: `rsa-1`, `ec-1`, `ed-1`.
    fn jwks(k: &Keys) -> Value {
        let point = k.ec.verifying_key().to_sec1_point(false);
        json!({ "keys": [
            { "kty": "RSA", "kid": "rsa-1", "alg": "RS256",
              "n": b64(&k.rsa.n().to_be_bytes_trimmed_vartime()),
              "e": b64(&k.rsa.e().to_be_bytes_trimmed_vartime()) },
            { "kty": "EC", "crv": "P-256", "kid": "ec-1",
              "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()) },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
              "x": b64(&k.ed.verifying_key().to_bytes()) },
        ] })
    }

    /// A JSON value as a TOML inline value (the sidecar's `jwks = …`).
    fn toml_inline(v: &Value) -> String {
        match v {
            Value::Object(map) => {
                let fields: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{k:?} = {}", toml_inline(v)))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(toml_inline).collect();
                format!("[{}]", items.join(", "))
            }
            other => other.to_string(),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(header: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        token_until(now() + 600, header, sign)
    }

    /// A token of alice's that expires at `exp`.
    fn token_until(exp: i64, header: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let claims = json!({ "iss": ISS, "aud": AUD, "sub": "alice", "roles": ["dev"],
                             "exp": exp, "nbf": now() - 10 });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = sign(input.as_bytes());
        format!("{input}.{}", b64(&signature))
    }

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
        inner.update(k.map(|b| b ^ 0x36));
        inner.update(msg);
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().to_vec()
    }

    async fn gateway(authn_config: &str) -> (Gateway, PluginDir) {
        let plugins = PluginDir::new();
        plugins.add("authn", "authn", &format!("[config]\n{authn_config}"));
        plugins.add(
            "authz",
            "authz",
            "[config]\n[[config.rules]]\nname = \"devs-use-echo\"\neffect = \"allow\"\nroles = [\"dev\"]\ntools = [\"echo\"]\n",
        );
        (
            Gateway::start_with_plugins(&plugins, &stdio_fixture_toml("alpha")).await,
            plugins,
        )
    }

    async fn status_of(gateway: &Gateway, token: &str) -> http::StatusCode {
        let auth = format!("Bearer {token}");
        RawHttp::new(gateway.url())
            .post(
                &initialize_request(1, "2025-11-25"),
                &[("authorization", &auth)],
            )
            .await
            .status
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rs256_es256_and_eddsa_tokens_are_accepted_and_hs_rs_confusion_is_refused() {
        let k = keys();
        let (gateway, _plugins) = gateway(&format!(
            "[config.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nroles-claim = \"roles\"\njwks = {}\n",
            toml_inline(&jwks(&k))
        ))
        .await;

        let rs = token(json!({ "alg": "RS256", "kid": "rsa-1" }), |input| {
            k.rsa
                .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                .unwrap()
        });
        let es = token(json!({ "alg": "ES256", "kid": "ec-1" }), |input| {
            let sig: p256::ecdsa::Signature = k.ec.sign(input);
            sig.to_bytes().to_vec()
        });
        let ed = token(json!({ "alg": "EdDSA", "kid": "ed-1" }), |input| {
            k.ed.sign(input).to_bytes().to_vec()
        });
        for (alg, t) in [("RS256", &rs), ("ES256", &es), ("EdDSA", &ed)] {
            assert_eq!(status_of(&gateway, t).await, 200, "{alg}");
        }

        // The classic confusion: HS256 "signed" with the RSA key's public material as the
        // HMAC secret, naming the RSA key. The key pins its algorithm, so it is refused.
        let public_n = k.rsa.n().to_be_bytes_trimmed_vartime();
        let jwk_text = jwks(&k)["keys"][0].to_string();
        for secret in [public_n.as_ref(), jwk_text.as_bytes()] {
            let forged = token(json!({ "alg": "HS256", "kid": "rsa-1" }), |input| {
                hmac_sha256(secret, input)
            });
            assert_eq!(status_of(&gateway, &forged).await, 401);
        }
        // A token signed by one key but naming another, and an RS256 token naming the EC key.
        let swapped = token(json!({ "alg": "ES256", "kid": "ed-1" }), |input| {
            let sig: p256::ecdsa::Signature = k.ec.sign(input);
            sig.to_bytes().to_vec()
        });
        assert_eq!(status_of(&gateway, &swapped).await, 401);
        let wrong_alg = token(json!({ "alg": "RS256", "kid": "ec-1" }), |input| {
            k.rsa
                .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                .unwrap()
        });
        assert_eq!(status_of(&gateway, &wrong_alg).await, 401);
        let logs = gateway.logs();
        assert!(!logs.contains(&rs[20..]), "a token reached the log");
    }

    /// The verified-token cache, through the real gateway, whose key-value store outlives
    /// instances and reloads. Keys come from a JWKS file, read whenever a token is verified,
    /// so a key rotated out of it shows which tokens are answered from the cache: a cached
    /// RS256 token keeps being accepted, one never seen is refused. A cached token is refused
    /// as soon as its `exp` passes, and once any setting changes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_tokens_outlive_a_rotated_key_but_not_exp_or_a_configuration_change() {
        let k = keys();
        let data = TempDir::new();
        data.write("jwks.json", &jwks(&k).to_string());
        let sidecar = |extra: &str| {
            format!(
                "[config.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nroles-claim = \"roles\"\n\
                 leeway = 0\njwks-file = \"/data/jwks.json\"\n{extra}\
                 [grants]\ndir = {}\n",
                toml_str(&data.path().to_string_lossy())
            )
        };
        let (gateway, plugins) = gateway(&sidecar("")).await;
        let rs256 = |exp: i64| {
            token_until(exp, json!({ "alg": "RS256", "kid": "rsa-1" }), |input| {
                k.rsa
                    .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                    .unwrap()
            })
        };

        let cached = rs256(now() + 600);
        for call in 0..3 {
            assert_eq!(status_of(&gateway, &cached).await, 200, "call {call}");
        }
        let exp = now() + 3;
        let short = rs256(exp);
        assert_eq!(status_of(&gateway, &short).await, 200);
        while now() < exp {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            status_of(&gateway, &short).await,
            401,
            "expired while cached"
        );

        // The RSA key is rotated out of the file.
        let mut without_rsa = jwks(&k);
        without_rsa["keys"].as_array_mut().unwrap().remove(0);
        data.write("jwks.json", &without_rsa.to_string());
        assert_eq!(
            status_of(&gateway, &rs256(now() + 500)).await,
            401,
            "not cached"
        );
        assert_eq!(status_of(&gateway, &cached).await, 200, "cached");

        // Any change to the configuration: the cached token is verified again, and refused.
        let loads = gateway.logs().matches("plugin loaded").count();
        plugins.set_sidecar(
            "authn",
            &format!("[config]\n{}", sidecar("cache-seconds = 30\n")),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gateway.logs().matches("plugin loaded").count() <= loads {
            assert!(std::time::Instant::now() < deadline, "no reload");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(status_of(&gateway, &cached).await, 401, "after the reload");
        let es = token(json!({ "alg": "ES256", "kid": "ec-1" }), |input| {
            let sig: p256::ecdsa::Signature = k.ec.sign(input);
            sig.to_bytes().to_vec()
        });
        assert_eq!(
            status_of(&gateway, &es).await,
            200,
            "the new configuration serves"
        );
    }

    /// `portcullis authn new-key` prints a key and the hash the plugin accepts; `hash-key`
    /// prints the same hash for the same key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_from_authn_new_key_is_accepted_by_its_printed_hash() {
        let out = std::process::Command::new(bin_path("portcullis"))
            .args(["authn", "new-key"])
            .output()
            .expect("portcullis authn new-key");
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
        };
        let (key, hash) = (field("key:"), field("sha256:"));
        assert!(key.starts_with("pk_") && key.len() == 46, "{key}");

        let mut child = std::process::Command::new(bin_path("portcullis"))
            .args(["authn", "hash-key"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
        let hashed = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8(hashed.stdout).unwrap().trim(), hash);

        let (gateway, _plugins) = gateway(&format!(
            "[[config.api-keys]]\nsha256 = \"{hash}\"\nsubject = \"bot\"\nroles = [\"dev\"]\n"
        ))
        .await;
        assert_eq!(status_of(&gateway, &key).await, 200);
        let other = std::process::Command::new(bin_path("portcullis"))
            .args(["authn", "new-key"])
            .output()
            .unwrap();
        let other_key = String::from_utf8(other.stdout).unwrap();
        let other_key = other_key
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("key:")
            .trim();
        assert_ne!(other_key, key, "keys are random");
        assert_eq!(status_of(&gateway, other_key).await, 401);
    }

    /// Every algorithm: a `kid` no configured key of that algorithm carries is refused, even
    /// when the signature is good; a token without `kid` is refused when two keys of its
    /// algorithm could have signed it; `max-lifetime` set in the sidecar bounds `exp`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kids_ambiguous_keys_and_max_lifetime_in_the_sidecar() {
        let k = keys();
        let second = loop {
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&random32()) {
                break key;
            }
        };
        let mut set = jwks(&k);
        let point = second.verifying_key().to_sec1_point(false);
        set["keys"].as_array_mut().unwrap().push(json!({
            "kty": "EC", "crv": "P-256", "kid": "ec-2",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()) }));
        let (gateway, _plugins) = gateway(&format!(
            "[config.jwt]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nroles-claim = \"roles\"\n\
             max-lifetime = 900\njwks = {}\n",
            toml_inline(&set)
        ))
        .await;
        let rs = |header: Value, exp: i64| {
            token_until(exp, header, |input| {
                k.rsa
                    .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                    .unwrap()
            })
        };
        let es = |header: Value| {
            token(header, |input| {
                let sig: p256::ecdsa::Signature = k.ec.sign(input);
                sig.to_bytes().to_vec()
            })
        };
        let ed = |header: Value| token(header, |input| k.ed.sign(input).to_bytes().to_vec());

        // Good signatures under kids that name no key of their algorithm.
        for (case, t) in [
            (
                "RS256",
                rs(json!({ "alg": "RS256", "kid": "rsa-2" }), now() + 600),
            ),
            ("ES256", es(json!({ "alg": "ES256", "kid": "ec-9" }))),
            ("EdDSA", ed(json!({ "alg": "EdDSA", "kid": "rsa-1" }))),
        ] {
            assert_eq!(status_of(&gateway, &t).await, 401, "{case}");
        }
        // Without a kid: the lone RSA and Ed25519 keys are the ones; two EC keys are a guess.
        assert_eq!(
            status_of(&gateway, &rs(json!({ "alg": "RS256" }), now() + 600)).await,
            200
        );
        assert_eq!(
            status_of(&gateway, &ed(json!({ "alg": "EdDSA" }))).await,
            200
        );
        assert_eq!(
            status_of(&gateway, &es(json!({ "alg": "ES256" }))).await,
            401
        );
        assert_eq!(
            status_of(&gateway, &es(json!({ "alg": "ES256", "kid": "ec-1" }))).await,
            200
        );

        // max-lifetime = 900 (leeway 60): 600 s from now is fine, 1200 s is not.
        let header = json!({ "alg": "RS256", "kid": "rsa-1" });
        assert_eq!(
            status_of(&gateway, &rs(header.clone(), now() + 600)).await,
            200
        );
        assert_eq!(status_of(&gateway, &rs(header, now() + 1200)).await, 401);

        for reason in [
            "unknown key id \"rsa-2\" for alg RS256",
            "unknown key id \"ec-9\" for alg ES256",
            "unknown key id \"rsa-1\" for alg EdDSA",
            "more than one configured key verifies alg ES256",
            "beyond jwt.max-lifetime (900s)",
        ] {
            let logs = gateway
                .wait_for_log(reason, std::time::Duration::from_secs(10))
                .await;
            assert!(logs.contains(reason), "{reason}:\n{logs}");
        }
    }
}
