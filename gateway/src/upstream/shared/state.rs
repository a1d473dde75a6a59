//! What a shared child holds for all its sessions — its log level and its resource
//! subscriptions — kept per session and passed to the child only when the child must change
//! what it does (the most verbose level asked for; a URI subscribed while any session is).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::link::SharedLink;
use super::{MAX_SESSION_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS};
use crate::mcp::{Message, codes, methods};
use crate::upstream::UpstreamError;

/// Severity rank of an MCP log level: `debug` 0 … `emergency` 7.
pub(super) fn level_rank(level: &str) -> Option<u8> {
    LEVELS.iter().position(|l| *l == level).map(|r| r as u8)
}

pub(super) fn level_name(rank: u8) -> Option<&'static str> {
    LEVELS.get(rank as usize).copied()
}

const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

impl SharedLink {
    /// Whether `msg` changes state the child holds for all its sessions (handled by
    /// [`SharedLink::session_state`] instead of being forwarded as it is).
    pub(super) fn is_session_state(&self, msg: &Message) -> bool {
        match msg.method() {
            methods::LOGGING_SET_LEVEL => true,
            methods::RESOURCES_SUBSCRIBE | methods::RESOURCES_UNSUBSCRIBE => !self.is_stateless(),
            _ => false,
        }
    }

    /// `logging/setLevel`, `resources/subscribe`, `resources/unsubscribe` for this session:
    /// recorded here, and passed to the child only when they change what the child must do.
    pub(super) async fn session_state(
        &self,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let _changing = self.hub.changes.lock().await;
        if msg.method() == methods::LOGGING_SET_LEVEL {
            return self.set_level(id, &msg, timeout).await;
        }
        let Some(uri) = msg.param_str("uri").map(str::to_string) else {
            return Ok(Message::error(
                id,
                codes::INVALID_PARAMS,
                "missing \"uri\"",
                None,
            ));
        };
        let mut answer = if msg.method() == methods::RESOURCES_SUBSCRIBE {
            self.subscribe(id.clone(), uri, msg, timeout).await?
        } else {
            self.unsubscribe(id.clone(), uri, msg, timeout).await?
        };
        answer.set_id(id);
        Ok(answer)
    }

    /// This session's level; the child is told the most verbose level any session asked for.
    async fn set_level(
        &self,
        id: Value,
        msg: &Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let hub = &self.hub;
        let Some(rank) = msg.param_str("level").and_then(level_rank) else {
            return Ok(Message::error(
                id,
                codes::INVALID_PARAMS,
                "\"level\" must be one of debug, info, notice, warning, error, critical, alert, emergency",
                None,
            ));
        };
        let tell = {
            let mut routes = hub.routes();
            if let Some(m) = routes.sessions.get_mut(&self.key) {
                m.level = Some(rank);
            }
            let min = routes.sessions.values().filter_map(|m| m.level).min();
            min.filter(|m| Some(*m) != routes.child_level)
        };
        let Some(level) = tell else {
            return Ok(Message::result(id, json!({})));
        };
        let set = Message::request(
            Value::Null,
            methods::LOGGING_SET_LEVEL,
            Some(json!({ "level": level_name(level) })),
        );
        if self.is_stateless() {
            // Becomes the child-wide `_meta` log level.
            self.answer_locally(&set);
            hub.routes().child_level = Some(level);
            return Ok(Message::result(id, json!({})));
        }
        let mut answer = hub.ask_child(set, timeout).await?;
        if !answer.is_error() {
            hub.routes().child_level = Some(level);
        }
        answer.set_id(id);
        Ok(answer)
    }

    /// Subscribes this session to `uri`; the child is asked only by the first subscriber.
    async fn subscribe(
        &self,
        id: Value,
        uri: String,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let hub = &self.hub;
        {
            let routes = hub.routes();
            if routes
                .subscriptions
                .get(&uri)
                .is_some_and(|s| s.contains(&self.key))
            {
                return Ok(Message::result(id, json!({})));
            }
            let held = routes
                .sessions
                .get(&self.key)
                .map_or(0, |m| m.subscriptions);
            if held >= MAX_SESSION_SUBSCRIPTIONS
                || (!routes.subscriptions.contains_key(&uri)
                    && routes.subscriptions.len() >= MAX_SUBSCRIPTIONS)
            {
                return Ok(Message::error(
                    id,
                    codes::INVALID_REQUEST,
                    &format!(
                        "too many resource subscriptions on shared upstream '{}'",
                        hub.name
                    ),
                    None,
                ));
            }
        }
        let first = !hub.routes().subscriptions.contains_key(&uri);
        let mut answer = if first {
            let answer = hub.ask_child(msg, timeout).await?;
            if answer.is_error() {
                return Ok(answer);
            }
            answer
        } else {
            Message::result(id, json!({}))
        };
        let mut routes = hub.routes();
        if routes.sessions.contains_key(&self.key) {
            routes
                .subscriptions
                .entry(uri)
                .or_default()
                .insert(self.key);
            if let Some(m) = routes.sessions.get_mut(&self.key) {
                m.subscriptions += 1;
            }
        }
        drop(routes);
        // The result of the first subscriber's request is what every one gets.
        if let Some(r) = answer.result_mut()
            && !r.is_object()
        {
            *r = json!({});
        }
        Ok(answer)
    }

    /// Unsubscribes this session from `uri`; the child is told only when it was the last.
    async fn unsubscribe(
        &self,
        id: Value,
        uri: String,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let hub = &self.hub;
        let last = {
            let mut routes = hub.routes();
            let held = routes
                .subscriptions
                .get_mut(&uri)
                .is_some_and(|s| s.remove(&self.key));
            if held && let Some(m) = routes.sessions.get_mut(&self.key) {
                m.subscriptions = m.subscriptions.saturating_sub(1);
            }
            let empty = routes
                .subscriptions
                .get(&uri)
                .is_some_and(BTreeSet::is_empty);
            if empty {
                routes.subscriptions.remove(&uri);
            }
            held && empty
        };
        if !last {
            return Ok(Message::result(id, json!({})));
        }
        hub.ask_child(msg, timeout).await
    }
}
