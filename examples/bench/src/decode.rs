//! decode-bench: OTLP decode + conversion to Arrow, against plain prost decode of the same
//! payloads in the same run (the baseline), for traces, logs and metrics.
//!
//! `cargo run --release -p oxeye-bench --bin decode-bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;
use oxeye_loadgen::shapes::{Generator, Shape};
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

// The same allocator as the `oxeye` binary, so the ratio is the one the server sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Export requests per signal
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Spans per trace request
    #[arg(long, default_value_t = 1000)]
    spans_per_request: usize,
    /// Timed rounds; the median is reported
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
    /// Only these signals (for profiling one converter), e.g. `--only metrics`
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times `f` over every payload, `rounds` times; returns the median round.
fn time(rounds: usize, payloads: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> Duration {
    // One untimed round warms caches and the allocator.
    for p in payloads {
        f(p);
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for p in payloads {
            f(p);
        }
        times.push(t.elapsed());
    }
    median(times)
}

struct Row {
    signal: &'static str,
    items: usize,
    bytes: usize,
    decode: Duration,
    decode_convert: Duration,
}

fn main() {
    let args = Args::parse();
    let shape = Shape {
        services: 8,
        operations_per_service: 5,
        depth: 4,
        fanout: 3,
        attributes: 4,
        payload_bytes: 0,
        error_rate: 0.02,
        logs_per_span: 0.5,
    };
    let mut generator = Generator::new(42, shape);
    let now = 1_764_000_000_000_000_000;
    let (mut traces, mut logs, mut metrics) = (Vec::new(), Vec::new(), Vec::new());
    let (mut spans, mut records, mut points) = (0, 0, 0);
    for i in 0..args.requests {
        let b = generator.traces(args.spans_per_request, now + i as u64 * 1_000_000);
        spans += b.spans;
        records += b.log_records;
        traces.push(b.traces.encode_to_vec());
        logs.push(b.logs.encode_to_vec());
        let (m, n) = generator.metrics(now + i as u64 * 1_000_000, now);
        points += n;
        metrics.push(m.encode_to_vec());
    }
    let bytes = |v: &Vec<Vec<u8>>| v.iter().map(Vec::len).sum::<usize>();
    let wanted = |signal: &str| args.only.is_empty() || args.only.iter().any(|o| o == signal);
    let mut rows = Vec::new();
    if wanted("traces") {
        rows.push(Row {
            signal: "traces",
            items: spans,
            bytes: bytes(&traces),
            decode: time(args.rounds, &traces, |p| {
                black_box(ExportTraceServiceRequest::decode(p).ok());
            }),
            decode_convert: time(args.rounds, &traces, |p| {
                let r = ExportTraceServiceRequest::decode(p).ok();
                black_box(r.map(|r| oxeye_model::spans::spans_from_otlp(&r).ok()));
            }),
        });
    }
    if wanted("logs") {
        rows.push(Row {
            signal: "logs",
            items: records,
            bytes: bytes(&logs),
            decode: time(args.rounds, &logs, |p| {
                black_box(ExportLogsServiceRequest::decode(p).ok());
            }),
            decode_convert: time(args.rounds, &logs, |p| {
                let r = ExportLogsServiceRequest::decode(p).ok();
                black_box(r.map(|r| oxeye_model::logs::logs_from_otlp(&r).ok()));
            }),
        });
    }
    if wanted("metrics") {
        rows.push(Row {
            signal: "metrics",
            items: points,
            bytes: bytes(&metrics),
            decode: time(args.rounds, &metrics, |p| {
                black_box(ExportMetricsServiceRequest::decode(p).ok());
            }),
            decode_convert: time(args.rounds, &metrics, |p| {
                let r = ExportMetricsServiceRequest::decode(p).ok();
                black_box(r.map(|r| oxeye_model::metrics::metrics_from_otlp(&r).ok()));
            }),
        });
    }
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "signal": r.signal,
                    "items": r.items,
                    "bytes": r.bytes,
                    "decode_items_per_s": r.items as f64 / r.decode.as_secs_f64(),
                    "decode_convert_items_per_s": r.items as f64 / r.decode_convert.as_secs_f64(),
                    "ratio": r.decode_convert.as_secs_f64() / r.decode.as_secs_f64(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
        return;
    }
    println!(
        "{:<8} {:>9} {:>9} {:>16} {:>22} {:>8}",
        "signal", "items", "MB", "prost decode/s", "decode+convert/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<8} {:>9} {:>9.1} {:>16.0} {:>22.0} {:>7.2}x",
            r.signal,
            r.items,
            r.bytes as f64 / 1e6,
            r.items as f64 / r.decode.as_secs_f64(),
            r.items as f64 / r.decode_convert.as_secs_f64(),
            r.decode_convert.as_secs_f64() / r.decode.as_secs_f64()
        );
    }
}
