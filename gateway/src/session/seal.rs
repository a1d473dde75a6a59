//! Sealed session ids (`[cluster] session-key`): the `Mcp-Session-Id` a client sees carries,
//! encrypted and authenticated with AES-256-GCM, what any replica needs to serve the session:
//! the negotiated version, the owner (the subject that opened it, when authn established
//! one), the client's capabilities and info, when it was issued, and the upstream sessions
//! of its Streamable HTTP upstreams (opened at `initialize`, before the id is minted). A
//! replica that does not hold the session opens the id and re-creates it
//! (`Sessions::get`); its links to those upstreams go on with the sealed upstream sessions,
//! without `initialize` (`Link::attach`).
//!
//! - Format: `ps1.` + base64url(nonce ‖ ciphertext ‖ tag), nonce random (96 bits), sealed by
//!   [`crate::seal::Keyring`] with this file's associated data.
//! - Rotation: sealed with the current key; opened with the current or any previous key.
//! - Bounded: the client's part is at most [`MAX_CLIENT`] bytes of JSON (client info is cut
//!   to its name, version and title; capabilities too large keep only their top-level
//!   names); each upstream session's id at most [`MAX_UPSTREAM_ID`] bytes and its
//!   capabilities at most [`MAX_UPSTREAM_CAPS`]; all of it at most [`MAX_SEALED`], so an id
//!   is at most [`MAX_ID`] bytes (about 4 KiB), and a longer header is refused before any
//!   decryption. An upstream session that does not fit stays with the replica that opened
//!   it (other replicas open their own, as without sealing), logged once per upstream.
//! - Anything that does not open (forged, tampered, an unknown key, expired, malformed) is
//!   "no such session": HTTP 404, like an unknown random id. Never logged with its content.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::seal::Keyring;
use crate::upstream::{Hello, UpstreamSession};

const PREFIX: &str = "ps1.";
/// Associated data: a sealed session id opens only as a session id.
const AAD: &[u8] = b"portcullis session id v1";
/// Most bytes of JSON the client's part (version, owner, capabilities, info, time) takes.
pub const MAX_CLIENT: usize = 1024;
/// Most bytes of JSON sealed into one id: the client's part and the upstream sessions.
pub const MAX_SEALED: usize = 3072;
/// Longest id header accepted for opening: exactly what [`MAX_SEALED`] seals to.
pub const MAX_ID: usize = PREFIX.len() + (12 + MAX_SEALED + 16).div_ceil(3) * 4;
/// Longest upstream session id sealed (longer ones stay with the replica that opened them).
pub const MAX_UPSTREAM_ID: usize = 256;
/// Most bytes of an upstream's capabilities sealed, reduced to what the gateway reads.
pub const MAX_UPSTREAM_CAPS: usize = 512;
/// Longest client-info string kept.
const MAX_INFO: usize = 128;

/// What a sealed id says.
#[derive(Debug, Clone)]
pub struct Opened {
    pub version: &'static str,
    pub owner: Option<String>,
    pub hello: Hello,
    /// Unix seconds.
    pub issued: u64,
    /// The upstream sessions opened at `initialize`, by upstream name.
    pub upstreams: Vec<(String, UpstreamSession)>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    /// Negotiated version.
    v: String,
    /// Owner subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    /// Client capabilities.
    c: Value,
    /// Client info.
    i: Value,
    /// Issued at, Unix seconds.
    t: u64,
    /// Upstream sessions (absent from ids sealed before they were carried).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    u: Vec<Upstream>,
}

/// One upstream session in an id.
#[derive(Serialize, Deserialize)]
struct Upstream {
    /// Upstream name.
    n: String,
    /// Its `Mcp-Session-Id`.
    s: String,
    /// Its negotiated version.
    v: String,
    /// Its capabilities.
    c: Value,
}

pub struct Sealer {
    keys: Keyring,
    lifetime: Duration,
    /// Ids ended here (DELETE), by a 128-bit hash, until they would expire anyway.
    ended: DashMap<[u8; 16], u64>,
    /// Upstreams whose sessions did not fit an id, already logged (configured names: few).
    warned: Mutex<HashSet<String>>,
}

/// Most ended ids remembered; past it, expired ones are swept, then the oldest half goes.
const MAX_ENDED: usize = 100_000;

fn digest(id: &str) -> [u8; 16] {
    use sha2::Digest as _;
    let full = sha2::Sha256::digest(id.as_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn clip(v: &Value) -> Option<Value> {
    let s = v.as_str()?;
    let mut end = s.len().min(MAX_INFO);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(Value::String(s[..end].to_string()))
}

fn json_len(v: &impl Serialize) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |t| t.len())
}

/// An upstream's capabilities as sealed: as they are when small; else only their shape
/// (objects and flags, no `experimental`, four levels deep), which is all the gateway reads
/// (which lists it has, `logging`, `tasks.list`, `tasks.requests.tools.call`). `None` when
/// even that is over [`MAX_UPSTREAM_CAPS`].
fn upstream_caps(c: &Value) -> Option<Value> {
    fn shape(v: &Value, depth: usize) -> Value {
        match v {
            Value::Bool(b) => Value::Bool(*b),
            Value::Object(m) if depth > 0 => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.len() <= 64 && *k != "experimental")
                    .take(16)
                    .map(|(k, v)| (k.clone(), shape(v, depth - 1)))
                    .collect(),
            ),
            _ => json!({}),
        }
    }
    if json_len(c) <= MAX_UPSTREAM_CAPS {
        return Some(c.clone());
    }
    let reduced = shape(c, 4);
    (json_len(&reduced) <= MAX_UPSTREAM_CAPS).then_some(reduced)
}

/// Whether a value can be sent back as an HTTP header as it is (visible ASCII).
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| (0x21..=0x7e).contains(&c))
}

impl Sealer {
    /// `keys[0]` seals; every key opens. `None` without keys.
    pub fn new(keys: &[[u8; 32]], lifetime: Duration) -> Option<Sealer> {
        Some(Sealer {
            keys: Keyring::new(keys)?,
            lifetime,
            ended: DashMap::new(),
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// A new session id for a session with these properties, carrying as many of
    /// `upstreams` (name, upstream session) as fit; gives the names of those left out.
    pub fn seal(
        &self,
        version: &str,
        hello: &Hello,
        owner: Option<&str>,
        upstreams: &[(&str, UpstreamSession)],
    ) -> (String, Vec<String>) {
        let mut info = Map::new();
        for key in ["name", "version", "title"] {
            if let Some(v) = hello.client_info.get(key).and_then(clip) {
                info.insert(key.into(), v);
            }
        }
        let mut body = Body {
            v: version.to_string(),
            o: owner.map(str::to_string),
            c: hello.capabilities.clone(),
            i: Value::Object(info),
            t: now(),
            u: Vec::new(),
        };
        if json_len(&body) > MAX_CLIENT {
            // Keep which capabilities the client has, not their details.
            body.c = match &hello.capabilities {
                Value::Object(m) => Value::Object(
                    m.keys()
                        .filter(|k| k.len() <= 64)
                        .take(16)
                        .map(|k| (k.clone(), json!({})))
                        .collect(),
                ),
                _ => json!({}),
            };
        }
        if json_len(&body) > MAX_CLIENT {
            body.o = body.o.map(|o| o.chars().take(256).collect());
            body.c = json!({});
        }
        let mut left_out = Vec::new();
        for (name, session) in upstreams {
            let entry = (session.id.len() <= MAX_UPSTREAM_ID && header_safe(&session.id))
                .then(|| upstream_caps(&session.capabilities))
                .flatten()
                .map(|c| Upstream {
                    n: name.to_string(),
                    s: session.id.clone(),
                    v: session.version.clone(),
                    c,
                });
            let Some(entry) = entry else {
                self.left_out(name, "its session id or capabilities are too long");
                left_out.push(name.to_string());
                continue;
            };
            body.u.push(entry);
            if json_len(&body) > MAX_SEALED {
                body.u.pop();
                self.left_out(name, "the session id has no room left for it");
                left_out.push(name.to_string());
            }
        }
        let text = serde_json::to_vec(&body).unwrap_or_default();
        (Keyring::text(PREFIX, &self.keys.seal(&text, AAD)), left_out)
    }

    /// Logs, once per upstream, that its sessions stay with the replica that opened them.
    fn left_out(&self, upstream: &str, why: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.insert(upstream.to_string()) {
            tracing::warn!(
                upstream,
                "upstream session not sealed into the session id ({why}): each replica opens its own (logged once)"
            );
        }
    }

    /// Remembers that `id` was ended (DELETE) here, until it would expire.
    pub fn end(&self, id: &str) {
        let Some(opened) = self.open(id) else { return };
        let until = opened.issued.saturating_add(self.lifetime.as_secs());
        if self.ended.len() >= MAX_ENDED {
            let t = now();
            self.ended.retain(|_, until| *until >= t);
        }
        if self.ended.len() >= MAX_ENDED {
            let mut untils: Vec<u64> = self.ended.iter().map(|e| *e.value()).collect();
            untils.sort_unstable();
            let cut = untils[untils.len() / 2];
            self.ended.retain(|_, until| *until > cut);
        }
        self.ended.insert(digest(id), until);
    }

    /// What `id` says, if it was sealed with one of the keys, has not expired and was not
    /// ended here.
    pub fn open(&self, id: &str) -> Option<Opened> {
        if id.len() > MAX_ID || self.ended.contains_key(&digest(id)) {
            return None;
        }
        let text = self.keys.open_text(PREFIX, MAX_ID, id, AAD)?;
        let body: Body = serde_json::from_slice(&text).ok()?;
        let age = now().saturating_sub(body.t);
        if age > self.lifetime.as_secs() {
            return None;
        }
        let version = crate::mcp::version::ALL
            .iter()
            .find(|v| **v == body.v)
            .copied()?;
        let upstreams = body
            .u
            .into_iter()
            .map(|u| {
                let session = UpstreamSession {
                    id: u.s,
                    version: u.v,
                    capabilities: u.c,
                };
                (u.n, session)
            })
            .collect();
        Some(Opened {
            version,
            owner: body.o,
            hello: Hello {
                capabilities: body.c,
                client_info: body.i,
            },
            issued: body.t,
            upstreams,
        })
    }

    /// Time left before an id issued at `issued` expires.
    pub fn remaining(&self, issued: u64) -> Duration {
        let end = issued.saturating_add(self.lifetime.as_secs());
        Duration::from_secs(end.saturating_sub(now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            capabilities: json!({ "roots": { "listChanged": true }, "sampling": {} }),
            client_info: json!({ "name": "agent", "version": "1.2", "icons": ["x"] }),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn an_id_opens_on_any_holder_of_the_key_and_nowhere_else() {
        let a = Sealer::new(&[[7; 32]], DAY).unwrap();
        let b = Sealer::new(&[[7; 32]], DAY).unwrap();
        let id = a.seal("2025-11-25", &hello(), Some("alice"), &[]).0;
        assert!(id.len() < 400, "{}", id.len());
        assert!(id.bytes().all(|c| (0x21..=0x7e).contains(&c)));
        let opened = b.open(&id).expect("opens");
        assert_eq!(opened.version, "2025-11-25");
        assert_eq!(opened.owner.as_deref(), Some("alice"));
        assert_eq!(opened.hello.capabilities, hello().capabilities);
        assert_eq!(
            opened.hello.client_info,
            json!({ "name": "agent", "version": "1.2" })
        );
        assert_ne!(
            id,
            a.seal("2025-11-25", &hello(), Some("alice"), &[]).0,
            "fresh nonce"
        );
        let other = Sealer::new(&[[8; 32]], DAY).unwrap();
        assert!(other.open(&id).is_none());
    }

    #[test]
    fn tampered_forged_and_random_ids_do_not_open() {
        let s = Sealer::new(&[[1; 32]], DAY).unwrap();
        let id = s.seal("2025-11-25", &hello(), None, &[]).0;
        let mut bytes = id.clone().into_bytes();
        let at = bytes.len() - 5;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        assert!(s.open(&String::from_utf8(bytes).unwrap()).is_none());
        assert!(s.open("0123456789abcdef0123456789abcdef").is_none());
        assert!(s.open("ps1.").is_none());
        assert!(s.open(&format!("ps1.{}", "A".repeat(5000))).is_none());
    }

    #[test]
    fn rotation_keeps_old_ids_and_seals_with_the_new_key() {
        let old = Sealer::new(&[[1; 32]], DAY).unwrap();
        let id = old.seal("2025-06-18", &hello(), None, &[]).0;
        let rotated = Sealer::new(&[[2; 32], [1; 32]], DAY).unwrap();
        assert_eq!(rotated.open(&id).unwrap().version, "2025-06-18");
        let new_id = rotated.seal("2025-06-18", &hello(), None, &[]).0;
        assert!(old.open(&new_id).is_none(), "sealed with the current key");
    }

    #[test]
    fn an_ended_id_does_not_open_again() {
        let s = Sealer::new(&[[1; 32]], DAY).unwrap();
        let id = s.seal("2025-11-25", &hello(), None, &[]).0;
        s.end(&id);
        assert!(s.open(&id).is_none());
        assert!(
            s.open(&s.seal("2025-11-25", &hello(), None, &[]).0)
                .is_some()
        );
    }

    #[test]
    fn expired_ids_do_not_open() {
        let s = Sealer::new(&[[1; 32]], Duration::ZERO).unwrap();
        let id = s.seal("2025-11-25", &hello(), None, &[]).0;
        // Issued this second; a lifetime of zero seconds ends with it.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(s.open(&id).is_none());
    }

    fn upstream(id: &str) -> UpstreamSession {
        UpstreamSession {
            id: id.to_string(),
            version: "2025-11-25".into(),
            capabilities: json!({ "tools": { "listChanged": true }, "logging": {} }),
        }
    }

    #[test]
    fn upstream_sessions_travel_in_the_id() {
        let a = Sealer::new(&[[7; 32]], DAY).unwrap();
        let b = Sealer::new(&[[7; 32]], DAY).unwrap();
        let sessions = [
            ("beta", upstream("3f9c2a77-1b0e-4d5c-9a61-0f3f5e2d8c11")),
            ("gamma", upstream("g-42")),
        ];
        let (id, left_out) = a.seal("2025-11-25", &hello(), Some("alice"), &sessions);
        assert!(left_out.is_empty(), "{left_out:?}");
        let opened = b.open(&id).expect("opens");
        let names: Vec<&str> = opened.upstreams.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["beta", "gamma"]);
        assert_eq!(opened.upstreams[0].1, sessions[0].1);
        assert_eq!(opened.upstreams[1].1, sessions[1].1);
        assert_eq!(opened.owner.as_deref(), Some("alice"));
    }

    #[test]
    fn an_id_sealed_before_upstream_sessions_were_carried_still_opens() {
        // What the previous version sealed: no `u`.
        let keys = Keyring::new(&[[5; 32]]).unwrap();
        let text = json!({ "v": "2025-11-25", "c": {}, "i": { "name": "old" }, "t": now() });
        let id = Keyring::text(PREFIX, &keys.seal(text.to_string().as_bytes(), AAD));
        let opened = Sealer::new(&[[5; 32]], DAY)
            .unwrap()
            .open(&id)
            .expect("opens");
        assert!(opened.upstreams.is_empty());
        assert_eq!(opened.hello.client_info["name"], "old");
    }

    #[test]
    fn upstream_sessions_that_do_not_fit_stay_out_and_the_id_stays_bounded() {
        let s = Sealer::new(&[[1; 32]], DAY).unwrap();
        let long = "x".repeat(MAX_UPSTREAM_ID + 1);
        let max = "y".repeat(MAX_UPSTREAM_ID);
        let mut sessions = vec![
            ("long", upstream(&long)),
            ("spaced", upstream("has a space")),
            ("max", upstream(&max)),
        ];
        let names: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
        for name in &names {
            sessions.push((name.as_str(), upstream(&"z".repeat(200))));
        }
        let (id, left_out) = s.seal("2025-11-25", &hello(), None, &sessions);
        assert!(id.len() <= MAX_ID, "{} > {MAX_ID}", id.len());
        assert!(left_out.contains(&"long".to_string()));
        assert!(left_out.contains(&"spaced".to_string()));
        assert!(!left_out.contains(&"max".to_string()));
        assert!(left_out.contains(&"u29".to_string()), "no room for all 30");
        let opened = s.open(&id).expect("opens");
        let carried: Vec<&str> = opened.upstreams.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(carried[0], "max");
        assert_eq!(carried.len() + left_out.len(), sessions.len());
        assert!(carried.iter().all(|n| !left_out.iter().any(|l| l == n)));
        // The largest id possible still opens; one byte more is refused unread.
        assert!(
            s.open(&format!("{id}{}", "A".repeat(MAX_ID + 1 - id.len())))
                .is_none()
        );
    }

    #[test]
    fn large_upstream_capabilities_keep_what_the_gateway_reads() {
        let s = Sealer::new(&[[1; 32]], DAY).unwrap();
        let mut caps = json!({
            "tools": { "listChanged": true },
            "logging": {},
            "tasks": { "list": {}, "requests": { "tools": { "call": {} } } },
            "experimental": { "big": "e".repeat(2000) },
        });
        caps["resources"] = json!({ "subscribe": true, "notes": "n".repeat(1000) });
        let big = UpstreamSession {
            capabilities: caps,
            ..upstream("s1")
        };
        let (id, left_out) = s.seal("2025-11-25", &hello(), None, &[("beta", big)]);
        assert!(left_out.is_empty());
        let c = &s.open(&id).unwrap().upstreams[0].1.capabilities;
        assert!(c.get("experimental").is_none(), "{c}");
        assert_eq!(c["tools"]["listChanged"], true);
        assert_eq!(c["resources"]["subscribe"], true);
        assert!(c["logging"].is_object() && c["tasks"]["list"].is_object());
        assert!(c["tasks"]["requests"]["tools"]["call"].is_object());

        // Capabilities whose shape alone is too large: the upstream stays out.
        let wide: Map<String, Value> = (0..16)
            .map(|i| (format!("{i:0>60}"), json!({ "a": {}, "b": {} })))
            .collect();
        let huge = UpstreamSession {
            capabilities: Value::Object(wide),
            ..upstream("s2")
        };
        let (id, left_out) = s.seal("2025-11-25", &hello(), None, &[("wide", huge)]);
        assert_eq!(left_out, ["wide"]);
        assert!(s.open(&id).unwrap().upstreams.is_empty());
    }

    #[test]
    fn huge_client_data_keeps_the_id_bounded() {
        let s = Sealer::new(&[[1; 32]], DAY).unwrap();
        let big: Map<String, Value> = (0..500)
            .map(|i| (format!("cap{i}"), json!({ "x": "y".repeat(100) })))
            .collect();
        let h = Hello {
            capabilities: Value::Object(big),
            client_info: json!({ "name": "n".repeat(10_000) }),
        };
        let id = s.seal("2025-11-25", &h, Some(&"o".repeat(10_000)), &[]).0;
        assert!(id.len() <= MAX_ID, "{}", id.len());
        assert!(s.open(&id).is_some());
    }
}

/// Cost of sealing and opening one id carrying one upstream session. Run with
/// `cargo test --workspace --lib seal_and_open_cost -- --ignored --nocapture` (add
/// `--release` for optimised numbers).
#[cfg(test)]
#[test]
#[ignore = "a measurement, not a check"]
fn seal_and_open_cost() {
    let s = Sealer::new(&[[3; 32], [4; 32]], Duration::from_secs(86_400)).unwrap();
    let hello = Hello {
        capabilities: json!({ "roots": { "listChanged": true }, "sampling": {}, "elicitation": {} }),
        client_info: json!({ "name": "claude-code", "version": "2.1.0" }),
    };
    // One HTTP upstream session carried, as with one session-era HTTP upstream.
    let upstream = UpstreamSession {
        id: "0933b7b9-2e3f-41d2-bad0-84d9c1352f95".into(),
        version: "2025-11-25".into(),
        capabilities: json!({ "tools": { "listChanged": true }, "prompts": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true }, "logging": {}, "completions": {} }),
    };
    let upstreams = [("beta", upstream)];
    let n = 20_000;
    let started = std::time::Instant::now();
    let ids: Vec<String> = (0..n)
        .map(|_| {
            s.seal("2025-11-25", &hello, Some("alice@example.com"), &upstreams)
                .0
        })
        .collect();
    let seal = started.elapsed() / n;
    let started = std::time::Instant::now();
    for id in &ids {
        assert!(s.open(id).is_some());
    }
    let open = started.elapsed() / n;
    println!(
        "seal {seal:?}/id, open {open:?}/id, id length {}",
        ids[0].len()
    );
}
