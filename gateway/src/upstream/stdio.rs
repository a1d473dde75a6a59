//! Stdio upstreams: one child process per link, newline-delimited JSON-RPC on stdin/stdout.
//!
//! The child process itself is `child.rs`: it runs in its own process group, so a server
//! that forks helpers (`npx`, shell wrappers) is killed as a whole; it is reaped as soon as it
//! exits; it dies with the gateway (`PR_SET_PDEATHSIG`) even if the gateway is killed with
//! SIGKILL; and its stderr goes to the gateway's log, tagged with the upstream name. This
//! file is the link over its stdin and stdout: a writer task, a reader task, the handshake.
//!
//! Which era a child speaks is decided as for HTTP (`upstream/stateless.rs`): with `protocol = auto`
//! the first child of an upstream is asked `server/discover` before anything else (the spec's
//! stdio probe); a 2026-07-28-only server is then spoken to statelessly, with `_meta` on every
//! request and a `subscriptions/listen` request open for list changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::io::BufReader;
use tokio::process::ChildStdout;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::bounds::{self, Bound, Line};
use super::child::{self, Spawned};
use super::pending::{Pending, RequestIds};
use super::stateless::{self, Stateless};
use super::stdin::{Refused, Stdin};
use super::transport::{Call, Transport};
use super::{Era, Hello, InboundHandler, Related, Upstream, UpstreamError};
use crate::config::UpstreamProtocol;
use crate::mcp::{Kind, Message, methods};

/// A line buffer that grew past this for one big message is let go, so a link does not keep
/// the memory of its largest message for as long as it lives.
const KEPT_LINE_CAPACITY: usize = 64 * 1024;

/// How long the `server/discover` probe waits: a session-era server may ignore a request
/// before `initialize`, and then gets `initialize` after this.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct StdioLink {
    name: Arc<str>,
    /// Bounded by `max-line-mib` of what waits unread (see [`send_bytes`]).
    ///
    /// [`send_bytes`]: StdioLink::send_bytes
    stdin: Stdin,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    /// Spoken to as MCP 2026-07-28 (stateless) rather than with `initialize`.
    pub(super) stateless: Option<Stateless>,
    /// Cancelled when the link is dropped: the child is killed and reaped.
    _stop: tokio_util::sync::DropGuard,
}

impl StdioLink {
    /// Starts a child for a new link and speaks to it until it answers, starting it again
    /// where the first child's answer (or its exit) showed which era it speaks: a session-era
    /// server that exits on `server/discover`, a slow 2026-07-28 server that missed the
    /// probe, a 2026-07-28-only server that exits on `initialize`.
    pub async fn connect(
        upstream: &Arc<Upstream>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        session_client: bool,
    ) -> Result<(Self, Value), UpstreamError> {
        let (era, accepts) = (upstream.era(), upstream.accepts_initialize());
        let auto = upstream.config.protocol == UpstreamProtocol::Auto;
        let mut started = Self::start(upstream, hello, handler.clone(), session_client).await;
        if matches!(started, Err(UpstreamError::Exited { .. }))
            && era == Era::Unknown
            && upstream.era() == Era::Session
        {
            // The probe ended the child: a session-era server that takes nothing before
            // `initialize`. Once more, with `initialize` only.
            tracing::info!(upstream = %upstream.name, "stdio upstream exited on server/discover; starting it again with initialize");
            started = Self::start(upstream, hello, handler.clone(), session_client).await;
        } else if matches!(started, Err(UpstreamError::Protocol { .. }))
            && era == Era::Unknown
            && upstream.era() == Era::Session
            && auto
        {
            // The probe went unanswered in time and `initialize` was refused: a
            // slow-starting 2026-07-28 server. Once more, probing again.
            tracing::info!(upstream = %upstream.name, "stdio upstream refused initialize after a late probe; starting it again and probing once more");
            upstream.set_era(Era::Unknown);
            started = Self::start(upstream, hello, handler.clone(), session_client).await;
        }
        if matches!(started, Err(UpstreamError::Exited { .. }))
            && accepts.is_none()
            && upstream.accepts_initialize() == Some(false)
        {
            // `initialize` ended a 2026-07-28-only child: once more, statelessly.
            tracing::info!(upstream = %upstream.name, "stdio upstream refused initialize; starting it again as MCP 2026-07-28");
            started = Self::start(upstream, hello, handler, session_client).await;
        }
        if matches!(started, Err(UpstreamError::Protocol { .. })) && auto {
            // Perhaps it changed era: the next link asks again.
            upstream.set_era(Era::Unknown);
        }
        started
    }

    /// Starts one child and runs the handshake with it: [`child::spawn`], then one task per
    /// pipe ([`Stdin`]'s writer, [`read_stdout`], [`child::log_stderr`]) and one that waits for
    /// the exit ([`child::watch_exit`]), then [`StdioLink::handshake`].
    async fn start(
        upstream: &Arc<Upstream>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        session_client: bool,
    ) -> Result<(Self, Value), UpstreamError> {
        let name = upstream.name.clone();
        let Spawned {
            child,
            child_slot,
            stdin,
            stdout,
            stderr,
        } = child::spawn(upstream)?;
        let life = Life::new();
        let ended = life.clone();
        child::watch_exit(
            upstream,
            child,
            child_slot,
            life.stop.clone(),
            life.closed.clone(),
            move || ended.end(),
        );
        let stdin = Stdin::new(stdin, upstream.config.max_line_bytes()).map_err(|e| {
            life.stop.cancel(); // no link will own the child: stop it
            UpstreamError::Unavailable {
                upstream: name.clone(),
                reason: format!("cannot write to the child's stdin: {e}"),
            }
        })?;
        child::log_stderr(name.clone(), stderr);
        let init_rx = read_stdout(upstream.clone(), stdout, handler, life.clone());
        let link = StdioLink {
            name,
            stdin,
            pending: life.pending,
            alive: life.alive,
            stateless: None,
            _stop: life.stop.drop_guard(),
        };
        link.handshake(upstream, hello, session_client, init_rx)
            .await
    }

    /// Decides the era (`stateless::choose_era`, probing with `server/discover` where it
    /// must) and opens the link in it: `initialize` and `notifications/initialized`, or a
    /// `subscriptions/listen` request for a 2026-07-28 child. `init_rx` gets the child's
    /// answer to `initialize` (id 0) from [`read_stdout`].
    async fn handshake(
        mut self,
        upstream: &Arc<Upstream>,
        hello: &Hello,
        session_client: bool,
        mut init_rx: oneshot::Receiver<Message>,
    ) -> Result<(Self, Value), UpstreamError> {
        let name = self.name.clone();
        let stateless = Stateless::new(name.clone(), hello.clone());
        // Only a child that could not be started says nothing about the era; one that exits
        // on the probe is a session-era server (`connect` starts it again).
        let unreachable = |e: &UpstreamError| matches!(e, UpstreamError::Spawn { .. });
        // Only a first probe may be ignored by a session-era server; once the upstream is
        // known to speak 2026-07-28, a slow start gets the whole connect timeout.
        let patience = if upstream.era() == Era::Unknown
            && upstream.config.protocol == UpstreamProtocol::Auto
        {
            PROBE_TIMEOUT
        } else {
            upstream.config.connect_timeout
        };
        let choice = stateless::choose_era(
            upstream,
            session_client,
            || self.discover(&stateless, patience),
            unreachable,
        )
        .await?;
        let discovered = match choice {
            stateless::Choice::Initialize => None,
            stateless::Choice::Stateless(d) => Some(d),
            stateless::Choice::TryInitialize(_) => {
                self.write(hello.initialize_request())?;
                let reply = match tokio::time::timeout(PROBE_TIMEOUT, &mut init_rx).await {
                    Ok(Ok(reply)) => super::initialize_result(&name, reply),
                    Ok(Err(_)) => {
                        // It exited on `initialize`: `connect` starts it again.
                        upstream.set_accepts_initialize(false);
                        return Err(UpstreamError::Exited { upstream: name });
                    }
                    Err(_) => Err(UpstreamError::Protocol {
                        upstream: name.clone(),
                        detail: format!("no answer to initialize within {PROBE_TIMEOUT:?}"),
                    }),
                };
                match reply {
                    Ok(result) => {
                        upstream.set_accepts_initialize(true);
                        self.write(Message::notification(methods::INITIALIZED, None))?;
                        return Ok((self, result));
                    }
                    Err(e) => {
                        // A child that refused `initialize` may be on its way out (SDKs end
                        // the connection): `connect` starts a fresh one, spoken to as
                        // 2026-07-28 from the start.
                        tracing::debug!(upstream = %name, error = %e, "initialize refused; speaking MCP 2026-07-28");
                        upstream.set_accepts_initialize(false);
                        return Err(UpstreamError::Exited { upstream: name });
                    }
                }
            }
        };
        if let Some(discovered) = discovered {
            self.listen_for_changes(&stateless);
            self.stateless = Some(stateless);
            return Ok((self, discovered));
        }
        self.write(hello.initialize_request())?;
        let reply = init_rx.await.map_err(|_| UpstreamError::Exited {
            upstream: name.clone(),
        })?;
        let result = super::initialize_result(&name, reply)?;
        self.write(Message::notification(methods::INITIALIZED, None))?;
        Ok((self, result))
    }

    /// Writes a notification or a response to the child's stdin.
    pub(super) fn write(&self, msg: Message) -> Result<(), UpstreamError> {
        if self.stateless.is_some() && msg.method() != methods::CANCELLED {
            // 2026-07-28 over stdio: the only client notification is cancellation, and its
            // servers ask nothing of the client (so there are no answers to send either).
            tracing::debug!(upstream = %self.name, method = msg.method(), "not sent to a 2026-07-28 upstream");
            return Ok(());
        }
        self.send_bytes(msg.to_bytes())
    }

    /// `server/discover`, waiting `patience` at most.
    async fn discover(
        &self,
        stateless: &Stateless,
        patience: std::time::Duration,
    ) -> Result<Value, UpstreamError> {
        let mut msg = stateless.discover_request(Value::Null);
        let (id, answer) = self.pending.start(&mut msg, None);
        self.send_bytes(msg.to_bytes())?;
        match tokio::time::timeout(patience, answer).await {
            Ok(Ok(Ok(reply))) => stateless::discover_result(&self.name, reply),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(UpstreamError::Exited {
                upstream: self.name.clone(),
            }),
            Err(_) => {
                self.pending.remove(id);
                Err(UpstreamError::Protocol {
                    upstream: self.name.clone(),
                    detail: format!("no answer to server/discover within {patience:?}"),
                })
            }
        }
    }

    /// Opens a `subscriptions/listen` request for list changes; it stays open as long as the
    /// child runs (its notifications reach the session as belonging to no request).
    fn listen_for_changes(&self, stateless: &Stateless) {
        let mut msg = stateless.listen_request(Value::Null);
        let (_, answer) = self.pending.start(&mut msg, None);
        if self.send_bytes(msg.to_bytes()).is_err() {
            return;
        }
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Ok(Ok(reply)) = answer.await {
                tracing::debug!(upstream = %name, refused = reply.is_error(), "subscriptions/listen ended");
            }
        });
    }

    /// Queues one message for the child's stdin. A child that stopped reading it (hung,
    /// or hostile) would otherwise make the gateway hold every message sent to it: once more
    /// than `max-line-mib` waits unread, further messages are refused (one message is always
    /// accepted when nothing waits, however large).
    fn send_bytes(&self, bytes: Vec<u8>) -> Result<(), UpstreamError> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(UpstreamError::Exited {
                upstream: self.name.clone(),
            });
        }
        match self.stdin.send(bytes) {
            Ok(()) => Ok(()),
            Err(Refused::Closed) => Err(UpstreamError::Exited {
                upstream: self.name.clone(),
            }),
            Err(Refused::NotReading { waiting }) => {
                let e = UpstreamError::Unavailable {
                    upstream: self.name.clone(),
                    reason: format!(
                        "it is not reading its stdin: {} KiB wait unread, and the limit is {} MiB (upstreams.{}.max-line-mib)",
                        waiting / 1024,
                        self.stdin.max_waiting() >> 20,
                        self.name
                    ),
                };
                tracing::warn!(upstream = %self.name, "{e}; message refused");
                Err(e)
            }
        }
    }
}

impl Transport for StdioLink {
    fn kind(&self) -> &'static str {
        "stdio"
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn stateless(&self) -> Option<&Stateless> {
        self.stateless.as_ref()
    }

    fn traces_in_meta(&self) -> bool {
        true
    }

    fn ids(&self) -> &RequestIds {
        &self.pending.ids
    }

    /// Registers the waiter, then writes the request; the answer comes from [`read_stdout`].
    fn request(&self, id: u64, mut msg: Message, related: Option<Related>) -> Call<'_> {
        if let Some(stateless) = &self.stateless {
            stateless.add_meta(&mut msg);
        }
        let answer = self.pending.register_request(id, &msg, related);
        let sent = self.send_bytes(msg.to_bytes());
        let exited = UpstreamError::Exited {
            upstream: self.name.clone(),
        };
        Box::pin(
            self.pending
                .call(id, answer, std::future::ready(sent), exited),
        )
    }

    fn forget(&self, id: u64) {
        self.pending.remove(id);
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<(), UpstreamError>> {
        Box::pin(std::future::ready(self.write(msg)))
    }
}

/// What the link and its tasks share about one child's life.
#[derive(Clone)]
struct Life {
    alive: Arc<AtomicBool>,
    pending: Arc<Pending>,
    /// Cancelled when the link is dropped (session ended, gateway stopping): kill the child.
    stop: CancellationToken,
    /// Cancelled when the child closed its stdout: give it a moment to exit on its own.
    closed: CancellationToken,
}

impl Life {
    fn new() -> Self {
        Life {
            alive: Arc::new(AtomicBool::new(true)),
            pending: Arc::default(),
            stop: CancellationToken::new(),
            closed: CancellationToken::new(),
        }
    }

    /// The child is done for: the link says so and every waiting request fails.
    fn end(&self) {
        self.alive.store(false, Ordering::Release);
        self.pending.fail_all();
    }
}

/// The reader: each stdout line is one message. The answer to `initialize` (id 0) goes to
/// the returned receiver, other responses to their waiters, everything else to the session
/// (with the client request it belongs to, where that can be told). A line over
/// `max-line-mib` fails every waiting request and stops the child. When stdout closes the
/// link is dead and the exit watcher gives the child a moment to exit.
fn read_stdout(
    upstream: Arc<Upstream>,
    stdout: ChildStdout,
    handler: Weak<dyn InboundHandler>,
    life: Life,
) -> oneshot::Receiver<Message> {
    let (init_tx, init_rx) = oneshot::channel::<Message>();
    tokio::spawn(async move {
        let name = upstream.name.clone();
        let pending = &life.pending;
        let mut init_tx = Some(init_tx);
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        let max_line = upstream.config.max_line_bytes();
        loop {
            if line.capacity() > KEPT_LINE_CAPACITY {
                line = Vec::new();
            }
            match bounds::read_line(&mut reader, &mut line, max_line).await {
                Ok(Line::Complete) => {}
                Ok(Line::Eof) | Err(_) => break,
                Ok(Line::TooLong) => {
                    // The line may be the answer to any request in flight, and nothing of it
                    // can be trusted to say which: the waiters get the breach instead of a
                    // timeout, and the child is stopped (the slot starts a fresh one on the
                    // next call), since a child that wrote it is broken or hostile.
                    let _ = bounds::too_large(&upstream, Bound::Line, "a line".into());
                    pending.fail_all_with(|| bounds::breach(&upstream, Bound::Line, "a line"));
                    life.stop.cancel();
                    crate::memory::give_back(std::mem::take(&mut line));
                    break;
                }
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let msg = match Message::parse(text) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(upstream = %name, error = %e, "ignoring a line that is not JSON-RPC");
                    continue;
                }
            };
            match msg.kind() {
                Kind::Response
                    if msg.id().and_then(Value::as_u64) == Some(0) && init_tx.is_some() =>
                {
                    if let Some(tx) = init_tx.take() {
                        let _ = tx.send(msg);
                    }
                }
                Kind::Response => {
                    if !pending.complete(msg) {
                        tracing::debug!(upstream = %name, "response to a request nobody waits for");
                    }
                }
                // A 2026-07-28 server confirming the link's listen request.
                Kind::Notification if msg.method() == methods::SUBSCRIPTIONS_ACKNOWLEDGED => {}
                Kind::Notification | Kind::Request => {
                    // What a listen subscription carries belongs to no request.
                    let related = match subscription_id(&msg) {
                        Some(_) => None,
                        None => pending.related_for(&msg),
                    };
                    if let Some(h) = handler.upgrade() {
                        h.on_message(&upstream, msg, related.as_ref());
                    }
                }
            }
        }
        life.end();
        // stdout closed: the process is done for; make sure it is gone.
        life.closed.cancel();
    });
    init_rx
}

/// The `io.modelcontextprotocol/subscriptionId` a 2026-07-28 server puts on what a listen
/// subscription carries.
fn subscription_id(msg: &Message) -> Option<&Value> {
    msg.params()?
        .get("_meta")?
        .get(methods::meta::SUBSCRIPTION_ID)
}
