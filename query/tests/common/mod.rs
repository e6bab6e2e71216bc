//! Spans for the query tests, made through OTLP as an SDK sends them.

#![allow(clippy::unwrap_used, dead_code)] // test helpers; each test uses some of them

use oxeye_model::SignalBatch;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::{AnyValue, KeyValue, any_value::Value};
use oxeye_model::otlp::resource::v1::Resource;
use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub const ROUTES: [&str; 3] = ["/a", "/b", "/c"];

/// 2023-11-14 22:13:20 UTC, when span 0 starts.
pub const EPOCH_NS: u64 = 1_700_000_000_000_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        key_strindex: 0,
    }
}

/// Spans `first..first + n` of service `api`. Span i is in trace i / 4, starts `i * spacing_ns`
/// after [`EPOCH_NS`], has `user.id` = `user-{i % 7}` and `http.route` = `ROUTES[i % 3]` except
/// every fourth span, which has no route; `shape(i)` gives its name and duration (ns).
pub fn numbered_spans(
    first: u64,
    n: u64,
    spacing_ns: u64,
    shape: impl Fn(u64) -> (&'static str, u64),
) -> SignalBatch {
    let spans = (first..first + n)
        .map(|i| {
            let mut attributes = vec![kv("user.id", &format!("user-{}", i % 7))];
            if let Some(route) = route_of(i) {
                attributes.push(kv("http.route", route));
            }
            let (name, duration) = shape(i);
            let start = EPOCH_NS + i * spacing_ns;
            Span {
                trace_id: (i / 4 + 1).to_be_bytes().repeat(2),
                span_id: (i + 1).to_be_bytes().to_vec(),
                name: name.into(),
                start_time_unix_nano: start,
                end_time_unix_nano: start + duration,
                attributes,
                ..Default::default()
            }
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "api")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    oxeye_model::spans::spans_from_otlp(&request)
        .unwrap()
        .batches
        .remove(0)
}

/// The `http.route` of span i, if it has one.
pub fn route_of(i: u64) -> Option<&'static str> {
    (!i.is_multiple_of(4)).then(|| ROUTES[(i % 3) as usize])
}

/// How many of spans 0..n have `route`.
pub fn spans_with_route(route: &str, n: u64) -> usize {
    (0..n).filter(|i| route_of(*i) == Some(route)).count()
}
