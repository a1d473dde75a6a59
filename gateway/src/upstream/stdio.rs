//! Stdio upstreams: one child process per link, newline-delimited JSON-RPC on stdin/stdout.
//!
//! The child runs in its own process group, so a server that forks helpers (`npx`, shell
//! wrappers) is killed as a whole; it is reaped as soon as it exits; it dies with the gateway
//! (`PR_SET_PDEATHSIG`) even if the gateway is killed with SIGKILL; and its stderr goes to the
//! gateway's log, tagged with the upstream name.
//!
//! Which era a child speaks is decided as for HTTP (`stateless.rs`): with `protocol = auto`
//! the first child of an upstream is asked `server/discover` before anything else (the spec's
//! stdio probe); a 2026-07-28-only server is then spoken to statelessly, with `_meta` on every
//! request and a `subscriptions/listen` request open for list changes.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bounds::{self, Bound, Line};
use super::pending::Pending;
use super::stateless::{self, Stateless};
use super::{Hello, InboundHandler, Related, Upstream, UpstreamError};
use crate::mcp::{Kind, Message, methods};

/// Environment variables a child inherits from the gateway; everything else must be set in
/// the upstream's `env` so that gateway secrets never leak into upstream processes.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM",
];

/// How long a child that closed its stdout may take to exit before it is killed.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest stderr line logged; the rest of a longer one is skipped, never held. Stderr is
/// only ever logged, so this is a log-line bound, not a message bound (`max-line-mib`).
const MAX_STDERR_LINE: usize = 8 * 1024;

/// A line buffer that grew past this for one big message is let go, so a link does not keep
/// the memory of its largest message for as long as it lives.
const KEPT_LINE_CAPACITY: usize = 64 * 1024;

/// How long the `server/discover` probe waits: a session-era server may ignore a request
/// before `initialize`, and then gets `initialize` after this.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct StdioLink {
    name: Arc<str>,
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Pending>,
    alive: Arc<AtomicBool>,
    /// Spoken to as MCP 2026-07-28 (stateless) rather than with `initialize`.
    pub(super) stateless: Option<Stateless>,
    /// Cancelled when the link is dropped: the child is killed and reaped.
    _stop: tokio_util::sync::DropGuard,
}

impl StdioLink {
    pub async fn start(
        upstream: &Arc<Upstream>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
        session_client: bool,
    ) -> Result<(Self, Value), UpstreamError> {
        let cfg = &upstream.config;
        let name = upstream.name.clone();
        let program = cfg.command.as_deref().unwrap_or_default();
        let spawn_err = |reason: String| UpstreamError::Spawn {
            upstream: name.clone(),
            reason,
        };
        // Held by the reaper until the child is gone: `max-children` counts processes, not
        // links.
        let Ok(child_slot) = upstream.child_slots.clone().try_acquire_owned() else {
            let limit = cfg.max_children();
            tracing::warn!(upstream = %name, limit, "stdio upstream at max-children; refused a new child process");
            return Err(UpstreamError::TooManyChildren {
                upstream: name,
                limit,
            });
        };

        let mut cmd = CommandWrap::with_new(program, |c| {
            c.args(&cfg.args)
                .env_clear()
                .envs(
                    INHERITED_ENV
                        .iter()
                        .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
                )
                .envs(&cfg.env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(dir) = &cfg.cwd {
                c.current_dir(dir);
            }
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        });
        cmd.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_err(format!("{program}: {e}")))?;
        let stdin = child
            .stdin()
            .take()
            .ok_or_else(|| spawn_err("no stdin".into()))?;
        let stdout = child
            .stdout()
            .take()
            .ok_or_else(|| spawn_err("no stdout".into()))?;
        let stderr = child
            .stderr()
            .take()
            .ok_or_else(|| spawn_err("no stderr".into()))?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(upstream = %name, pid, "started stdio upstream");

        // `stop`: the link was dropped (session ended, gateway stopping) — kill the child.
        // `closed`: the child closed its stdout — give it a moment to exit on its own.
        let stop = CancellationToken::new();
        let closed = CancellationToken::new();
        let alive = Arc::new(AtomicBool::new(true));
        let pending = Arc::new(Pending::default());

        // Reaper: waits for exit (so there is never a zombie) or kills on stop.
        {
            let (name, alive, pending, stop, closed) = (
                name.clone(),
                alive.clone(),
                pending.clone(),
                stop.clone(),
                closed.clone(),
            );
            upstream.children.spawn(async move {
                let _child_slot = child_slot;
                let status = tokio::select! {
                    s = child.wait() => s,
                    _ = stop.cancelled() => {
                        let _ = child.start_kill();
                        child.wait().await
                    }
                    _ = closed.cancelled() => {
                        match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                            Ok(s) => s,
                            Err(_) => {
                                let _ = child.start_kill();
                                child.wait().await
                            }
                        }
                    }
                };
                alive.store(false, Ordering::Release);
                pending.fail_all();
                match status {
                    Ok(s) if stop.is_cancelled() => {
                        tracing::debug!(upstream = %name, pid, status = %s, "stdio upstream stopped")
                    }
                    Ok(s) => {
                        tracing::warn!(upstream = %name, pid, status = %s, "stdio upstream exited")
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %name, pid, error = %e, "stdio upstream lost")
                    }
                }
            });
        }

        // Writer: one task owns stdin so writes never interleave.
        let (outbox, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut stdin = stdin;
            while let Some(mut line) = rx.recv().await {
                line.push(b'\n');
                if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });

        // Stderr: into our log, line by line.
        {
            let name = name.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    let cut = match bounds::read_line(&mut reader, &mut line, MAX_STDERR_LINE).await
                    {
                        Ok(Line::Complete) => false,
                        Ok(Line::TooLong) => true,
                        Ok(Line::Eof) | Err(_) => break,
                    };
                    let text = String::from_utf8_lossy(line.trim_ascii_end());
                    if cut {
                        tracing::info!(target: "portcullis::upstream::stderr", upstream = %name, "{text} [line cut at {MAX_STDERR_LINE} bytes]");
                        if bounds::skip_line(&mut reader).await.is_err() {
                            break;
                        }
                    } else {
                        tracing::info!(target: "portcullis::upstream::stderr", upstream = %name, "{text}");
                    }
                }
            });
        }

        // Reader: responses to their waiters, everything else to the session.
        let (init_tx, mut init_rx) = tokio::sync::oneshot::channel::<Message>();
        {
            let (name, pending, upstream, alive, closed, kill) = (
                name.clone(),
                pending.clone(),
                upstream.clone(),
                alive.clone(),
                closed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
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
                            // The line may be the answer to any request in flight, and nothing
                            // of it can be trusted to say which: the waiters get the breach
                            // instead of a timeout, and the child is stopped (the slot starts a
                            // fresh one on the next call), since a child that wrote it is
                            // broken or hostile.
                            let _ = bounds::too_large(&upstream, Bound::Line, "a line".into());
                            pending
                                .fail_all_with(|| bounds::breach(&upstream, Bound::Line, "a line"));
                            kill.cancel();
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
                        Kind::Notification
                            if msg.method() == methods::SUBSCRIPTIONS_ACKNOWLEDGED => {}
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
                alive.store(false, Ordering::Release);
                pending.fail_all();
                // stdout closed: the process is done for; make sure it is gone.
                closed.cancel();
            });
        }

        let mut link = StdioLink {
            name: name.clone(),
            outbox,
            pending,
            alive,
            stateless: None,
            _stop: stop.drop_guard(),
        };
        let stateless = Stateless::new(name.clone(), hello.clone());
        // Only a child that could not be started says nothing about the era; one that exits
        // on the probe is a session-era server (`Link::connect` starts it again).
        let unreachable = |e: &UpstreamError| matches!(e, UpstreamError::Spawn { .. });
        // Only a first probe may be ignored by a session-era server; once the upstream is
        // known to speak 2026-07-28, a slow start gets the whole connect timeout.
        let patience = if upstream.era() == super::Era::Unknown
            && cfg.protocol == crate::config::UpstreamProtocol::Auto
        {
            PROBE_TIMEOUT
        } else {
            cfg.connect_timeout
        };
        let choice = stateless::choose_era(
            upstream,
            session_client,
            || link.discover(&stateless, patience),
            unreachable,
        )
        .await?;
        let discovered = match choice {
            stateless::Choice::Initialize => None,
            stateless::Choice::Stateless(d) => Some(d),
            stateless::Choice::TryInitialize(_) => {
                link.send(hello.initialize_request())?;
                let reply = match tokio::time::timeout(PROBE_TIMEOUT, &mut init_rx).await {
                    Ok(Ok(reply)) => super::initialize_result(&name, reply),
                    Ok(Err(_)) => {
                        // It exited on `initialize`: `Link::connect` starts it again.
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
                        link.send(Message::notification(methods::INITIALIZED, None))?;
                        return Ok((link, result));
                    }
                    Err(e) => {
                        // A child that refused `initialize` may be on its way out (SDKs end
                        // the connection): `Link::connect` starts a fresh one, spoken to as
                        // 2026-07-28 from the start.
                        tracing::debug!(upstream = %name, error = %e, "initialize refused; speaking MCP 2026-07-28");
                        upstream.set_accepts_initialize(false);
                        return Err(UpstreamError::Exited { upstream: name });
                    }
                }
            }
        };
        if let Some(discovered) = discovered {
            link.listen_for_changes(&stateless);
            link.stateless = Some(stateless);
            return Ok((link, discovered));
        }
        link.send(hello.initialize_request())?;
        let reply = init_rx.await.map_err(|_| UpstreamError::Exited {
            upstream: name.clone(),
        })?;
        let result = super::initialize_result(&name, reply)?;
        link.send(Message::notification(methods::INITIALIZED, None))?;
        Ok((link, result))
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Assigns an upstream id, registers the waiter and writes the request. The returned
    /// future resolves with the response.
    pub fn request(
        &self,
        msg: &mut Message,
        related: Option<Related>,
    ) -> (
        u64,
        impl Future<Output = Result<Message, UpstreamError>> + use<>,
    ) {
        if let Some(stateless) = &self.stateless {
            stateless.add_meta(msg);
        }
        let (id, rx) = self.pending.start(msg, related);
        let sent = self.send_bytes(msg.to_bytes());
        let name = self.name.clone();
        let fut = async move {
            sent?;
            rx.await
                .map_err(|_| UpstreamError::Exited { upstream: name })?
        };
        (id, fut)
    }

    /// Stops waiting for a request (after a timeout or cancellation).
    pub fn forget(&self, id: u64) {
        self.pending.remove(id);
    }

    pub fn send(&self, msg: Message) -> Result<(), UpstreamError> {
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

    fn send_bytes(&self, bytes: Vec<u8>) -> Result<(), UpstreamError> {
        if !self.is_alive() {
            return Err(UpstreamError::Exited {
                upstream: self.name.clone(),
            });
        }
        self.outbox.send(bytes).map_err(|_| UpstreamError::Exited {
            upstream: self.name.clone(),
        })
    }
}

/// The `io.modelcontextprotocol/subscriptionId` a 2026-07-28 server puts on what a listen
/// subscription carries.
fn subscription_id(msg: &Message) -> Option<&Value> {
    msg.params()?
        .get("_meta")?
        .get(methods::meta::SUBSCRIPTION_ID)
}
