//! Outgoing HTTP GET, for policies whose sidecar grants origins (feature `http`):
//!
//! ```toml
//! [grants]
//! http = ["https://login.example.com"]
//! ```
//!
//! Built on the standard `wasi:http` outgoing handler (through the `wasip2` bindings), so a
//! policy that enables this feature imports `wasi:http`; the gateway loads it only with an
//! `http` grant, and refuses requests to any origin not listed there ([`Error::Denied`]).
//! The gateway bounds every request (timeout, response size, requests in flight); `timeout`
//! and `max_bytes` here can only ask for less.
//!
//! A call blocks the policy until the response is complete. Time spent waiting on the network
//! does not count against the policy's CPU deadline, but it is time the MCP request waits:
//! keep what is worth keeping (key sets, discovery documents) in [`crate::kv`].
//!
//! Natively (in unit tests) nothing goes on the network: [`testing::respond`] says what a URL
//! answers, and [`testing::requests`] lists the URLs asked for.

use std::time::Duration;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status` and `body` and no headers (for tests).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The gateway refused it: the origin is not granted, or the policy made too many
    /// requests in one call.
    Denied,
    /// Anything else: a bad URL, connection refused, a timeout, a body over the size cap.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied => f.write_str("refused by the gateway (origin not granted)"),
            Error::Failed(why) => f.write_str(why),
        }
    }
}

/// `GET url` with `headers`; the whole body, at most `max_bytes`.
pub fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_bytes: usize,
) -> Result<Response, Error> {
    imp::get(url, headers, timeout, max_bytes)
}

/// Splits an absolute `http(s)://authority/path?query` URL.
fn split(url: &str) -> Result<(bool, &str, &str), Error> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(Error::Failed("not an http:// or https:// URL".into()));
    };
    let cut = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    let path = path.split('#').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(Error::Failed(
            "the URL has no host, or carries credentials".into(),
        ));
    }
    Ok((https, authority, if path.is_empty() { "/" } else { path }))
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::time::Duration;

    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasip2::io::streams::StreamError;

    use super::{Error, Response};

    fn code(e: ErrorCode) -> Error {
        match e {
            ErrorCode::HttpRequestDenied => Error::Denied,
            other => Error::Failed(format!("{other:?}")),
        }
    }

    fn failed(what: &str) -> Error {
        Error::Failed(what.to_string())
    }

    pub fn get(
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, Error> {
        let (https, authority, path) = super::split(url)?;
        let fields = Fields::new();
        for (name, value) in headers {
            fields
                .append(name, value.as_bytes())
                .map_err(|e| Error::Failed(format!("header {name}: {e:?}")))?;
        }
        let request = OutgoingRequest::new(fields);
        request
            .set_method(&Method::Get)
            .map_err(|()| failed("method"))?;
        request
            .set_scheme(Some(if https { &Scheme::Https } else { &Scheme::Http }))
            .map_err(|()| failed("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| failed("the URL's host is invalid"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| failed("the URL's path is invalid"))?;
        let options = RequestOptions::new();
        let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // A host that does not support one of these keeps its own bound.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        let pending = outgoing_handler::handle(request, Some(options)).map_err(code)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(code(e)),
            Some(Err(())) | None => return Err(failed("the response was lost")),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| {
                (
                    name.to_ascii_lowercase(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect();
        let body = response
            .consume()
            .map_err(|()| failed("the body was taken"))?;
        let mut bytes = Vec::new();
        {
            let stream = body.stream().map_err(|()| failed("the body was taken"))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        if bytes.len() + chunk.len() > max_bytes {
                            return Err(Error::Failed(format!(
                                "response body over {max_bytes} bytes"
                            )));
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(Error::Failed(format!(
                            "reading the body: {}",
                            e.to_debug_string()
                        )));
                    }
                }
            }
        }
        drop(IncomingBody::finish(body));
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::time::Duration;

    use super::{Error, Response};

    pub fn get(
        url: &str,
        _headers: &[(&str, &str)],
        _timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, Error> {
        super::split(url)?;
        super::testing::REQUESTS.with_borrow_mut(|r| r.push(url.to_string()));
        let answer = super::testing::ROUTES.with_borrow(|r| r.get(url).cloned());
        match answer {
            Some(Ok(response)) if response.body.len() > max_bytes => Err(Error::Failed(format!(
                "response body over {max_bytes} bytes"
            ))),
            Some(answer) => answer,
            None => Err(Error::Failed(
                "connection refused (no test response for this URL)".into(),
            )),
        }
    }
}

/// The native stand-in's answers (per thread, so each `#[test]` has its own).
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::{Error, Response};

    thread_local! {
        pub(super) static ROUTES: RefCell<HashMap<String, Result<Response, Error>>> = RefCell::new(HashMap::new());
        pub(super) static REQUESTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// From now on, `GET url` answers `answer`.
    pub fn respond(url: &str, answer: Result<Response, Error>) {
        ROUTES.with_borrow_mut(|r| r.insert(url.to_string(), answer));
    }

    /// From now on, `GET url` fails as a connection refused would.
    pub fn unreachable(url: &str) {
        ROUTES.with_borrow_mut(|r| r.remove(url));
    }

    /// The URLs asked for since the last call (and forgets them).
    pub fn requests() -> Vec<String> {
        REQUESTS.with_borrow_mut(std::mem::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split("https://login.example.com/realms/a?x=1#f").unwrap(),
            (true, "login.example.com", "/realms/a?x=1")
        );
        assert_eq!(
            split("http://127.0.0.1:8080").unwrap(),
            (false, "127.0.0.1:8080", "/")
        );
        assert!(split("ftp://x").is_err());
        assert!(split("https://u:p@x/").is_err());
    }

    #[test]
    fn the_stand_in_answers_what_it_was_told() {
        let url = "https://idp.example/keys";
        assert!(get(url, &[], Duration::from_secs(1), 10).is_err());
        testing::respond(
            url,
            Ok(Response::new(200, "{}").with_header("Cache-Control", "max-age=60")),
        );
        let r = get(url, &[], Duration::from_secs(1), 10).unwrap();
        assert_eq!(r.header("cache-control"), Some("max-age=60"));
        assert!(
            get(url, &[], Duration::from_secs(1), 1).is_err(),
            "over max_bytes"
        );
        assert_eq!(testing::requests().len(), 3);
    }
}
