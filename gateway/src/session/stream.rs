//! Resumable SSE streams: the gateway's own streams toward a client.
//!
//! Every event gets an id `<stream>-<seq>` that names its stream, so a client that lost its
//! connection can `GET` with `Last-Event-ID` and get what followed on *that* stream only. A
//! stream keeps its most recent events (bounded) whether or not a connection is attached:
//! a client disconnecting does not cancel its request, the answer waits here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::mcp::Message;

/// Events kept per stream for replay (and, in bytes, at most the stream's byte cap).
const MAX_BUFFERED: usize = 1024;

/// Client SSE consumers cut off for falling behind by more than the byte cap, since start.
pub static STREAMS_CUT: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue of SSE frames toward one client connection, bounded in bytes.
///
/// The connection takes frames as fast as its socket accepts them; what it has not taken
/// yet stays here. When a new frame would take the queue past its cap (a consumer that
/// stopped reading while the upstream keeps talking), the consumer is cut off: the queue is
/// emptied at once (its memory returned), the connection it feeds is closed (see
/// [`Frames::on_cut`]), a log line names the session, and `portcullis_client_streams_cut_total`
/// counts it. One frame is always accepted into an empty queue, so a single large answer is
/// never refused to a reader that keeps up.
/// `session` is the session's tag, for that log line.
pub fn channel(cap: usize, session: Arc<str>) -> (Feed, Frames) {
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState::default()),
        ready: Notify::new(),
        gone: CancellationToken::new(),
        cap,
        session,
    });
    (
        Feed {
            queue: queue.clone(),
        },
        Frames { queue },
    )
}

struct Queue {
    state: Mutex<QueueState>,
    /// One consumer: `notify_one` keeps a permit when it is not waiting yet.
    ready: Notify,
    /// The consumer went away (or was cut off).
    gone: CancellationToken,
    cap: usize,
    session: Arc<str>,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The producer is done: the consumer ends after the last frame.
    done: bool,
    cut: bool,
    /// Closes the connection the consumer writes to, once it is known.
    kill: Option<CancellationToken>,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The consumer is gone (closed its connection, or was cut off before).
    Gone,
    /// This frame took the consumer past its cap: it has just been cut off.
    CutOff,
}

/// The producing side of [`channel`]. Dropping it ends the stream once the consumer has
/// everything.
pub struct Feed {
    queue: Arc<Queue>,
}

impl Feed {
    pub fn send(&self, frame: Bytes) -> Result<(), Refused> {
        let q = &self.queue;
        let mut st = lock(&q.state);
        if st.cut || q.gone.is_cancelled() {
            return Err(Refused::Gone);
        }
        if !st.frames.is_empty() && st.bytes + frame.len() > q.cap {
            let queued = st.bytes;
            st.cut = true;
            st.frames = VecDeque::new();
            st.bytes = 0;
            let kill = st.kill.take();
            drop(st);
            q.gone.cancel();
            q.ready.notify_one();
            if let Some(kill) = kill {
                kill.cancel();
            }
            STREAMS_CUT.fetch_add(1, Ordering::Relaxed);
            crate::memory::give_back(());
            tracing::warn!(
                session = %q.session,
                queued,
                cap = q.cap,
                "SSE consumer fell behind by more than server.max-stream-buffer-kib; stream closed"
            );
            return Err(Refused::CutOff);
        }
        st.bytes += frame.len();
        st.frames.push_back(frame);
        drop(st);
        q.ready.notify_one();
        Ok(())
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.queue.gone.is_cancelled()
    }

    /// Completes when the consumer is gone.
    pub async fn closed(&self) {
        self.queue.gone.cancelled().await
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        lock(&self.queue.state).done = true;
        self.queue.ready.notify_one();
    }
}

/// The consuming side of [`channel`]: what one client connection writes out.
pub struct Frames {
    queue: Arc<Queue>,
}

/// The consumer was cut off for falling behind.
#[derive(Debug, thiserror::Error)]
#[error("SSE consumer cut off: more than {0} bytes unread")]
pub struct CutOff(pub usize);

impl Frames {
    /// The next frame; `None` when the stream ended, an error when the consumer was cut off.
    pub async fn recv(&mut self) -> Option<Result<Bytes, CutOff>> {
        loop {
            {
                let mut st = lock(&self.queue.state);
                if st.cut {
                    return Some(Err(CutOff(self.queue.cap)));
                }
                if let Some(f) = st.frames.pop_front() {
                    st.bytes -= f.len();
                    return Some(Ok(f));
                }
                if st.done {
                    return None;
                }
            }
            self.queue.ready.notified().await;
        }
    }

    /// A handle that closes the consumer's connection if it is ever cut off (see
    /// [`CutHook::on_cut`]); it can be used after the frames were moved into a response body.
    pub fn cut_hook(&self) -> CutHook {
        CutHook {
            queue: self.queue.clone(),
        }
    }

    /// Cancelled when this consumer goes away (its connection closed, or it was cut off).
    pub fn gone(&self) -> CancellationToken {
        self.queue.gone.clone()
    }

    /// Bytes queued and not yet taken.
    pub fn queued(&self) -> usize {
        lock(&self.queue.state).bytes
    }
}

/// See [`Frames::cut_hook`].
#[derive(Clone)]
pub struct CutHook {
    queue: Arc<Queue>,
}

impl CutHook {
    /// Cancels `connection` when the consumer is cut off (at once if it already was): a
    /// socket nobody reads holds its connection's write buffer, and only closing the
    /// connection returns that.
    pub fn on_cut(&self, connection: CancellationToken) {
        let mut st = lock(&self.queue.state);
        if st.cut {
            connection.cancel();
        } else if !self.queue.gone.is_cancelled() {
            st.kill = Some(connection);
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        let mut st = lock(&self.queue.state);
        st.frames = VecDeque::new();
        st.bytes = 0;
        st.kill = None;
        drop(st);
        self.queue.gone.cancel();
    }
}

pub struct EventStream {
    pub id: u64,
    cap: usize,
    session: Arc<str>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<(u64, Bytes)>,
    /// Bytes in `events`.
    kept: usize,
    next_seq: u64,
    /// Highest seq handed to a live connection; a fresh attach starts after it.
    sent_upto: Option<u64>,
    live: Option<Feed>,
    finished: bool,
}

impl EventStream {
    /// A stream of the session tagged `session` whose replay buffer and live connection each hold at most
    /// `cap` bytes (see [`channel`]).
    pub fn new(id: u64, cap: usize, session: Arc<str>) -> Self {
        EventStream {
            id,
            cap,
            session,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The priming event (an id and empty data) the spec asks servers to send first, so the
    /// client has a `Last-Event-ID` to resume from before any message arrived.
    pub fn prime(&self) {
        self.append(|id| Bytes::from(format!("id: {id}\ndata: \n\n")));
    }

    pub fn push(&self, msg: &Message) {
        let json = msg.to_bytes();
        self.append(|id| {
            let mut frame = Vec::with_capacity(json.len() + id.len() + 16);
            frame.extend_from_slice(b"id: ");
            frame.extend_from_slice(id.as_bytes());
            frame.extend_from_slice(b"\ndata: ");
            frame.extend_from_slice(&json);
            frame.extend_from_slice(b"\n\n");
            Bytes::from(frame)
        });
    }

    fn append(&self, frame: impl FnOnce(&str) -> Bytes) {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let frame = frame(&format!("{}-{seq}", self.id));
        if let Some(live) = &inner.live {
            if live.send(frame.clone()).is_ok() {
                inner.sent_upto = Some(seq);
            } else {
                inner.live = None;
            }
        }
        inner.kept += frame.len();
        inner.events.push_back((seq, frame));
        // Replay keeps the newest events within both bounds (the newest always).
        while inner.events.len() > 1 && (inner.events.len() > MAX_BUFFERED || inner.kept > self.cap)
        {
            if let Some((_, old)) = inner.events.pop_front() {
                inner.kept -= old.len();
            }
        }
    }

    /// No more events; an attached connection ends once it has everything.
    pub fn finish(&self) {
        let mut inner = self.lock();
        inner.finished = true;
        inner.live = None;
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Bytes kept for replay.
    pub fn kept_bytes(&self) -> usize {
        self.lock().kept
    }

    pub fn has_listener(&self) -> bool {
        self.lock().live.as_ref().is_some_and(|l| !l.is_closed())
    }

    /// Attaches a connection: replays events after `after` (or, without it, those no
    /// connection has received yet), then delivers live ones. Replaces an earlier connection.
    pub fn attach(&self, after: Option<u64>) -> Frames {
        let (tx, rx) = channel(self.cap, self.session.clone());
        let mut inner = self.lock();
        let from = after.or(inner.sent_upto);
        for (seq, frame) in &inner.events {
            if from.is_none_or(|f| *seq > f) {
                // Replay is at most `cap` bytes, so it fits (an unread connection is cut
                // off by what follows, not by its replay).
                let _ = tx.send(frame.clone());
            }
        }
        if let Some((last, _)) = inner.events.back() {
            inner.sent_upto = Some(*last);
        }
        if !inner.finished {
            inner.live = Some(tx);
        }
        rx
    }
}

/// Splits a `Last-Event-ID` into stream id and sequence number.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (stream, seq) = id.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use serde_json::json;

    fn stream(id: u64) -> EventStream {
        EventStream::new(id, 1 << 20, "s".into())
    }

    fn try_recv(rx: &mut Frames) -> Option<Option<Result<Bytes, CutOff>>> {
        rx.recv().now_or_never()
    }

    fn drain(rx: &mut Frames) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(Ok(f))) = try_recv(rx) {
            out.push(String::from_utf8(f.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn replays_after_last_event_id_and_continues_live() {
        let s = stream(7);
        s.prime();
        let mut first = s.attach(None);
        s.push(&Message::notification("a", None));
        assert_eq!(drain(&mut first).len(), 2);
        drop(first); // connection lost
        s.push(&Message::result(json!(1), json!({})));
        s.finish();
        let mut again = s.attach(parse_event_id("7-1").map(|(_, seq)| seq));
        let frames = drain(&mut again);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].starts_with("id: 7-2\ndata: {"), "{}", frames[0]);
        assert!(
            matches!(try_recv(&mut again), Some(None)),
            "finished stream closes after replay"
        );
    }

    #[test]
    fn events_before_any_listener_wait_for_the_first_one() {
        let s = stream(0);
        s.push(&Message::notification("x", None));
        assert_eq!(drain(&mut s.attach(None)).len(), 1);
        assert_eq!(parse_event_id("0-12"), Some((0, 12)));
        assert_eq!(parse_event_id("nope"), None);
    }

    #[test]
    fn a_consumer_past_its_byte_cap_is_cut_off_and_its_queue_freed() {
        let (tx, mut rx) = channel(100, "s".into());
        let kill = CancellationToken::new();
        rx.cut_hook().on_cut(kill.clone());
        // One frame is always accepted, even over the cap.
        assert_eq!(tx.send(Bytes::from(vec![b'x'; 150])), Ok(()));
        assert!(matches!(try_recv(&mut rx), Some(Some(Ok(f))) if f.len() == 150));
        assert_eq!(tx.send(Bytes::from(vec![b'x'; 60])), Ok(()));
        assert_eq!(rx.queued(), 60);
        assert_eq!(tx.send(Bytes::from(vec![b'x'; 60])), Err(Refused::CutOff));
        assert_eq!(rx.queued(), 0, "the queue is returned at once");
        assert!(kill.is_cancelled(), "the connection is closed");
        assert!(matches!(try_recv(&mut rx), Some(Some(Err(CutOff(100))))));
        assert_eq!(tx.send(Bytes::from_static(b"y")), Err(Refused::Gone));
    }

    #[test]
    fn replay_is_bounded_in_bytes_too() {
        let s = EventStream::new(1, 1000, "s".into());
        for _ in 0..50 {
            s.push(&Message::notification(
                "n",
                Some(json!({ "pad": "x".repeat(100) })),
            ));
        }
        let mut rx = s.attach(Some(0));
        let kept: usize = drain(&mut rx).iter().map(String::len).sum();
        assert!(kept <= 1000, "{kept}");
        assert!(kept > 0);
    }
}
