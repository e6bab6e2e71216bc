//! oxeye-demo: a small simulated shop instrumented with the OpenTelemetry Rust SDK, to see what
//! oxeye shows for realistic traffic.
//!
//! Five services run in this one process, each with its own OpenTelemetry resource and its own
//! tracer, meter and logger provider exporting OTLP/gRPC, exactly as five separate processes
//! would:
//!
//! - `frontend` (HTTP edge) serves product pages from a Redis cache or from `inventory`, adds to
//!   carts, and hands orders to `checkout`;
//! - `checkout` reserves every cart item at `inventory` concurrently (fan-out), charges through
//!   `payments` with timeouts and retries, stores the order in PostgreSQL and publishes a Kafka
//!   event;
//! - `payments` calls a card gateway that sometimes hangs or declines;
//! - `inventory` (gRPC) owns the product database, with occasional slow queries;
//! - `catalog-importer` runs a "nightly catalog import": one trace with 10,000+ spans.
//!
//! Calls between services propagate the W3C trace context through a header map, so downstream
//! spans are children of the caller's CLIENT span. Spans get explicit timestamps from simulated
//! latencies (log-normal, with long tails), so nothing sleeps and the demo can produce traffic
//! at any `--rate`. About `--error-rate` of the requests fail somewhere down the chain with an
//! exception event; logs (INFO, WARN on retries and slow paths, ERROR on failures) carry the
//! trace and span ids; metrics include request counters, duration histograms, a queue-depth
//! gauge and a connection-pool up/down counter.
//!
//! Run it against `oxeye serve`:
//!
//! ```sh
//! cargo run --release -p oxeye-demo -- --duration 60s
//! ```
//!
//! On exit (duration or request count reached, or Ctrl-C) it flushes and shuts down every
//! provider and prints one JSON line on stdout: request and error counts, spans and log records
//! created and exported, the trace ids of the large traces and a sample of the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use oxeye_demo::catalog::{self, CatalogImporter, LargeTrace};
use oxeye_demo::shop::{self, RequestOutcome, Shop};
use oxeye_demo::telemetry::{Destination, PipelineConfig, ServiceIdentity, Telemetry};

/// How many trace ids of ordinary (and of failed) requests the summary lists.
const TRACE_ID_SAMPLE: usize = 5;
/// Accepted `--rate` range: the tick period must be neither zero nor absurdly long.
const MIN_RATE: f64 = 0.01;
const MAX_RATE: f64 = 100_000.0;
/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Simulated shop sending traces, logs and metrics to oxeye through the OpenTelemetry SDK.
#[derive(Debug, Parser)]
#[command(name = "oxeye-demo", version)]
struct Args {
    /// OTLP/gRPC endpoint
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        default_value = "http://127.0.0.1:4317"
    )]
    endpoint: String,
    /// Frontend requests per second
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Stop after this long (e.g. 60s, 5m); without it and without --requests, run until Ctrl-C
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Stop after this many frontend requests
    #[arg(long)]
    requests: Option<u64>,
    /// Seed of the simulation (routes, latencies, failures); random when not given. Trace ids
    /// come from the SDK's random id generator either way
    #[arg(long)]
    seed: Option<u64>,
    /// Share of frontend requests that fail (5xx) somewhere down the call chain
    #[arg(long, default_value_t = 0.02)]
    error_rate: f64,
    /// Spans in each large trace (the nightly catalog import); 0 disables large traces
    #[arg(long, default_value_t = 12_000)]
    large_trace_spans: u64,
    /// Start another large trace after every this many frontend requests; the first one starts
    /// with the run. 0: only that first one
    #[arg(long, default_value_t = 500)]
    large_trace_every: u64,
    /// Interval of each service's periodic metric export
    #[arg(long, default_value = "5s")]
    metrics_interval: humantime::Duration,
    /// Longest a finished span or log record waits before its batch is exported
    #[arg(long, default_value = "1s")]
    export_interval: humantime::Duration,
    /// Capacity of each service's span and log queues; the SDK drops what does not fit
    #[arg(long, default_value_t = 16_384)]
    queue_size: usize,
    /// Upper bound for flushing and shutting down each pipeline at exit
    #[arg(long, default_value = "30s")]
    shutdown_timeout: humantime::Duration,
    /// `deployment.environment` of every service
    #[arg(long, default_value = "demo")]
    environment: String,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if !(MIN_RATE..=MAX_RATE).contains(&self.rate) {
            bail!("--rate must be between {MIN_RATE} and {MAX_RATE} requests per second");
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            bail!("--error-rate must be between 0 and 1");
        }
        if self.queue_size < 1024 {
            bail!("--queue-size must be at least 1024 (two export batches)");
        }
        if self.metrics_interval.is_zero() || self.export_interval.is_zero() {
            bail!("--metrics-interval and --export-interval must be positive");
        }
        Ok(())
    }
}

/// What the request loop produced.
#[derive(Debug, Default)]
struct Traffic {
    requests: u64,
    errors: u64,
    statuses: BTreeMap<String, u64>,
    trace_ids: Vec<String>,
    error_trace_ids: Vec<String>,
    large_traces: Vec<LargeTrace>,
    interrupted: bool,
}

impl Traffic {
    fn record(&mut self, outcome: RequestOutcome) {
        self.requests += 1;
        *self.statuses.entry(outcome.status.to_string()).or_default() += 1;
        if self.trace_ids.len() < TRACE_ID_SAMPLE {
            self.trace_ids.push(outcome.trace_id.to_string());
        }
        if outcome.is_error() {
            self.errors += 1;
            if self.error_trace_ids.len() < TRACE_ID_SAMPLE {
                self.error_trace_ids.push(outcome.trace_id.to_string());
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.validate()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    // OTEL_EXPORTER_OTLP_ENDPOINT is often set for an HTTP SDK; this demo only speaks gRPC.
    if args.endpoint.trim_end_matches('/').ends_with(":4318") {
        eprintln!(
            "oxeye-demo: warning: {} looks like the OTLP/HTTP port; oxeye-demo exports OTLP/gRPC (4317)",
            args.endpoint
        );
    }

    let config = PipelineConfig {
        destination: Destination::Otlp(args.endpoint.clone()),
        queue_size: args.queue_size,
        export_interval: args.export_interval.into(),
        metrics_interval: args.metrics_interval.into(),
        environment: args.environment.clone(),
    };
    let identities: Vec<ServiceIdentity> = shop::SERVICES
        .iter()
        .copied()
        .chain([catalog::IDENTITY])
        .collect();
    // Built here, inside the runtime: the tonic channels of the exporters need it.
    let telemetry =
        Telemetry::start(&identities, &config).context("starting the OpenTelemetry pipelines")?;
    let shop = Shop::new(&telemetry, args.error_rate)?;
    let importer = Arc::new(CatalogImporter::new(&telemetry, args.queue_size)?);

    eprintln!(
        "oxeye-demo: {} services -> {} at {} requests/s (seed {seed}); Ctrl-C stops",
        identities.len(),
        args.endpoint,
        args.rate
    );
    let started = Instant::now();
    let traffic = drive(&args, &shop, &importer, seed).await;
    let elapsed = started.elapsed();

    eprintln!("oxeye-demo: flushing and shutting down the pipelines");
    let shutdown_errors = telemetry.shutdown(args.shutdown_timeout.into()).await;
    for error in &shutdown_errors {
        eprintln!("oxeye-demo: {error}");
    }
    println!(
        "{}",
        summary(&args, seed, elapsed, &traffic, &telemetry, &shutdown_errors)
    );
    Ok(())
}

/// Sends requests at `--rate` until the duration or request count is reached or Ctrl-C, with
/// large traces started alongside, and waits for those to finish.
async fn drive(args: &Args, shop: &Shop, importer: &Arc<CatalogImporter>, seed: u64) -> Traffic {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut traffic = Traffic::default();
    let mut jobs: Vec<JoinHandle<LargeTrace>> = Vec::new();
    let start_large_trace = |rng: &mut SmallRng, jobs: &mut Vec<JoinHandle<LargeTrace>>| {
        if args.large_trace_spans > 0 {
            let importer = Arc::clone(importer);
            let (job_seed, spans) = (rng.random::<u64>(), args.large_trace_spans);
            jobs.push(tokio::spawn(
                async move { importer.run(job_seed, spans).await },
            ));
        }
    };
    // The first large trace starts with the run, so every run has one.
    start_large_trace(&mut rng, &mut jobs);

    let deadline = args
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from(d));
    let deadline_reached = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline_reached);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    // After a stall (e.g. a busy machine), continue at the rate instead of bursting to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_progress = Instant::now();

    loop {
        if args.requests.is_some_and(|max| traffic.requests >= max) {
            break;
        }
        tokio::select! {
            biased;
            result = &mut ctrl_c => {
                if let Err(e) = result {
                    eprintln!("oxeye-demo: cannot listen for Ctrl-C ({e}); stopping");
                }
                traffic.interrupted = true;
                break;
            }
            () = &mut deadline_reached => break,
            _ = ticker.tick() => {}
        }
        traffic.record(shop.handle_request(&mut rng));
        if args.large_trace_every > 0 && traffic.requests.is_multiple_of(args.large_trace_every) {
            start_large_trace(&mut rng, &mut jobs);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "oxeye-demo: {} requests, {} errors, {} large traces started",
                traffic.requests,
                traffic.errors,
                jobs.len()
            );
        }
    }

    for job in jobs {
        match job.await {
            Ok(large) => traffic.large_traces.push(large),
            Err(e) => eprintln!("oxeye-demo: a large-trace job failed: {e}"),
        }
    }
    traffic
}

/// The one-line JSON summary on stdout.
fn summary(
    args: &Args,
    seed: u64,
    elapsed: Duration,
    traffic: &Traffic,
    telemetry: &Telemetry,
    shutdown_errors: &[String],
) -> serde_json::Value {
    #[derive(Default)]
    struct Totals {
        spans_ended: u64,
        spans_exported: u64,
        spans_failed: u64,
        span_exports_failed: u64,
        logs_emitted: u64,
        logs_exported: u64,
        logs_failed: u64,
        log_exports_failed: u64,
        metric_exports: u64,
        metric_exports_failed: u64,
    }
    let mut totals = Totals::default();
    let mut services = serde_json::Map::new();
    for pipeline in telemetry.pipelines() {
        let s = &pipeline.stats;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let spans = load(&s.spans_ended);
        let logs = load(&s.logs_emitted);
        totals.spans_ended += spans;
        totals.spans_exported += load(&s.spans_exported);
        totals.spans_failed += load(&s.spans_failed);
        totals.span_exports_failed += load(&s.span_exports_failed);
        totals.logs_emitted += logs;
        totals.logs_exported += load(&s.logs_exported);
        totals.logs_failed += load(&s.logs_failed);
        totals.log_exports_failed += load(&s.log_exports_failed);
        totals.metric_exports += load(&s.metric_exports);
        totals.metric_exports_failed += load(&s.metric_exports_failed);
        services.insert(
            pipeline.identity.name.to_string(),
            serde_json::json!({ "spans": spans, "log_records": logs }),
        );
    }
    let large_traces: Vec<&str> = traffic
        .large_traces
        .iter()
        .map(|large| large.trace_id.as_str())
        .collect();
    let large_trace_spans: Vec<u64> = traffic.large_traces.iter().map(|l| l.spans).collect();
    let export_errors =
        totals.span_exports_failed + totals.log_exports_failed + totals.metric_exports_failed;
    let elapsed_s = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
    serde_json::json!({
        "requests": traffic.requests,
        "errors": traffic.errors,
        "statuses": traffic.statuses,
        "spans_created": totals.spans_ended,
        "log_records": totals.logs_emitted,
        "large_traces": large_traces,
        "large_trace_spans": large_trace_spans,
        "trace_ids": traffic.trace_ids,
        "error_trace_ids": traffic.error_trace_ids,
        // Handed to the exporter, whatever the outcome; created minus exported never left the
        // SDK's queue (dropped when full, or still queued when shutdown gave up).
        "spans_exported": totals.spans_exported,
        "spans_dropped": totals.spans_ended.saturating_sub(totals.spans_exported),
        "spans_export_failed": totals.spans_failed,
        "logs_exported": totals.logs_exported,
        "logs_dropped": totals.logs_emitted.saturating_sub(totals.logs_exported),
        "logs_export_failed": totals.logs_failed,
        "metric_exports": totals.metric_exports,
        "metric_exports_failed": totals.metric_exports_failed,
        "export_errors": export_errors,
        "shutdown_errors": shutdown_errors,
        "services": services,
        "interrupted": traffic.interrupted,
        "seed": seed,
        "endpoint": args.endpoint,
        "elapsed_s": elapsed_s,
    })
}
