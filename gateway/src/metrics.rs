//! Prometheus metrics: what the gateway did, in series whose labels are bounded.
//!
//! Labels never carry a subject, a session, a tool argument or anything else a caller
//! chooses: `method` is one of the MCP methods the gateway knows or `other`, `upstream` a
//! configured upstream name (empty when the gateway answered itself or fanned out to all
//! upstreams), `outcome` one of `ok`, `error`, `denied`, `timeout`, and `plugin` the name of a
//! plugin file in the plugins folder.
//!
//! Two kinds of series:
//! - counted on the request path (requests, their latency split into gateway overhead and
//!   upstream time), in [`Metrics::request`]: one counter and three histogram observations
//!   per request;
//! - read at scrape time from counters that exist anyway ([`Live`]): per-plugin invocations,
//!   latency, denials, traps and timeouts (the plugins' own `Counters`), upstream health
//!   (what real traffic said, `upstream/health.rs`), active sessions, policy reloads and
//!   the audit writer's counts. Nothing is counted twice.
//!
//! The exposition is the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]), rendered by
//! [`Metrics::render`]; the admin API serves it at `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::audit::{Audit, Outcome};
use crate::mcp::methods;
use crate::policy::Policies;
use crate::session::Sessions;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The methods that get a label of their own; every other method counts as `other`.
const KNOWN_METHODS: &[&str] = &[
    methods::INITIALIZE,
    methods::PING,
    methods::SERVER_DISCOVER,
    methods::SUBSCRIPTIONS_LISTEN,
    methods::TOOLS_LIST,
    methods::TOOLS_CALL,
    methods::PROMPTS_LIST,
    methods::PROMPTS_GET,
    methods::RESOURCES_LIST,
    methods::RESOURCES_TEMPLATES_LIST,
    methods::RESOURCES_READ,
    methods::RESOURCES_SUBSCRIBE,
    methods::RESOURCES_UNSUBSCRIBE,
    methods::COMPLETION_COMPLETE,
    methods::LOGGING_SET_LEVEL,
    methods::INITIALIZED,
    methods::CANCELLED,
    methods::PROGRESS,
    methods::ROOTS_LIST_CHANGED,
];

/// The `method` label of a method: itself when the gateway knows it, else `other`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Gateway overhead: tens of microseconds for a plain call, milliseconds with policies.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Whole requests and upstream time: a millisecond on loopback to the default 60 s timeout.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    upstream: Arc<str>,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<str>,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn overhead_histogram() -> Histogram {
    Histogram::new(OVERHEAD_BUCKETS.iter().copied())
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS.iter().copied())
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histograms<MethodLabels>,
    overhead: Histograms<MethodLabels>,
    upstream_time: Histograms<UpstreamLabels>,
    /// The configured upstream names: the only values the `upstream` label takes.
    upstreams: Vec<Arc<str>>,
    none: Arc<str>,
}

impl Metrics {
    /// Metrics over these sessions, policies and (when on) audit trail.
    pub fn new(
        sessions: Arc<Sessions>,
        policies: Arc<Policies>,
        audit: Option<Arc<Audit>>,
        bus: Option<Arc<crate::cluster::Bus>>,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests answered, by method, upstream and outcome",
            requests.clone(),
        );
        let duration: Histograms<MethodLabels> = Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its answer",
            Unit::Seconds,
            duration.clone(),
        );
        let overhead: Histograms<MethodLabels> = Family::new_with_constructor(overhead_histogram);
        registry.register_with_unit(
            "gateway_overhead",
            "Time a request spent in the gateway (policies, routing, framing): the request duration less the upstream time",
            Unit::Seconds,
            overhead.clone(),
        );
        let upstream_time: Histograms<UpstreamLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "upstream_duration",
            "Time waiting for an upstream's answer to a forwarded request",
            Unit::Seconds,
            upstream_time.clone(),
        );
        let upstreams = sessions
            .upstreams()
            .iter()
            .map(|u| u.name.clone())
            .collect();
        registry.register_collector(Box::new(Live {
            sessions,
            policies,
            audit,
            bus,
        }));
        Arc::new(Metrics {
            registry,
            requests,
            duration,
            overhead,
            upstream_time,
            upstreams,
            none: Arc::from(""),
        })
    }

    /// The `upstream` label for a name: a configured upstream, or empty.
    fn upstream_label(&self, name: Option<&str>) -> Arc<str> {
        name.and_then(|n| self.upstreams.iter().find(|u| &***u == n))
            .unwrap_or(&self.none)
            .clone()
    }

    /// Counts one answered request. `upstream_time` is the part spent waiting for the
    /// upstream (none when no upstream was asked).
    pub fn request(
        &self,
        method: &'static str,
        upstream: Option<&str>,
        outcome: Outcome,
        total: Duration,
        upstream_time: Option<Duration>,
    ) {
        let upstream = self.upstream_label(upstream);
        let forwarded = upstream_time.filter(|_| !upstream.is_empty());
        self.requests
            .get_or_create(&RequestLabels {
                method,
                upstream: upstream.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
        let labels = MethodLabels { method };
        self.duration
            .get_or_create(&labels)
            .observe(total.as_secs_f64());
        let waited = upstream_time.unwrap_or_default();
        self.overhead
            .get_or_create(&labels)
            .observe(total.saturating_sub(waited).as_secs_f64());
        if let Some(t) = forwarded {
            self.upstream_time
                .get_or_create(&UpstreamLabels { upstream })
                .observe(t.as_secs_f64());
        }
    }

    /// The exposition, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Writing into a String cannot fail; a failing encoder is a bug worth a log line.
            tracing::error!(error = %e, "cannot render the metrics");
        }
        out
    }
}

/// The series read at scrape time.
struct Live {
    sessions: Arc<Sessions>,
    policies: Arc<Policies>,
    audit: Option<Arc<Audit>>,
    bus: Option<Arc<crate::cluster::Bus>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        gauge(
            e,
            "sessions_active",
            "Client sessions open now (2026-07-28 callers count one internal session each)",
            [(vec![], self.sessions.len() as i64)],
        )?;
        counter(
            e,
            "sessions_refused_per_caller",
            "initialize requests refused because their caller held server.max-sessions-per-caller sessions",
            [(vec![], self.sessions.refused_per_caller.load(Relaxed))],
        )?;
        counter(
            e,
            "client_streams_cut",
            "Client SSE consumers cut off for leaving more than server.max-stream-buffer-kib unread",
            [(vec![], crate::session::stream::STREAMS_CUT.load(Relaxed))],
        )?;

        let upstreams: Vec<_> = self
            .sessions
            .upstreams()
            .iter()
            .map(|u| u.status())
            .collect();
        let named = |name: &str| vec![("upstream", name.to_string())];
        gauge(
            e,
            "upstream_up",
            "1 when an upstream's last connect or request succeeded, 0 when it failed since; absent until a client used it",
            upstreams
                .iter()
                .filter(|s| s.state != "unknown")
                .map(|s| (named(&s.name), i64::from(s.state == "up"))),
        )?;
        gauge(
            e,
            "upstream_consecutive_failures",
            "Failed connects and requests of an upstream since its last success",
            upstreams
                .iter()
                .map(|s| (named(&s.name), i64::from(s.consecutive_failures))),
        )?;
        counter(
            e,
            "upstream_lists_left_out",
            "Aggregate lists (tools/list, …) answered without an upstream's part; reason=timeout: no answer within its list-timeout, failed: connecting or listing failed",
            self.sessions.upstreams().iter().flat_map(|u| {
                let (failed, late) = u.lists_left_out();
                [
                    (
                        vec![
                            ("upstream", u.name.to_string()),
                            ("reason", "failed".to_string()),
                        ],
                        failed,
                    ),
                    (
                        vec![
                            ("upstream", u.name.to_string()),
                            ("reason", "timeout".to_string()),
                        ],
                        late,
                    ),
                ]
            }),
        )?;
        gauge(
            e,
            "upstream_links",
            "Client sessions connected to an upstream now",
            upstreams.iter().map(|s| (named(&s.name), s.links as i64)),
        )?;
        let exchanging: Vec<_> = self
            .sessions
            .upstreams()
            .iter()
            .filter_map(|u| Some((u.name.to_string(), u.token_exchange_counts()?)))
            .collect();
        let labelled = |name: &str, key: &'static str, value: &str| {
            vec![("upstream", name.to_string()), (key, value.to_string())]
        };
        counter(
            e,
            "upstream_token_exchanges",
            "RFC 8693 token exchanges for a token-exchange upstream's callers, by outcome (ok, error)",
            exchanging.iter().flat_map(|(name, c)| {
                [
                    (labelled(name, "outcome", "ok"), c.exchanged.load(Relaxed)),
                    (labelled(name, "outcome", "error"), c.failed.load(Relaxed)),
                ]
            }),
        )?;
        counter(
            e,
            "upstream_token_cache",
            "Lookups of a token-exchange upstream's cached tokens: hit (cached, or exchanged by a concurrent request) or miss (exchanged now)",
            exchanging.iter().flat_map(|(name, c)| {
                [
                    (labelled(name, "result", "hit"), c.hits.load(Relaxed)),
                    (labelled(name, "result", "miss"), c.misses.load(Relaxed)),
                ]
            }),
        )?;

        counter(
            e,
            "kv_errors",
            "Plugin key-value calls that failed because the store (redis) timed out or was unavailable",
            [
                (
                    vec![("kind", "timeout".to_string())],
                    crate::policy::KV_TIMEOUTS.load(Relaxed),
                ),
                (
                    vec![("kind", "unavailable".to_string())],
                    crate::policy::KV_UNAVAILABLE.load(Relaxed),
                ),
            ],
        )?;
        if let Some(bus) = &self.bus {
            encode_bus(e, bus)?;
        }

        let chain = self.policies.chain();
        let plugins = chain.plugins();
        let per_plugin = |value: fn(&crate::policy::Counters) -> u64| {
            plugins
                .iter()
                .map(move |p| (vec![("plugin", p.name.to_string())], value(&p.counters)))
        };
        gauge(
            e,
            "plugins_active",
            "Plugins in the policy chain",
            [(vec![], plugins.len() as i64)],
        )?;
        counter(
            e,
            "plugin_invocations",
            "Evaluations of a plugin (since it was loaded)",
            per_plugin(|c| c.calls.load(Relaxed)),
        )?;
        counter(
            e,
            "plugin_denials",
            "Messages a plugin denied by its verdict",
            per_plugin(|c| c.denials.load(Relaxed)),
        )?;
        counter(
            e,
            "plugin_failures",
            "Evaluations that failed (trap, timeout, memory or output limit, bad verdict): the message is denied unless the plugin fails open",
            per_plugin(|c| c.failures.load(Relaxed)),
        )?;
        counter(
            e,
            "plugin_traps",
            "Evaluations that trapped (a panic, an abort, a Wasm trap)",
            per_plugin(|c| c.traps.load(Relaxed)),
        )?;
        counter(
            e,
            "plugin_timeouts",
            "Evaluations stopped at the plugin's CPU deadline",
            per_plugin(|c| c.timeouts.load(Relaxed)),
        )?;
        counter(
            e,
            "plugin_log_lines_dropped",
            "Log lines of a plugin dropped over policy.plugin-log-lines-per-second",
            plugins.iter().map(|p| {
                let dropped = crate::policy::log_budget::dropped(&p.name);
                (vec![("plugin", p.name.to_string())], dropped)
            }),
        )?;
        {
            let mut family = e.encode_descriptor(
                "plugin_duration",
                "Time of one evaluation of a plugin, waiting for an instance slot included",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for p in plugins {
                let labels = vec![("plugin", p.name.to_string())];
                p.counters.latency.encode(family.encode_family(&labels)?)?;
            }
        }
        let (reloads, failed) = self.policies.reloads();
        counter(
            e,
            "policy_reloads",
            "Reloads of the plugins folder; result=error when a plugin in it was rejected",
            [
                (vec![("result", "ok".to_string())], reloads - failed),
                (vec![("result", "error".to_string())], failed),
            ],
        )?;

        if let Some(audit) = &self.audit {
            let s = audit.stats();
            counter(
                e,
                "audit_records",
                "Audit records written",
                [(vec![], s.written.load(Relaxed))],
            )?;
            counter(
                e,
                "audit_dropped",
                "Audit records lost because the writer's queue was full",
                [(vec![], s.dropped.load(Relaxed))],
            )?;
            counter(
                e,
                "audit_write_errors",
                "Audit records lost to a failed write",
                [(vec![], s.write_errors.load(Relaxed))],
            )?;
            counter(
                e,
                "audit_rotations",
                "Audit files rotated",
                [(vec![], s.rotations.load(Relaxed))],
            )?;
        }
        Ok(())
    }
}

/// The cluster bus's series (only with `[cluster]` redis and a session key).
fn encode_bus(e: &mut DescriptorEncoder, bus: &crate::cluster::Bus) -> std::fmt::Result {
    use crate::cluster::counters as c;
    gauge(
        e,
        "bus_up",
        "1 when the cluster bus's subscriber is connected to redis",
        [(vec![], i64::from(bus.is_connected()))],
    )?;
    gauge(
        e,
        "bus_sessions_followed",
        "Sessions whose bus channel this replica subscribes to (it holds an open stream of them)",
        [(vec![], bus.following() as i64)],
    )?;
    counter(
        e,
        "bus_published",
        "Messages published on the cluster bus",
        [(vec![], c::PUBLISHED.load(Relaxed))],
    )?;
    counter(
        e,
        "bus_received",
        "Messages from other replicas acted on",
        [(vec![], c::RECEIVED.load(Relaxed))],
    )?;
    counter(
        e,
        "bus_dropped",
        "Bus messages dropped or kept local: oversize, queue_full, redis (down or failing: kept on the producing replica), unreadable (not sealed under a configured key, unknown, too old), slow_reader (a relayed answer's reader fell behind)",
        [
            ("oversize", c::DROPPED_OVERSIZE.load(Relaxed)),
            ("queue_full", c::DROPPED_QUEUE.load(Relaxed)),
            ("redis", c::DROPPED_REDIS.load(Relaxed)),
            ("unreadable", c::DROPPED_UNREADABLE.load(Relaxed)),
            ("slow_reader", c::DROPPED_SLOW.load(Relaxed)),
        ]
        .map(|(reason, n)| (vec![("reason", reason.to_string())], n)),
    )?;
    counter(
        e,
        "bus_forwarded_retries",
        "2026-07-28 retries forwarded to the replica holding their parked call, by outcome",
        [
            ("answered", c::FORWARDED.load(Relaxed)),
            ("unreachable", c::FORWARD_FAILED.load(Relaxed)),
        ]
        .map(|(outcome, n)| (vec![("outcome", outcome.to_string())], n)),
    )?;
    counter(
        e,
        "bus_connects",
        "Times the cluster bus's subscriber connected to redis (1 + reconnections)",
        [(vec![], c::CONNECTS.load(Relaxed))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("tools/call2"), "other");
        assert_eq!(method_label("x".repeat(1000).as_str()), "other");
    }
}
