//! The process-wide `tracing` subscriber: log lines on stderr (pretty or JSON, filtered by
//! `RUST_LOG` or `[log] level`) and, when `[tracing] otlp-endpoint` is set, the OpenTelemetry
//! layer that turns the gateway's spans into OTLP exports.
//!
//! The two layers filter independently: the log filter never hides spans from the exporter
//! (`RUST_LOG=warn` still exports every request), and the exporter's spans never clutter the
//! log lines.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

use super::trace::SPAN_TARGET;
use crate::config::{LogConfig, LogFormat, TracingConfig};

/// The installed subscriber's exporter, if any. Call [`Telemetry::shutdown`] before the
/// runtime goes: it flushes the spans still queued.
#[must_use = "shut it down to flush the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes queued spans and stops the exporter (bounded by the export timeout). Must run
    /// while the tokio runtime given to [`init`] is still alive, outside of it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            super::ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("portcullis: flushing traces failed: {e}");
            }
        }
    }
}

/// The subscriber for commands other than `serve`: pretty lines at `default_level` (or
/// `RUST_LOG`).
pub fn init_default(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    Registry::default()
        .with(fmt_layer(LogFormat::Pretty, filter))
        .init();
}

/// The subscriber for `serve`: `[log]` shapes the log lines and `[tracing]` the exporter,
/// whose HTTP sends run on `runtime`.
pub fn init(
    log: &LogConfig,
    tracing: &TracingConfig,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let provider = match &tracing.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, tracing, runtime)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("portcullis"))
            // Spans start when their first child does or when they are propagated, not when
            // entered: the request span learns its parent from `_meta.traceparent` after the
            // body was read, inside the span.
            .with_context_activation(false)
            // Busy/idle time, thread and source-location attributes: cost on every span and
            // nothing an operator reads in a trace of MCP calls.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // The gateway's own spans, plus its warnings and errors as span events.
            .with_filter(
                filter_fn(|m| {
                    if m.is_span() {
                        m.target() == SPAN_TARGET
                    } else {
                        m.target().starts_with("portcullis") && *m.level() <= Level::WARN
                    }
                })
                // The spans are `info`: nothing more verbose reaches this layer.
                .with_max_level_hint(LevelFilter::INFO),
            )
    });
    Registry::default()
        .with(fmt_layer(log.format, filter))
        .with(otel)
        .try_init()
        .context("cannot install the log subscriber")?;
    if let (Some(endpoint), Some(_)) = (&tracing.otlp_endpoint, &provider) {
        super::ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = %traces_url(endpoint), service = %tracing.service_name, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// Log lines on stderr, without the exporter's spans.
fn fmt_layer(
    format: LogFormat,
    filter: EnvFilter,
) -> Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync> {
    // The hint keeps the level filter's own: without it the pair has none, the global
    // maximum is TRACE and every `debug!`/`trace!` callsite (and dependency `log` record)
    // is built and asked on the hot path only to be dropped.
    let filter = filter.and(
        filter_fn(|m| !(m.is_span() && m.target() == SPAN_TARGET))
            .with_max_level_hint(LevelFilter::TRACE),
    );
    match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    }
}

fn provider(
    endpoint: &str,
    cfg: &TracingConfig,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<SdkTracerProvider> {
    let headers: HashMap<String, String> = cfg
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(super::otlp::Client::new(runtime, cfg.timeout)?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(cfg.timeout)
        .with_headers(headers)
        .build()
        .context("cannot set up the OTLP exporter")?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build())
}

/// The traces URL of an OTLP/HTTP receiver given by its base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            super::traces_url("http://c:4318"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c:4318/"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c/otlp/v1/traces"),
            "http://c/otlp/v1/traces"
        );
    }
}
