//! Lingering close: a client still sending when the gateway has answered gets the answer.
//!
//! The gateway answers some requests without reading their body: 413 for a body over
//! `max-body-bytes`, and every refusal decided from the head (403, 404, 406, 415, 401…).
//! The connection then closes, and closing a socket whose receive buffer holds unread bytes
//! makes the kernel send a reset: a client that sent its body without
//! `Expect: 100-continue` gets `EPIPE`/`ECONNRESET` instead of the answer. So when a
//! connection ends, its socket is first shut down for writing (the answer is complete) and
//! then read and discarded, up to `4 × max-body-bytes` bytes and `request-timeout`, or until
//! the client closes, before it is closed. A connection closed because its SSE consumer was
//! cut off does not linger.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long and how much a closing connection is read for.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    pub bytes: usize,
    pub time: Duration,
}

impl Linger {
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        Linger {
            bytes: c.max_body_bytes.saturating_mul(4),
            time: c.request_timeout,
        }
    }
}

/// An accepted socket that lingers when dropped (see the module docs).
pub struct Lingering {
    inner: Option<TcpStream>,
    linger: Linger,
    /// Cancelled when the connection is closed on purpose (no lingering then).
    killed: CancellationToken,
}

impl Lingering {
    pub fn new(stream: TcpStream, linger: Linger, killed: CancellationToken) -> Self {
        Lingering {
            inner: Some(stream),
            linger,
            killed,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.inner.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        if self.killed.is_cancelled() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(stream, self.linger));
        }
    }
}

async fn drain(mut stream: TcpStream, linger: Linger) {
    let _ = stream.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = linger.bytes;
    let _ = tokio::time::timeout(linger.time, async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
