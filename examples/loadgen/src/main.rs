//! oxeye-loadgen: sends seeded, realistic OTLP traces, logs and metrics to an OTLP endpoint
//! (oxeye or any collector) over gRPC or HTTP, with N connections, at a target rate or as fast
//! as acknowledgements come back, and reports what was acknowledged, rejected and retried and
//! how long acknowledgements took.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::transport::Channel;

use oxeye_loadgen::demo::{DemoWorkload, LargeTraces};
use oxeye_loadgen::shapes::{Generator, Shape, TraceBatch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Grpc,
    Http,
}

/// Send OTLP load to an endpoint and report what happened.
#[derive(Debug, Parser)]
#[command(name = "oxeye-loadgen", version)]
struct Args {
    /// OTLP endpoint: http://host:4317 for gRPC, http://host:4318 for HTTP
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Concurrent connections, each with its own client
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Target spans per second over all connections; 0 sends as fast as acknowledgements return
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stop after this long (e.g. 30s)
    #[arg(long, default_value = "10s")]
    duration: humantime::Duration,
    /// Stop after this many spans instead (0: no count limit)
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Spans per trace export request
    #[arg(long, default_value_t = 1000)]
    batch_spans: usize,
    /// Which signals to send
    #[arg(long, value_delimiter = ',', default_value = "traces,logs,metrics")]
    signals: Vec<String>,
    /// Seed of the generator (each connection derives its own from it)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 8)]
    services: usize,
    #[arg(long, default_value_t = 5)]
    operations: usize,
    /// Deepest span nesting
    #[arg(long, default_value_t = 4)]
    depth: u32,
    /// Most children per span
    #[arg(long, default_value_t = 3)]
    fanout: u32,
    /// Extra attributes per span
    #[arg(long, default_value_t = 4)]
    attributes: usize,
    /// Random payload bytes per span (0: none)
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 0.02)]
    error_rate: f64,
    /// Log records per span on average
    #[arg(long, default_value_t = 0.5)]
    logs_per_span: f64,
    /// How often each connection sends a metrics collection
    #[arg(long, default_value = "1s")]
    metrics_interval: humantime::Duration,
    /// Gzip request bodies
    #[arg(long)]
    gzip: bool,
    /// Retries of a retryable failure before giving up on a request
    #[arg(long, default_value_t = 8)]
    max_retries: u32,
    /// What to send: `synthetic` (the shape flags above) or `demo` (oxeye-demo's simulated
    /// shop, run through the OpenTelemetry SDK: its services, spans, logs and metrics in its
    /// proportions; the shape flags other than --error-rate do not apply)
    #[arg(long, value_enum, default_value = "synthetic")]
    workload: WorkloadKind,
    /// `--workload demo`: run the catalog import (one large trace) every this many shop
    /// requests per connection (0: never)
    #[arg(long, default_value_t = 500)]
    large_trace_every: u64,
    /// `--workload demo`: spans per catalog import trace
    #[arg(long, default_value_t = 12_000)]
    large_trace_spans: u64,
    /// Print the summary as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadKind {
    Synthetic,
    Demo,
}

/// Where a connection's telemetry comes from.
enum Workload {
    Synthetic(Generator),
    Demo(Box<DemoWorkload>),
}

impl Workload {
    fn new(args: &Args, seed: u64) -> anyhow::Result<Workload> {
        Ok(match args.workload {
            WorkloadKind::Synthetic => Workload::Synthetic(Generator::new(seed, shape(args))),
            WorkloadKind::Demo => Workload::Demo(Box::new(DemoWorkload::new(
                seed,
                args.error_rate,
                LargeTraces {
                    every_requests: args.large_trace_every,
                    spans: args.large_trace_spans,
                },
            )?)),
        })
    }

    async fn traces(&mut self, target_spans: usize) -> TraceBatch {
        match self {
            Workload::Synthetic(g) => g.traces(target_spans, now_ns()),
            Workload::Demo(d) => d.traces(target_spans).await,
        }
    }

    fn metrics(&mut self, start_ns: u64) -> anyhow::Result<(ExportMetricsServiceRequest, usize)> {
        match self {
            Workload::Synthetic(g) => Ok(g.metrics(now_ns(), start_ns)),
            Workload::Demo(d) => d.metrics(),
        }
    }
}

#[derive(Default)]
struct Counters {
    spans_sent: AtomicU64,
    spans_acked: AtomicU64,
    spans_rejected: AtomicU64,
    logs_acked: AtomicU64,
    logs_rejected: AtomicU64,
    points_acked: AtomicU64,
    points_rejected: AtomicU64,
    requests: AtomicU64,
    failed_requests: AtomicU64,
    retries: AtomicU64,
    bytes: AtomicU64,
    trace_bytes: AtomicU64,
    log_bytes: AtomicU64,
    metric_bytes: AtomicU64,
}

/// Per-connection latencies of acknowledged requests, in microseconds.
#[derive(Default)]
struct Latencies(Vec<u32>);

enum Client {
    Grpc {
        traces: TraceServiceClient<Channel>,
        logs: LogsServiceClient<Channel>,
        metrics: MetricsServiceClient<Channel>,
    },
    Http {
        client: reqwest::Client,
        base: String,
        gzip: bool,
    },
}

/// What an attempt returned.
enum Outcome {
    /// Accepted, with this many items rejected by partial success.
    Accepted(u64),
    Retryable(String, Option<Duration>),
    Failed(String),
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Client {
    async fn connect(args: &Args) -> anyhow::Result<Client> {
        match args.protocol {
            Protocol::Grpc => {
                let channel = Channel::from_shared(args.endpoint.clone())
                    .context("bad endpoint")?
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {}", args.endpoint))?;
                let max = 64 * 1024 * 1024;
                let (mut t, mut l, mut m) = (
                    TraceServiceClient::new(channel.clone()).max_decoding_message_size(max),
                    LogsServiceClient::new(channel.clone()).max_decoding_message_size(max),
                    MetricsServiceClient::new(channel).max_decoding_message_size(max),
                );
                if args.gzip {
                    use tonic::codec::CompressionEncoding::Gzip;
                    t = t.send_compressed(Gzip);
                    l = l.send_compressed(Gzip);
                    m = m.send_compressed(Gzip);
                }
                Ok(Client::Grpc {
                    traces: t,
                    logs: l,
                    metrics: m,
                })
            }
            Protocol::Http => Ok(Client::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .context("cannot build the HTTP client")?,
                base: args.endpoint.trim_end_matches('/').to_string(),
                gzip: args.gzip,
            }),
        }
    }

    fn grpc_outcome<T>(
        r: Result<tonic::Response<T>, tonic::Status>,
        rejected: impl Fn(&T) -> i64,
    ) -> Outcome {
        match r {
            Ok(resp) => Outcome::Accepted(rejected(resp.get_ref()).max(0) as u64),
            Err(status) => match status.code() {
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                    Outcome::Retryable(status.message().to_string(), None)
                }
                code => Outcome::Failed(format!("{code:?}: {}", status.message())),
            },
        }
    }

    async fn http<Resp: Message + Default>(
        &self,
        path: &str,
        body: Vec<u8>,
        rejected: impl Fn(&Resp) -> i64,
    ) -> Outcome {
        let Client::Http { client, base, gzip } = self else {
            return Outcome::Failed("not an HTTP client".into());
        };
        let mut req = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-protobuf");
        let body = if *gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            if enc.write_all(&body).is_err() {
                return Outcome::Failed("gzip failed".into());
            }
            req = req.header("content-encoding", "gzip");
            enc.finish().unwrap_or_default()
        } else {
            body
        };
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let bytes = resp.bytes().await.unwrap_or_default();
                if status.is_success() {
                    Outcome::Accepted(
                        Resp::decode(bytes)
                            .map(|r| rejected(&r).max(0) as u64)
                            .unwrap_or(0),
                    )
                } else if status.as_u16() == 429 || status.as_u16() == 503 {
                    Outcome::Retryable(format!("HTTP {status}"), retry_after)
                } else {
                    Outcome::Failed(format!("HTTP {status}"))
                }
            }
            Err(e) if e.is_connect() || e.is_timeout() => Outcome::Retryable(e.to_string(), None),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn send_traces(&mut self, r: &ExportTraceServiceRequest) -> Outcome {
        let rej = |x: &ExportTraceServiceResponse| {
            x.partial_success
                .as_ref()
                .map(|p| p.rejected_spans)
                .unwrap_or(0)
        };
        match self {
            Client::Grpc { traces, .. } => Self::grpc_outcome(traces.export(r.clone()).await, rej),
            Client::Http { .. } => self.http("/v1/traces", r.encode_to_vec(), rej).await,
        }
    }

    async fn send_logs(&mut self, r: &ExportLogsServiceRequest) -> Outcome {
        let rej = |x: &ExportLogsServiceResponse| {
            x.partial_success
                .as_ref()
                .map(|p| p.rejected_log_records)
                .unwrap_or(0)
        };
        match self {
            Client::Grpc { logs, .. } => Self::grpc_outcome(logs.export(r.clone()).await, rej),
            Client::Http { .. } => self.http("/v1/logs", r.encode_to_vec(), rej).await,
        }
    }

    async fn send_metrics(&mut self, r: &ExportMetricsServiceRequest) -> Outcome {
        let rej = |x: &ExportMetricsServiceResponse| {
            x.partial_success
                .as_ref()
                .map(|p| p.rejected_data_points)
                .unwrap_or(0)
        };
        match self {
            Client::Grpc { metrics, .. } => {
                Self::grpc_outcome(metrics.export(r.clone()).await, rej)
            }
            Client::Http { .. } => self.http("/v1/metrics", r.encode_to_vec(), rej).await,
        }
    }
}

enum Request {
    Traces(ExportTraceServiceRequest),
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// Sends one request with retries; returns the items rejected, or None when it failed.
async fn send(
    client: &mut Client,
    request: &Request,
    counters: &Counters,
    latencies: &mut Latencies,
    max_retries: u32,
) -> Option<u64> {
    let mut backoff = Duration::from_millis(50);
    for attempt in 0..=max_retries {
        let started = Instant::now();
        let outcome = match request {
            Request::Traces(r) => client.send_traces(r).await,
            Request::Logs(r) => client.send_logs(r).await,
            Request::Metrics(r) => client.send_metrics(r).await,
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Accepted(rejected) => {
                latencies
                    .0
                    .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                return Some(rejected);
            }
            Outcome::Retryable(reason, after) => {
                if attempt == max_retries {
                    eprintln!("giving up after {max_retries} retries: {reason}");
                    break;
                }
                counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(after.unwrap_or(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Outcome::Failed(reason) => {
                eprintln!("request failed: {reason}");
                break;
            }
        }
    }
    counters.failed_requests.fetch_add(1, Ordering::Relaxed);
    None
}

fn shape(args: &Args) -> Shape {
    Shape {
        services: args.services,
        operations_per_service: args.operations,
        depth: args.depth,
        fanout: args.fanout,
        attributes: args.attributes,
        payload_bytes: args.payload_bytes,
        error_rate: args.error_rate,
        logs_per_span: args.logs_per_span,
    }
}

async fn worker(
    id: usize,
    args: Arc<Args>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Latencies> {
    let mut client = Client::connect(&args).await?;
    let mut workload = Workload::new(&args, args.seed.wrapping_add(id as u64 * 0x9e37_79b9))?;
    let want = |s: &str| args.signals.iter().any(|x| x == s);
    let (traces, logs, metrics) = (want("traces"), want("logs"), want("metrics"));
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let per_worker_rate = args.rate / args.connections.max(1) as f64;
    let mut my_spans = 0u64;
    let mut next_metrics = Instant::now();
    let metrics_start = now_ns();
    while !stop.load(Ordering::Relaxed) {
        if traces || logs {
            let batch = workload.traces(args.batch_spans).await;
            let spans = batch.spans as u64;
            if args.count > 0
                && counters.spans_sent.fetch_add(spans, Ordering::Relaxed) >= args.count
            {
                break;
            }
            if per_worker_rate > 0.0 {
                let due = started + Duration::from_secs_f64(my_spans as f64 / per_worker_rate);
                tokio::time::sleep_until(due.into()).await;
            }
            my_spans += spans;
            if traces {
                let req = Request::Traces(batch.traces);
                counters
                    .bytes
                    .fetch_add(encoded_len(&req) as u64, Ordering::Relaxed);
                counters
                    .trace_bytes
                    .fetch_add(encoded_len(&req) as u64, Ordering::Relaxed);
                if let Some(rejected) = send(
                    &mut client,
                    &req,
                    &counters,
                    &mut latencies,
                    args.max_retries,
                )
                .await
                {
                    counters
                        .spans_acked
                        .fetch_add(spans - rejected, Ordering::Relaxed);
                    counters
                        .spans_rejected
                        .fetch_add(rejected, Ordering::Relaxed);
                }
            }
            if logs && batch.log_records > 0 {
                let req = Request::Logs(batch.logs);
                counters
                    .bytes
                    .fetch_add(encoded_len(&req) as u64, Ordering::Relaxed);
                counters
                    .log_bytes
                    .fetch_add(encoded_len(&req) as u64, Ordering::Relaxed);
                if let Some(rejected) = send(
                    &mut client,
                    &req,
                    &counters,
                    &mut latencies,
                    args.max_retries,
                )
                .await
                {
                    counters
                        .logs_acked
                        .fetch_add(batch.log_records as u64 - rejected, Ordering::Relaxed);
                    counters
                        .logs_rejected
                        .fetch_add(rejected, Ordering::Relaxed);
                }
            }
        }
        if metrics && Instant::now() >= next_metrics {
            next_metrics += *args.metrics_interval;
            let (req, points) = workload.metrics(metrics_start)?;
            let req = Request::Metrics(req);
            counters
                .bytes
                .fetch_add(encoded_len(&req) as u64, Ordering::Relaxed);
            counters
                .metric_bytes
                .fetch_add(encoded_len(&req) as u64, Ordering::Relaxed);
            if let Some(rejected) = send(
                &mut client,
                &req,
                &counters,
                &mut latencies,
                args.max_retries,
            )
            .await
            {
                counters
                    .points_acked
                    .fetch_add(points as u64 - rejected, Ordering::Relaxed);
                counters
                    .points_rejected
                    .fetch_add(rejected, Ordering::Relaxed);
            }
            if !(traces || logs) {
                tokio::time::sleep_until(next_metrics.into()).await;
            }
        }
    }
    Ok(latencies)
}

fn encoded_len(r: &Request) -> usize {
    match r {
        Request::Traces(r) => r.encoded_len(),
        Request::Logs(r) => r.encoded_len(),
        Request::Metrics(r) => r.encoded_len(),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(worker(i, args.clone(), counters.clone(), stop.clone())))
        .collect();
    let deadline = tokio::time::sleep(*args.duration);
    tokio::pin!(deadline);
    let all_done = futures_join(workers);
    tokio::pin!(all_done);
    let results = tokio::select! {
        r = &mut all_done => r,
        _ = &mut deadline => {
            stop.store(true, Ordering::Relaxed);
            all_done.await
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    for r in results {
        latencies.extend(r.context("worker panicked")??.0);
    }
    latencies.sort_unstable();
    let c = &counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = serde_json::json!({
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "connections": args.connections,
        "seconds": elapsed,
        "spans_acked": get(&c.spans_acked),
        "spans_rejected": get(&c.spans_rejected),
        "logs_acked": get(&c.logs_acked),
        "logs_rejected": get(&c.logs_rejected),
        "points_acked": get(&c.points_acked),
        "points_rejected": get(&c.points_rejected),
        "spans_per_second": get(&c.spans_acked) as f64 / elapsed,
        "logs_per_second": get(&c.logs_acked) as f64 / elapsed,
        "points_per_second": get(&c.points_acked) as f64 / elapsed,
        "requests": get(&c.requests),
        "failed_requests": get(&c.failed_requests),
        "retries": get(&c.retries),
        "request_bytes": get(&c.bytes),
        "trace_request_bytes": get(&c.trace_bytes),
        "log_request_bytes": get(&c.log_bytes),
        "metric_request_bytes": get(&c.metric_bytes),
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{:.1}s over {} {} connection(s)\n  spans  acked {:>10}  rejected {:>6}  {:>10.0}/s\n  logs   acked {:>10}  rejected {:>6}  {:>10.0}/s\n  points acked {:>10}  rejected {:>6}  {:>10.0}/s\n  requests {} (failed {}, retries {}), {:.1} MB sent\n  ack latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            elapsed,
            args.connections,
            summary["protocol"].as_str().unwrap_or(""),
            get(&c.spans_acked),
            get(&c.spans_rejected),
            summary["spans_per_second"].as_f64().unwrap_or(0.0),
            get(&c.logs_acked),
            get(&c.logs_rejected),
            summary["logs_per_second"].as_f64().unwrap_or(0.0),
            get(&c.points_acked),
            get(&c.points_rejected),
            summary["points_per_second"].as_f64().unwrap_or(0.0),
            get(&c.requests),
            get(&c.failed_requests),
            get(&c.retries),
            get(&c.bytes) as f64 / 1e6,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
    }
    if get(&c.failed_requests) > 0 {
        std::process::exit(2);
    }
    Ok(())
}

async fn futures_join<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}
