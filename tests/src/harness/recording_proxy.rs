//! An HTTP reverse proxy in front of an HTTP upstream that records the method, path and
//! `Authorization` header of every request it passes on: what the upstream received,
//! request by request (POSTs, GET streams, DELETEs), not only on the calls a tool reports.
//! Optionally it answers one path with a `307` to another, as web frameworks redirect
//! `/mcp` to `/mcp/`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One request that went through.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// A running proxy; stops on drop.
pub struct RecordingProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Forwarded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    /// Proxies to the HTTP server at `target`.
    pub async fn start(target: SocketAddr) -> RecordingProxy {
        Self::start_with(target, None).await
    }

    /// Proxies to `target`, answering requests for `from` with `307 Temporary Redirect` to
    /// `to` (recorded too).
    pub async fn redirecting(target: SocketAddr, from: &str, to: &str) -> RecordingProxy {
        Self::start_with(target, Some(Arc::new((from.into(), to.into())))).await
    }

    async fn start_with(
        target: SocketAddr,
        redirect: Option<Arc<(String, String)>>,
    ) -> RecordingProxy {
        super::init_tls();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Forwarded>>> = Arc::default();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("client");
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let (seen, client, redirect) = (seen.clone(), client.clone(), redirect.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            forward(client.clone(), target, seen.clone(), redirect.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        RecordingProxy { addr, seen, task }
    }

    /// The URL for `path` on the proxy (e.g. `/mcp`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request passed on so far.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

async fn forward(
    client: reqwest::Client,
    target: SocketAddr,
    seen: Arc<Mutex<Vec<Forwarded>>>,
    redirect: Option<Arc<(String, String)>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    seen.lock().unwrap().push(Forwarded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        authorization: parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
    });
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some((from, to)) = redirect.as_deref()
        && parts.uri.path() == from
    {
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut r = Response::new(empty);
        *r.status_mut() = hyper::StatusCode::TEMPORARY_REDIRECT;
        r.headers_mut()
            .insert(hyper::header::LOCATION, to.parse().unwrap());
        return Ok(r);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = client.request(parts.method.clone(), format!("http://{target}{path}"));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let upstream = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let body = Full::new(Bytes::from(e.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync();
            let mut r = Response::new(body);
            *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    let stream = upstream
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    Ok(response
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap())
}
