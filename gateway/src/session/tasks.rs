//! Tasks through the gateway: the tasks extension (`io.modelcontextprotocol/tasks`,
//! 2026-07-28) and the 2025-11-25 tasks utility.
//!
//! An upstream that creates a task answers with its own task id. The client never sees it:
//! it gets a *gateway task id* that seals (AES-256-GCM) the upstream's name and its task id,
//! bound to the task's owner — the client session (session era) or the caller (2026-07-28,
//! whose requests share one internal session per caller). So:
//!
//! - `tasks/get`, `tasks/update`, `tasks/cancel` (and 2025-11-25 `tasks/result`) reach the
//!   upstream that created the task, with its own id, on any replica holding the key
//!   (`[cluster] session-key`; without one, a key made at start-up) — nothing is stored;
//! - another session or caller cannot open the id: it is an unknown task (`-32602`), even
//!   when the upstream itself would serve anyone who knows its id;
//! - the upstream's ids are never shown to clients.
//!
//! Every place an upstream puts a task id on the way out is rewritten: `taskId` of a
//! `CreateTaskResult` (`resultType: "task"`), of a `tasks/*` result, of 2025-11-25's
//! `result.task` and `tasks/list` entries, of `notifications/tasks` and
//! `notifications/tasks/status`, and the `related-task` `_meta` of any message. The
//! client's `related-task` `_meta` is mapped back.

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::mcp::methods::{self, meta};
use crate::mcp::{Message, codes, version};
use crate::seal::{Keyring, derive};
use crate::upstream::Related;

const PREFIX: &str = "pt1.";
/// Longest upstream task id the gateway carries (an upstream with longer ids cannot have
/// its tasks reached through the gateway: the call that created one fails clearly).
pub const MAX_UPSTREAM_TASK_ID: usize = 256;
/// Longest gateway task id accepted for opening.
const MAX_ID: usize = 1024;
/// Most `tasks/list` pages read from one upstream.
const MAX_LIST_PAGES: usize = 10;

/// Seals and opens gateway task ids.
pub struct TaskIds {
    keys: Keyring,
    /// Secret that makes the nonce of an id: the same task gets the same id every time.
    nonce_key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Body {
    /// Upstream name.
    u: String,
    /// The upstream's task id.
    t: String,
}

/// The associated data binding an id to its owner.
fn aad(owner: &str) -> Vec<u8> {
    let mut aad = b"portcullis task id v1:".to_vec();
    aad.extend_from_slice(&sha2::Sha256::digest(owner.as_bytes()));
    aad
}

impl TaskIds {
    /// Ids that open only in this process (no `[cluster] session-key`).
    pub fn random() -> Self {
        TaskIds {
            keys: Keyring::random(),
            nonce_key: rand::random(),
        }
    }

    /// Ids every replica holding the session keys opens (`keys[0]` seals); `None` without
    /// keys.
    pub fn from_session_keys(keys: &[[u8; 32]]) -> Option<Self> {
        // A key for task ids derived from each session key, so one key never serves two
        // purposes.
        let derived: Vec<[u8; 32]> = keys
            .iter()
            .map(|k| derive(k, b"portcullis task id key v1"))
            .collect();
        Some(TaskIds {
            keys: Keyring::new(&derived)?,
            nonce_key: derive(keys.first()?, b"portcullis task id nonce v1"),
        })
    }

    /// The gateway id of `task` at `upstream`, for `owner`; `None` when the upstream's id is
    /// longer than [`MAX_UPSTREAM_TASK_ID`].
    pub fn seal(&self, owner: &str, upstream: &str, task: &str) -> Option<String> {
        if task.len() > MAX_UPSTREAM_TASK_ID {
            return None;
        }
        let body = Body {
            u: upstream.to_string(),
            t: task.to_string(),
        };
        let text = serde_json::to_vec(&body).ok()?;
        let aad = aad(owner);
        // Synthetic nonce (as AES-GCM-SIV does): a keyed hash of everything sealed, so one
        // task always gets one id (clients match `tasks/get` answers and status
        // notifications to it), while different plaintexts never share a nonce.
        let mut h = sha2::Sha256::new();
        h.update(self.nonce_key);
        h.update(&aad);
        h.update(&text);
        let digest: [u8; 32] = h.finalize().into();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&digest[..12]);
        let raw = self.keys.seal_with_nonce(nonce, &text, &aad);
        Some(Keyring::text(PREFIX, &raw))
    }

    /// (upstream name, its task id) of a gateway id sealed for `owner`; `None` for anything
    /// else (another owner's, forged, malformed).
    pub fn open(&self, owner: &str, id: &str) -> Option<(String, String)> {
        let text = self.keys.open_text(PREFIX, MAX_ID, id, &aad(owner))?;
        let body: Body = serde_json::from_slice(&text).ok()?;
        Some((body.u, body.t))
    }
}

/// Methods whose `params.taskId` names a task the client got from the gateway.
pub(super) fn addresses_task(method: &str) -> bool {
    matches!(
        method,
        methods::TASKS_GET | methods::TASKS_UPDATE | methods::TASKS_CANCEL | methods::TASKS_RESULT
    )
}

/// Whether a client's capabilities declare the tasks extension.
fn declares_extension(capabilities: Option<&Value>) -> bool {
    capabilities
        .and_then(|c| c.get("extensions"))
        .and_then(|e| e.get(methods::TASKS_EXTENSION))
        .is_some()
}

/// The `-32021` answer for a client that did not declare the extension.
fn missing_extension(id: Value, method: &str) -> Message {
    Message::error(
        id,
        codes::MISSING_REQUIRED_CLIENT_CAPABILITY,
        &format!(
            "{method} needs the client capability extensions[\"{}\"]",
            methods::TASKS_EXTENSION
        ),
        Some(json!({ "requiredCapabilities": { "extensions": { methods::TASKS_EXTENSION: {} } } })),
    )
}

fn unknown_task(id: Value) -> Message {
    Message::error(id, codes::INVALID_PARAMS, "Unknown task", None)
}

impl Session {
    /// Who owns the tasks this session creates: the session itself, or for a 2026-07-28
    /// caller (one internal session per caller) the caller.
    fn task_owner(&self) -> String {
        if self.version == version::STATELESS {
            format!("caller:{}", self.owner.get().map_or("", String::as_str))
        } else {
            format!("session:{}", self.id)
        }
    }

    /// The gateway id of upstream `idx`'s task `task`.
    fn seal_task(&self, idx: usize, task: &str) -> Option<String> {
        self.task_ids
            .seal(&self.task_owner(), &self.slots[idx].upstream.name, task)
    }

    /// (upstream index, its task id) of a gateway task id this session's owner holds.
    pub(super) fn open_task(&self, id: &str) -> Option<(usize, String)> {
        let (upstream, task) = self.task_ids.open(&self.task_owner(), id)?;
        let idx = self
            .slots
            .iter()
            .position(|s| *s.upstream.name == *upstream)?;
        Some((idx, task))
    }

    /// `tasks/get`, `tasks/update`, `tasks/cancel`, `tasks/result`: to the upstream that
    /// created the task, under its own id. A 2026-07-28 request must declare the extension
    /// (`-32021` otherwise, before anything else); 2025-11-25's `tasks/result` does not exist
    /// for it. An id this owner does not hold is an unknown task (`-32602`).
    pub(super) async fn task_request(&self, mut msg: Message, out: Related) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let method = msg.method().to_string();
        if self.version == version::STATELESS {
            if method == methods::TASKS_RESULT {
                return Message::error(
                    id,
                    codes::METHOD_NOT_FOUND,
                    "Method not found: tasks/result (the tasks extension inlines the result in tasks/get)",
                    None,
                );
            }
            let declared = msg
                .params()
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get(meta::CLIENT_CAPABILITIES));
            if !declares_extension(declared) {
                return missing_extension(id, &method);
            }
        }
        let Some((idx, task)) = msg.param_str("taskId").and_then(|t| self.open_task(t)) else {
            return unknown_task(id);
        };
        msg.params_mut()
            .insert("taskId".into(), Value::String(task));
        self.forward(idx, msg, out).await
    }

    /// 2025-11-25 `tasks/list`: the tasks of every upstream this session is connected to
    /// that lists tasks, merged (each upstream's first [`MAX_LIST_PAGES`] pages; no cursor).
    /// Upstreams that fail are left out and logged.
    pub(super) async fn task_list(&self, msg: &Message) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        if self.version == version::STATELESS {
            return Message::error(
                id,
                codes::METHOD_NOT_FOUND,
                "Method not found: tasks/list (not part of the tasks extension)",
                None,
            );
        }
        let parts = (0..self.slots.len()).map(|idx| async move {
            let link = self.slots[idx].current().await?;
            link.capabilities().get("tasks")?.get("list")?;
            let mut tasks = Vec::new();
            let mut cursor: Option<Value> = None;
            for _ in 0..MAX_LIST_PAGES {
                let params = cursor.take().map(|c| json!({ "cursor": c }));
                let request = Message::request(json!(0), methods::TASKS_LIST, params);
                let mut response = match link
                    .request(request, None, &CancellationToken::new())
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(upstream = %link.upstream.name, error = %e, "tasks/list failed; left out");
                        break;
                    }
                };
                let Some(mut result) = response.take_result() else {
                    tracing::warn!(upstream = %link.upstream.name, "tasks/list answered an error; left out");
                    break;
                };
                if let Some(Value::Array(page)) = result.get_mut("tasks").map(Value::take) {
                    tasks.extend(page.into_iter().filter_map(|mut t| {
                        let sealed = self.seal_task(idx, t.get("taskId")?.as_str()?)?;
                        t["taskId"] = Value::String(sealed);
                        Some(t)
                    }));
                }
                match result.get("nextCursor") {
                    Some(c @ Value::String(_)) => cursor = Some(c.clone()),
                    _ => break,
                }
            }
            Some(tasks)
        });
        let tasks: Vec<Value> = join_all(parts)
            .await
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        Message::result(id, json!({ "tasks": tasks }))
    }

    /// Rewrites the task ids in upstream `idx`'s answer to `method` into gateway ids. An id
    /// that cannot be carried turns the answer into an error naming the upstream.
    pub(super) fn expose_tasks(&self, idx: usize, method: &str, response: &mut Message) {
        let Some(result) = response.result_mut().and_then(Value::as_object_mut) else {
            return;
        };
        let mut ok = true;
        let mut seal = |v: &mut Value| {
            if let Some(task) = v.as_str() {
                match self.seal_task(idx, task) {
                    Some(sealed) => *v = Value::String(sealed),
                    None => ok = false,
                }
            }
        };
        let task_bearing = method == methods::TOOLS_CALL || method.starts_with("tasks/");
        if task_bearing {
            let creates = result.get("resultType").and_then(Value::as_str) == Some("task");
            if (creates || addresses_task(method))
                && let Some(v) = result.get_mut("taskId")
            {
                seal(v);
            }
            // 2025-11-25: `CreateTaskResult` is `{ task: Task }`.
            if let Some(v) = result.get_mut("task").and_then(|t| t.get_mut("taskId")) {
                seal(v);
            }
        }
        if let Some(v) = result
            .get_mut("_meta")
            .and_then(|m| m.get_mut(meta::RELATED_TASK))
            .and_then(|r| r.get_mut("taskId"))
        {
            seal(v);
        }
        if !ok {
            let id = response.id().cloned().unwrap_or(Value::Null);
            *response = Message::error(
                id,
                codes::INTERNAL_ERROR,
                &format!(
                    "upstream '{}' gave a task id longer than {MAX_UPSTREAM_TASK_ID} bytes, which the gateway does not carry",
                    self.slots[idx].upstream.name
                ),
                Some(json!({ "upstream": &*self.slots[idx].upstream.name })),
            );
        }
    }

    /// Rewrites the task ids in a notification or request upstream `idx` sends (status
    /// notifications, `related-task` `_meta`). `false`: an id cannot be carried (the message
    /// is dropped).
    pub(super) fn expose_task_refs(&self, idx: usize, msg: &mut Message) -> bool {
        let status = matches!(
            msg.method(),
            methods::TASK_STATUS | methods::TASK_STATUS_EXTENSION
        );
        if msg.params().is_none() {
            return true;
        }
        let params = msg.params_mut();
        let mut ok = true;
        let mut seal = |v: &mut Value| {
            if let Some(task) = v.as_str() {
                match self.seal_task(idx, task) {
                    Some(sealed) => *v = Value::String(sealed),
                    None => ok = false,
                }
            }
        };
        if status && let Some(v) = params.get_mut("taskId") {
            seal(v);
        }
        if let Some(v) = params
            .get_mut("_meta")
            .and_then(|m| m.get_mut(meta::RELATED_TASK))
            .and_then(|r| r.get_mut("taskId"))
        {
            seal(v);
        }
        ok
    }

    /// Maps a `related-task` `_meta` in a client's answer back to the upstream's id (the
    /// answer goes to upstream `idx`). An id this owner does not hold is left as it is.
    pub(super) fn reveal_task_refs(&self, idx: usize, msg: &mut Message) {
        let Some(v) = msg
            .result_mut()
            .and_then(|r| r.get_mut("_meta"))
            .and_then(|m| m.get_mut(meta::RELATED_TASK))
            .and_then(|r| r.get_mut("taskId"))
        else {
            return;
        };
        if let Some((at, task)) = v.as_str().and_then(|t| self.open_task(t))
            && at == idx
        {
            *v = Value::String(task);
        }
    }

    /// A 2025-11-25 task-augmented call (`params.task`) to an upstream that does not declare
    /// task-augmented `tools/call`: the augmentation is dropped and the call runs as a
    /// plain one (what the spec tells such a receiver to do), so the client gets the
    /// result itself.
    pub(super) fn drop_unsupported_task(capabilities: &Value, msg: &mut Message) {
        if msg.method() != methods::TOOLS_CALL || msg.params().and_then(|p| p.get("task")).is_none()
        {
            return;
        }
        let supported = capabilities
            .get("tasks")
            .and_then(|t| t.get("requests"))
            .and_then(|r| r.get("tools"))
            .and_then(|t| t.get("call"))
            .is_some();
        if !supported {
            msg.params_mut().remove("task");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_opens_for_its_owner_only() {
        let ids = TaskIds::random();
        let id = ids.seal("session:a", "alpha", "task-1").unwrap();
        assert!(id.starts_with(PREFIX));
        assert_eq!(
            ids.seal("session:a", "alpha", "task-1").unwrap(),
            id,
            "stable"
        );
        assert_ne!(ids.seal("session:b", "alpha", "task-1").unwrap(), id);
        assert_ne!(ids.seal("session:a", "alpha", "task-2").unwrap(), id);
        assert!(!id.contains("task-1") && !id.contains("alpha"));
        assert_eq!(
            ids.open("session:a", &id),
            Some(("alpha".to_string(), "task-1".to_string()))
        );
        assert_eq!(ids.open("session:b", &id), None);
        assert_eq!(TaskIds::random().open("session:a", &id), None);
        let mut tampered = id.clone();
        tampered.pop();
        assert_eq!(ids.open("session:a", &tampered), None);
        assert_eq!(ids.open("session:a", "task-1"), None);
    }

    #[test]
    fn replicas_with_the_session_key_open_each_others_ids_and_rotation_keeps_old_ones() {
        let a = TaskIds::from_session_keys(&[[1; 32]]).unwrap();
        let b = TaskIds::from_session_keys(&[[2; 32], [1; 32]]).unwrap();
        let id = a.seal("caller:alice", "alpha", "t").unwrap();
        assert_eq!(
            b.open("caller:alice", &id),
            Some(("alpha".to_string(), "t".to_string()))
        );
        assert!(TaskIds::from_session_keys(&[]).is_none());
    }

    #[test]
    fn long_upstream_ids_are_not_carried() {
        let ids = TaskIds::random();
        assert!(
            ids.seal("o", "u", &"x".repeat(MAX_UPSTREAM_TASK_ID))
                .is_some()
        );
        assert!(
            ids.seal("o", "u", &"x".repeat(MAX_UPSTREAM_TASK_ID + 1))
                .is_none()
        );
    }

    #[test]
    fn a_plain_call_to_an_upstream_without_task_support_loses_its_task_param() {
        let call = || {
            Message::request(
                json!(1),
                methods::TOOLS_CALL,
                Some(json!({ "name": "t", "task": { "ttl": 1000 } })),
            )
        };
        let mut msg = call();
        Session::drop_unsupported_task(&json!({ "tools": {} }), &mut msg);
        assert!(msg.params().unwrap().get("task").is_none());
        let mut msg = call();
        let v1 = json!({ "tasks": { "requests": { "tools": { "call": {} } } } });
        Session::drop_unsupported_task(&v1, &mut msg);
        assert!(msg.params().unwrap().get("task").is_some());
    }
}
