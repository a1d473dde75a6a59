//! TLS at the front (`[server.tls]`): the official TypeScript SDK over HTTPS with HTTP/1.1 and
//! HTTP/2, client certificates required or optional (and then an identity source for authn
//! that a client cannot forge), and certificate rotation picked up without a restart.
//!
//! Certificates are made in the test with rcgen: one CA signs the server's certificate
//! (`localhost`, `127.0.0.1`) and the agents' client certificates.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use portcullis_tests::harness::{
    FIXTURE_SIMPLE_TEXT, Gateway, PluginDir, TempDir, node, server_toml, stdio_fixture_toml,
    toml_str,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A test CA and what it signs.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
struct Pair {
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Portcullis test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`, its subject CN `cn`.
    fn server(&self, cn: &str) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// An agent's client certificate: CN `cn`, SAN URI `uri`.
    fn client(&self, cn: &str, uri: &str) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes the server's files and returns the `[server.tls]` table for them.
fn tls_toml(dir: &TempDir, server: &Pair, client_ca: Option<(&str, &str)>) -> String {
    let cert = dir.write("server.crt", &server.cert);
    let key = dir.write("server.key", &server.key);
    let mut t = format!(
        "[server.tls]\ncert = {}\nkey = {}\n",
        toml_str(&cert.to_string_lossy()),
        toml_str(&key.to_string_lossy())
    );
    if let Some((ca, auth)) = client_ca {
        let ca = dir.write("clients-ca.crt", ca);
        t.push_str(&format!(
            "client-ca = {}\nclient-auth = \"{auth}\"\n",
            toml_str(&ca.to_string_lossy())
        ));
    }
    t.push('\n');
    t
}

/// Runs tests/tls/client.cjs (the SDK's Streamable HTTP client over undici) with `options`:
/// its one output line, `{"tools", "call", "logs", "alpn"}` or `{"error"}`.
async fn sdk(options: Value) -> Value {
    let (node, modules) = node(&["@modelcontextprotocol/sdk", "undici"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tls/client.cjs");
    let run = tokio::process::Command::new(node)
        .arg(script)
        .arg(options.to_string())
        .env("NODE_PATH", modules)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK client did not finish within 60s")
        .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "SDK client printed no JSON:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn call_text(out: &Value) -> &str {
    out["call"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_lists_and_calls_tools_over_https_with_http1_and_http2() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let config = format!(
        "{}{}{}",
        server_toml(),
        tls_toml(&dir, &pki.server("gateway"), None),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    assert!(gateway.url().starts_with("https://"), "{}", gateway.url());
    for (h2, protocol) in [(false, "http/1.1"), (true, "h2")] {
        let out = sdk(json!({
            "url": gateway.url(), "ca": pki.ca_pem, "h2": h2,
            "tool": "alpha__test_simple_text",
        }))
        .await;
        assert!(out.get("error").is_none(), "h2={h2}: {out}");
        let tools = out["tools"].as_array().unwrap();
        assert!(
            tools.iter().any(|t| t == "alpha__test_tool_with_logging"),
            "h2={h2}: {out}"
        );
        assert_eq!(call_text(&out), FIXTURE_SIMPLE_TEXT, "h2={h2}: {out}");
        let alpn = out["alpn"].as_array().unwrap();
        assert!(
            !alpn.is_empty() && alpn.iter().all(|p| p == protocol),
            "h2={h2}: every connection should speak {protocol}: {out}"
        );
    }
    // Streamable HTTP's SSE responses over HTTP/2: the tool's log notifications arrive on the
    // call's event stream before its result.
    let out = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": true,
        "tool": "alpha__test_tool_with_logging",
    }))
    .await;
    assert_eq!(
        call_text(&out),
        "Tool with logging executed successfully",
        "{out}"
    );
    assert_eq!(
        out["logs"],
        json!([
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed"
        ]),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_is_enforced_at_the_handshake() {
    let pki = Pki::new();
    let other = Pki::new();
    let dir = TempDir::new();
    let config = format!(
        "{}{}{}",
        server_toml(),
        tls_toml(
            &dir,
            &pki.server("gateway"),
            Some((&pki.ca_pem, "required"))
        ),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let agent = pki.client("ci-agent", "spiffe://acme/agent/ci");
    let ok = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": true,
        "cert": agent.cert, "key": agent.key, "tool": "alpha__test_simple_text",
    }))
    .await;
    assert_eq!(call_text(&ok), FIXTURE_SIMPLE_TEXT, "{ok}");

    let without = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": true, "tool": "alpha__test_simple_text",
    }))
    .await;
    assert!(without.get("tools").is_none(), "{without}");
    assert!(without.get("error").is_some(), "{without}");
    // A certificate from another CA is no better than none.
    let stranger = other.client("ci-agent", "spiffe://acme/agent/ci");
    let foreign = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": false,
        "cert": stranger.cert, "key": stranger.key, "tool": "alpha__test_simple_text",
    }))
    .await;
    assert!(foreign.get("tools").is_none(), "{foreign}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_client_certificate_authenticates_an_agent_and_cannot_be_forged() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let agent = pki.client("ci-agent", "spiffe://acme/agent/ci");
    let fingerprint = {
        let der = rustls_pki_der(&agent.cert);
        hex(&Sha256::digest(der))
    };
    // The shipped authn plugin pins the agent's certificate: its fingerprint, which only the
    // gateway sets from a verified certificate, is the "API key" of the subject ci-agent.
    let plugins = PluginDir::new();
    plugins.add(
        "authn",
        "authn",
        &format!(
            "expose-headers = [\"x-portcullis-client-cert-sha256\"]\n\n[config]\napi-key-header = \"x-portcullis-client-cert-sha256\"\n\n[[config.api-keys]]\nsha256 = \"{}\"\nsubject = \"ci-agent\"\nroles = [\"agent\"]\n",
            hex(&Sha256::digest(fingerprint.as_bytes()))
        ),
    );
    let config = format!(
        "{}{}{}{}",
        server_toml(),
        tls_toml(
            &dir,
            &pki.server("gateway"),
            Some((&pki.ca_pem, "optional"))
        ),
        plugins.policy_toml(),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    let with_cert = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": true,
        "cert": agent.cert, "key": agent.key, "tool": "alpha__test_simple_text",
    }))
    .await;
    assert_eq!(call_text(&with_cert), FIXTURE_SIMPLE_TEXT, "{with_cert}");

    // Optional: a client without a certificate completes the handshake, and authn refuses it.
    let without = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": false, "tool": "alpha__test_simple_text",
    }))
    .await;
    assert_eq!(without["code"], 401, "{without}");

    // Sending the headers the gateway sets does not make a client that agent.
    for h2 in [false, true] {
        let forged = sdk(json!({
            "url": gateway.url(), "ca": pki.ca_pem, "h2": h2, "tool": "alpha__test_simple_text",
            "headers": {
                "x-portcullis-client-cert-sha256": fingerprint,
                "X-Portcullis-Client-Cert-Cn": "ci-agent",
            },
        }))
        .await;
        assert_eq!(forged["code"], 401, "h2={h2}: {forged}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_ignored() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let first = pki.server("gateway-2026-01");
    let config = format!(
        "{}{}{}",
        server_toml(),
        tls_toml(&dir, &first, None),
        stdio_fixture_toml("alpha")
    );
    let gateway = Gateway::start(&config).await;
    assert_eq!(served(&gateway, &pki).await, rustls_pki_der(&first.cert));

    // cert-manager writes the new pair: new handshakes get it, the process stays the same.
    let pid = gateway.pid();
    let second = pki.server("gateway-2026-02");
    write_atomically(&dir.path().join("server.key"), &second.key);
    write_atomically(&dir.path().join("server.crt"), &second.cert);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while served(&gateway, &pki).await != rustls_pki_der(&second.cert) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gateway.pid(), pid);
    let out = sdk(json!({
        "url": gateway.url(), "ca": pki.ca_pem, "h2": true, "tool": "alpha__test_simple_text",
    }))
    .await;
    assert_eq!(call_text(&out), FIXTURE_SIMPLE_TEXT, "{out}");

    // A half-written certificate keeps the last good one, and says so.
    let refusals = || gateway.logs().matches(KEPT).count();
    let before = refusals();
    write_atomically(
        &dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while refusals() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error about the broken file:\n{}",
            gateway.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served(&gateway, &pki).await, rustls_pki_der(&second.cert));
}

/// What the gateway logs when changed files are not usable.
const KEPT: &str = "keeping the last good certificate";

/// The leaf certificate the gateway serves in a fresh handshake (HTTP/1.1 ALPN).
async fn served(gateway: &Gateway, pki: &Pki) -> Vec<u8> {
    use rustls::pki_types::ServerName;
    portcullis_tests::harness::init_tls();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_der(&pki.ca_pem).into()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in a PEM text.
fn rustls_pki_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
