//! The verified client certificate (mutual TLS) as request headers the policies can read.
//!
//! Every request that reaches the router first loses any header whose name starts with
//! `x-portcullis-client-cert-` — whatever the client sent, over TLS or not — so these names
//! only ever carry what the gateway itself established. When the connection's client
//! certificate was verified against `server.tls.client-ca`, the gateway then sets:
//!
//! | header | value |
//! | --- | --- |
//! | `x-portcullis-client-cert-subject` | the subject DN, RFC 4514 style (`CN=ci-agent, O=Acme`) |
//! | `x-portcullis-client-cert-cn` | the subject's first common name |
//! | `x-portcullis-client-cert-sha256` | lowercase hex SHA-256 of the certificate (DER) |
//! | `x-portcullis-client-cert-san-dns` | DNS names from the subjectAltName |
//! | `x-portcullis-client-cert-san-uri` | URIs (e.g. SPIFFE IDs) |
//! | `x-portcullis-client-cert-san-email` | e-mail addresses |
//! | `x-portcullis-client-cert-san-ip` | IP addresses |
//!
//! Lists are joined with `", "`; in every value, bytes outside printable ASCII, `%` and `,`
//! are percent-encoded (`%2C`), so a value never splits and always reads as a string. A
//! header the certificate has nothing for is absent; one longer than [`MAX_HEADER_BYTES`] is
//! left out (never cut, which could change its meaning). A plugin sees a header only when its
//! sidecar lists it in `expose-headers`.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The prefix of every header this module owns.
pub const PREFIX: &str = "x-portcullis-client-cert-";

/// The longest value set; certificates with more (hundreds of SANs) lose that header.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// What a verified client certificate says, ready to be set on each request of the
/// connection (parsed once per connection).
#[derive(Debug, Clone, Default)]
pub struct ClientCert {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ClientCert {
    /// Parses the end-entity certificate rustls verified. `None` when it does not parse as
    /// X.509 (rustls accepted it, so this does not happen in practice; the request then
    /// carries no certificate headers, and policies treat it as a client without one).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let digest = Sha256::digest(der);
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        let (mut dns, mut uri, mut email, mut ip) = (vec![], vec![], vec![], vec![]);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns.push(n.to_string()),
                    GeneralName::URI(u) => uri.push(u.to_string()),
                    GeneralName::RFC822Name(e) => email.push(e.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(addr) = ip_address(bytes) {
                            ip.push(addr.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let fields: [(&str, Vec<String>); 7] = [
            ("subject", vec![cert.subject().to_string()]),
            ("cn", cn.into_iter().collect()),
            ("sha256", vec![hex]),
            ("san-dns", dns),
            ("san-uri", uri),
            ("san-email", email),
            ("san-ip", ip),
        ];
        let headers = fields
            .into_iter()
            .filter(|(_, values)| !values.is_empty())
            .filter_map(|(suffix, values)| {
                let value = values
                    .iter()
                    .map(|v| escape(v))
                    .collect::<Vec<_>>()
                    .join(", ");
                if value.len() > MAX_HEADER_BYTES {
                    tracing::debug!(
                        header = suffix,
                        "client certificate field too long; left out"
                    );
                    return None;
                }
                let name = HeaderName::from_bytes(format!("{PREFIX}{suffix}").as_bytes()).ok()?;
                Some((name, HeaderValue::from_str(&value).ok()?))
            })
            .collect();
        Some(ClientCert { headers })
    }

    /// The headers this certificate sets.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }
}

/// Removes every `x-portcullis-client-cert-*` header the client sent, then sets those of the
/// connection's verified certificate, if any.
pub fn stamp(headers: &mut HeaderMap, cert: Option<&ClientCert>) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with(PREFIX))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(&name);
    }
    if let Some(cert) = cert {
        for (name, value) in &cert.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

fn ip_address(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Percent-encodes what could split a list or is not printable ASCII.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'%' | b',' => {
                let _ = write!(out, "%{b:02X}");
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_headers_are_removed_and_verified_ones_set() {
        let mut h = HeaderMap::new();
        h.insert("x-portcullis-client-cert-cn", "admin".parse().unwrap());
        h.insert("X-Portcullis-Client-Cert-Sha256", "00".parse().unwrap());
        h.insert("x-other", "kept".parse().unwrap());
        stamp(&mut h, None);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-other"], "kept");

        let cert = ClientCert {
            headers: vec![(
                HeaderName::from_static("x-portcullis-client-cert-cn"),
                HeaderValue::from_static("ci-agent"),
            )],
        };
        h.insert("x-portcullis-client-cert-cn", "admin".parse().unwrap());
        stamp(&mut h, Some(&cert));
        assert_eq!(h["x-portcullis-client-cert-cn"], "ci-agent");
        assert_eq!(h.get_all("x-portcullis-client-cert-cn").iter().count(), 1);
    }

    #[test]
    fn a_certificate_gives_its_subject_fingerprint_and_sans() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "ci-agent");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.subject_alt_names = vec![
            SanType::URI("spiffe://acme/agent/ci".try_into().unwrap()),
            SanType::URI("https://a.example/x,y".try_into().unwrap()),
            SanType::DnsName("ci.acme.internal".try_into().unwrap()),
            SanType::Rfc822Name("ci@acme.example".try_into().unwrap()),
            SanType::IpAddress([10, 0, 0, 7].into()),
        ];
        let cert = params.self_signed(&key).unwrap();
        let parsed = ClientCert::from_der(cert.der()).unwrap();
        let get = |suffix: &str| {
            parsed
                .headers()
                .iter()
                .find(|(n, _)| n.as_str() == format!("{PREFIX}{suffix}"))
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("cn").as_deref(), Some("ci-agent"));
        let subject = get("subject").unwrap();
        assert!(
            subject.contains("CN=ci-agent") && subject.contains("O=Acme"),
            "{subject}"
        );
        assert_eq!(
            get("san-uri").as_deref(),
            Some("spiffe://acme/agent/ci, https://a.example/x%2Cy")
        );
        assert_eq!(get("san-dns").as_deref(), Some("ci.acme.internal"));
        assert_eq!(get("san-email").as_deref(), Some("ci@acme.example"));
        assert_eq!(get("san-ip").as_deref(), Some("10.0.0.7"));
        let fingerprint = get("sha256").unwrap();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn values_cannot_split_lists_or_carry_control_bytes() {
        assert_eq!(escape("spiffe://a/b,c"), "spiffe://a/b%2Cc");
        assert_eq!(escape("100%"), "100%25");
        assert_eq!(escape("é\n"), "%C3%A9%0A");
    }
}
