//! Forwarding a call to the replica that owns what it needs (a parked call), and relaying
//! that replica's HTTP answer back, step by step, as it is produced.
//!
//! The caller's replica publishes the call on the owner's channel and waits: for an
//! acknowledgment within [`ACK_WAIT`] (none: the owner is gone or stuck), then for the
//! answer's status and content type, then for its body in chunks of at most [`MAX_CHUNK`]
//! bytes. The owner says it is alive every [`ALIVE_EVERY`] while it has nothing else to
//! send; after [`SILENCE`] without a word the caller gives up (before the status: a clear
//! error; during the body: the response is cut off). A caller that goes away sends a
//! cancel, and the owner drops the answer it was producing (which cancels the call).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt as _, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::wire::{Body, Step};
use super::{Bus, counters};

/// An HTTP response body (the front's type).
pub type AnswerBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
/// An HTTP answer produced by, or relayed from, the owning replica.
pub type Answer = http::Response<AnswerBody>;

/// Steps of one relayed answer waiting for its reader.
pub const RELAY_QUEUE: usize = 256;
/// Longest wait for the owner to acknowledge a forwarded call.
pub const ACK_WAIT: Duration = Duration::from_secs(2);
/// How often the owner says it is still working when it has nothing else to send.
const ALIVE_EVERY: Duration = Duration::from_secs(10);
/// Longest silence of the owner before the caller gives up.
pub const SILENCE: Duration = Duration::from_secs(35);
/// Largest body chunk in one bus message.
const MAX_CHUNK: usize = 256 * 1024;
/// Most calls served here for other replicas at once.
const MAX_SERVING: usize = 4096;

/// Why a forwarded call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("the replica that holds it is gone")]
    Gone,
    #[error("the cluster bus (redis) is unavailable")]
    Redis,
    #[error("the replica that holds it did not answer within {} s", .0.as_secs())]
    Silent(Duration),
}

/// Cleans up a forwarded call; tells the owner when its answer is no longer wanted.
struct Pending {
    bus: Arc<Bus>,
    corr: u64,
    owner: String,
    finished: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.bus.calls.remove(&self.corr);
        if !self.finished {
            let channel = self.bus.replica_channel(&self.owner);
            self.bus
                .publish(channel, Body::Cancel { corr: self.corr }, None);
        }
    }
}

/// Sends `payload` to replica `owner` (its [`super::Serve`] answers) and returns its answer
/// as it streams in.
pub async fn forward(bus: &Arc<Bus>, owner: &str, payload: Value) -> Result<Answer, Unreachable> {
    let outcome = forward_inner(bus, owner, payload).await;
    match &outcome {
        Ok(_) => counters::FORWARDED.fetch_add(1, Ordering::Relaxed),
        Err(_) => counters::FORWARD_FAILED.fetch_add(1, Ordering::Relaxed),
    };
    outcome
}

async fn forward_inner(bus: &Arc<Bus>, owner: &str, payload: Value) -> Result<Answer, Unreachable> {
    let corr = bus.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(RELAY_QUEUE);
    bus.calls.insert(corr, tx);
    let mut pending = Pending {
        bus: bus.clone(),
        corr,
        owner: owner.to_string(),
        finished: false,
    };
    let (heard_tx, heard_rx) = oneshot::channel();
    bus.publish(
        bus.replica_channel(owner),
        Body::Call { corr, payload },
        Some(Box::new(move |n| {
            let _ = heard_tx.send(n);
        })),
    );
    match heard_rx.await {
        Ok(Some(n)) if n > 0 => {}
        Ok(Some(_)) => {
            pending.finished = true;
            return Err(Unreachable::Gone);
        }
        _ => {
            pending.finished = true;
            return Err(Unreachable::Redis);
        }
    }
    match tokio::time::timeout(ACK_WAIT, rx.recv()).await {
        Ok(Some(Step::Ack)) => {}
        _ => return Err(Unreachable::Silent(ACK_WAIT)),
    }
    let (status, content_type) = loop {
        match tokio::time::timeout(SILENCE, rx.recv()).await {
            Ok(Some(Step::Head {
                status,
                content_type,
            })) => break (status, content_type),
            Ok(Some(Step::Alive | Step::Ack)) => continue,
            _ => return Err(Unreachable::Silent(SILENCE)),
        }
    };
    let chunks = futures_util::stream::unfold(Some((rx, pending)), |state| async move {
        let (mut rx, mut pending) = state?;
        loop {
            match tokio::time::timeout(SILENCE, rx.recv()).await {
                Ok(Some(Step::Chunk { data })) => {
                    return Some((Ok(Frame::data(Bytes::from(data))), Some((rx, pending))));
                }
                Ok(Some(Step::End)) => {
                    pending.finished = true;
                    return None;
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => {
                    let e: Box<dyn std::error::Error + Send + Sync> =
                        "the replica holding the call stopped answering".into();
                    return Some((Err(e), None));
                }
            }
        }
    });
    let mut answer = http::Response::new(StreamBody::new(chunks).boxed_unsync());
    *answer.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    if let Some(ct) = content_type.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        answer.headers_mut().insert(CONTENT_TYPE, ct);
    }
    Ok(answer)
}

fn reply(bus: &Bus, channel: &str, corr: u64, step: Step) {
    bus.publish(channel.to_string(), Body::Reply { corr, step }, None);
}

/// `data` as text pieces of at most [`MAX_CHUNK`] bytes (answers are JSON or SSE: UTF-8).
fn pieces(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let mut end = rest.len().min(MAX_CHUNK);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// Serves a call replica `from` forwarded here, relaying the answer back.
pub(super) fn serve(bus: &Arc<Bus>, from: String, corr: u64, payload: Value) {
    let Some(server) = bus.server.get().cloned() else {
        return;
    };
    if from.len() != 16 || !from.bytes().all(|b| b.is_ascii_hexdigit()) {
        return;
    }
    if bus.serving.len() >= MAX_SERVING {
        tracing::warn!(
            max = MAX_SERVING,
            "cluster bus: too many forwarded calls in progress; one refused"
        );
        return;
    }
    let token = CancellationToken::new();
    bus.serving.insert((from.clone(), corr), token.clone());
    let bus = bus.clone();
    tokio::spawn(async move {
        let channel = bus.replica_channel(&from);
        reply(&bus, &channel, corr, Step::Ack);
        let mut alive =
            tokio::time::interval_at(tokio::time::Instant::now() + ALIVE_EVERY, ALIVE_EVERY);
        let answer = server.serve(payload);
        tokio::pin!(answer);
        let answer = loop {
            tokio::select! {
                a = &mut answer => break Some(a),
                _ = alive.tick() => reply(&bus, &channel, corr, Step::Alive),
                _ = token.cancelled() => break None,
            }
        };
        if let Some(answer) = answer {
            let (parts, mut body) = answer.into_parts();
            reply(
                &bus,
                &channel,
                corr,
                Step::Head {
                    status: parts.status.as_u16(),
                    content_type: parts
                        .headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                },
            );
            loop {
                tokio::select! {
                    f = body.frame() => match f {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                for data in pieces(&data) {
                                    reply(&bus, &channel, corr, Step::Chunk { data });
                                }
                                alive.reset();
                            }
                        }
                        _ => {
                            reply(&bus, &channel, corr, Step::End);
                            break;
                        }
                    },
                    _ = alive.tick() => reply(&bus, &channel, corr, Step::Alive),
                    // Dropping the body cancels what produces it.
                    _ = token.cancelled() => break,
                }
            }
        }
        bus.serving.remove(&(from, corr));
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_keep_characters_whole() {
        let text = "é".repeat(super::MAX_CHUNK);
        let pieces = super::pieces(text.as_bytes());
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.len() <= super::MAX_CHUNK));
        assert_eq!(pieces.concat(), text);
    }
}
