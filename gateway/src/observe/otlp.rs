//! The HTTP client the OTLP exporter sends with: the workspace's reqwest, run on the
//! gateway's own tokio runtime.
//!
//! The SDK's batch span processor exports from a thread of its own, driving the export
//! future with a plain executor that has no tokio reactor. reqwest needs one, so each send
//! is spawned onto the runtime the client was made on and awaited through its join handle,
//! which any executor can poll. This keeps one HTTP stack in the binary (no second reqwest,
//! no hyper client of the SDK's, no tonic).

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

/// Largest collector answer read; OTLP answers are tiny (a partial-success message at most).
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl Client {
    pub fn new(
        runtime: tokio::runtime::Handle,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        // An https:// collector needs a TLS provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()?;
        Ok(Client { http, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let send = async move {
            let mut resp = http.execute(request).await?;
            let mut out = Response::builder().status(resp.status());
            if let Some(h) = out.headers_mut() {
                *h = std::mem::take(resp.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, HttpError>(out.body(Bytes::from(body))?)
        };
        self.runtime.spawn(send).await?
    }
}
