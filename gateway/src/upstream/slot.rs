//! A client session's place for one upstream: the link, created on first use and re-created
//! (with backoff) after the upstream crashed or could not be reached.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Hello, InboundHandler, Link, Upstream, UpstreamError, UpstreamSession};

/// First retry delay after a failure; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A link that lived this long before dying resets the backoff: it was not a crash loop.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(60);

pub struct Slot {
    pub upstream: Arc<Upstream>,
    /// The client speaks the session era (it may get a session-era link where a 2026-07-28
    /// client would not: `stateless::choose_era`).
    session_client: bool,
    state: Mutex<State>,
}

/// Whether [`Slot::get`] made a new link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// The link already existed.
    No,
    /// The first link of this slot.
    First,
    /// A replacement for a link that died: whatever the client had cached is stale.
    Restarted,
}

#[derive(Default)]
struct State {
    link: Option<(Arc<Link>, Instant)>,
    connected_before: bool,
    failures: u32,
    retry_at: Option<Instant>,
    /// An upstream session another replica opened for this client session (sealed into
    /// its id): the first link attaches to it instead of initializing.
    resume: Option<UpstreamSession>,
}

impl Slot {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Self::for_client(upstream, true)
    }

    /// A slot for a client of the session era (`session_client`) or of 2026-07-28.
    pub fn for_client(upstream: Arc<Upstream>, session_client: bool) -> Self {
        Slot {
            upstream,
            session_client,
            state: Mutex::new(State::default()),
        }
    }

    /// This slot's first link goes on with `session` (opened by another replica) rather
    /// than initializing one.
    pub fn resuming(mut self, session: UpstreamSession) -> Self {
        self.state.get_mut().resume = Some(session);
        self
    }

    /// Makes `link`, connected already (at the client's `initialize`), this slot's link.
    pub async fn install(&self, link: Arc<Link>) {
        let mut st = self.state.lock().await;
        st.link = Some((link, Instant::now()));
        st.connected_before = true;
    }

    /// The client ended its session: the upstream session ends with this slot's link, even
    /// one sealed into the client's session id (see [`Link::keep_open`]), and even when this
    /// replica never used it. Does not wait for a connect in progress.
    pub fn end(&self, hello: &Hello, handler: Weak<dyn InboundHandler>) {
        let Ok(mut st) = self.state.try_lock() else {
            return;
        };
        if let Some((link, _)) = &st.link {
            link.keep_open(false);
        } else if let Some(resumed) = st.resume.take()
            && let Ok(link) = Link::attach(&self.upstream, hello, handler, &resumed)
        {
            // Dropped at once: its upstream session is ended.
            link.keep_open(false);
        }
    }

    /// The live link, if one exists, without connecting.
    pub async fn current(&self) -> Option<Arc<Link>> {
        let st = self.state.lock().await;
        st.link
            .as_ref()
            .filter(|(l, _)| l.is_alive())
            .map(|(l, _)| l.clone())
    }

    /// The live link, connecting (or restarting) it if needed. The lock is per session and
    /// upstream, so concurrent first calls share one attempt.
    pub async fn get(
        &self,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
    ) -> Result<(Arc<Link>, Fresh), UpstreamError> {
        let mut st = self.state.lock().await;
        if let Some((link, started)) = &st.link {
            if link.is_alive() {
                return Ok((link.clone(), Fresh::No));
            }
            // It died: count a crash unless it had been running stably.
            let lived = started.elapsed();
            st.failures = if lived >= STABLE_AFTER {
                1
            } else {
                st.failures + 1
            };
            st.retry_at = Some(Instant::now() + backoff(st.failures).saturating_sub(lived));
            st.link = None;
        }
        if let Some(at) = st.retry_at
            && Instant::now() < at
        {
            return Err(UpstreamError::Unavailable {
                upstream: self.upstream.name.clone(),
                reason: format!(
                    "restarting after a failure; next attempt in {} ms",
                    (at - Instant::now()).as_millis()
                ),
            });
        }
        if !st.connected_before
            && let Some(resumed) = st.resume.take()
        {
            match Link::attach(&self.upstream, hello, handler.clone(), &resumed) {
                Ok(link) => {
                    tracing::info!(upstream = %self.upstream.name, protocol = %resumed.version, "upstream session resumed from the sealed session id");
                    st.link = Some((link.clone(), Instant::now()));
                    st.connected_before = true;
                    return Ok((link, Fresh::First));
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.upstream.name, error = %e, "sealed upstream session not resumed; opening a new one");
                }
            }
        }
        match Link::connect(&self.upstream, hello, handler, self.session_client).await {
            Ok(link) => {
                if st.failures > 0 {
                    tracing::info!(upstream = %self.upstream.name, "upstream reconnected");
                }
                st.failures = 0;
                st.retry_at = None;
                st.link = Some((link.clone(), Instant::now()));
                let fresh = if st.connected_before {
                    Fresh::Restarted
                } else {
                    Fresh::First
                };
                st.connected_before = true;
                Ok((link, fresh))
            }
            // The gateway's own cap, not a failure of the upstream: no backoff, so the
            // session gets a child as soon as another session lets one go.
            // Nor is a caller without a credential (token exchange): the next request of
            // this session may bring one.
            Err(e @ (UpstreamError::TooManyChildren { .. } | UpstreamError::Credential { .. })) => {
                Err(e)
            }
            Err(e) => {
                st.failures += 1;
                st.retry_at = Some(Instant::now() + backoff(st.failures));
                tracing::warn!(upstream = %self.upstream.name, error = %e, failures = st.failures, "upstream connect failed");
                Err(e)
            }
        }
    }
}

pub(super) fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
