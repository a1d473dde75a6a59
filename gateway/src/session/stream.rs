//! Resumable SSE streams: the gateway's own streams toward a client.
//!
//! Every event gets an id `<stream>-<seq>` that names its stream, so a client that lost its
//! connection can `GET` with `Last-Event-ID` and get what followed on *that* stream only. A
//! stream keeps its most recent events (bounded) whether or not a connection is attached:
//! a client disconnecting does not cancel its request, the answer waits here.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::mcp::Message;

/// Events kept per stream for replay.
const MAX_BUFFERED: usize = 1024;

pub type Frames = mpsc::UnboundedReceiver<Bytes>;

pub struct EventStream {
    pub id: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<(u64, Bytes)>,
    next_seq: u64,
    /// Highest seq handed to a live connection; a fresh attach starts after it.
    sent_upto: Option<u64>,
    live: Option<mpsc::UnboundedSender<Bytes>>,
    finished: bool,
}

impl EventStream {
    pub fn new(id: u64) -> Self {
        EventStream {
            id,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        inner.events.push_back((seq, frame));
        if inner.events.len() > MAX_BUFFERED {
            inner.events.pop_front();
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

    pub fn has_listener(&self) -> bool {
        self.lock().live.as_ref().is_some_and(|l| !l.is_closed())
    }

    /// Attaches a connection: replays events after `after` (or, without it, those no
    /// connection has received yet), then delivers live ones. Replaces an earlier connection.
    pub fn attach(&self, after: Option<u64>) -> Frames {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        let from = after.or(inner.sent_upto);
        for (seq, frame) in &inner.events {
            if from.is_none_or(|f| *seq > f) {
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
    use serde_json::json;

    fn drain(rx: &mut Frames) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(String::from_utf8(f.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn replays_after_last_event_id_and_continues_live() {
        let s = EventStream::new(7);
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
            again.try_recv().is_err(),
            "finished stream closes after replay"
        );
    }

    #[test]
    fn events_before_any_listener_wait_for_the_first_one() {
        let s = EventStream::new(0);
        s.push(&Message::notification("x", None));
        assert_eq!(drain(&mut s.attach(None)).len(), 1);
        assert_eq!(parse_event_id("0-12"), Some((0, 12)));
        assert_eq!(parse_event_id("nope"), None);
    }
}
