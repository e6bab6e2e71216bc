//! One OpenTelemetry SDK pipeline (tracer, meter and logger provider, each with its own OTLP/gRPC
//! exporter) per simulated service, plus the bookkeeping that lets the demo report what the SDK
//! actually handed to the network.
//!
//! A pipeline either exports OTLP/gRPC itself ([`Destination::Otlp`], the demo binary) or keeps
//! what the SDK produced in memory as OTLP messages ([`Destination::Memory`]) for the load
//! generator's `--workload demo`, which sends them over its own connections and counts what
//! oxeye acknowledges.
//!
//! Every service gets its own providers because the OTLP resource (`service.name`, `host.name`,
//! ...) belongs to a provider, not to a span: one provider per service is exactly what N separate
//! processes would have.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics as OtlpResourceMetrics;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder as LogBatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter,
    LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder as SpanBatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
    SpanData, SpanExporter, SpanProcessor,
};

/// Spans and log records per OTLP export request. The SDK default (512) keeps requests well
/// below gRPC's 4 MiB message limit even with the attribute-heavy spans of this demo.
const MAX_EXPORT_BATCH: usize = 512;

/// Name and version of the instrumentation scope of every tracer, meter and logger.
const SCOPE_NAME: &str = "oxeye-demo";

/// Where a pipeline's telemetry goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// OTLP/gRPC to this endpoint, e.g. `http://127.0.0.1:4317`.
    Otlp(String),
    /// Into memory, as OTLP messages taken with [`ServicePipeline::take_spans`],
    /// [`ServicePipeline::take_logs`] and [`ServicePipeline::collect_metrics`]. Nothing is
    /// dropped: spans and records are kept until taken, so the caller bounds memory by taking
    /// them regularly.
    Memory,
}

/// How the pipelines export; shared by every service.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub destination: Destination,
    /// Capacity of each span and log queue. The SDK drops whatever does not fit, so it must hold
    /// a whole burst (the large trace) minus what the exporter drains meanwhile.
    pub queue_size: usize,
    /// Longest time a finished span or log record waits in the queue before it is exported.
    pub export_interval: Duration,
    /// Interval of the periodic metric reader.
    pub metrics_interval: Duration,
    /// `deployment.environment` of every service.
    pub environment: String,
}

/// Who a simulated service is: the resource attributes of its pipeline.
#[derive(Debug, Clone, Copy)]
pub struct ServiceIdentity {
    pub name: &'static str,
    pub version: &'static str,
    pub host: &'static str,
}

/// Counters of one service's pipeline. The SDK keeps its own drop counters private, so the demo
/// counts on both sides of the batch processors instead: what it ended/emitted, and what the
/// exporter was handed. Anything ended but never handed over was dropped (queue full, or still
/// queued when shutdown gave up).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_ended: AtomicU64,
    pub spans_exported: AtomicU64,
    pub spans_failed: AtomicU64,
    pub span_exports_failed: AtomicU64,
    pub logs_emitted: AtomicU64,
    pub logs_exported: AtomicU64,
    pub logs_failed: AtomicU64,
    pub log_exports_failed: AtomicU64,
    pub metric_exports: AtomicU64,
    pub metric_exports_failed: AtomicU64,
}

impl ExportStats {
    /// Spans ended but not yet taken by the exporter: roughly the fill of the span queue.
    pub fn span_backlog(&self) -> u64 {
        self.spans_ended
            .load(Ordering::Relaxed)
            .saturating_sub(self.spans_exported.load(Ordering::Relaxed))
    }
}

/// The three providers of one service and the handles the simulation uses.
#[derive(Debug)]
pub struct ServicePipeline {
    pub identity: ServiceIdentity,
    pub tracer: SdkTracer,
    pub logger: SdkLogger,
    pub meter: Meter,
    pub stats: Arc<ExportStats>,
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
    meter_provider: SdkMeterProvider,
    /// Set for [`Destination::Memory`].
    memory: Option<Arc<Memory>>,
    resource: Resource,
}

impl ServicePipeline {
    /// Builds the pipeline of one service.
    ///
    /// Must run inside a Tokio runtime: the tonic channel of each OTLP exporter spawns its
    /// connection task on the current runtime when it is built. The exports themselves run on
    /// the SDK's own batch/reader threads (futures `block_on`), which only wait on that channel,
    /// so the runtime has to stay alive (and not be current-thread) until shutdown.
    pub fn start(identity: ServiceIdentity, config: &PipelineConfig) -> anyhow::Result<Self> {
        let resource = Resource::builder()
            .with_service_name(identity.name)
            .with_attributes([
                KeyValue::new("service.version", identity.version),
                KeyValue::new("service.namespace", "shop"),
                KeyValue::new(
                    "service.instance.id",
                    format!("{}-{}", identity.host, std::process::id()),
                ),
                KeyValue::new("host.name", identity.host),
                // The pre-1.27 key is what most dashboards still group by; the current
                // semantic-conventions key is set alongside it.
                KeyValue::new("deployment.environment", config.environment.clone()),
                KeyValue::new("deployment.environment.name", config.environment.clone()),
            ])
            .build();
        let stats = Arc::new(ExportStats::default());
        let scope = InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();

        let (tracer_provider, logger_provider, meter_provider, memory) = match &config.destination {
            Destination::Otlp(endpoint) => {
                let (t, l, m) = otlp_providers(&identity, endpoint, config, &resource, &stats)?;
                (t, l, m, None)
            }
            Destination::Memory => {
                let memory = Arc::new(Memory::default());
                let (t, l, m) = memory_providers(&memory, &resource, &stats);
                (t, l, m, Some(memory))
            }
        };
        Ok(Self {
            identity,
            tracer: tracer_provider.tracer_with_scope(scope.clone()),
            logger: logger_provider.logger_with_scope(scope.clone()),
            meter: meter_provider.meter_with_scope(scope),
            stats,
            tracer_provider,
            logger_provider,
            meter_provider,
            memory,
            resource,
        })
    }

    /// The spans ended since the last call, as OTLP (empty unless [`Destination::Memory`]).
    pub fn take_spans(&self) -> Vec<ResourceSpans> {
        let Some(memory) = &self.memory else {
            return Vec::new();
        };
        let spans = std::mem::take(&mut *lock(&memory.spans));
        if spans.is_empty() {
            return Vec::new();
        }
        group_spans_by_resource_and_scope(
            spans,
            &ResourceAttributesWithSchema::from(&self.resource),
        )
    }

    /// The log records emitted since the last call, as OTLP (empty unless
    /// [`Destination::Memory`]).
    pub fn take_logs(&self) -> Vec<ResourceLogs> {
        let Some(memory) = &self.memory else {
            return Vec::new();
        };
        let records = std::mem::take(&mut *lock(&memory.logs));
        if records.is_empty() {
            return Vec::new();
        }
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            records.iter().map(|(r, s)| (r, s)).collect();
        group_logs_by_resource_and_scope(
            &LogBatch::new(&refs),
            &ResourceAttributesWithSchema::from(&self.resource),
        )
    }

    /// Collects the service's metrics now, as OTLP (empty unless [`Destination::Memory`]).
    /// Blocks until the SDK's reader thread has collected.
    pub fn collect_metrics(&self) -> anyhow::Result<Vec<OtlpResourceMetrics>> {
        let Some(memory) = &self.memory else {
            return Ok(Vec::new());
        };
        self.meter_provider
            .force_flush()
            .with_context(|| format!("collecting the metrics of {}", self.identity.name))?;
        Ok(std::mem::take(&mut *lock(&memory.metrics)))
    }

    /// Flushes and shuts down the three providers: traces and logs first so that the final
    /// metric collection (taken by the meter provider's shutdown) sees the whole run. Blocks;
    /// call it off the async worker threads. Returns one message per failed step.
    fn shutdown_blocking(&self, timeout: Duration) -> Vec<String> {
        let name = self.identity.name;
        let mut errors = Vec::new();
        let mut note = |step: &str, result: OTelSdkResult| {
            if let Err(e) = result {
                errors.push(format!("{name}: {step}: {e}"));
            }
        };
        note("flush traces", self.tracer_provider.force_flush());
        note(
            "shut down traces",
            self.tracer_provider.shutdown_with_timeout(timeout),
        );
        note("flush logs", self.logger_provider.force_flush());
        note(
            "shut down logs",
            self.logger_provider.shutdown_with_timeout(timeout),
        );
        note("flush metrics", self.meter_provider.force_flush());
        note(
            "shut down metrics",
            self.meter_provider.shutdown_with_timeout(timeout),
        );
        errors
    }
}

/// The providers of [`Destination::Otlp`]: batch processors and a periodic reader, each with
/// its own OTLP/gRPC exporter wrapped to count what it was handed.
fn otlp_providers(
    identity: &ServiceIdentity,
    endpoint: &str,
    config: &PipelineConfig,
    resource: &Resource,
    stats: &Arc<ExportStats>,
) -> anyhow::Result<(SdkTracerProvider, SdkLoggerProvider, SdkMeterProvider)> {
    let span_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("building the span exporter of {}", identity.name))?;
    let span_processor = BatchSpanProcessor::builder(CountingSpanExporter {
        inner: span_exporter,
        stats: Arc::clone(stats),
    })
    .with_batch_config(
        SpanBatchConfigBuilder::default()
            .with_max_queue_size(config.queue_size)
            .with_max_export_batch_size(MAX_EXPORT_BATCH)
            .with_scheduled_delay(config.export_interval)
            .build(),
    )
    .build();
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_span_processor(span_processor)
        .build();

    let log_exporter = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("building the log exporter of {}", identity.name))?;
    let log_processor = BatchLogProcessor::builder(CountingLogExporter {
        inner: log_exporter,
        stats: Arc::clone(stats),
    })
    .with_batch_config(
        LogBatchConfigBuilder::default()
            .with_max_queue_size(config.queue_size)
            .with_max_export_batch_size(MAX_EXPORT_BATCH)
            .with_scheduled_delay(config.export_interval)
            .build(),
    )
    .build();
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource.clone())
        .with_log_processor(log_processor)
        .build();

    let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("building the metric exporter of {}", identity.name))?;
    let reader = PeriodicReader::builder(CountingMetricExporter {
        inner: metric_exporter,
        stats: Arc::clone(stats),
    })
    .with_interval(config.metrics_interval)
    .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(reader)
        .build();
    Ok((tracer_provider, logger_provider, meter_provider))
}

/// What a [`Destination::Memory`] pipeline holds until it is taken.
#[derive(Debug, Default)]
struct Memory {
    spans: Mutex<Vec<SpanData>>,
    logs: Mutex<Vec<(SdkLogRecord, InstrumentationScope)>>,
    metrics: Mutex<Vec<OtlpResourceMetrics>>,
}

/// A poisoned lock only means another thread panicked mid-push; the data is still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Metrics are collected only when asked ([`ServicePipeline::collect_metrics`] flushes the
/// reader), so the periodic reader's own timer is set out of the way.
const MEMORY_METRICS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The providers of [`Destination::Memory`]: processors that keep every span and record, and a
/// reader whose exporter keeps each collection as OTLP.
fn memory_providers(
    memory: &Arc<Memory>,
    resource: &Resource,
    stats: &Arc<ExportStats>,
) -> (SdkTracerProvider, SdkLoggerProvider, SdkMeterProvider) {
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_span_processor(MemorySpanProcessor {
            memory: Arc::clone(memory),
            stats: Arc::clone(stats),
        })
        .build();
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource.clone())
        .with_log_processor(MemoryLogProcessor {
            memory: Arc::clone(memory),
            stats: Arc::clone(stats),
        })
        .build();
    let reader = PeriodicReader::builder(MemoryMetricExporter {
        memory: Arc::clone(memory),
        stats: Arc::clone(stats),
    })
    .with_interval(MEMORY_METRICS_INTERVAL)
    .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(reader)
        .build();
    (tracer_provider, logger_provider, meter_provider)
}

#[derive(Debug)]
struct MemorySpanProcessor {
    memory: Arc<Memory>,
    stats: Arc<ExportStats>,
}

impl SpanProcessor for MemorySpanProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.stats.spans_exported.fetch_add(1, Ordering::Relaxed);
        lock(&self.memory.spans).push(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[derive(Debug)]
struct MemoryLogProcessor {
    memory: Arc<Memory>,
    stats: Arc<ExportStats>,
}

impl LogProcessor for MemoryLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        self.stats.logs_exported.fetch_add(1, Ordering::Relaxed);
        lock(&self.memory.logs).push((data.clone(), instrumentation.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[derive(Debug)]
struct MemoryMetricExporter {
    memory: Arc<Memory>,
    stats: Arc<ExportStats>,
}

impl PushMetricExporter for MemoryMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.stats.metric_exports.fetch_add(1, Ordering::Relaxed);
        let request = ExportMetricsServiceRequest::from(metrics);
        lock(&self.memory.metrics).extend(request.resource_metrics);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The pipelines of every simulated service.
#[derive(Debug)]
pub struct Telemetry {
    pipelines: Vec<Arc<ServicePipeline>>,
}

impl Telemetry {
    /// Starts one pipeline per identity. Must run inside a multi-thread Tokio runtime (see
    /// [`ServicePipeline::start`]).
    pub fn start(identities: &[ServiceIdentity], config: &PipelineConfig) -> anyhow::Result<Self> {
        let pipelines = identities
            .iter()
            .map(|identity| ServicePipeline::start(*identity, config).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { pipelines })
    }

    pub fn pipeline(&self, name: &str) -> anyhow::Result<&ServicePipeline> {
        self.pipelines
            .iter()
            .find(|p| p.identity.name == name)
            .map(Arc::as_ref)
            .with_context(|| format!("no telemetry pipeline for service {name}"))
    }

    pub fn pipelines(&self) -> impl Iterator<Item = &ServicePipeline> {
        self.pipelines.iter().map(Arc::as_ref)
    }

    /// Flushes and shuts down every pipeline, all services in parallel, each on a blocking
    /// thread: the SDK's flush and shutdown block until the exporter threads answer, and those
    /// exporters need the runtime's worker threads to drive their gRPC connections.
    pub async fn shutdown(&self, timeout: Duration) -> Vec<String> {
        let tasks: Vec<_> = self
            .pipelines
            .iter()
            .map(|pipeline| {
                let pipeline = Arc::clone(pipeline);
                let name = pipeline.identity.name;
                (
                    name,
                    tokio::task::spawn_blocking(move || pipeline.shutdown_blocking(timeout)),
                )
            })
            .collect();
        let mut errors = Vec::new();
        for (name, task) in tasks {
            match task.await {
                Ok(mut service_errors) => errors.append(&mut service_errors),
                Err(e) => errors.push(format!("{name}: shutdown task failed: {e}")),
            }
        }
        errors
    }
}

/// Passes spans to the OTLP exporter and counts what it was given and what failed.
#[derive(Debug)]
struct CountingSpanExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: SpanExporter> SpanExporter for CountingSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        self.stats
            .spans_exported
            .fetch_add(spans, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.stats.spans_failed.fetch_add(spans, Ordering::Relaxed);
            self.stats
                .span_exports_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    // Without this the OTLP exporter would never learn the provider's resource and every span
    // would arrive without `service.name`.
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Passes log records to the OTLP exporter and counts what it was given and what failed.
#[derive(Debug)]
struct CountingLogExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let records = batch.iter().count() as u64;
        self.stats
            .logs_exported
            .fetch_add(records, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.stats.logs_failed.fetch_add(records, Ordering::Relaxed);
            self.stats
                .log_exports_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn event_enabled(
        &self,
        level: opentelemetry::logs::Severity,
        target: &str,
        name: Option<&str>,
    ) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    // As for spans: the resource reaches the OTLP exporter only through this call.
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Passes metric collections to the OTLP exporter and counts exports and failures.
struct CountingMetricExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.stats.metric_exports.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.export(metrics).await;
        if result.is_err() {
            self.stats
                .metric_exports_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
