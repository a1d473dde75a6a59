//! Per-caller upstream credentials: OAuth 2.0 token exchange (RFC 8693).
//!
//! An HTTP upstream with `[upstreams.<name>.auth] kind = "token-exchange"` receives, on every
//! request, `Authorization: Bearer <a token made for it and for this caller>`:
//!
//! - **The subject** is the bearer token the caller sent *and authn accepted*: the front
//!   remembers it on the client session ([`SubjectSlot::remember`]) only once the policy
//!   chain established an identity for that request, so an unauthenticated token is never
//!   exchanged. A session is used by its owner only, so its links exchange its owner's
//!   token. A caller without one (anonymous, or authenticated by something other than a
//!   bearer token) gets no upstream credential: the request **fails closed** with a JSON-RPC
//!   error naming the upstream, and nothing is sent to it.
//! - **The exchange** is a form POST to `token-endpoint` (given, or discovered from the
//!   provider's `issuer`: `credential/discovery.rs`) with
//!   `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, the subject token (type
//!   `access_token`), `requested_token_type` `access_token`, the upstream's `audience`,
//!   `resource` (RFC 8707) and `scope`, and the gateway's client authentication (HTTP Basic
//!   or form). Bounded: `timeout` per exchange, [`MAX_ANSWER_BYTES`] of answer, no redirects
//!   followed (the client secret goes to the configured URL only).
//! - **The cache** holds one issued token per (upstream, SHA-256 of the caller's token), until
//!   `refresh-before` (default 30 s, at most half the lifetime) before its `expires_in`;
//!   an answer without `expires_in` is kept [`DEFAULT_LIFETIME`]. At most `max-cached` entries
//!   per upstream (stale ones, then the soonest-expiring, make room), each at most
//!   [`MAX_TOKEN_BYTES`]. A refreshed client token is a new subject and gets a new exchange.
//!   Concurrent misses for one key wait on one exchange.
//! - **Failure**: the token endpoint unreachable, slow, or refusing (an RFC 6749 §5.2 error:
//!   its `error` code is reported, never its description) fails the request with a JSON-RPC
//!   error; the client's token is never sent in its place, and neither token reaches a log,
//!   an error message or a metric label.
//!
//! Counted per upstream for `/metrics`: exchanges (ok / error) and cache lookups (hit / miss).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

mod discovery;

use super::{InboundHandler, Upstream, UpstreamError};
use crate::config::{ClientAuthMethod, MAX_TOKEN_BYTES, UpstreamAuth};
use crate::policy::CallView;

/// `grant_type` of an RFC 8693 token exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of an OAuth access token (subject and requested).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Largest token endpoint answer read; a longer one is refused (a token answer is a few KiB).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long an issued token without `expires_in` is used.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// The bearer token a caller presented and authn accepted: what gets exchanged.
pub struct Subject {
    token: Box<str>,
    /// SHA-256 of the token: the cache key (the token itself is not kept twice).
    key: [u8; 32],
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subject(…)")
    }
}

impl Subject {
    /// A subject from a raw token (tests and benchmarks; the gateway uses
    /// [`SubjectSlot::remember`]).
    pub fn new(token: &str) -> Subject {
        Subject {
            token: token.into(),
            key: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

/// The bearer token of a request the policy chain identified, if it carried one.
fn accepted_bearer(view: &CallView) -> Option<&str> {
    view.identity.as_ref()?;
    let value = view.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A client session's latest accepted bearer token (see the module docs).
#[derive(Default)]
pub struct SubjectSlot(ArcSwapOption<Subject>);

impl SubjectSlot {
    /// Remembers the bearer token of a request authn identified; anything else leaves the
    /// slot as it was (the session's owner stays the same caller).
    pub fn remember(&self, view: Option<&CallView>) {
        let Some(token) = view.and_then(accepted_bearer) else {
            return;
        };
        if self.0.load().as_ref().is_some_and(|s| *s.token == *token) {
            return;
        }
        self.0.store(Some(Arc::new(Subject::new(token))));
    }

    /// The remembered subject, if any.
    pub fn get(&self) -> Option<Arc<Subject>> {
        self.0.load_full()
    }
}

/// The `Authorization` header for a request to `upstream` on behalf of the caller behind
/// `handler` (its client session), added to `req`. A no-op for upstreams without a token
/// exchange (their static credential is among the client's headers already).
pub(super) async fn authorize(
    upstream: &Upstream,
    handler: &Weak<dyn InboundHandler>,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::RequestBuilder, UpstreamError> {
    Ok(match authorization(upstream, handler).await? {
        Some(header) => req.header(AUTHORIZATION, header),
        None => req,
    })
}

/// The `Authorization` header [`authorize`] adds: none for an upstream without a token
/// exchange.
pub(super) async fn authorization(
    upstream: &Upstream,
    handler: &Weak<dyn InboundHandler>,
) -> Result<Option<HeaderValue>, UpstreamError> {
    let Some(exchange) = &upstream.credential else {
        return Ok(None);
    };
    let failed = |reason: String| UpstreamError::Credential {
        upstream: upstream.name.clone(),
        reason,
    };
    let Some(subject) = handler.upgrade().and_then(|h| h.subject()) else {
        return Err(failed(
            "it takes a token exchanged for the caller, and this caller presented no bearer token that authn accepted".into(),
        ));
    };
    exchange.token_for(&subject).await.map(Some).map_err(failed)
}

/// One upstream's token exchange: its token endpoint client and its cache.
pub struct Exchange {
    http: reqwest::Client,
    endpoint: Endpoint,
    /// `Authorization: Basic …` for `client-auth = "basic"`.
    client_auth: Option<HeaderValue>,
    /// The form fields every exchange sends besides the subject token.
    fields: Vec<(&'static str, String)>,
    refresh_before: Duration,
    max_cached: usize,
    cache: Mutex<HashMap<[u8; 32], Arc<Entry>>>,
    /// What `/metrics` reports.
    pub counts: Counts,
}

/// Exchanges and cache lookups since start.
#[derive(Debug, Default)]
pub struct Counts {
    pub exchanged: AtomicU64,
    pub failed: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// Where the token endpoint comes from.
enum Endpoint {
    /// `token-endpoint`.
    Given(reqwest::Url),
    /// `issuer`: discovered, and kept for `discovery-ttl`.
    Discovered(Box<discovery::Discovery>),
}

#[derive(Default)]
struct Entry {
    issued: Mutex<Option<Issued>>,
    /// Held while one exchange for this key runs; concurrent misses wait here.
    filling: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Issued {
    header: HeaderValue,
    refresh_at: Instant,
}

impl Entry {
    fn fresh(&self, now: Instant) -> Option<HeaderValue> {
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued
            .as_ref()
            .filter(|i| now < i.refresh_at)
            .map(|i| i.header.clone())
    }

    fn refresh_at(&self) -> Option<Instant> {
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.as_ref().map(|i| i.refresh_at)
    }
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut f = f.debug_struct("Exchange");
        match &self.endpoint {
            Endpoint::Given(url) => f.field("endpoint", &url.origin().ascii_serialization()),
            Endpoint::Discovered(d) => f.field("issuer", &d.issuer()),
        };
        f.finish_non_exhaustive()
    }
}

impl Exchange {
    /// The exchange `auth` describes (validated by `config::upstream_auth`).
    pub fn new(auth: &UpstreamAuth) -> Result<Exchange, String> {
        let endpoint = match (&auth.token_endpoint, &auth.issuer) {
            (_, Some(issuer)) => Endpoint::Discovered(Box::new(discovery::Discovery::new(
                issuer,
                auth.discovery_ttl
                    .unwrap_or(crate::config::DEFAULT_DISCOVERY_TTL),
            )?)),
            (endpoint, None) => Endpoint::Given(
                reqwest::Url::parse(endpoint.as_deref().unwrap_or_default())
                    .map_err(|e| format!("invalid token-endpoint: {e}"))?,
            ),
        };
        let (id, secret) = (
            auth.client_id.clone().unwrap_or_default(),
            auth.client_secret.clone().unwrap_or_default(),
        );
        let mut fields = vec![
            ("grant_type", GRANT_TYPE.to_string()),
            ("subject_token_type", ACCESS_TOKEN_TYPE.to_string()),
            ("requested_token_type", ACCESS_TOKEN_TYPE.to_string()),
        ];
        for (key, value) in [
            ("audience", &auth.audience),
            ("resource", &auth.resource),
            ("scope", &auth.scope),
        ] {
            if let Some(v) = value {
                fields.push((key, v.clone()));
            }
        }
        let client_auth = match auth.client_auth {
            ClientAuthMethod::Basic => {
                // RFC 6749 §2.3.1: both are form-encoded before they are joined.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", enc(&id), enc(&secret));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
                    .map_err(|_| "invalid client credentials".to_string())?;
                v.set_sensitive(true);
                Some(v)
            }
            ClientAuthMethod::Post => {
                fields.push(("client_id", id));
                fields.push(("client_secret", secret));
                None
            }
        };
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(auth.timeout)
            .timeout(auth.timeout)
            // The client secret goes to the configured URL and nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Exchange {
            http,
            endpoint,
            client_auth,
            fields,
            refresh_before: auth.refresh_before,
            max_cached: auth.max_cached,
            cache: Mutex::new(HashMap::new()),
            counts: Counts::default(),
        })
    }

    /// `Bearer <token>` for `subject`: cached, or exchanged now. `Err` says why not, without
    /// any token in it.
    pub async fn token_for(&self, subject: &Subject) -> Result<HeaderValue, String> {
        let entry = self.entry(subject.key);
        if let Some(header) = entry.fresh(Instant::now()) {
            self.counts.hits.fetch_add(1, Relaxed);
            return Ok(header);
        }
        let _filling = entry.filling.lock().await;
        // Another request for this key may have exchanged while this one waited.
        if let Some(header) = entry.fresh(Instant::now()) {
            self.counts.hits.fetch_add(1, Relaxed);
            return Ok(header);
        }
        self.counts.misses.fetch_add(1, Relaxed);
        match self.exchange(subject).await {
            Ok(issued) => {
                self.counts.exchanged.fetch_add(1, Relaxed);
                let header = issued.header.clone();
                *entry.issued.lock().unwrap_or_else(|p| p.into_inner()) = Some(issued);
                Ok(header)
            }
            Err(e) => {
                self.counts.failed.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// The cache entry for `key`, made (room permitting) if new.
    fn entry(&self, key: [u8; 32]) -> Arc<Entry> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cache.get(&key) {
            return e.clone();
        }
        if cache.len() >= self.max_cached {
            let now = Instant::now();
            // Stale entries first (an entry being filled has no token yet and is dropped
            // too: its exchange still answers the requests waiting on it).
            cache.retain(|_, e| e.refresh_at().is_some_and(|at| now < at));
            if cache.len() >= self.max_cached {
                // Still full of fresh tokens: the soonest-expiring sixteenth goes at once,
                // so a stream of new callers pays one scan per sixteenth, not one each.
                let mut by_expiry: Vec<_> =
                    cache.iter().map(|(k, e)| (e.refresh_at(), *k)).collect();
                let evict = (self.max_cached / 16).max(1).min(by_expiry.len());
                by_expiry.select_nth_unstable(evict - 1);
                for (_, k) in &by_expiry[..evict] {
                    cache.remove(k);
                }
            }
        }
        cache.entry(key).or_default().clone()
    }

    /// One RFC 8693 exchange at the token endpoint.
    async fn exchange(&self, subject: &Subject) -> Result<Issued, String> {
        // Built in a block: the serializer is not `Send` and must not live across an await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (key, value) in &self.fields {
                form.append_pair(key, value);
            }
            form.append_pair("subject_token", &subject.token);
            form.finish()
        };
        let endpoint = match &self.endpoint {
            Endpoint::Given(url) => url.clone(),
            Endpoint::Discovered(d) => d.token_endpoint(&self.http).await?,
        };
        let mut req = self
            .http
            .post(endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(form);
        if let Some(basic) = &self.client_auth {
            req = req.header(AUTHORIZATION, basic.clone());
        }
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "did not answer in time".to_string()
            } else {
                format!("cannot be reached: {}", super::http::cause(e))
            };
            format!("the token endpoint {what}")
        })?;
        let status = resp.status();
        let body = read_capped(resp, MAX_ANSWER_BYTES, "the token endpoint's answer").await?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &body));
        }
        let issued = issued(&body, self.refresh_before)?;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "token exchanged"
        );
        Ok(issued)
    }
}

/// Reads an answer (`what`, for errors) up to `limit` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    let too_long = || format!("{what} is longer than {limit} bytes");
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{what} broke off: {}", super::http::cause(e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What an error answer says: its RFC 6749 §5.2 `error` code when it has a sane one (the
/// description is left out: it may echo what was sent).
fn refusal(status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v.get("error")
            .and_then(Value::as_str)
            .filter(|c| {
                !c.is_empty()
                    && c.len() <= 64
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .map(str::to_string)
    });
    match code {
        Some(code) => format!("the token endpoint refused the exchange: {code} (HTTP {status})"),
        None => format!("the token endpoint answered HTTP {status}"),
    }
}

/// The issued token of a successful answer (RFC 8693 §2.2.1).
fn issued(body: &[u8], refresh_before: Duration) -> Result<Issued, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| "the token endpoint's answer is not JSON".to_string())?;
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("the token endpoint's answer has no access_token")?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "the issued token is longer than {MAX_TOKEN_BYTES} bytes"
        ));
    }
    match v.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        // The type is a name from a registry, not a secret; bounded anyway.
        Some(t) => {
            let t: String = t.chars().take(32).collect();
            return Err(format!(
                "the token endpoint issued a token of type {t:?}, not a Bearer token"
            ));
        }
        None => return Err("the token endpoint's answer has no token_type".into()),
    }
    let lifetime = match v.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_LIFETIME,
        Some(n) => Duration::from_secs(
            n.as_u64()
                .ok_or("the token endpoint's expires_in is not a number of seconds")?,
        ),
    };
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the issued token is not a valid header value".to_string())?;
    header.set_sensitive(true);
    let early = refresh_before.min(lifetime / 2);
    Ok(Issued {
        header,
        refresh_at: Instant::now() + (lifetime - early),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_their_lifetime_and_checked() {
        let ok = br#"{"access_token":"abc","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300}"#;
        let i = issued(ok, Duration::from_secs(30)).unwrap();
        assert_eq!(i.header, "Bearer abc");
        assert!(i.header.is_sensitive());
        let left = i.refresh_at - Instant::now();
        assert!(left <= Duration::from_secs(270) && left > Duration::from_secs(260));
        // A short lifetime is refreshed at half of it, not after it expired.
        let short = br#"{"access_token":"abc","token_type":"bearer","expires_in":10}"#;
        let left = issued(short, Duration::from_secs(30)).unwrap().refresh_at - Instant::now();
        assert!(left <= Duration::from_secs(5));
        let cases: [(&[u8], &str); 5] = [
            (br#"{"token_type":"Bearer"}"#, "no access_token"),
            (
                br#"{"access_token":"a","token_type":"N_A"}"#,
                "not a Bearer token",
            ),
            (br#"{"access_token":"a"}"#, "no token_type"),
            (
                br#"{"access_token":"a","token_type":"Bearer","expires_in":"x"}"#,
                "expires_in",
            ),
            (b"<html>", "not JSON"),
        ];
        for (bad, want) in cases {
            let e = issued(bad, Duration::from_secs(30)).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn refusals_name_the_error_code_only() {
        let e = refusal(
            400,
            br#"{"error":"invalid_grant","error_description":"token abc.def expired"}"#,
        );
        assert_eq!(
            e,
            "the token endpoint refused the exchange: invalid_grant (HTTP 400)"
        );
        assert_eq!(
            refusal(502, b"bad gateway"),
            "the token endpoint answered HTTP 502"
        );
        let odd = refusal(400, br#"{"error":"secret token\u0000"}"#);
        assert!(!odd.contains("secret"), "{odd}");
    }

    #[test]
    fn the_slot_keeps_only_tokens_authn_accepted() {
        use crate::mcp::Message;
        use crate::policy::Identity;
        let view = |identity: bool, auth: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(AUTHORIZATION, auth.parse().unwrap());
            CallView {
                method: "x".into(),
                target: None,
                upstream: None,
                upstream_target: None,
                session: None,
                identity: identity.then(|| Identity {
                    subject: "alice".into(),
                    ..Default::default()
                }),
                attributes: Default::default(),
                headers,
                request: Arc::new(Message::notification("x", None)),
                response: None,
            }
        };
        let slot = SubjectSlot::default();
        slot.remember(Some(&view(false, "Bearer unverified")));
        assert!(slot.get().is_none(), "no identity: not remembered");
        slot.remember(Some(&view(true, "Basic abc")));
        assert!(slot.get().is_none(), "not a bearer token");
        slot.remember(Some(&view(true, "Bearer t1")));
        assert_eq!(&*slot.get().unwrap().token, "t1");
        slot.remember(None);
        assert_eq!(&*slot.get().unwrap().token, "t1");
        assert_eq!(format!("{:?}", slot.get().unwrap()), "Subject(…)");
    }

    /// A token endpoint on loopback that answers every request with a fresh token (after
    /// `delay`), counting them.
    async fn endpoint(delay: Duration) -> (String, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = 0;
                    // The whole form fits one small read; wait for the blank line and body.
                    while let Ok(n) = conn.read(&mut buf[got..]).await {
                        got += n;
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if n == 0 || text.contains("subject_token=") {
                            break;
                        }
                    }
                    let n = count.fetch_add(1, Relaxed) + 1;
                    tokio::time::sleep(delay).await;
                    let body = format!(
                        r#"{{"access_token":"t{n}","token_type":"Bearer","expires_in":3600}}"#
                    );
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, count)
    }

    fn exchange(url: &str, max_cached: usize) -> Exchange {
        let text = format!(
            "[upstreams.u]\nurl = \"http://127.0.0.1:9/mcp\"\n[upstreams.u.auth]\nkind = \"token-exchange\"\ntoken-endpoint = \"{url}\"\nclient-id = \"c\"\nclient-secret = \"s\"\naudience = \"u\"\nmax-cached = {max_cached}\n"
        );
        let config = crate::config::parse(&text, "t.toml", &|_| None).unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        Exchange::new(config.upstreams["u"].auth.as_ref().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_caller_share_one_exchange() {
        let (url, count) = endpoint(Duration::from_millis(100)).await;
        let ex = Arc::new(exchange(&url, 16));
        let alice = Arc::new(Subject::new("alice-token"));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (ex, alice) = (ex.clone(), alice.clone());
                tokio::spawn(async move { ex.token_for(&alice).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), "Bearer t1");
        }
        assert_eq!(count.load(Relaxed), 1);
        assert_eq!(ex.counts.misses.load(Relaxed), 1);
        assert_eq!(ex.counts.hits.load(Relaxed), 7);
        let bob = Subject::new("bob-token");
        assert_eq!(ex.token_for(&bob).await.unwrap(), "Bearer t2");
        assert_eq!(ex.counts.exchanged.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn the_cache_stays_within_max_cached() {
        let (url, _) = endpoint(Duration::ZERO).await;
        let ex = exchange(&url, 16);
        for i in 0..40 {
            ex.token_for(&Subject::new(&format!("caller-{i}")))
                .await
                .unwrap();
            assert!(ex.cache.lock().unwrap().len() <= 16);
        }
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_an_error_without_tokens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let ex = exchange(&format!("http://127.0.0.1:{port}/token"), 16);
        let e = ex
            .token_for(&Subject::new("alice-secret-token"))
            .await
            .unwrap_err();
        assert!(e.starts_with("the token endpoint cannot be reached"), "{e}");
        assert!(
            !e.contains("alice-secret-token") && !e.contains("127.0.0.1"),
            "{e}"
        );
        assert_eq!(ex.counts.failed.load(Relaxed), 1);
    }
}
