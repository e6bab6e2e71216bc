//! Batches and segment metadata for unit tests.

use oxeye_model::SignalBatch;
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::{AnyValue, KeyValue, any_value::Value};
use oxeye_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use oxeye_model::otlp::resource::v1::Resource;
use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        key_strindex: 0,
    }
}

/// `n` spans numbered from `first`, ten per trace, three services.
pub fn spans_batch(first: u64, n: u64) -> SignalBatch {
    let resource_spans = (0..3)
        .map(|svc| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", &format!("svc-{svc}"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (first..first + n)
                    .filter(|i| i % 3 == svc)
                    .map(|i| {
                        let trace = i / 10;
                        let mut trace_id = [0u8; 16];
                        // Ids that do not sort in time order, as real ones do not.
                        trace_id[..8].copy_from_slice(
                            &(trace + 1)
                                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                                .to_be_bytes(),
                        );
                        trace_id[8..].copy_from_slice(&(trace + 1).to_be_bytes());
                        Span {
                            trace_id: trace_id.to_vec(),
                            span_id: (i + 1).to_be_bytes().to_vec(),
                            name: format!("op-{}", i % 5),
                            start_time_unix_nano: 1_700_000_000_000_000_000 + i * 1_000_000,
                            end_time_unix_nano: 1_700_000_000_000_000_000 + i * 1_000_000 + 500,
                            attributes: vec![kv("http.request.method", "GET")],
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest { resource_spans };
    let mut converted = oxeye_model::spans::spans_from_otlp(&request).expect("valid spans");
    converted.batches.remove(0)
}

pub fn logs_batch_with_bodies(bodies: &[&str]) -> SignalBatch {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "api")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: bodies
                    .iter()
                    .enumerate()
                    .map(|(i, b)| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                        body: Some(AnyValue {
                            value: Some(Value::StringValue(b.to_string())),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut converted = oxeye_model::logs::logs_from_otlp(&request).expect("valid logs");
    converted.batches.remove(0)
}

/// Metadata of a spans segment `id` of `shard` (its files need not exist).
pub fn segment_meta(id: &str, shard: u32) -> crate::SegmentMeta {
    crate::SegmentMeta {
        id: id.into(),
        signal: oxeye_model::Signal::Spans,
        shard,
        data_path: format!("{id}.parquet"),
        index_path: format!("{id}.index"),
        min_time: 0,
        max_time: 10,
        rows: 5,
        data_bytes: 100,
        index_bytes: 10,
        granule_rows: 1024,
        level: 0,
        created_unix_ms: 0,
    }
}
