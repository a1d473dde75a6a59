//! The forward path's connections to a plain `http://` upstream: HTTP/1.1 keep-alive
//! connections (hyper's `client::conn`), each driven by the request that uses it.
//!
//! A pooled client (hyper-util's, reqwest's) runs every connection in a task of its own: a
//! request hands its message to that task and is woken by it for the answer and for each
//! piece of the body, two task hand-offs per call on the proxy's hottest path. Here the
//! request's own task polls the connection: while it waits for the answer, and, through
//! [`Driven`], while it reads the body. When the body is over the connection goes back to
//! the pool. A body dropped before its end (an SSE answer once its response is in) has its
//! rest read and discarded within bounds, then its connection goes back too; a request
//! dropped before its answer drops its connection (HTTP/1.1 cannot abandon one exchange and
//! keep the connection).
//!
//! Idle connections are kept per connection thread (`crate::workers`): a connection is
//! registered with the event loop of the thread that opened it, and a request on another
//! thread would be woken through that thread for every read.
//!
//! Bounds: at most [`MAX_IDLE`] idle connections per upstream and thread, none used or kept past
//! [`IDLE_FOR`] (stale ones are closed whenever a connection is taken or given back). A
//! connection the upstream closed while idle is noticed when it is next taken (it is polled
//! once) and dropped. A request that could not be written to a reused connection is sent
//! once more on a new one; never a request that may have reached the upstream, as a POST is
//! not idempotent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per upstream and thread: beyond, a finished connection is closed.
const MAX_IDLE: usize = 512;
/// How long an idle connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(90);

type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One HTTP/1.1 connection: what sends on it and what drives it.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once it has finished (the upstream closed it, or it failed).
    driver: Option<Connection>,
}

impl Conn {
    /// Whether it may carry another request: it still runs and is not closed.
    fn usable(&mut self) -> bool {
        drive(
            &mut self.driver,
            &mut Context::from_waker(std::task::Waker::noop()),
        );
        self.driver.is_some() && !self.sender.is_closed()
    }
}

/// Polls a connection, if it still runs: reads and writes what is due, wakes the body.
fn drive(driver: &mut Option<Connection>, cx: &mut Context<'_>) {
    if let Some(running) = driver
        && running.poll_unpin(cx).is_ready()
    {
        *driver = None;
    }
}

/// `fut`, with the connection driven while it waits.
async fn driving<F: Future + Unpin>(driver: &mut Option<Connection>, mut fut: F) -> F::Output {
    std::future::poll_fn(|cx| {
        drive(driver, cx);
        fut.poll_unpin(cx)
    })
    .await
}

/// Connections to one upstream's `host:port`.
pub(super) struct Pool {
    authority: String,
    connect_timeout: Duration,
    /// One list per connection thread, and one for any other thread ([`crate::workers::index`]):
    /// oldest first; the newest is taken first.
    idle: Box<[Mutex<Idle>]>,
}

type Idle = VecDeque<(Box<Conn>, Instant)>;

/// Why a request was not answered.
#[derive(Debug)]
pub(super) enum SendError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "could not connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

impl Pool {
    pub(super) fn new(authority: String, connect_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            authority,
            connect_timeout,
            idle: (0..=crate::workers::count())
                .map(|_| Mutex::default())
                .collect(),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Driven>, SendError> {
        loop {
            let (mut conn, reused) = match self.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let ready = driving(&mut conn.driver, std::pin::pin!(conn.sender.ready())).await;
            // A reused connection found closed is replaced.
            if let Err(e) = ready {
                if reused {
                    continue;
                }
                return Err(SendError::Http(e));
            }
            let sent = std::pin::pin!(conn.sender.try_send_request(req));
            match driving(&mut conn.driver, sent).await {
                Ok(resp) => {
                    let pool = Arc::downgrade(self);
                    return Ok(resp.map(|body| Driven {
                        body: Some(body),
                        conn: Some(conn),
                        pool,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: safe to send again, on a new connection.
                    Some(again) if reused => req = again,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// The calling thread's idle connections.
    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        let here = &self.idle[crate::workers::index() % self.idle.len()];
        here.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that still works.
    fn take(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle();
        while let Some((mut conn, since)) = idle.pop_back() {
            if since.elapsed() < IDLE_FOR && conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose answer was read to its end comes back here.
    fn put_back(&self, mut conn: Box<Conn>) {
        if !conn.usable() {
            return;
        }
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|(_, since)| since.elapsed() >= IDLE_FOR)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| {
            SendError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(SendError::Connect)?;
        // Nagle + delayed ACK stalls small messages by ~40 ms on loopback.
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        // Boxed once, here: a connection (its buffers inline) moves with every answer.
        Ok(Box::new(Conn {
            sender,
            driver: Some(driver),
        }))
    }
}

/// An answer's body that drives its connection while it is read, and hands the connection
/// back to the pool once it is over.
///
/// Dropped before its end (an SSE answer is dropped as soon as the JSON-RPC response is in,
/// and the server closes the stream right after), the rest is read and discarded, within
/// [`DRAIN_BYTES`] and [`DRAIN_FOR`], so the connection can carry the next request: at once
/// when it has already arrived, else in a task of its own.
pub(in crate::upstream) struct Driven {
    /// Taken only by `drop`.
    body: Option<Incoming>,
    conn: Option<Box<Conn>>,
    pool: Weak<Pool>,
}

/// What a dropped answer may still send before its connection is given up.
const DRAIN_BYTES: usize = 64 * 1024;
/// How long a dropped answer's end is waited for.
const DRAIN_FOR: Duration = Duration::from_secs(1);

impl Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(conn) = &mut self.conn {
            drive(&mut conn.driver, cx);
        }
        let Some(body) = &mut self.body else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = frame
            && let Some(conn) = self.conn.take()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put_back(conn);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Reads and discards the rest of `body`: `Ready(true)` at its end, `Ready(false)` when it
/// failed or sent more than `*left` bytes.
fn drain(
    body: &mut Incoming,
    conn: &mut Conn,
    left: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<bool> {
    loop {
        drive(&mut conn.driver, cx);
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(None) => return Poll::Ready(true),
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                match left.checked_sub(len) {
                    Some(rest) => *left = rest,
                    None => return Poll::Ready(false),
                }
            }
            Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
            Poll::Pending => return Poll::Pending,
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let (Some(mut conn), Some(mut body)) = (self.conn.take(), self.body.take()) else {
            return;
        };
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut left = DRAIN_BYTES;
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        match drain(&mut body, &mut conn, &mut left, noop) {
            Poll::Ready(true) => pool.put_back(conn),
            Poll::Ready(false) => {}
            Poll::Pending => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    let ended = tokio::time::timeout(
                        DRAIN_FOR,
                        std::future::poll_fn(|cx| drain(&mut body, &mut conn, &mut left, cx)),
                    )
                    .await;
                    if let Ok(true) = ended {
                        pool.put_back(conn);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::service::service_fn;

    use super::*;

    /// An HTTP/1.1 server on loopback that counts the connections it accepted and answers
    /// every request with `hi`, then (`tail`) a second chunk 50 ms later, or (`endless`)
    /// a chunk every 10 ms without end.
    async fn server(answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(move |_req| async move {
                    let chunks = futures_util::stream::unfold(0u32, move |n| async move {
                        let more = match answer {
                            Answer::Whole => n == 0,
                            Answer::Tail => n < 2,
                            Answer::Endless => true,
                        };
                        if n > 0 {
                            let pause = if answer == Answer::Tail { 50 } else { 10 };
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        let chunk = Frame::data(Bytes::from_static(b"hi"));
                        more.then_some((Ok::<_, std::convert::Infallible>(chunk), n + 1))
                    });
                    Ok::<_, std::convert::Infallible>(Response::new(StreamBody::new(chunks)))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        Whole,
        Tail,
        Endless,
    }

    fn post(addr: &str) -> Request<Full<Bytes>> {
        Request::post("/mcp")
            .header(http::header::HOST, addr)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_read_is_used_again() {
        let (addr, accepted) = server(Answer::Whole).await;
        let pool = Pool::new(addr.clone(), Duration::from_secs(5));
        for _ in 0..5 {
            let resp = pool.send(post(&addr)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hi");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_is_drained_and_its_connection_used_again() {
        let (addr, accepted) = server(Answer::Tail).await;
        let pool = Pool::new(addr.clone(), Duration::from_secs(5));
        let mut body = pool.send(post(&addr)).await.unwrap().into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"hi");
        drop(body);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp = pool.send(post(&addr)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hihi");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_end_costs_its_connection_not_the_next_request() {
        let (addr, accepted) = server(Answer::Endless).await;
        let pool = Pool::new(addr.clone(), Duration::from_secs(5));
        let mut body = pool.send(post(&addr)).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        // The next request does not wait for the endless one: it gets a connection of its own.
        let mut body = pool.send(post(&addr)).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(body);
        // Past the drain's bound both are closed, not pooled.
        tokio::time::sleep(DRAIN_FOR + Duration::from_millis(300)).await;
        assert!(pool.idle().is_empty());
    }
}
