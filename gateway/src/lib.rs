//! Portcullis: an MCP gateway. Agents connect over HTTP; Portcullis fronts many upstream MCP
//! servers and presents them as one. See DESIGN.md at the repository root for the data path:
//! `front` → `session` → `catalog` → `upstream`.

pub mod admin;
pub mod audit;
pub mod body;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod front;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod observe;
pub mod policy;
pub mod seal;
pub mod session;
pub mod upstream;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::{ListKind, Names};
use crate::config::{Config, PrefixMode};
use crate::policy::Policies;
use crate::session::Sessions;
use crate::upstream::{Hello, Upstream};

/// A bound, ready-to-serve gateway.
pub struct Gateway {
    listener: TcpListener,
    front: Arc<front::Front>,
    sessions: Arc<Sessions>,
    pub policies: Arc<Policies>,
    _watch: Option<policy::WatchGuard>,
    /// The admin API, when `[admin]` is configured.
    pub admin: Option<admin::Admin>,
    /// The Prometheus metrics (served by the admin API at `/metrics`).
    pub metrics: Arc<metrics::Metrics>,
    /// The audit trail, when `[audit] enabled`.
    audit: Option<Arc<audit::Audit>>,
    pub addr: SocketAddr,
    pub path: String,
    /// `[server.tls]`: the listener's TLS configuration and the watch that reloads it.
    tls: Option<(Arc<front::Tls>, front::TlsWatch)>,
}

impl Gateway {
    /// Builds the upstreams, binds the listener and, with `namespacing.prefix = never`,
    /// checks that no two upstreams expose the same name.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        // https:// upstreams use rustls with ring; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = std::time::Instant::now();
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, cfg)| Upstream::new(name, cfg.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let names = Arc::new(Names::new(
            &config.namespacing,
            upstreams.iter().map(|u| u.name.clone()).collect(),
        ));
        let sessions = Arc::new(Sessions::new(
            upstreams,
            names,
            config.server.list_page_size,
            session::SessionBounds::from_config(&config.server),
        ));
        if let Some(sealer) = session::seal::Sealer::new(
            &config.cluster.session_keys.0,
            config.cluster.session_lifetime,
        ) {
            sessions.set_sealer(Arc::new(sealer));
        }
        if let Some(ids) = session::TaskIds::from_session_keys(&config.cluster.session_keys.0) {
            sessions.set_task_ids(ids);
        }
        let bus = cluster::Bus::start(&config.cluster)?;
        if let Some(bus) = &bus {
            bus.set_sessions(Arc::downgrade(&sessions));
            sessions.set_bus(bus.clone());
        }
        if config.namespacing.prefix == PrefixMode::Never {
            check_collisions(&sessions).await?;
        }
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() && config.server.allowed_hosts.is_none() {
            tracing::warn!(
                %addr,
                "listening beyond loopback but server.allowed-hosts is not set: only loopback Host names will be accepted"
            );
        }
        let path = config.server.path.clone();
        let tls = match &config.server.tls {
            Some(files) => {
                let tls = front::Tls::load(files)?;
                let watch = tls.watch().context("server.tls: cannot watch the files")?;
                Some((tls, watch))
            }
            None => None,
        };
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            upstreams = sessions.upstreams().len(),
            "start-up: configuration read, listener bound"
        );
        let kv = policy::plugin_kv(&config.cluster).await?;
        let policies = open_policies_with(&config.policy, kv, true).await?;
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            plugins = policies.chain().plugins().len(),
            "start-up: policy chain loaded"
        );
        let watch = if config.policy.watch {
            policies.watch()?
        } else {
            None
        };
        let audit = match config.audit.enabled {
            true => Some(Arc::new(audit::Audit::open(&config.audit)?)),
            false => None,
        };
        let metrics = metrics::Metrics::new(
            sessions.clone(),
            policies.clone(),
            audit.clone(),
            bus.clone(),
        );
        let mut admin = match &config.admin {
            Some(cfg) => Some(admin::Admin::bind(cfg, sessions.clone(), policies.clone()).await?),
            None => None,
        };
        if let Some(admin) = admin.as_mut() {
            let metrics = metrics.clone();
            admin.mount_metrics(Arc::new(move || metrics.render()));
        }
        let front = front::Front::new(
            config.server,
            sessions.clone(),
            policies.clone(),
            config.oauth.as_ref(),
            front::Recorder::new(metrics.clone(), audit.clone()),
            bus,
        );
        Ok(Gateway {
            listener,
            front,
            sessions,
            policies,
            _watch: watch,
            admin,
            metrics,
            audit,
            addr,
            path,
            tls,
        })
    }

    /// Serves one already-open connection (any byte stream) as the listener's connections
    /// are served; the fuzz targets (fuzz/) drive it over an in-memory stream. The future
    /// ends when the connection closes.
    pub fn serve_connection<I>(
        &self,
        io: I,
    ) -> impl std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        front::connection(
            self.front.clone(),
            io,
            None,
            tokio_util::sync::CancellationToken::new(),
            false,
            None,
        )
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, self.path)
    }

    /// The admin API's URL, when it is on.
    pub fn admin_url(&self) -> Option<String> {
        let addr = self.admin.as_ref()?.addr().ok()?;
        Some(format!("http://{addr}"))
    }

    /// Serves until `shutdown` is cancelled, then drains. The admin API keeps answering
    /// during the drain (`/readyz` says 503) and stops last. Connections run on the caller's
    /// runtime; `portcullis serve` uses [`Gateway::serve_on`].
    pub async fn serve(self, shutdown: CancellationToken) {
        self.serve_on(shutdown, None).await
    }

    /// [`Gateway::serve`], with every client connection handed to one of `workers`.
    pub async fn serve_on(self, shutdown: CancellationToken, workers: Option<&workers::Workers>) {
        let admin_stop = CancellationToken::new();
        let admin = self
            .admin
            .map(|a| tokio::spawn(a.serve(shutdown.clone(), admin_stop.clone())));
        let (tls, _watch) = self.tls.unzip();
        front::serve(self.listener, self.front, shutdown, tls, workers).await;
        // Sessions are closed; their links (and child processes) go as the last references
        // drop. Wait until the children are reaped, so nothing outlives the gateway.
        for upstream in self.sessions.upstreams() {
            upstream
                .wait_children(std::time::Duration::from_secs(5))
                .await;
        }
        admin_stop.cancel();
        if let Some(task) = admin {
            let _ = task.await;
        }
        // Every request has been answered (and recorded): write the last records out.
        if let Some(audit) = &self.audit {
            audit.close().await;
        }
    }
}

/// The policy runtime with the configured plugins folder loaded, exactly as `serve` and
/// `check` use it. Fails closed: a plugin that does not load (unless `on-error = "skip"`)
/// or a required plugin missing from the chain is an error naming the file and the reason.
pub async fn open_policies(cfg: &config::PolicyConfig) -> anyhow::Result<Arc<Policies>> {
    open_policies_with(cfg, None, false).await
}

/// [`open_policies`] with the plugins' key-value store given (`None`: in-process), and for a
/// long-running server (`serving`: big new plugins start on the baseline compiler's code
/// while Cranelift optimises them, see `policy/engine.rs`).
pub async fn open_policies_with(
    cfg: &config::PolicyConfig,
    kv: Option<Arc<dyn policy::KvStore>>,
    serving: bool,
) -> anyhow::Result<Arc<Policies>> {
    let cache = cfg.cache_dir();
    if let (Some(cache), Some(plugins)) = (&cache, &cfg.plugins)
        && cache.starts_with(plugins)
    {
        tracing::warn!(
            cache = %cache.display(),
            "policy.cache is inside the plugins folder: whoever may drop plugins there can also reach the compiled code (it is authenticated, but keep it apart)"
        );
    }
    policy::log_budget::configure(policy::log_budget::LogLimits {
        per_second: cfg.plugin_log_lines_per_second,
        burst: cfg.plugin_log_burst,
        line_bytes: cfg.plugin_log_line_bytes,
    });
    let runtime = policy::RuntimeConfig {
        max_instances: cfg.max_instances.max(1),
        max_memory: (cfg.max_memory_mib.max(1) as usize) << 20,
        cache,
        kv,
        baseline: serving,
    };
    let policies = Policies::open(cfg.plugins.as_deref(), runtime, cfg.required.clone()).await?;
    let (rejected, missing) = policies.problems().await;
    let mut fatal = Vec::new();
    match cfg.on_error {
        config::OnError::Refuse => fatal.extend(rejected),
        config::OnError::Skip => {
            for r in &rejected {
                tracing::warn!(problem = %r, "starting without a plugin that did not load ([policy] on-error = \"skip\")");
            }
        }
    }
    fatal.extend(missing);
    anyhow::ensure!(
        fatal.is_empty(),
        "the policy chain is not what the configuration asks for, refusing to start (fail closed):\n  {}",
        fatal.join("\n  ")
    );
    Ok(policies)
}

/// Connects to every upstream once and fails if two expose the same tool or prompt name,
/// which `namespacing.prefix = never` cannot tell apart.
async fn check_collisions(sessions: &Sessions) -> anyhow::Result<()> {
    let hello = Hello {
        capabilities: serde_json::json!({}),
        client_info: serde_json::json!({ "name": "portcullis-startup-check", "version": env!("CARGO_PKG_VERSION") }),
    };
    let probe = sessions
        .create(mcp::version::LATEST, hello)
        .context("no session capacity")?;
    let mut problems = Vec::new();
    for kind in [ListKind::Tools, ListKind::Prompts] {
        for (name, owners) in probe.collisions(kind).await {
            let owners: Vec<&str> = owners
                .iter()
                .map(|i| &*sessions.upstreams()[*i].name)
                .collect();
            problems.push(format!(
                "{} {name:?} is exposed by {}",
                kind.items_key(),
                owners.join(" and ")
            ));
        }
    }
    sessions.remove(&probe.id);
    anyhow::ensure!(
        problems.is_empty(),
        "namespacing.prefix = never, but names collide: {}; use prefix = \"when-needed\" or \"always\"",
        problems.join("; ")
    );
    Ok(())
}
