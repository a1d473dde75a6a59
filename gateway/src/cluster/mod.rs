//! The cluster bus: what replicas of one gateway tell each other, over Redis pub/sub.
//!
//! Active only with `[cluster] redis` and a session key; without them nothing here runs and
//! a single process behaves as before. Replicas never connect to each other: each keeps one
//! Redis connection subscribed to its channels and one (multiplexed) to publish on.
//!
//! - **Session channels.** A message a session sends outside any request (late log lines,
//!   list changes, resource updates, requests to the client) that no stream of that session
//!   on this replica takes is published on the session's channel; a change (list changed,
//!   resource updated) is published always, as 2026-07-28 callers may listen on several
//!   replicas at once. A replica subscribes to a session's channel while it holds an open
//!   GET stream or `subscriptions/listen` stream of that session, and delivers what arrives
//!   to it. A message nobody was subscribed for (or that could not be published) stays in
//!   the producing replica's replay buffer, as in one process. A session-era session's
//!   channel follows its (sealed) id; a 2026-07-28 caller's follows the caller's subject.
//!   Channel names are hashes: Redis never sees a session id or a subject.
//! - **Replica channels.** A `requestState` of a parked call names (sealed) the replica that
//!   parked it; a retry that lands elsewhere is forwarded there and its HTTP answer relayed
//!   back step by step ([`relay`]). A request to a session-era client has the id
//!   `s<n>.<replica>`; the client's answer, POSTed to any replica, is sent to the one that
//!   asked.
//! - **Bounds.** A message larger than [`MAX_MESSAGE`] is not published, and one larger is
//!   dropped unread when it arrives; the outgoing queue holds [`OUT_QUEUE`] messages and a
//!   relay [`relay::RELAY_QUEUE`] steps; past that, messages are dropped and counted, never
//!   buffered without bound. What reaches a stream is bounded by that stream's own cap
//!   (`max-stream-buffer-kib`).
//! - **Failure.** Redis down: publishing stops for a back-off (250 ms doubling to 5 s) and
//!   messages stay local (delivered to local streams, kept for replay); the subscriber
//!   reconnects with the same back-off and subscribes again to every channel it needs. One log
//!   line when the bus fails, one when it is back; `portcullis_bus_*` metrics count the rest.
//! - **Trust.** Every message is sealed (AES-256-GCM) under the session key (`wire.rs`): a
//!   Redis client without the key can neither read nor forge one, and nothing the bus
//!   carries decides who a caller is without it.

mod link;
pub mod relay;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::mcp::Message;
use crate::session::Session;
use wire::{Body, Envelope, Seal};

/// Largest sealed message published or accepted (a notification, one step of a relay).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Messages waiting to be published; past it new ones are dropped (and stay local).
pub const OUT_QUEUE: usize = 4096;

/// Bus counters since start, for `/metrics`.
pub mod counters {
    use std::sync::atomic::AtomicU64;
    /// Messages published.
    pub static PUBLISHED: AtomicU64 = AtomicU64::new(0);
    /// Messages received and acted on.
    pub static RECEIVED: AtomicU64 = AtomicU64::new(0);
    /// Dropped: over [`super::MAX_MESSAGE`].
    pub static DROPPED_OVERSIZE: AtomicU64 = AtomicU64::new(0);
    /// Dropped: the outgoing queue was full.
    pub static DROPPED_QUEUE: AtomicU64 = AtomicU64::new(0);
    /// Not published: Redis down or failing (they stayed local).
    pub static DROPPED_REDIS: AtomicU64 = AtomicU64::new(0);
    /// Dropped unread: not sealed under a configured key, unknown shape, or too old.
    pub static DROPPED_UNREADABLE: AtomicU64 = AtomicU64::new(0);
    /// Relays ended because their reader fell behind by [`super::relay::RELAY_QUEUE`] steps.
    pub static DROPPED_SLOW: AtomicU64 = AtomicU64::new(0);
    /// Retries forwarded to the replica that parked their call, by outcome.
    pub static FORWARDED: AtomicU64 = AtomicU64::new(0);
    pub static FORWARD_FAILED: AtomicU64 = AtomicU64::new(0);
    /// Times the subscriber (re)connected.
    pub static CONNECTS: AtomicU64 = AtomicU64::new(0);
}

/// Answers calls other replicas forward here (the front's parked calls).
pub trait Serve: Send + Sync {
    fn serve(&self, payload: Value) -> futures_util::future::BoxFuture<'static, relay::Answer>;
}

/// A subscription request for the subscriber task.
enum Command {
    Subscribe(String, Option<oneshot::Sender<()>>),
    Unsubscribe(String),
}

/// A message for the publisher task; `done` hears how many subscribers got it (`None`: it
/// was not published).
struct Outbound {
    channel: String,
    bytes: Vec<u8>,
    done: Option<Box<dyn FnOnce(Option<usize>) + Send>>,
}

struct Follower {
    id: u64,
    session: Weak<Session>,
    topic: String,
}

/// The bus of one replica.
pub struct Bus {
    replica: [u8; 8],
    replica_hex: String,
    /// `<redis-prefix>bus:`.
    prefix: String,
    host: String,
    timeout: Duration,
    seal: Seal,
    out: mpsc::Sender<Outbound>,
    commands: mpsc::UnboundedSender<Command>,
    /// Session channels this replica holds streams for.
    followers: Mutex<HashMap<String, Vec<Follower>>>,
    next: AtomicU64,
    /// Forwarded calls waiting for their answer, by correlation id.
    calls: DashMap<u64, mpsc::Sender<wire::Step>>,
    /// Calls served here for other replicas: (replica, correlation id) → cancel.
    serving: DashMap<(String, u64), CancellationToken>,
    server: OnceLock<Arc<dyn Serve>>,
    /// The sessions, for answers to their requests to clients.
    sessions: OnceLock<Weak<crate::session::Sessions>>,
    /// The subscriber is connected and subscribed.
    connected: AtomicBool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("replica", &self.replica_hex)
            .field("redis", &self.host)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Bus {
    /// The bus `[cluster]` asks for: `None` unless both `redis` and a session key are set.
    /// Does not wait for Redis: the subscriber connects (and reconnects) on its own.
    pub fn start(cfg: &ClusterConfig) -> anyhow::Result<Option<Arc<Bus>>> {
        let (Some(url), Some(seal)) = (&cfg.redis, Seal::new(&cfg.session_keys.0)) else {
            return Ok(None);
        };
        let client = redis::Client::open(url.expose())
            .map_err(|e| anyhow::anyhow!("cluster.redis: {}", e.category()))?;
        let replica: [u8; 8] = rand::random();
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let bus = Arc::new(Bus {
            replica,
            replica_hex: hex(&replica),
            prefix: format!("{}bus:", cfg.redis_prefix),
            host: url.host().to_string(),
            timeout: cfg.redis_timeout,
            seal,
            out,
            commands,
            followers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            calls: DashMap::new(),
            serving: DashMap::new(),
            server: OnceLock::new(),
            sessions: OnceLock::new(),
            connected: AtomicBool::new(false),
        });
        link::spawn_publisher(&bus, client.clone(), out_rx)?;
        link::spawn_subscriber(&bus, client, commands_rx);
        tracing::info!(redis = %bus.host, replica = %bus.replica_hex, "cluster bus: streams and parked calls are shared through redis");
        Ok(Some(bus))
    }

    /// Who answers calls forwarded to this replica.
    pub fn set_server(&self, server: Arc<dyn Serve>) {
        let _ = self.server.set(server);
    }

    /// Where client answers to this replica's requests are delivered.
    pub fn set_sessions(&self, sessions: Weak<crate::session::Sessions>) {
        let _ = self.sessions.set(sessions);
    }

    fn replica_channel(&self, replica_hex: &str) -> String {
        format!("{}r:{replica_hex}", self.prefix)
    }

    fn session_channel(&self, topic: &str) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(topic.as_bytes());
        format!("{}s:{}", self.prefix, hex(&digest[..16]))
    }

    /// Sessions followed now, for `/metrics`.
    pub fn following(&self) -> usize {
        lock(&self.followers).len()
    }

    /// Whether the subscriber is connected, for `/metrics`.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Seals and queues `body` for `channel`.
    fn publish(
        &self,
        channel: String,
        body: Body,
        done: Option<Box<dyn FnOnce(Option<usize>) + Send>>,
    ) {
        let envelope = Envelope {
            from: self.replica_hex.clone(),
            at: wire::now_ms(),
            body,
        };
        let bytes = self.seal.seal_envelope(&envelope);
        if bytes.len() > MAX_MESSAGE {
            counters::DROPPED_OVERSIZE.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                bytes = bytes.len(),
                max = MAX_MESSAGE,
                "cluster bus: message too large to publish; kept on this replica"
            );
            if let Some(done) = done {
                done(None);
            }
            return;
        }
        let outbound = Outbound {
            channel,
            bytes,
            done,
        };
        if let Err(e) = self.out.try_send(outbound) {
            counters::DROPPED_QUEUE.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("cluster bus: outgoing queue full; message kept on this replica");
            let outbound = match e {
                mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => o,
            };
            if let Some(done) = outbound.done {
                done(None);
            }
        }
    }

    /// Subscribes this replica to `session`'s channel until `gone` is cancelled (the stream
    /// closed). When Redis is up, returns once the subscription is in place, so everything
    /// published from then on reaches the stream.
    pub async fn follow(self: &Arc<Self>, session: &Arc<Session>, gone: CancellationToken) {
        let topic = session.bus_topic();
        let channel = self.session_channel(&topic);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut followers = lock(&self.followers);
            let list = followers.entry(channel.clone()).or_default();
            list.retain(|f| f.session.strong_count() > 0);
            list.push(Follower {
                id,
                session: Arc::downgrade(session),
                topic,
            });
            list.len() == 1
        };
        let bus = self.clone();
        let unfollow = channel.clone();
        tokio::spawn(async move {
            gone.cancelled().await;
            bus.unfollow(&unfollow, id);
        });
        if first {
            let (tx, rx) = oneshot::channel();
            let _ = self.commands.send(Command::Subscribe(channel, Some(tx)));
            if self.is_connected() {
                // A subscription takes one round trip; waiting a little longer than a KV
                // call costs only the stream's first byte.
                let wait = self.timeout.max(Duration::from_secs(1));
                if tokio::time::timeout(wait, rx).await.is_err() {
                    tracing::debug!("cluster bus: subscription not confirmed in time");
                }
            }
        }
    }

    fn unfollow(&self, channel: &str, id: u64) {
        let mut followers = lock(&self.followers);
        let Some(list) = followers.get_mut(channel) else {
            return;
        };
        list.retain(|f| f.id != id && f.session.strong_count() > 0);
        if list.is_empty() {
            followers.remove(channel);
            let _ = self
                .commands
                .send(Command::Unsubscribe(channel.to_string()));
        }
    }

    /// Whether `channel` is followed now (the subscriber checks before it acts on a command).
    fn is_followed(&self, channel: &str) -> bool {
        lock(&self.followers).contains_key(channel)
    }

    fn followed_channels(&self) -> Vec<String> {
        lock(&self.followers).keys().cloned().collect()
    }

    /// A `requestState` for a call parked on this replica.
    pub fn seal_state(&self) -> String {
        self.seal.seal_state(&self.replica)
    }

    /// Whom a `requestState` belongs to: `Some(None)` this replica, `Some(Some(id))` another
    /// one, `None` not a state the gateway issued (an upstream's).
    pub fn state_owner(&self, state: &str) -> Option<Option<String>> {
        let owner = self.seal.state_owner(state)?;
        Some((owner != self.replica).then(|| hex(&owner)))
    }

    /// Acts on one message from Redis.
    fn dispatch(self: &Arc<Self>, channel: &str, raw: &[u8]) {
        if raw.len() > MAX_MESSAGE {
            counters::DROPPED_OVERSIZE.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                bytes = raw.len(),
                "cluster bus: oversized message dropped unread"
            );
            return;
        }
        let envelope = match self.seal.open_envelope(raw) {
            Ok(e) => e,
            Err(why) => {
                counters::DROPPED_UNREADABLE.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?why, "cluster bus: unreadable message dropped");
                return;
            }
        };
        if envelope.from == self.replica_hex {
            // Our own change notification, already delivered here.
            return;
        }
        counters::RECEIVED.fetch_add(1, Ordering::Relaxed);
        match envelope.body {
            Body::Session {
                topic,
                upstream,
                msg,
                change,
            } => {
                let Ok(msg) = Message::from_value(msg) else {
                    counters::DROPPED_UNREADABLE.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let sessions: Vec<Arc<Session>> = {
                    let followers = lock(&self.followers);
                    let mut found: Vec<Arc<Session>> = Vec::new();
                    for f in followers.get(channel).into_iter().flatten() {
                        if f.topic == topic
                            && let Some(s) = f.session.upgrade()
                            && !found.iter().any(|o| Arc::ptr_eq(o, &s))
                        {
                            found.push(s);
                        }
                    }
                    found
                };
                for s in sessions {
                    s.deliver_remote(&upstream, &msg, change);
                }
            }
            Body::Answer { session, msg } => {
                let Ok(msg) = Message::from_value(msg) else {
                    counters::DROPPED_UNREADABLE.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let Some(sessions) = self.sessions.get().and_then(Weak::upgrade) else {
                    return;
                };
                let Some(session) = sessions.get(&session) else {
                    tracing::debug!(
                        "cluster bus: an answer for a session this replica cannot open"
                    );
                    return;
                };
                tokio::spawn(async move { session.handle_response(msg).await });
            }
            Body::Call { corr, payload } => relay::serve(self, envelope.from, corr, payload),
            Body::Cancel { corr } => {
                if let Some((_, token)) = self.serving.remove(&(envelope.from, corr)) {
                    token.cancel();
                }
            }
            Body::Reply { corr, step } => {
                let full = match self.calls.get(&corr) {
                    Some(tx) => tx.try_send(step).is_err(),
                    None => false,
                };
                if full {
                    counters::DROPPED_SLOW.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cluster bus: a relayed answer fell behind its reader; ended");
                    self.calls.remove(&corr);
                }
            }
        }
    }
}

impl crate::session::SessionBus for Bus {
    /// This replica's id on the bus.
    fn replica(&self) -> &str {
        &self.replica_hex
    }

    /// The replica that sent the client the request with this gateway id (`s<n>.<replica>`),
    /// when it is another one.
    fn asker(&self, gateway_id: &str) -> Option<String> {
        let (_, replica) = gateway_id.rsplit_once('.')?;
        (replica.len() == 16
            && replica.bytes().all(|b| b.is_ascii_hexdigit())
            && replica != self.replica_hex)
            .then(|| replica.to_string())
    }

    /// Sends a client's answer to the replica that asked.
    fn publish_answer(&self, replica: String, session: &str, msg: Message) {
        let body = Body::Answer {
            session: session.to_string(),
            msg: msg.into_value(),
        };
        self.publish(self.replica_channel(&replica), body, None);
    }

    /// Hands a message of `session` to the replicas that hold streams of it. When none
    /// received it, `unheard` runs (the caller keeps it for a stream opened here later).
    fn publish_session(
        &self,
        session: &Session,
        upstream: &str,
        msg: &Message,
        change: bool,
        unheard: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let topic = session.bus_topic();
        let channel = self.session_channel(&topic);
        let body = Body::Session {
            topic,
            upstream: upstream.to_string(),
            msg: msg.clone().into_value(),
            change,
        };
        let done = unheard.map(|f| {
            Box::new(move |heard: Option<usize>| {
                if heard.unwrap_or(0) == 0 {
                    f()
                }
            }) as Box<dyn FnOnce(Option<usize>) + Send>
        });
        self.publish(channel, body, done);
    }
}
