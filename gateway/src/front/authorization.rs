//! One `Authorization` header per request.
//!
//! A request carries one set of credentials (RFC 9110 §11.6.2), and `Authorization` is not a
//! list field, so two of them cannot be merged. Which one counts would be each reader's guess:
//! the policy chain hands plugins the first, a proxy in front may have checked the last. So a
//! request with two is refused before any transport or policy sees it — the same check for the
//! session-era, 2026-07-28 and legacy HTTP+SSE endpoints — with 400 and a JSON-RPC `-32600`.
//! Nothing of the headers' values is logged or echoed.

use http::header::AUTHORIZATION;
use http::{HeaderMap, Response, StatusCode};

use super::response::{self, Body};

/// What the client reads in the error.
pub(super) const MESSAGE: &str = "Bad Request: more than one Authorization header";

/// Refuses a request with more than one `Authorization` header.
pub(super) fn check(headers: &HeaderMap) -> Result<(), Response<Body>> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    if values.next().is_some() && values.next().is_some() {
        tracing::warn!("refused: more than one Authorization header");
        return Err(response::status_error(StatusCode::BAD_REQUEST, MESSAGE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_authorization_header_at_most() {
        let mut headers = HeaderMap::new();
        assert!(check(&headers).is_ok(), "none");
        headers.append(AUTHORIZATION, "Bearer a".parse().unwrap());
        assert!(check(&headers).is_ok(), "one");
        headers.append(AUTHORIZATION, "Bearer b".parse().unwrap());
        let refused = check(&headers).expect_err("two");
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
}
