//! TLS at the front (`[server.tls]`): the rustls server configuration, kept fresh from disk.
//!
//! The certificate, key and client-CA files are read at start-up (any problem is an error
//! naming the file) and watched afterwards: when one changes (a plain write, or the symlink
//! swap cert-manager and Kubernetes secret volumes do), the three are read again and, if they
//! make a valid configuration, new handshakes use it; connections already open keep the one
//! they were made with. A bad new file (half written, a key that does not match the
//! certificate, garbage) keeps the last good configuration and logs an error naming the file.
//!
//! The protocol versions are TLS 1.3 and TLS 1.2 (rustls offers no older ones); ALPN offers
//! `h2` first, then `http/1.1`, and a client that offers neither gets HTTP/1.1.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::{ClientAuth, TlsConfig};

/// How long a watcher waits for a burst of file events to settle (a rotation writes the
/// certificate and the key one after the other).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// A TLS configuration that cannot be used, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls: cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("server.tls: {0}: {1}")]
    Invalid(PathBuf, String),
    #[error("server.tls: {0}")]
    Config(String),
}

/// The listener's TLS configuration, swapped whole when the files change.
pub struct Tls {
    files: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// SHA-256 of the files the current configuration was built from, so file events that
    /// change nothing (our own reads, a touch) do not rebuild or log.
    loaded: Mutex<[u8; 32]>,
}

impl Tls {
    /// Reads the files once; an error names the file and what is wrong with it.
    pub fn load(files: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let (digest, bytes) = read_all(files)?;
        let config = build(files, &bytes)?;
        Ok(Arc::new(Tls {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(digest),
        }))
    }

    /// The configuration new handshakes use.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Reads the files again. Changed and valid: new handshakes use them (`Ok(true)`);
    /// unchanged: nothing happens (`Ok(false)`); invalid: the last good configuration stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (digest, bytes) = read_all(&self.files)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == digest {
            return Ok(false);
        }
        let config = build(&self.files, &bytes)?;
        self.current.store(Arc::new(config));
        *loaded = digest;
        Ok(true)
    }

    /// Watches the folders of the three files and reloads on every settled change, until the
    /// returned guard is dropped. Folders, not files: a Kubernetes secret volume replaces the
    /// files by swapping a symlink, which a watch on the old file would never see.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<WatchGuard> {
        use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut debouncer = new_debouncer(
            DEBOUNCE,
            move |events: notify_debouncer_mini::DebounceEventResult| {
                if events.is_ok() {
                    let _ = tx.send(());
                }
            },
        )?;
        let mut folders: Vec<PathBuf> = self.paths().filter_map(folder_of).collect();
        folders.sort();
        folders.dedup();
        for folder in &folders {
            debouncer
                .watcher()
                .watch(folder, RecursiveMode::NonRecursive)?;
        }
        let tls = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let Some(tls) = tls.upgrade() else { return };
                match tls.reload() {
                    Ok(true) => tracing::info!(
                        cert = %tls.files.cert.display(),
                        "server.tls: files changed; new connections use the new certificate"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "server.tls: the changed files are not usable; keeping the last good certificate"
                    ),
                }
            }
        });
        Ok(WatchGuard {
            _debouncer: Box::new(debouncer),
            task,
        })
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [self.files.cert.as_path(), self.files.key.as_path()]
            .into_iter()
            .chain(self.files.client_ca.as_deref())
    }
}

/// Keeps the TLS files watched; dropping it stops watching.
pub struct WatchGuard {
    _debouncer: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn folder_of(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

/// The bytes of cert, key and client CA (empty when absent), and one digest over all three.
fn read_all(files: &TlsConfig) -> Result<([u8; 32], [Vec<u8>; 3]), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.to_path_buf(), e));
    let bytes = [
        read(&files.cert)?,
        read(&files.key)?,
        match &files.client_ca {
            Some(p) => read(p)?,
            None => Vec::new(),
        },
    ];
    let mut hash = Sha256::new();
    for b in &bytes {
        hash.update((b.len() as u64).to_le_bytes());
        hash.update(b);
    }
    Ok((hash.finalize().into(), bytes))
}

/// The rustls configuration these files make.
fn build(
    files: &TlsConfig,
    [cert, key, ca]: &[Vec<u8>; 3],
) -> Result<rustls::ServerConfig, TlsError> {
    let invalid = |p: &Path, m: String| TlsError::Invalid(p.to_path_buf(), m);
    let chain = certificates(cert).map_err(|m| invalid(&files.cert, m))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(&files.key, format!("no usable PEM private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.client_ca, files.client_auth()) {
        (Some(path), Some(auth)) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca).map_err(|m| invalid(path, m))? {
                roots
                    .add(c)
                    .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            let verifier = match auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| invalid(path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        invalid(
            &files.key,
            format!(
                "does not go with the certificate in {}: {e}",
                files.cert.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file ({e})"))?;
    if chain.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(chain)
}

/// Longest a client may take to complete the TLS handshake (a few round trips; a client
/// that stalls in it holds a socket and a task, so it is cut short).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection accepted on a TLS listener, before its handshake.
pub(super) struct Accepted {
    pub peer: std::net::SocketAddr,
    /// Cancelled to close the connection at once (its SSE consumer was cut off).
    pub kill: tokio_util::sync::CancellationToken,
}

impl Accepted {
    /// Completes the handshake (off the accept loop, bounded by [`HANDSHAKE_TIMEOUT`] and the
    /// server's `idle-timeout`), then serves HTTP/2 or HTTP/1.1 as ALPN chose, with the
    /// verified client certificate, until the connection ends.
    pub async fn serve<I>(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        io: I,
        front: Arc<super::Front>,
        graceful: hyper_util::server::graceful::Watcher,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Accepted { peer, kill } = self;
        let limit = HANDSHAKE_TIMEOUT.min(front.config.idle_timeout);
        let stream = match tokio::time::timeout(limit, acceptor.accept(io)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // Scanners and clients without a valid certificate: not worth a warning each.
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let (_, session) = stream.get_ref();
        let http2 = session.alpn_protocol() == Some(b"h2");
        let cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::client_cert::ClientCert::from_der(leaf))
            .map(Arc::new);
        tracing::debug!(%peer, http2, client_cert = cert.is_some(), "TLS connection");
        let conn = super::connection(front, stream, Some(peer), kill.clone(), http2, cert);
        tokio::select! {
            ended = graceful.watch(conn) => if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = kill.cancelled() => {
                tracing::debug!(%peer, "connection closed: its SSE consumer was cut off");
            }
        }
    }
}
