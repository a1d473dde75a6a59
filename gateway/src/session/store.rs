//! The session store: every client session of this process, the bounds on how many, and
//! the stateless (2026-07-28) callers' internal sessions.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;

use super::stream::EventStream;
use super::{STANDALONE_STREAM, Screen, Session, TaskIds, opening, seal};
use crate::catalog::{Names, Router};
use crate::upstream::{Hello, Slot, Upstream, UpstreamSession};

/// Why no session was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max-sessions` sessions are open.
    Full,
    /// This caller has `max-sessions-per-caller` sessions open.
    Caller,
}

/// The bounds on what clients may make the sessions hold (`[server]` keys).
#[derive(Debug, Clone, Copy)]
pub struct SessionBounds {
    /// `max-sessions`.
    pub max: usize,
    /// `max-sessions-per-caller`.
    pub per_caller: usize,
    /// `max-stream-buffer-kib`, in bytes.
    pub stream_buffer: usize,
}

impl SessionBounds {
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        SessionBounds {
            max: c.max_sessions,
            per_caller: c.max_sessions_per_caller,
            stream_buffer: c.max_stream_buffer_kib.saturating_mul(1024),
        }
    }
}

/// All client sessions, plus what they share: the upstreams and the naming rules.
pub struct Sessions {
    map: DashMap<Arc<str>, Arc<Session>>,
    /// Sessions open per caller (see [`Sessions::open`]).
    per_caller: DashMap<String, usize>,
    /// `initialize` requests refused for the per-caller bound, since start.
    pub refused_per_caller: AtomicU64,
    /// Stateless (2026-07-28) callers → the internal session that serves them.
    callers: DashMap<String, Arc<str>>,
    upstreams: Vec<Arc<Upstream>>,
    names: Arc<Names>,
    page_size: usize,
    bounds: SessionBounds,
    screen: OnceLock<Arc<dyn Screen>>,
    /// Seals new session ids and resumes sealed ones (`[cluster] session-key`).
    sealer: OnceLock<Arc<seal::Sealer>>,
    /// Seals task ids: from the session key when there is one, else a key of this process.
    task_ids: OnceLock<Arc<TaskIds>>,
    /// Shares sessions' streams with other replicas (`[cluster]` redis and key).
    bus: OnceLock<Arc<dyn super::SessionBus>>,
}

impl Sessions {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        names: Arc<Names>,
        page_size: usize,
        bounds: SessionBounds,
    ) -> Self {
        Sessions {
            map: DashMap::new(),
            per_caller: DashMap::new(),
            refused_per_caller: AtomicU64::new(0),
            callers: DashMap::new(),
            upstreams,
            names,
            page_size,
            bounds,
            screen: OnceLock::new(),
            sealer: OnceLock::new(),
            task_ids: OnceLock::new(),
            bus: OnceLock::new(),
        }
    }

    /// Seals task ids with these (derived from `[cluster] session-key`), so every replica
    /// opens them. Without it, task ids open only in this process.
    pub fn set_task_ids(&self, ids: TaskIds) {
        let _ = self.task_ids.set(Arc::new(ids));
    }

    /// Seals session ids from now on, and resumes sealed ids this process does not hold.
    pub fn set_sealer(&self, sealer: Arc<seal::Sealer>) {
        let _ = self.sealer.set(sealer);
    }

    /// Shares the streams of sessions created from now on with the other replicas.
    pub fn set_bus(&self, bus: Arc<dyn super::SessionBus>) {
        let _ = self.bus.set(bus);
    }

    pub fn bounds(&self) -> &SessionBounds {
        &self.bounds
    }

    /// Screens what sessions send outside any request (sessions created from now on).
    pub fn set_screen(&self, screen: Arc<dyn Screen>) {
        let _ = self.screen.set(screen);
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Creates a session (no upstream is contacted); `None` when at capacity.
    pub fn create(&self, version: &'static str, hello: Hello) -> Option<Arc<Session>> {
        let id = self.mint(version, &hello, None, &[]).0;
        self.insert(id, version, hello, None, None, Vec::new(), None)
            .ok()
    }

    /// A new session id: random, or sealed with what another replica needs (carrying as
    /// many of `upstreams` as fit; gives the names of those left out).
    fn mint(
        &self,
        version: &str,
        hello: &Hello,
        owner: Option<&str>,
        upstreams: &[(&str, UpstreamSession)],
    ) -> (Arc<str>, Vec<String>) {
        match self.sealer.get() {
            Some(s) => {
                let (id, left_out) = s.seal(version, hello, owner, upstreams);
                (id.into(), left_out)
            }
            None => (
                format!("{:032x}", rand::random::<u128>()).into(),
                Vec::new(),
            ),
        }
    }

    /// Creates the session a client's `initialize` asks for, for `caller` (a key naming who
    /// asks: the authenticated subject, else the client's address; `None`: not counted),
    /// unless `max-sessions` are open or the caller has `max-sessions-per-caller` open.
    /// The session belongs to `owner` (the subject authn established), if any: only that
    /// subject may use it, also on a replica that resumes it.
    ///
    /// With sealed ids and a `resumable` session (one whose client holds its id: not a
    /// legacy SSE connection's), the upstream sessions other replicas can resume are opened
    /// first and sealed into the id (`opening.rs`); nothing is opened for a refused session.
    pub async fn open_as(
        &self,
        version: &'static str,
        hello: Hello,
        caller: Option<&str>,
        owner: Option<&str>,
        resumable: bool,
    ) -> Result<Arc<Session>, Refused> {
        if !resumable || self.sealer.get().is_none() || version == crate::mcp::version::STATELESS {
            let id = self.mint(version, &hello, owner, &[]).0;
            return self.insert(id, version, hello, caller, owner, Vec::new(), None);
        }
        self.has_room(caller)?;
        let handover = Arc::new(opening::Handover::default());
        let links = opening::open_links(&self.upstreams, &hello, &handover).await;
        let sealable: Vec<(&str, UpstreamSession)> = links
            .iter()
            .filter_map(|(idx, link)| Some((&*self.upstreams[*idx].name, link.upstream_session()?)))
            .collect();
        let (id, left_out) = self.mint(version, &hello, owner, &sealable);
        let sealed: Vec<&str> = sealable
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !left_out.iter().any(|l| l == name))
            .collect();
        // Refused now (others took the room meanwhile): the links go, ending their sessions.
        let session = self.insert(
            id,
            version,
            hello,
            caller,
            owner,
            Vec::new(),
            Some(handover.clone()),
        )?;
        handover.attach(&session);
        for (idx, link) in links {
            // Other replicas may use a sealed upstream session: this one does not end it
            // when it lets its copy go (idle, shutdown); a DELETE from the client does.
            link.keep_open(sealed.contains(&&*self.upstreams[idx].name));
            session.slots[idx].install(link).await;
        }
        if !sealed.is_empty() {
            tracing::debug!(session = %session.tag, upstreams = ?sealed, "upstream sessions sealed into the session id");
        }
        Ok(session)
    }

    /// Whether a session for `caller` may be opened now ([`Sessions::insert`] checks
    /// again).
    fn has_room(&self, caller: Option<&str>) -> Result<(), Refused> {
        if self.map.len() >= self.bounds.max {
            return Err(Refused::Full);
        }
        if let Some(key) = caller
            && self
                .per_caller
                .get(key)
                .is_some_and(|open| *open >= self.bounds.per_caller)
        {
            self.refused_per_caller.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Caller);
        }
        Ok(())
    }

    /// Makes the session `id` names, its first links to the `resumed` upstreams going on
    /// with their sealed sessions.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        id: Arc<str>,
        version: &'static str,
        hello: Hello,
        caller: Option<&str>,
        owner: Option<&str>,
        mut resumed: Vec<(String, UpstreamSession)>,
        handover: Option<Arc<opening::Handover>>,
    ) -> Result<Arc<Session>, Refused> {
        if self.map.len() >= self.bounds.max {
            return Err(Refused::Full);
        }
        if let Some(key) = caller {
            // The entry holds its shard's lock: check and count are one step.
            let mut open = self.per_caller.entry(key.to_string()).or_insert(0);
            if *open >= self.bounds.per_caller {
                drop(open);
                self.refused_per_caller.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Caller);
            }
            *open += 1;
        }
        let cap = self.bounds.stream_buffer;
        let tag: Arc<str> = crate::observe::session_tag(&id).into();
        let session = Arc::new_cyclic(|me| Session {
            id: id.clone(),
            tag: tag.clone(),
            version,
            hello,
            slots: self
                .upstreams
                .iter()
                .map(|u| {
                    let slot =
                        Slot::for_client(u.clone(), version != crate::mcp::version::STATELESS);
                    match resumed.iter().position(|(name, _)| **name == *u.name) {
                        Some(at) => slot.resuming(resumed.swap_remove(at).1),
                        None => slot,
                    }
                })
                .collect(),
            router: Arc::new(Router::new(self.names.clone(), self.page_size)),
            standalone: EventStream::new(STANDALONE_STREAM, cap, tag),
            changes: tokio::sync::broadcast::channel(64).0,
            streams: Mutex::new(VecDeque::new()),
            next_stream: AtomicU64::new(0),
            inflight: DashMap::new(),
            server_requests: DashMap::new(),
            local_requests: DashMap::new(),
            next_server_request: AtomicU64::new(0),
            log_level: Mutex::new(None),
            last_seen: Mutex::new(Instant::now()),
            owner: std::sync::OnceLock::new(),
            caller: ArcSwapOption::empty(),
            subject: Default::default(),
            quota: caller.map(str::to_string),
            stream_cap: cap,
            screen: self.screen.get().cloned(),
            task_ids: self
                .task_ids
                .get_or_init(|| Arc::new(TaskIds::random()))
                .clone(),
            outbox: OnceLock::new(),
            bus: self.bus.get().cloned(),
            _handover: handover,
            me: me.clone(),
        });
        if let Some(owner) = owner {
            let _ = session.owner.set(owner.to_string());
        }
        // A resumed id may race with itself: the first one in wins.
        Ok(self.map.entry(id).or_insert(session).clone())
    }

    /// The internal session serving a stateless (2026-07-28) caller, created on first use.
    /// `caller` is the subject authn established ("" without authn: every unauthenticated
    /// caller is the same caller). Callers never share a session, hence never an upstream
    /// session or child process. `None` when at capacity.
    pub fn for_caller(&self, caller: &str, hello: impl FnOnce() -> Hello) -> Option<Arc<Session>> {
        if let Some(id) = self.callers.get(caller)
            && let Some(s) = self.get(&id)
        {
            return Some(s);
        }
        // Two first requests of one caller may race here; the loser's session idles out.
        let session = self.create(crate::mcp::version::STATELESS, hello())?;
        if !caller.is_empty() {
            let _ = session.owner.set(caller.to_string());
        }
        tracing::info!(session = %session.tag, caller, "internal session for a stateless caller");
        self.callers.insert(caller.to_string(), session.id.clone());
        Some(session)
    }

    /// The session `id` names: held here, or resumed from a sealed id another replica (or
    /// this one before a restart) issued. `None`: unknown, ended here, forged, expired.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        if let Some(s) = self.map.get(id) {
            return Some(s.clone());
        }
        let opened = self.sealer.get()?.open(id);
        let Some(opened) = opened else {
            tracing::debug!(
                len = id.len(),
                "session id not held here and not a valid sealed id"
            );
            return None;
        };
        let session = self
            .insert(
                id.into(),
                opened.version,
                opened.hello,
                None,
                opened.owner.as_deref(),
                opened.upstreams,
                None,
            )
            .ok()?;
        tracing::info!(session = %session.tag, version = opened.version, "session resumed from its sealed id");
        Some(session)
    }

    /// Ends a session: its streams close, its in-flight requests are cancelled, and its
    /// upstream links (child processes, upstream sessions) go when the last request finishes.
    /// A sealed id is remembered as ended, so this replica does not resume it.
    pub fn remove(&self, id: &str) -> bool {
        if let Some(sealer) = self.sealer.get() {
            sealer.end(id);
        }
        if let Some(s) = self.map.get(id) {
            // The client ended it: so do its upstream sessions, sealed ones too.
            for slot in &s.slots {
                slot.end(&s.hello, s.handler());
            }
        }
        self.forget(id)
    }

    /// Frees what this process holds for a session. A sealed id stays valid: the next
    /// request resumes it (idle reaping and shutdown; a DELETE uses [`Sessions::remove`]).
    fn forget(&self, id: &str) -> bool {
        match self.map.remove(id) {
            Some((_, s)) => {
                self.callers.retain(|_, sid| &**sid != id);
                if let Some(key) = &s.quota {
                    self.per_caller.remove_if_mut(key, |_, open| {
                        *open = open.saturating_sub(1);
                        *open == 0
                    });
                }
                s.close();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends sessions idle for longer than `timeout` (a connected GET stream counts as use).
    pub fn reap_idle(&self, timeout: Duration) -> usize {
        let idle: Vec<(Arc<str>, Arc<str>)> = self
            .map
            .iter()
            .filter(|s| {
                s.idle_for() > timeout
                    && !s.standalone.has_listener()
                    && s.changes.receiver_count() == 0
                    && s.inflight.is_empty()
            })
            .map(|s| (s.id.clone(), s.tag.clone()))
            .collect();
        for (id, tag) in &idle {
            tracing::info!(session = %tag, "session idle; closing");
            self.forget(id);
        }
        idle.len()
    }

    pub fn ids(&self) -> Vec<Arc<str>> {
        self.map.iter().map(|s| s.id.clone()).collect()
    }

    pub fn close_all(&self) {
        for id in self.ids() {
            self.forget(&id);
        }
    }
}
