//! `[server.tls]`: TLS (and optionally mutual TLS) at the client-facing listener.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[server.tls]`: serve HTTPS instead of plain HTTP. TLS 1.2 and 1.3 (rustls); HTTP/2 is
/// offered by ALPN next to HTTP/1.1. The files are read at start-up (an unreadable or invalid
/// file is an error naming it) and again whenever they change on disk (cert-manager's
/// rotation): new handshakes use the new files, open connections keep theirs, and a bad new
/// file keeps the last good certificate (with an error in the log).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first. Relative to the configuration file.
    pub cert: PathBuf,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM bundle) that client certificates must chain to. Set: clients are
    /// asked for a certificate (mutual TLS), and a verified one's subject and SANs reach the
    /// policies as `x-portcullis-client-cert-*` headers (see docs/tls.md).
    pub client_ca: Option<PathBuf>,
    /// With `client-ca`: `required` (default) refuses a handshake without a valid client
    /// certificate; `optional` lets clients without one in (a certificate that is sent must
    /// still verify), so policies decide.
    pub client_auth: Option<ClientAuth>,
}

/// `client-auth`: whether a client certificate is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// No certificate, no connection.
    Required,
    /// A certificate is verified when sent; clients without one connect too.
    Optional,
}

impl TlsConfig {
    /// Makes the file paths relative to the configuration file's folder `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key]
            .into_iter()
            .chain(self.client_ca.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks the combination of keys; the files themselves are read by the front.
    pub fn validate(&self) -> Result<(), String> {
        if self.client_auth.is_some() && self.client_ca.is_none() {
            return Err(
                "client-auth needs client-ca (the CA bundle client certificates must chain to)"
                    .into(),
            );
        }
        Ok(())
    }

    /// `client-auth`, defaulting to `required` when a client CA is set (fail closed).
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_ca
            .as_ref()
            .map(|_| self.client_auth.unwrap_or(ClientAuth::Required))
    }
}
