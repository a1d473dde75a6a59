//! Listening streams: an SSE stream an HTTP link keeps open for what the upstream sends on
//! its own initiative — the GET stream of a session-era upstream, `subscriptions/listen` of
//! a 2026-07-28 one — reconnecting with backoff until the link closes.
//!
//! A stream that ends or fails is opened again after a backoff that starts at 250 ms and
//! doubles up to [`MAX_BACKOFF`]; one that opened resets it. A stream that broke the SSE
//! event bound is logged as the breach and waits the longest, so a hostile upstream costs
//! little. Why a stream could not be opened is logged at debug level, with the cause (also
//! when a token-exchange upstream got no credential for the caller: retried the same way).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use crate::mcp::Message;
use crate::upstream::{InboundHandler, Upstream, bounds};

/// Longest wait before a listening stream is opened again; also the wait after a stream
/// broke a bound.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What the upstream's answer to opening a stream means.
pub(super) enum Opened {
    /// A stream: read it.
    Stream,
    /// Refused for now: try again later.
    Retry,
    /// Refused for good (no such stream, or its session is gone): stop listening.
    Stop,
}

/// One listening stream of a link.
pub(super) struct Listen<Open> {
    pub(super) upstream: Arc<Upstream>,
    pub(super) handler: Weak<dyn InboundHandler>,
    /// Names the stream in the log: "GET stream", "subscriptions/listen".
    pub(super) what: &'static str,
    /// The request that opens it, given the id of the last event seen (`Last-Event-ID`).
    pub(super) open: Open,
    /// What the upstream's answer means.
    pub(super) opened: fn(&reqwest::Response) -> Opened,
    /// Which of its messages reach the session (with no related request).
    pub(super) keep: fn(&Message) -> bool,
}

impl<Open> Listen<Open>
where
    Open: Fn(Option<&str>) -> Option<reqwest::RequestBuilder> + Send + 'static,
{
    /// Keeps the stream open until the returned task is aborted or the session is gone.
    pub(super) fn spawn(self) -> tokio::task::AbortHandle {
        tokio::spawn(self.run()).abort_handle()
    }

    async fn run(self) {
        let Listen {
            upstream,
            handler,
            what,
            open,
            opened,
            keep,
        } = self;
        let mut last_event: Option<String> = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(req) = open(last_event.as_deref()) else {
                return;
            };
            // A token-exchange upstream takes the caller's credential on every request.
            let sent = match crate::upstream::credential::authorize(&upstream, &handler, req).await
            {
                Ok(req) => req.send().await,
                Err(e) => {
                    tracing::debug!(upstream = %upstream.name, error = %e, "{what} not opened");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            match sent {
                Ok(resp) => match opened(&resp) {
                    Opened::Stream => {
                        backoff = FIRST_BACKOFF;
                        let body = http::Response::from(resp).into_body();
                        let mut events = bounds::sse_events(&upstream, body);
                        while let Some(event) = events.next().await {
                            let event = match event {
                                Ok(e) => e,
                                Err(e) => {
                                    if bounds::is_breach(&e) {
                                        // Logged; a stream that does it again waits longest.
                                        let _ = bounds::sse_failure(&upstream, &e);
                                        backoff = MAX_BACKOFF;
                                        crate::memory::give_back(events);
                                    }
                                    break;
                                }
                            };
                            if event.id.is_some() {
                                last_event = event.id.clone();
                            }
                            let Some(m) = super::event_message(&upstream, event) else {
                                continue;
                            };
                            if !keep(&m) {
                                continue;
                            }
                            match handler.upgrade() {
                                Some(h) => h.on_message(&upstream, m, None),
                                None => return,
                            }
                        }
                    }
                    Opened::Retry => {
                        tracing::debug!(upstream = %upstream.name, status = %resp.status(), "{what} refused")
                    }
                    Opened::Stop => {
                        tracing::debug!(upstream = %upstream.name, status = %resp.status(), "{what} refused");
                        return;
                    }
                },
                Err(e) => {
                    tracing::debug!(upstream = %upstream.name, error = %super::cause(e), "{what} failed")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
