//! OTLP export requests from bytes: decompression (gzip, zstd), protobuf or JSON decoding, the
//! attribute caps and conversion to Arrow, for traces, logs and metrics; what converts must
//! also convert back. The first byte picks signal, encoding and compression.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use oxeye_collector::decode::{Compression, Encoding, decode, decompress};
use oxeye_collector::limits::AttributeLimits;
use oxeye_collector::pipeline::OtlpExport;
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::{Signal, SignalBatch};

fn round_trip(batches: &[SignalBatch]) {
    for signal in [Signal::Spans, Signal::Logs] {
        let of: Vec<_> = batches
            .iter()
            .filter(|b| b.signal == signal)
            .map(|b| b.batch.clone())
            .collect();
        if of.is_empty() {
            continue;
        }
        let back = match signal {
            Signal::Spans => oxeye_model::spans::spans_to_otlp(&of).map(|_| ()),
            _ => oxeye_model::logs::logs_to_otlp(&of).map(|_| ()),
        };
        if let Err(e) = back {
            panic!("rows the converter produced do not convert back: {e}");
        }
    }
}

fn run<R: OtlpExport>(body: &[u8], encoding: Encoding) {
    let Ok(mut request) = decode::<R>(body, encoding) else {
        return;
    };
    let _ = request.limit(&AttributeLimits::default());
    if let Ok(converted) = request.convert() {
        round_trip(&converted.batches);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let encoding = if pick & 1 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let compression = match (pick >> 1) % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let Ok(body) = decompress(Bytes::copy_from_slice(body), compression, 4 << 20) else {
        return;
    };
    match (pick >> 3) % 3 {
        0 => run::<ExportTraceServiceRequest>(&body, encoding),
        1 => run::<ExportLogsServiceRequest>(&body, encoding),
        _ => run::<ExportMetricsServiceRequest>(&body, encoding),
    }
});
