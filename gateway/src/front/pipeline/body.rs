//! Reading and parsing a client's POST body, once, under the size and time limits; and the
//! media-type checks every transport makes before reading it.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::ReadError;
use crate::front::Front;
use crate::front::response::{self, Body};
use crate::mcp::Message;
use crate::policy::Chain;

/// Whether `Accept` lists `wanted` (or `*/*`).
pub(in crate::front) fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|part| {
                let t = part.split(';').next().unwrap_or("").trim();
                t.eq_ignore_ascii_case(wanted) || t == "*/*"
            })
        })
}

/// The POST checks both eras make on the one endpoint: `Accept` lists both answer types
/// (406), the body is JSON (415).
pub(in crate::front) fn check_post_headers(headers: &HeaderMap) -> Result<(), Response<Body>> {
    if !(accepts(headers, "application/json") && accepts(headers, "text/event-stream")) {
        return Err(response::status_error(
            StatusCode::NOT_ACCEPTABLE,
            "Not Acceptable: Accept must list application/json and text/event-stream",
        ));
    }
    require_json(headers)
}

/// 415 unless the body is declared `application/json`.
pub(in crate::front) fn require_json(headers: &HeaderMap) -> Result<(), Response<Body>> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(response::status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: Content-Type must be application/json",
        ))
    }
}

/// The request headers the policy chain reads. With no policy (and no era rule that reads
/// them later) they are not copied at all.
pub(in crate::front) fn headers_for(chain: &Chain, headers: &HeaderMap, always: bool) -> HeaderMap {
    if chain.is_empty() && !always {
        HeaderMap::new()
    } else {
        headers.clone()
    }
}

/// A body that is not one JSON-RPC message: 400 with the parse error (`-32700`/`-32600`).
fn parse(body: &[u8]) -> Result<Message, Response<Body>> {
    Message::parse(body).map_err(|e| response::json(StatusCode::BAD_REQUEST, &e.to_response()))
}

impl Front {
    /// Step 1 of the pipeline: the body read under the limits and parsed, once.
    pub(in crate::front) async fn read_message(
        &self,
        req: Request<Incoming>,
    ) -> Result<Message, Response<Body>> {
        let body = self.read_body(req).await?;
        parse(&body)
    }

    /// The body, read under `max-body-bytes` (413) and `request-timeout` (408).
    pub(in crate::front) async fn read_body(
        &self,
        req: Request<Incoming>,
    ) -> Result<Bytes, Response<Body>> {
        let limit = self.config.max_body_bytes;
        let too_large = || {
            response::status_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Payload Too Large: the limit is {limit} bytes"),
            )
        };
        let read = crate::body::read_bounded(req.into_body(), limit);
        match tokio::time::timeout(self.config.request_timeout, read).await {
            Err(_) => Err(response::status_error(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout: body not received in time",
            )),
            Ok(Err(ReadError::TooLarge { .. })) => Err(too_large()),
            Ok(Err(ReadError::Body(_))) => Err(response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: the body could not be read",
            )),
            Ok(Ok(body)) => Ok(body),
        }
    }
}
