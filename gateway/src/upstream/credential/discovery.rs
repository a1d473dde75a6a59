//! Token endpoint discovery: `[upstreams.<name>.auth] issuer = "…"` instead of
//! `token-endpoint`.
//!
//! - **Where**: `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery §4: the
//!   issuer's trailing `/` dropped, the path appended); when that answers anything but
//!   success (e.g. 404), RFC 8414's `/.well-known/oauth-authorization-server` inserted between
//!   the host and the issuer's path (§3.1). A network failure or a document that is there but
//!   wrong ends the search: the second location is only for providers without the first.
//! - **What is checked**: the document is a JSON object of at most
//!   [`MAX_DOCUMENT_BYTES`]; its `issuer` equals the configured issuer exactly (character for
//!   character, as both specifications require: a document for another issuer is refused, so
//!   a wrong or hijacked location cannot hand out someone else's endpoint); its
//!   `token_endpoint` is an absolute URL without a fragment, `https://` (or `http://` on a
//!   loopback address: the same rule as a configured `token-endpoint`, since the client
//!   secret and the caller's token cross it).
//! - **Bounds**: each fetch takes at most the exchange's `timeout` and follows no redirect
//!   (the exchange's own HTTP client); the result is used for `discovery-ttl` (default 1h,
//!   at most 24h), then fetched again. Concurrent exchanges that need the endpoint wait on one
//!   fetch. Discovery happens at the first exchange, not at start-up, so a provider that is
//!   down when the gateway starts costs only the calls that need a new token.
//! - **Failure fails closed**: no endpoint, no exchange: the call gets the credential error
//!   (`upstream '…' got no credential for this caller: …`) and nothing reaches the upstream.
//!   An expired endpoint that cannot be discovered again is not used. Discovery sends no
//!   credential, and its errors carry no token (there is none to carry).

use std::sync::Mutex;
use std::time::Duration;

use http::header::ACCEPT;
use serde_json::Value;
use tokio::time::Instant;

use crate::config::secure_endpoint;

/// Largest discovery document read (real ones are 1–10 KiB; Keycloak's is the largest).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// One upstream's discovered token endpoint and where it comes from.
pub struct Discovery {
    /// As configured: the document's `issuer` must equal it exactly.
    issuer: String,
    /// Where the document is looked for, in order.
    locations: [reqwest::Url; 2],
    ttl: Duration,
    known: Mutex<Option<(reqwest::Url, Instant)>>,
    /// Held while one fetch runs; concurrent callers wait here.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Discovery for `issuer` (validated by `config::upstream_auth`), results kept `ttl`.
    pub fn new(issuer: &str, ttl: Duration) -> Result<Discovery, String> {
        let parsed = reqwest::Url::parse(issuer).map_err(|e| format!("invalid issuer: {e}"))?;
        Ok(Discovery {
            issuer: issuer.to_string(),
            locations: locations(&parsed),
            ttl,
            known: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint: known and not expired, or discovered now with `http`.
    pub async fn token_endpoint(&self, http: &reqwest::Client) -> Result<reqwest::Url, String> {
        if let Some(url) = self.fresh() {
            return Ok(url);
        }
        let _fetching = self.fetching.lock().await;
        // Another exchange may have discovered it while this one waited.
        if let Some(url) = self.fresh() {
            return Ok(url);
        }
        match self.discover(http).await {
            Ok(url) => {
                tracing::info!(
                    issuer = %self.issuer,
                    // Without a query: what an operator needs, nothing a provider put there.
                    token_endpoint = %format_args!("{}{}", url.origin().ascii_serialization(), url.path()),
                    "token endpoint discovered"
                );
                let until = Instant::now() + self.ttl;
                *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some((url.clone(), until));
                Ok(url)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "token endpoint discovery failed");
                Err(format!("the token endpoint cannot be discovered: {e}"))
            }
        }
    }

    fn fresh(&self) -> Option<reqwest::Url> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(url, _)| url.clone())
    }

    /// Fetches the document from the first location that serves one and reads it.
    async fn discover(&self, http: &reqwest::Client) -> Result<reqwest::Url, String> {
        let mut statuses = Vec::with_capacity(2);
        for location in &self.locations {
            let resp = http
                .get(location.clone())
                .header(ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        format!("{} did not answer in time", location.path())
                    } else {
                        format!(
                            "{} cannot be fetched: {}",
                            location.path(),
                            crate::upstream::http::cause(e)
                        )
                    }
                })?;
            let status = resp.status();
            if !status.is_success() {
                statuses.push(format!("HTTP {} at {}", status.as_u16(), location.path()));
                continue;
            }
            let body =
                super::read_capped(resp, MAX_DOCUMENT_BYTES, "the discovery document").await?;
            return token_endpoint_of(&body, &self.issuer);
        }
        Err(format!(
            "the provider serves no discovery document ({})",
            statuses.join(", ")
        ))
    }
}

/// `<issuer>/.well-known/openid-configuration`, then RFC 8414's
/// `<origin>/.well-known/oauth-authorization-server<issuer path>`.
fn locations(issuer: &reqwest::Url) -> [reqwest::Url; 2] {
    let path = issuer.path().trim_end_matches('/');
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut oauth = issuer.clone();
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    [oidc, oauth]
}

/// The `token_endpoint` of a discovery document for `issuer` (see the module docs).
fn token_endpoint_of(body: &[u8], issuer: &str) -> Result<reqwest::Url, String> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| "the discovery document is not JSON".to_string())?;
    let doc = doc
        .as_object()
        .ok_or("the discovery document is not a JSON object")?;
    match doc.get("issuer").and_then(Value::as_str) {
        Some(found) if found == issuer => {}
        // The provider's text, bounded and escaped: it is not a secret, and a mismatch such
        // as a trailing `/` is what an operator needs to see.
        Some(found) => {
            let found: String = found.chars().take(128).collect();
            return Err(format!(
                "the discovery document is for issuer {found:?}, not the configured {issuer:?}"
            ));
        }
        None => return Err("the discovery document has no issuer".into()),
    }
    let endpoint = doc
        .get("token_endpoint")
        .and_then(Value::as_str)
        .ok_or("the discovery document has no token_endpoint")?;
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("the discovered token_endpoint is not a URL: {e}"))?;
    secure_endpoint(&url).map_err(|m| format!("the discovered token_endpoint {m}"))?;
    if url.fragment().is_some() {
        return Err("the discovered token_endpoint has a fragment (RFC 6749 §3.2)".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    const ISS: &str = "https://login.example.com/realms/acme";

    fn doc(issuer: &str, endpoint: &str) -> Vec<u8> {
        serde_json::json!({ "issuer": issuer, "token_endpoint": endpoint, "jwks_uri": "x" })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn documents_are_looked_for_where_both_specifications_say() {
        let at =
            |issuer: &str| locations(&reqwest::Url::parse(issuer).unwrap()).map(|u| u.to_string());
        assert_eq!(
            at(ISS),
            [
                "https://login.example.com/realms/acme/.well-known/openid-configuration",
                "https://login.example.com/.well-known/oauth-authorization-server/realms/acme",
            ]
        );
        // Auth0's issuers end with `/`; a bare host has the path `/`.
        assert_eq!(
            at("https://t.auth0.com/"),
            [
                "https://t.auth0.com/.well-known/openid-configuration",
                "https://t.auth0.com/.well-known/oauth-authorization-server",
            ]
        );
    }

    #[test]
    fn the_token_endpoint_comes_from_a_document_for_the_configured_issuer() {
        let url = token_endpoint_of(
            &doc(ISS, &format!("{ISS}/protocol/openid-connect/token")),
            ISS,
        )
        .unwrap();
        assert_eq!(url.as_str(), format!("{ISS}/protocol/openid-connect/token"));
        let loopback = token_endpoint_of(
            &doc("http://127.0.0.1:9", "http://127.0.0.1:9/token"),
            "http://127.0.0.1:9",
        );
        assert!(loopback.is_ok(), "{loopback:?}");

        let token = "https://login.example.com/token";
        let cases: [(Vec<u8>, &str); 8] = [
            (
                doc(&format!("{ISS}/"), token),
                "is for issuer \"https://login.example.com/realms/acme/\", not the configured",
            ),
            (doc("https://evil.example.com", token), "not the configured"),
            (
                br#"{"token_endpoint":"https://x/t"}"#.to_vec(),
                "has no issuer",
            ),
            (
                serde_json::json!({ "issuer": ISS })
                    .to_string()
                    .into_bytes(),
                "has no token_endpoint",
            ),
            (
                doc(ISS, "http://login.example.com/token"),
                "must be https://",
            ),
            (doc(ISS, "/token"), "is not a URL"),
            (
                doc(ISS, "https://login.example.com/token#x"),
                "has a fragment",
            ),
            (b"<html>".to_vec(), "is not JSON"),
        ];
        for (body, want) in cases {
            let e = token_endpoint_of(&body, ISS).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = token_endpoint_of(b"[1]", ISS).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
    }

    /// A provider on loopback serving its document at `path` only (404 elsewhere), naming
    /// `issuer` (its own base URL + `/realms/t` when `None`); counts the requests.
    async fn provider(path_oidc: bool, issuer: Option<&str>) -> (String, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let iss = format!("{base}/realms/t");
        let named = issuer.unwrap_or(&iss).to_string();
        let served = if path_oidc {
            "/realms/t/.well-known/openid-configuration"
        } else {
            "/.well-known/oauth-authorization-server/realms/t"
        };
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        let body = String::from_utf8(doc(&named, &format!("{base}/token"))).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Relaxed);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = 0;
                    while let Ok(n) = conn.read(&mut buf[got..]).await {
                        got += n;
                        if n == 0 || buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..got]);
                    let path = head.split(' ').nth(1).unwrap_or_default();
                    let reply = if path == served {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        (iss, count)
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_discovered_endpoint_is_kept_for_its_lifetime_and_then_fetched_again() {
        let http = client();
        let (iss, fetches) = provider(true, None).await;
        let kept = Discovery::new(&iss, Duration::from_secs(3600)).unwrap();
        for _ in 0..3 {
            let url = kept.token_endpoint(&http).await.unwrap();
            assert!(url.as_str().ends_with("/token"), "{url}");
        }
        assert_eq!(fetches.load(Relaxed), 1, "one fetch within the lifetime");
        let expiring = Discovery::new(&iss, Duration::ZERO).unwrap();
        expiring.token_endpoint(&http).await.unwrap();
        expiring.token_endpoint(&http).await.unwrap();
        assert_eq!(fetches.load(Relaxed), 3, "fetched again once expired");
    }

    #[tokio::test]
    async fn rfc_8414_is_the_fallback_and_a_wrong_issuer_is_refused() {
        let http = client();
        let (iss, fetches) = provider(false, None).await;
        let d = Discovery::new(&iss, Duration::from_secs(3600)).unwrap();
        d.token_endpoint(&http).await.unwrap();
        assert_eq!(
            fetches.load(Relaxed),
            2,
            "OpenID location first, then RFC 8414"
        );

        let (iss, _) = provider(true, Some("https://login.example.com")).await;
        let e = Discovery::new(&iss, Duration::from_secs(3600))
            .unwrap()
            .token_endpoint(&http)
            .await
            .unwrap_err();
        assert!(
            e.starts_with("the token endpoint cannot be discovered: the discovery document is for issuer \"https://login.example.com\""),
            "{e}"
        );

        // Served nowhere: both locations named with their status.
        let (iss, _) = provider(true, None).await;
        let nowhere = Discovery::new(&format!("{iss}/other"), Duration::from_secs(3600))
            .unwrap()
            .token_endpoint(&http)
            .await
            .unwrap_err();
        assert!(
            nowhere.contains("serves no discovery document (HTTP 404 at /realms/t/other/.well-known/openid-configuration, HTTP 404 at /.well-known/oauth-authorization-server/realms/t/other)"),
            "{nowhere}"
        );
    }
}
