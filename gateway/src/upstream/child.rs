//! A stdio upstream's child process: spawned with a clean environment in its own process
//! group, dying with the gateway, reaped as soon as it exits, its stderr in the gateway's
//! log. What runs over its stdin and stdout is `stdio.rs`.

use std::process::Stdio;
use std::sync::Arc;

use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use tokio::io::BufReader;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::bounds::{self, Line};
use super::{Upstream, UpstreamError};

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

/// A child just spawned: the process, its pipes, and its `max-children` permit.
pub(super) struct Spawned {
    pub(super) child: Box<dyn ChildWrapper>,
    /// Held until the child is reaped: `max-children` counts processes, not links.
    pub(super) child_slot: OwnedSemaphorePermit,
    pub(super) stdin: ChildStdin,
    pub(super) stdout: ChildStdout,
    pub(super) stderr: ChildStderr,
}

/// Takes a `max-children` permit and spawns the configured command: in its own process
/// group, with a cleared environment (only [`INHERITED_ENV`] and the upstream's `env`), piped
/// stdio, and `PR_SET_PDEATHSIG` so it dies with the gateway.
pub(super) fn spawn(upstream: &Upstream) -> Result<Spawned, UpstreamError> {
    let cfg = &upstream.config;
    let name = &upstream.name;
    let program = cfg.command.as_deref().unwrap_or_default();
    let spawn_err = |reason: String| UpstreamError::Spawn {
        upstream: name.clone(),
        reason,
    };
    let Ok(child_slot) = upstream.child_slots.clone().try_acquire_owned() else {
        let limit = cfg.max_children();
        tracing::warn!(upstream = %name, limit, "stdio upstream at max-children; refused a new child process");
        return Err(UpstreamError::TooManyChildren {
            upstream: name.clone(),
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
    tracing::info!(upstream = %name, pid = child.id().unwrap_or_default(), "started stdio upstream");
    Ok(Spawned {
        child,
        child_slot,
        stdin,
        stdout,
        stderr,
    })
}

/// The exit watcher (reaper): waits for the child to exit, so there is never a zombie. It
/// kills the child when `stop` is cancelled (the link was dropped), or when `closed` is (the
/// child closed its stdout) and it does not exit within [`EXIT_GRACE`]. Then `on_exit` runs.
/// The task is tracked on the upstream, so shutdown can wait for every child to be reaped.
pub(super) fn watch_exit(
    upstream: &Upstream,
    mut child: Box<dyn ChildWrapper>,
    child_slot: OwnedSemaphorePermit,
    stop: CancellationToken,
    closed: CancellationToken,
    on_exit: impl FnOnce() + Send + 'static,
) {
    let name = upstream.name.clone();
    let pid = child.id().unwrap_or_default();
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
        on_exit();
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

/// The stderr task: the child's stderr into the gateway's log, line by line, tagged with the
/// upstream's name; a line longer than [`MAX_STDERR_LINE`] is cut.
pub(super) fn log_stderr(name: Arc<str>, stderr: ChildStderr) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            let cut = match bounds::read_line(&mut reader, &mut line, MAX_STDERR_LINE).await {
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
