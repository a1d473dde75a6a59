//! Host and Origin validation: DNS-rebinding protection.
//!
//! A browser page on `evil.example` can make the browser send requests to
//! `http://127.0.0.1:8080` by pointing its own DNS name at 127.0.0.1; the request then carries
//! `Host: evil.example`. Checking `Host` against the names the gateway is really served under
//! (and `Origin`, when a browser sends one) stops that.

use http::HeaderMap;
use http::header::{HOST, ORIGIN};

use crate::config::ServerConfig;

const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "[::1]", "::1"];

#[derive(Debug, Clone)]
pub struct Guard {
    hosts: Option<Vec<String>>,
    origins: Option<Vec<String>>,
}

/// Why a request was refused (HTTP 403).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Host,
    Origin,
}

impl Guard {
    pub fn new(cfg: &ServerConfig) -> Self {
        let lower = |v: &Vec<String>| v.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>();
        let any = |v: &Vec<String>| v.iter().any(|s| s == "*");
        Guard {
            hosts: match &cfg.allowed_hosts {
                Some(v) if any(v) => None,
                Some(v) => Some(lower(v)),
                None => Some(LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect()),
            },
            origins: match &cfg.allowed_origins {
                Some(v) if any(v) => None,
                Some(v) => Some(
                    lower(v)
                        .into_iter()
                        .map(|o| o.trim_end_matches('/').to_string())
                        .collect(),
                ),
                None => Some(Vec::new()), // loopback origins only, see `origin_ok`
            },
        }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refused> {
        if let Some(hosts) = &self.hosts {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or(Refused::Host)?;
            if !hosts
                .iter()
                .any(|h| *h == strip_port(host).to_ascii_lowercase())
            {
                return Err(Refused::Host);
            }
        }
        if let (Some(origins), Some(origin)) = (&self.origins, headers.get(ORIGIN)) {
            let origin = origin
                .to_str()
                .map_err(|_| Refused::Origin)?
                .to_ascii_lowercase();
            if !self.origin_ok(origins, &origin) {
                return Err(Refused::Origin);
            }
        }
        Ok(())
    }

    /// Whether a browser origin may call us; used for CORS answers too.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        match &self.origins {
            None => true,
            Some(list) => self.origin_ok(list, &origin.to_ascii_lowercase()),
        }
    }

    fn origin_ok(&self, list: &[String], origin: &str) -> bool {
        if list.is_empty() {
            // Default: a page served from this machine.
            let Some(rest) = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
            else {
                return false;
            };
            return LOOPBACK_NAMES.contains(&strip_port(rest));
        }
        list.iter().any(|o| o == origin)
    }
}

/// HTTP/2 carries the host in the `:authority` pseudo-header (the request URI's authority),
/// usually without a `Host` header: gives it the `Host` header the checks here read, as an
/// HTTP/1.1 hop would (RFC 9113 §8.3.1). A `Host` that names another host than `:authority`
/// makes the request malformed (`Err`, answered 400), so the guard never checks one name
/// while the request was meant for another.
pub fn authority_as_host<B>(req: &mut http::Request<B>) -> Result<(), ()> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(());
    };
    match req.headers().get(HOST) {
        Some(host)
            if host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Ok(())
        }
        Some(_) => Err(()),
        None => {
            let value = http::HeaderValue::from_str(authority.as_str()).map_err(|_| ())?;
            req.headers_mut().insert(HOST, value);
            Ok(())
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn default_allows_loopback_only() {
        let g = Guard::new(&ServerConfig::default());
        assert_eq!(g.check(&headers("localhost:8080", None)), Ok(()));
        assert_eq!(
            g.check(&headers("127.0.0.1:9", Some("http://localhost:6274"))),
            Ok(())
        );
        assert_eq!(g.check(&headers("[::1]:80", None)), Ok(()));
        assert_eq!(
            g.check(&headers("evil.example.com", None)),
            Err(Refused::Host)
        );
        assert_eq!(
            g.check(&headers("localhost:1", Some("http://evil.example.com"))),
            Err(Refused::Origin)
        );
        assert_eq!(
            g.check(&headers("localhost:1", Some("null"))),
            Err(Refused::Origin)
        );
    }

    #[test]
    fn configured_lists_and_wildcards() {
        let cfg = ServerConfig {
            allowed_hosts: Some(vec!["mcp.example.com".into()]),
            allowed_origins: Some(vec!["https://app.example.com/".into()]),
            ..ServerConfig::default()
        };
        let g = Guard::new(&cfg);
        assert_eq!(
            g.check(&headers(
                "MCP.example.com:443",
                Some("https://app.example.com")
            )),
            Ok(())
        );
        assert_eq!(g.check(&headers("localhost", None)), Err(Refused::Host));
        let open = ServerConfig {
            allowed_hosts: Some(vec!["*".into()]),
            ..ServerConfig::default()
        };
        assert_eq!(Guard::new(&open).check(&headers("anything", None)), Ok(()));
    }

    #[test]
    fn http2_authority_is_checked_as_the_host() {
        let g = Guard::new(&ServerConfig::default());
        let request = |authority: &str, host: Option<&str>| {
            let mut b = http::Request::builder().uri(format!("https://{authority}/mcp"));
            if let Some(h) = host {
                b = b.header(HOST, h);
            }
            b.body(()).unwrap()
        };
        let mut r = request("evil.example:8443", None);
        assert_eq!(authority_as_host(&mut r), Ok(()));
        assert_eq!(g.check(r.headers()), Err(Refused::Host));
        let mut r = request("127.0.0.1:8443", None);
        assert_eq!(authority_as_host(&mut r), Ok(()));
        assert_eq!(g.check(r.headers()), Ok(()));
        let mut r = request("evil.example", Some("localhost"));
        assert_eq!(authority_as_host(&mut r), Err(()));
    }
}
