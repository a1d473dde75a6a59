//! Outgoing HTTP for the plugins whose sidecar grants it, through the standard `wasi:http`
//! outgoing handler (`wasmtime-wasi-http`), so a guest in any language uses its usual client:
//!
//! ```toml
//! [grants]
//! http = ["https://login.example.com", "http://127.0.0.1:8080"]   # origins
//! http-timeout = "5s"        # per request, connection to last byte (default 5 s, at most 60 s)
//! http-max-kib = 1024        # largest response body (default 1 MiB)
//! http-concurrency = 4       # requests of this plugin in flight at once (default 4)
//! ```
//!
//! - Every plugin may import `wasi:http` (so one component serves configurations with and
//!   without a provider URL, like the built-in authn), but a request goes out only if its
//!   origin (scheme, host, port) is one the sidecar grants: without a grant, every request is
//!   refused. Plugins built against the plain world (no `wasi:http` import) load as before.
//! - Any other origin is refused with `HTTP-request-denied` (the guest sees the error code) and a
//!   warning naming the plugin and the refused origin — never the path or query, which may
//!   carry secrets. Redirects are not followed by the host; a guest that follows one makes a
//!   new request, checked again.
//! - Each request has one deadline, `http-timeout`, covering the wait for a concurrency
//!   permit, connecting, the response head and the whole body; the guest's own
//!   `request-options` timeouts apply when shorter. The body is cut with
//!   `HTTP-response-body-size` past `http-max-kib` (a `content-length` over it is refused
//!   before any byte is read). At most [`MAX_REQUESTS_PER_CALL`] requests per evaluation.
//! - Time spent waiting on the network does not count against the CPU deadline: the epoch
//!   deadline is checked only while the plugin's code runs (see `plugin.rs`), so a wait costs
//!   at most one tick (1 ms) when the plugin resumes. What bounds a call's wall-clock time is
//!   the CPU deadline plus, for each request, `http-timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::Semaphore;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::host::HostState;
use super::sidecar::Grants;

/// Per request, when the sidecar does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `http-timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body, when the sidecar does not say (KiB).
pub const DEFAULT_MAX_KIB: u32 = 1024;
/// The largest `http-max-kib` accepted (64 MiB).
pub const MAX_MAX_KIB: u32 = 64 * 1024;
/// Requests in flight per plugin, when the sidecar does not say.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// The largest `http-concurrency` accepted.
pub const MAX_CONCURRENCY: u32 = 64;
/// Requests one evaluation (or load-time `init`) may make: with the per-request timeout, this
/// bounds the wall-clock time a call can spend on the network.
pub const MAX_REQUESTS_PER_CALL: u32 = 8;

/// An origin: scheme, host (lowercase) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: &'static str,
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl Origin {
    /// Reads a granted origin: `http(s)://host[:port]`, optionally with a trailing `/`; no
    /// path, query, fragment or credentials (a grant is for a whole origin).
    pub fn parse_grant(text: &str) -> Result<Origin, String> {
        let bad = |why: &str| {
            Err(format!(
                "grants.http: {text:?} {why} (expected an origin such as https://login.example.com or http://127.0.0.1:8080)"
            ))
        };
        let Ok(uri) = text.parse::<http::Uri>() else {
            return bad("is not a URL");
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return bad("carries credentials");
        }
        if uri.query().is_some() || text.contains('#') {
            return bad("has a query or fragment");
        }
        if !matches!(uri.path(), "" | "/") {
            return bad("has a path");
        }
        match Origin::of(&uri) {
            Some(origin) if !origin.host.is_empty() => Ok(origin),
            _ => bad("is not an absolute http:// or https:// URL"),
        }
    }

    /// The origin a request goes to (`None` for a scheme other than http/https).
    fn of(uri: &http::Uri) -> Option<Origin> {
        let scheme = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => "https",
            s if s.eq_ignore_ascii_case("http") => "http",
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(Origin { scheme, host, port })
    }
}

/// A plugin's `http` grant, shared by all its instances.
#[derive(Debug)]
pub struct HttpGrant {
    origins: Vec<Origin>,
    timeout: Duration,
    max_bytes: usize,
    permits: Arc<Semaphore>,
}

impl HttpGrant {
    /// The grant the sidecar's `[grants]` describes, `None` when it lists no origin.
    pub fn from_sidecar(grants: Option<&Grants>) -> Result<Option<Arc<HttpGrant>>, String> {
        let Some(g) = grants else {
            return Ok(None);
        };
        if g.http.is_empty() {
            if g.http_timeout.is_some() || g.http_max_kib.is_some() || g.http_concurrency.is_some()
            {
                return Err(
                    "grants: http-timeout, http-max-kib and http-concurrency need grants.http (the origins)"
                        .into(),
                );
            }
            return Ok(None);
        }
        let origins = g
            .http
            .iter()
            .map(|o| Origin::parse_grant(o))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = g.http_timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(format!(
                "grants.http-timeout: {timeout:?} must be above 0 and at most {MAX_TIMEOUT:?}"
            ));
        }
        let kib = g.http_max_kib.unwrap_or(DEFAULT_MAX_KIB);
        if !(1..=MAX_MAX_KIB).contains(&kib) {
            return Err(format!(
                "grants.http-max-kib: {kib} must be from 1 to {MAX_MAX_KIB}"
            ));
        }
        let concurrency = g.http_concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(format!(
                "grants.http-concurrency: {concurrency} must be from 1 to {MAX_CONCURRENCY}"
            ));
        }
        Ok(Some(Arc::new(HttpGrant {
            origins,
            timeout,
            max_bytes: (kib as usize) << 10,
            permits: Arc::new(Semaphore::new(concurrency as usize)),
        })))
    }

    fn allows(&self, origin: &Origin) -> bool {
        self.origins.contains(origin)
    }
}

/// The `wasi:http` state of one store.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

impl HttpState {
    /// For a plugin with `grant` (`None`: every request is refused).
    pub fn new(plugin: Arc<str>, grant: Option<Arc<HttpGrant>>) -> Self {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                plugin,
                grant,
                requests: 0,
            },
        }
    }

    /// Starts the per-call request count afresh (a warm instance serves many calls).
    pub fn begin_call(&mut self) {
        self.hooks.requests = 0;
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// Adds `wasi:http` (types and the outgoing handler) to a linker that already has WASI.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

struct Hooks {
    plugin: Arc<str>,
    grant: Option<Arc<HttpGrant>>,
    requests: u32,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

fn refused(error: HttpError) -> SendFuture {
    Box::new(async move { Err(error) })
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let plugin = &*self.plugin;
        let Some(origin) = Origin::of(request.uri()) else {
            tracing::warn!(target: "portcullis::plugin", plugin, "outgoing HTTP refused: not an http(s) URL");
            return refused(HttpError::HttpRequestDenied);
        };
        let Some(grant) = self.grant.as_ref().filter(|g| g.allows(&origin)).cloned() else {
            tracing::warn!(target: "portcullis::plugin", plugin, %origin, "outgoing HTTP refused: origin not granted (grants.http)");
            return refused(HttpError::HttpRequestDenied);
        };
        self.requests += 1;
        if self.requests > MAX_REQUESTS_PER_CALL {
            tracing::warn!(target: "portcullis::plugin", plugin, %origin, "outgoing HTTP refused: more than {MAX_REQUESTS_PER_CALL} requests in one call");
            return refused(HttpError::HttpRequestDenied);
        }
        let plugin = self.plugin.clone();
        Box::new(async move {
            let started = tokio::time::Instant::now();
            let deadline = started + grant.timeout;
            let outcome = send(&grant, request, options, deadline).await;
            match &outcome {
                Ok((response, _)) => {
                    tracing::debug!(target: "portcullis::plugin", plugin = %plugin, %origin, status = response.status().as_u16(), ms = started.elapsed().as_millis() as u64, "outgoing HTTP")
                }
                Err(e) => {
                    tracing::warn!(target: "portcullis::plugin", plugin = %plugin, %origin, error = %e, "outgoing HTTP failed")
                }
            }
            outcome
        })
    }
}

type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
);

async fn send(
    grant: &HttpGrant,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    deadline: tokio::time::Instant,
) -> Result<Sent, HttpError> {
    let permit = tokio::time::timeout_at(deadline, grant.permits.clone().acquire_owned())
        .await
        .map_err(|_| HttpError::ConnectionLimitReached)?
        .map_err(|_| HttpError::ConnectionLimitReached)?;
    let cap = |t: Option<Duration>| Some(t.map_or(grant.timeout, |t| t.min(grant.timeout)));
    let options = options.unwrap_or_default();
    let options = RequestOptions {
        connect_timeout: cap(options.connect_timeout),
        first_byte_timeout: cap(options.first_byte_timeout),
        between_bytes_timeout: cap(options.between_bytes_timeout),
    };
    let (response, io) = tokio::time::timeout_at(
        deadline,
        wasmtime_wasi_http::default_send_request(request, Some(options)),
    )
    .await
    .map_err(|_| HttpError::HttpResponseTimeout)??;
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > grant.max_bytes as u64) {
        return Err(HttpError::HttpResponseBodySize(declared));
    }
    let response = response.map(|body| {
        Capped {
            inner: body.boxed_unsync(),
            left: grant.max_bytes,
            max: grant.max_bytes,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            _permit: permit,
        }
        .boxed_unsync()
    });
    Ok((response, Box::new(io)))
}

/// A response body cut at the size cap and the request's deadline; it holds the
/// concurrency permit until the body is done or dropped.
struct Capped {
    inner: WasiBody,
    left: usize,
    max: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Body for Capped {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.left {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.max as u64,
                        )))));
                    }
                    this.left -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_whole_origins_with_default_ports() {
        let o = Origin::parse_grant("https://Login.Example.com").unwrap();
        assert_eq!(o.to_string(), "https://login.example.com:443");
        assert_eq!(
            Origin::parse_grant("http://127.0.0.1:8080/")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "login.example.com",
            "ftp://example.com",
            "https://example.com/realms/acme",
            "https://user:pw@example.com",
            "https://example.com?x=1",
            "https://example.com#f",
            "",
        ] {
            assert!(Origin::parse_grant(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_request_matches_only_its_own_origin() {
        let grant = HttpGrant {
            origins: vec![Origin::parse_grant("https://login.example.com").unwrap()],
            timeout: DEFAULT_TIMEOUT,
            max_bytes: 1024,
            permits: Arc::new(Semaphore::new(1)),
        };
        let at = |u: &str| grant.allows(&Origin::of(&u.parse().unwrap()).unwrap());
        assert!(at(
            "https://login.example.com/.well-known/openid-configuration"
        ));
        assert!(at("https://LOGIN.example.com:443/keys"));
        assert!(!at("http://login.example.com/keys"), "another scheme");
        assert!(!at("https://login.example.com:8443/keys"), "another port");
        assert!(!at("https://login.example.com.evil.test/keys"));
        assert!(!at("https://evil.test/login.example.com"));
    }

    #[test]
    fn settings_without_origins_or_out_of_bounds_are_refused() {
        let g = |text: &str| {
            let g: Grants = toml::from_str(text).unwrap();
            HttpGrant::from_sidecar(Some(&g)).map(|g| g.is_some())
        };
        assert_eq!(g("dir = \"/tmp\""), Ok(false));
        assert_eq!(g("http = [\"https://a.example\"]"), Ok(true));
        assert!(g("http-timeout = \"1s\"").is_err());
        assert!(g("http = [\"https://a.example\"]\nhttp-timeout = \"2m\"").is_err());
        assert!(g("http = [\"https://a.example\"]\nhttp-max-kib = 0").is_err());
        assert!(g("http = [\"https://a.example\"]\nhttp-concurrency = 1000").is_err());
        assert!(g("http = [\"https://a.example/path\"]").is_err());
    }
}
