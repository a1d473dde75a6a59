//! Bounds on what an upstream sends: HTTP response bodies, SSE events, stdio lines.
//!
//! An upstream may be broken or compromised (DESIGN.md, "Trust boundaries"), so nothing it
//! sends is held without a bound. Each bound is per upstream (`max-response-mib`,
//! `max-sse-event-mib`, `max-line-mib` in `[upstreams.<name>]`); a breach drops what was
//! read, fails only the call it belonged to with [`UpstreamError::TooLarge`], and logs the
//! upstream's name and the limit, never the payload.
//!
//! SSE is parsed by the `sse-stream` crate, which buffers a line and an event's data without
//! a bound. Rather than a parser of our own, [`EventBound`] sits in front of it and counts
//! the bytes since the last event boundary (a blank line): the parser never holds more than
//! one bound's worth.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sse_stream::{Sse, SseStream};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{Upstream, UpstreamError};
use crate::body::ReadError;

/// An upstream's answer body, read up to `max-response-mib` ([`crate::body::read_bounded`]).
/// A breach drops the connection rather than draining it.
pub(super) async fn read_body<B>(upstream: &Upstream, body: B) -> Result<Bytes, UpstreamError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let limit = upstream.config.max_response_bytes();
    crate::body::read_bounded(body, limit)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge {
                declared: Some(len),
            } => too_large(
                upstream,
                Bound::Response,
                format!("a response body of {len} bytes (Content-Length)"),
            ),
            ReadError::TooLarge { declared: None } => {
                too_large(upstream, Bound::Response, "a response body".into())
            }
            ReadError::Body(e) => UpstreamError::Unavailable {
                upstream: upstream.name.clone(),
                reason: body_error(&e.into()),
            },
        })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body could not be read, without the URL a reqwest error may carry.
fn body_error(e: &BoxError) -> String {
    match e.downcast_ref::<reqwest::Error>() {
        Some(e) => match std::error::Error::source(e) {
            Some(source) => format!("error reading the response body: {source}"),
            None => "error reading the response body".into(),
        },
        None => e.to_string(),
    }
}

/// The SSE events of `body`, none larger than `max-sse-event-mib`. A stream that passes the
/// bound yields an error (see [`sse_failure`]) and then ends.
pub(super) fn sse_events<B>(
    upstream: &Upstream,
    body: B,
) -> impl Stream<Item = Result<Sse, sse_stream::Error>> + Send + Unpin + use<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    SseStream::from_bytes_stream(EventBound::new(
        http_body_util::BodyDataStream::new(body),
        upstream.config.max_sse_event_bytes(),
    ))
}

/// What an SSE stream's error means for the upstream: the bound, or a broken stream.
pub(super) fn sse_failure(upstream: &Upstream, e: &sse_stream::Error) -> UpstreamError {
    if is_breach(e) {
        return too_large(upstream, Bound::SseEvent, "an SSE event".into());
    }
    UpstreamError::Protocol {
        upstream: upstream.name.clone(),
        detail: format!("SSE: {e}"),
    }
}

/// Whether an SSE stream ended because an event passed the bound.
pub(super) fn is_breach(e: &sse_stream::Error) -> bool {
    matches!(e, sse_stream::Error::Body(b) if b.downcast_ref::<BoundError>().is_some_and(|b| matches!(b, BoundError::EventTooLarge)))
}

/// Which bound an upstream passed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bound {
    Response,
    SseEvent,
    Line,
}

impl Bound {
    /// The config key that sets it.
    fn key(self) -> &'static str {
        match self {
            Bound::Response => "max-response-mib",
            Bound::SseEvent => "max-sse-event-mib",
            Bound::Line => "max-line-mib",
        }
    }

    fn bytes(self, upstream: &Upstream) -> usize {
        match self {
            Bound::Response => upstream.config.max_response_bytes(),
            Bound::SseEvent => upstream.config.max_sse_event_bytes(),
            Bound::Line => upstream.config.max_line_bytes(),
        }
    }
}

/// The error for a breach, logged with the upstream and the limit, never what it sent.
pub(super) fn too_large(upstream: &Upstream, bound: Bound, what: String) -> UpstreamError {
    let e = breach(upstream, bound, what);
    tracing::warn!(upstream = %upstream.name, limit_bytes = bound.bytes(upstream), "{e}; dropped");
    e
}

/// The error for a breach, not logged (for each request a logged breach fails).
pub(super) fn breach(upstream: &Upstream, bound: Bound, what: impl Into<String>) -> UpstreamError {
    UpstreamError::TooLarge {
        upstream: upstream.name.clone(),
        what: what.into(),
        limit_mib: bound.bytes(upstream) >> 20,
        key: bound.key(),
    }
}

/// Why a bounded byte stream stopped.
#[derive(Debug, thiserror::Error)]
enum BoundError {
    #[error("{}", body_error(.0))]
    Body(BoxError),
    #[error("an SSE event passed the size bound")]
    EventTooLarge,
}

/// A byte stream that fails once more than `limit` bytes arrive without an SSE event
/// boundary (an empty line: two line ends, each `\n`, `\r` or `\r\n`) between them. The
/// chunk that passes the bound is never handed on, so the parser behind holds at most
/// `limit` bytes of one event.
struct EventBound<S> {
    inner: S,
    limit: usize,
    /// Bytes since the last event boundary.
    pending: usize,
    /// The last byte seen ended a line (so another line end makes an empty line).
    at_line_start: bool,
    /// The last byte seen was `\r` (a following `\n` belongs to the same line end).
    after_cr: bool,
    done: bool,
}

impl<S> EventBound<S> {
    fn new(inner: S, limit: usize) -> Self {
        EventBound {
            inner,
            limit,
            pending: 0,
            at_line_start: true,
            after_cr: false,
            done: false,
        }
    }

    /// Counts `chunk`; false if it takes the current event past the bound.
    fn admit(&mut self, chunk: &[u8]) -> bool {
        let mut counted_from = 0;
        let mut at = 0;
        while let Some(i) = chunk[at..].iter().position(|b| matches!(b, b'\n' | b'\r')) {
            let pos = at + i;
            let byte = chunk[pos];
            // Bytes other than line ends between the previous line end and this one.
            if pos > at {
                self.at_line_start = false;
                self.after_cr = false;
            }
            if byte == b'\n' && self.after_cr {
                // The `\n` of a `\r\n`: already counted as a line end.
                self.after_cr = false;
            } else {
                if self.at_line_start {
                    // An empty line: the event ends here, and must have fit.
                    if self.pending + (pos - counted_from) > self.limit {
                        return false;
                    }
                    self.pending = 0;
                    counted_from = pos + 1;
                }
                self.at_line_start = true;
                self.after_cr = byte == b'\r';
            }
            at = pos + 1;
        }
        if at < chunk.len() {
            self.at_line_start = false;
            self.after_cr = false;
        }
        self.pending += chunk.len() - counted_from;
        self.pending <= self.limit
    }
}

impl<S, E> Stream for EventBound<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    type Item = Result<Bytes, BoundError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.admit(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.done = true;
                    Poll::Ready(Some(Err(BoundError::EventTooLarge)))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoundError::Body(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What [`read_line`] read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A whole line is in the buffer (without its `\n`; a last line may lack one).
    Complete,
    /// The line is longer than the bound: the buffer holds its first `max` bytes; the rest
    /// is still unread (see [`skip_line`]).
    TooLong,
    /// End of input.
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), holding at most `max` bytes
/// of it: a line that never ends cannot grow memory.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (take, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        let room = max - buf.len();
        if take > room {
            buf.extend_from_slice(&available[..room]);
            reader.consume(room);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take + usize::from(end));
        if end {
            return Ok(Line::Complete);
        }
    }
}

/// Discards the rest of the current line (after [`Line::TooLong`]) without holding it.
pub(super) async fn skip_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = available.len();
                reader.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn bounded(
        chunks: &[&'static [u8]],
        limit: usize,
    ) -> EventBound<impl Stream<Item = Result<Bytes, BoxError>> + Unpin> {
        let items: Vec<Result<Bytes, BoxError>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        EventBound::new(futures_util::stream::iter(items), limit)
    }

    async fn events(chunks: &[&'static [u8]], limit: usize) -> (Vec<String>, bool) {
        let mut stream = SseStream::from_bytes_stream(bounded(chunks, limit));
        let (mut data, mut breached) = (Vec::new(), false);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => data.extend(ev.data),
                Err(e) => {
                    breached = is_breach(&e);
                    break;
                }
            }
        }
        (data, breached)
    }

    #[tokio::test]
    async fn events_within_the_bound_pass_whatever_the_line_ends() {
        for sep in [&b"\n\n"[..], b"\r\r", b"\r\n\r\n"] {
            let text: &'static [u8] = [&b"data: 0123456789"[..], sep, b"data: abcdefghij", sep]
                .concat()
                .leak();
            // Each event is 16 bytes plus its line ends; the stream is more than the bound.
            let (data, breached) = events(&[text, text, text], 20).await;
            assert!(!breached, "{sep:?}");
            assert_eq!(data.len(), 6, "{sep:?}");
        }
    }

    #[tokio::test]
    async fn a_boundary_split_across_chunks_still_counts() {
        let (data, breached) =
            events(&[b"data: 0123456789\r", b"\n\r", b"\ndata: x\n\n"], 20).await;
        assert!(!breached);
        assert_eq!(data, ["0123456789", "x"]);
    }

    #[tokio::test]
    async fn an_event_past_the_bound_ends_the_stream() {
        let (data, breached) = events(&[b"data: ok\n\n", b"data: 01234", b"56789012345"], 16).await;
        assert!(breached);
        assert_eq!(data, ["ok"]);
        // An event that ends in the chunk that takes it past the bound is still too large.
        let (data, breached) =
            events(&[b"data: 0123456789", b"0123456789\n\ndata: x\n\n"], 16).await;
        assert!(breached);
        assert!(data.is_empty());
        // Many lines without a blank one are still one event.
        let (_, breached) = events(&[b"data: 1\ndata: 2\ndata: 3\ndata: 4\n"], 16).await;
        assert!(breached);
    }

    #[tokio::test]
    async fn lines_are_read_whole_or_cut_at_the_bound() {
        let input: &[u8] = b"short\n0123456789abcdef\nlast";
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(buf, b"01234567");
        skip_line(&mut reader).await.unwrap();
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Complete
        );
        assert_eq!(buf, b"last");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.unwrap(),
            Line::Eof
        );
    }
}
