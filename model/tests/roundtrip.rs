//! Property tests: random OTLP requests -> Arrow -> OTLP give back every field.
//!
//! Requests are compared after flattening each item into its own resource and scope container
//! (the grouping of items into containers is not information oxeye keeps), and after two
//! normalisations OTLP itself treats as equal: an absent `resource` / `scope` is the same as an
//! empty one, and an absent `status` is the same as an empty (UNSET) one. Items the conversion
//! must reject (invalid ids, unnamed metrics) are left out of the expectation and counted.
//! Comparison is on protobuf bytes, so NaN payloads must survive bit for bit too.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use oxeye_model::logs::{logs_from_otlp, logs_to_otlp};
use oxeye_model::metrics::{metrics_from_otlp, metrics_to_otlp, point_count};
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use oxeye_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use oxeye_model::otlp::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use oxeye_model::otlp::resource::v1::Resource;
use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use oxeye_model::spans::{spans_from_otlp, spans_to_otlp};
use oxeye_model::{Signal, ids};
use proptest::prelude::*;
use prost::Message;

fn any_value(depth: u32) -> BoxedStrategy<AnyValue> {
    use any_value::Value;
    let leaf = prop_oneof![
        3 => ".{0,12}".prop_map(|s| Some(Value::StringValue(s))),
        1 => any::<bool>().prop_map(|b| Some(Value::BoolValue(b))),
        2 => any::<i64>().prop_map(|i| Some(Value::IntValue(i))),
        2 => any::<f64>().prop_map(|d| Some(Value::DoubleValue(d))),
        1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| Some(Value::BytesValue(b))),
        1 => any::<i32>().prop_map(|i| Some(Value::StringValueStrindex(i))),
        1 => Just(None),
    ];
    if depth == 0 {
        return leaf.prop_map(|value| AnyValue { value }).boxed();
    }
    prop_oneof![
        6 => leaf,
        1 => proptest::collection::vec(any_value(depth - 1), 0..3)
            .prop_map(|values| Some(Value::ArrayValue(ArrayValue { values }))),
        1 => proptest::collection::vec(key_value(depth - 1), 0..3)
            .prop_map(|values| Some(Value::KvlistValue(KeyValueList { values }))),
    ]
    .prop_map(|value| AnyValue { value })
    .boxed()
}

fn key_value(depth: u32) -> BoxedStrategy<KeyValue> {
    (
        prop_oneof![
            "[a-z.]{1,10}",
            Just("http.request.method".to_string()),
            Just(String::new())
        ],
        prop_oneof![8 => any_value(depth).prop_map(Some), 1 => Just(None)],
        prop_oneof![9 => Just(0i32), 1 => any::<i32>()],
    )
        .prop_map(|(key, value, key_strindex)| KeyValue {
            key,
            value,
            key_strindex,
        })
        .boxed()
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(key_value(2), 0..5)
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    let entity = (
        ".{0,5}",
        ".{0,5}",
        proptest::collection::vec(".{0,4}", 0..2),
    )
        .prop_map(|(schema_url, r#type, id_keys)| EntityRef {
            schema_url,
            r#type,
            id_keys,
            description_keys: vec!["d".into()],
        });
    prop_oneof![
        1 => Just(None),
        5 => (
            attributes(),
            prop_oneof![Just(None), "[a-z]{1,8}".prop_map(Some)],
            any::<u32>(),
            proptest::collection::vec(entity, 0..2),
        )
            .prop_map(|(mut attributes, service, dropped_attributes_count, entity_refs)| {
                if let Some(s) = service {
                    attributes.push(KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(s)),
                        }),
                        key_strindex: 0,
                    });
                }
                Some(Resource {
                    attributes,
                    dropped_attributes_count,
                    entity_refs,
                })
            }),
    ]
}

fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    prop_oneof![
        1 => Just(None),
        4 => (".{0,8}", ".{0,4}", attributes(), any::<u32>()).prop_map(
            |(name, version, attributes, dropped_attributes_count)| Some(InstrumentationScope {
                name,
                version,
                attributes,
                dropped_attributes_count,
            })
        ),
    ]
}

/// Ids: mostly valid, sometimes of a wrong length or all zero.
fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => proptest::collection::vec(any::<u8>(), len..=len),
        1 => proptest::collection::vec(any::<u8>(), 0..20),
        1 => Just(vec![0u8; len]),
    ]
}

fn event() -> impl Strategy<Value = span::Event> {
    (any::<u64>(), ".{0,8}", attributes(), any::<u32>()).prop_map(
        |(time_unix_nano, name, attributes, dropped_attributes_count)| span::Event {
            time_unix_nano,
            name,
            attributes,
            dropped_attributes_count,
        },
    )
}

fn link() -> impl Strategy<Value = span::Link> {
    (
        id(16),
        id(8),
        ".{0,6}",
        attributes(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(trace_id, span_id, trace_state, attributes, dropped_attributes_count, flags)| {
                span::Link {
                    trace_id,
                    span_id,
                    trace_state,
                    attributes,
                    dropped_attributes_count,
                    flags,
                }
            },
        )
}

fn span() -> impl Strategy<Value = Span> {
    (
        (
            id(16),
            id(8),
            ".{0,6}",
            prop_oneof![Just(vec![]), id(8)],
            any::<u32>(),
            ".{0,10}",
        ),
        (
            -2i32..8,
            any::<u64>(),
            any::<u64>(),
            attributes(),
            any::<u32>(),
        ),
        (
            proptest::collection::vec(event(), 0..3),
            any::<u32>(),
            proptest::collection::vec(link(), 0..2),
            any::<u32>(),
            prop_oneof![
                Just(None),
                (-1i32..4, ".{0,6}").prop_map(|(code, message)| Some(Status { message, code }))
            ],
        ),
    )
        .prop_map(
            |(
                (trace_id, span_id, trace_state, parent_span_id, flags, name),
                (kind, start, end, attributes, dropped_attributes_count),
                (events, dropped_events_count, links, dropped_links_count, status),
            )| Span {
                trace_id,
                span_id,
                trace_state,
                parent_span_id,
                flags,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                dropped_attributes_count,
                events,
                dropped_events_count,
                links,
                dropped_links_count,
                status,
            },
        )
}

fn trace_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope_spans = (scope(), proptest::collection::vec(span(), 0..4), ".{0,4}").prop_map(
        |(scope, spans, schema_url)| ScopeSpans {
            scope,
            spans,
            schema_url,
        },
    );
    let resource_spans = (
        resource(),
        proptest::collection::vec(scope_spans, 0..3),
        ".{0,4}",
    )
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        });
    proptest::collection::vec(resource_spans, 0..3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn span_is_valid(s: &Span) -> bool {
    ids::is_valid_trace_id(&s.trace_id)
        && ids::is_valid_span_id(&s.span_id)
        && (s.parent_span_id.is_empty() || s.parent_span_id.len() == 8)
}

/// One container per span, with OTLP's presence normalisations applied.
fn flatten_traces(
    request: &ExportTraceServiceRequest,
    keep: impl Fn(&Span) -> bool,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            for s in ss.spans.iter().filter(|s| keep(s)) {
                let mut s = s.clone();
                if s.status == Some(Status::default()) {
                    s.status = None;
                }
                out.push(
                    ResourceSpans {
                        resource: Some(rs.resource.clone().unwrap_or_default()),
                        schema_url: rs.schema_url.clone(),
                        scope_spans: vec![ScopeSpans {
                            scope: Some(ss.scope.clone().unwrap_or_default()),
                            schema_url: ss.schema_url.clone(),
                            spans: vec![s],
                        }],
                    }
                    .encode_to_vec(),
                );
            }
        }
    }
    out
}

fn log_record() -> impl Strategy<Value = LogRecord> {
    (
        (
            prop_oneof![Just(0u64), any::<u64>()],
            any::<u64>(),
            -1i32..26,
            ".{0,6}",
        ),
        (
            prop_oneof![1 => Just(None), 6 => any_value(2).prop_map(Some)],
            attributes(),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            prop_oneof![Just(vec![]), id(16)],
            prop_oneof![Just(vec![]), id(8)],
            ".{0,6}",
        ),
    )
        .prop_map(
            |(
                (time_unix_nano, observed_time_unix_nano, severity_number, severity_text),
                (body, attributes, dropped_attributes_count, flags),
                (trace_id, span_id, event_name),
            )| LogRecord {
                time_unix_nano,
                observed_time_unix_nano,
                severity_number,
                severity_text,
                body,
                attributes,
                dropped_attributes_count,
                flags,
                trace_id,
                span_id,
                event_name,
            },
        )
}

fn logs_request() -> impl Strategy<Value = ExportLogsServiceRequest> {
    let scope_logs = (
        scope(),
        proptest::collection::vec(log_record(), 0..4),
        ".{0,4}",
    )
        .prop_map(|(scope, log_records, schema_url)| ScopeLogs {
            scope,
            log_records,
            schema_url,
        });
    let resource_logs = (
        resource(),
        proptest::collection::vec(scope_logs, 0..3),
        ".{0,4}",
    )
        .prop_map(|(resource, scope_logs, schema_url)| ResourceLogs {
            resource,
            scope_logs,
            schema_url,
        });
    proptest::collection::vec(resource_logs, 0..3)
        .prop_map(|resource_logs| ExportLogsServiceRequest { resource_logs })
}

fn log_is_valid(r: &LogRecord) -> bool {
    (r.trace_id.is_empty() || r.trace_id.len() == 16)
        && (r.span_id.is_empty() || r.span_id.len() == 8)
}

fn flatten_logs(
    request: &ExportLogsServiceRequest,
    keep: impl Fn(&LogRecord) -> bool,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for rl in &request.resource_logs {
        for sl in &rl.scope_logs {
            for r in sl.log_records.iter().filter(|r| keep(r)) {
                out.push(
                    ResourceLogs {
                        resource: Some(rl.resource.clone().unwrap_or_default()),
                        schema_url: rl.schema_url.clone(),
                        scope_logs: vec![ScopeLogs {
                            scope: Some(sl.scope.clone().unwrap_or_default()),
                            schema_url: sl.schema_url.clone(),
                            log_records: vec![r.clone()],
                        }],
                    }
                    .encode_to_vec(),
                );
            }
        }
    }
    out
}

fn exemplars() -> impl Strategy<Value = Vec<Exemplar>> {
    let e = (
        attributes(),
        any::<u64>(),
        id(8),
        id(16),
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(|d| Some(exemplar::Value::AsDouble(d))),
            any::<i64>().prop_map(|i| Some(exemplar::Value::AsInt(i)))
        ],
    )
        .prop_map(
            |(filtered_attributes, time_unix_nano, span_id, trace_id, value)| Exemplar {
                filtered_attributes,
                time_unix_nano,
                span_id,
                trace_id,
                value,
            },
        );
    proptest::collection::vec(e, 0..2)
}

fn number_point() -> impl Strategy<Value = NumberDataPoint> {
    (
        attributes(),
        any::<u64>(),
        any::<u64>(),
        exemplars(),
        any::<u32>(),
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(|d| Some(number_data_point::Value::AsDouble(d))),
            any::<i64>().prop_map(|i| Some(number_data_point::Value::AsInt(i)))
        ],
    )
        .prop_map(
            |(attributes, start, time, exemplars, flags, value)| NumberDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                exemplars,
                flags,
                value,
            },
        )
}

fn histogram_point() -> impl Strategy<Value = HistogramDataPoint> {
    (
        (
            attributes(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<f64>()),
        ),
        (
            proptest::collection::vec(any::<u64>(), 0..5),
            proptest::collection::vec(any::<f64>(), 0..4),
            exemplars(),
            any::<u32>(),
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<f64>()),
        ),
    )
        .prop_map(
            |(
                (attributes, start, time, count, sum),
                (bucket_counts, explicit_bounds, exemplars, flags, min, max),
            )| {
                HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count,
                    sum,
                    bucket_counts,
                    explicit_bounds,
                    exemplars,
                    flags,
                    min,
                    max,
                }
            },
        )
}

fn buckets() -> impl Strategy<Value = Option<Buckets>> {
    proptest::option::of(
        (any::<i32>(), proptest::collection::vec(any::<u64>(), 0..4)).prop_map(
            |(offset, bucket_counts)| Buckets {
                offset,
                bucket_counts,
            },
        ),
    )
}

fn exp_histogram_point() -> impl Strategy<Value = ExponentialHistogramDataPoint> {
    (
        (
            attributes(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any::<f64>()),
            any::<i32>(),
        ),
        (
            any::<u64>(),
            buckets(),
            buckets(),
            any::<u32>(),
            exemplars(),
        ),
        (
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<f64>()),
            any::<f64>(),
        ),
    )
        .prop_map(
            |(
                (attributes, start, time, count, sum, scale),
                (zero_count, positive, negative, flags, exemplars),
                (min, max, zero_threshold),
            )| ExponentialHistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                count,
                sum,
                scale,
                zero_count,
                positive,
                negative,
                flags,
                exemplars,
                min,
                max,
                zero_threshold,
            },
        )
}

fn summary_point() -> impl Strategy<Value = SummaryDataPoint> {
    (
        attributes(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<f64>(),
        proptest::collection::vec(
            (any::<f64>(), any::<f64>())
                .prop_map(|(quantile, value)| ValueAtQuantile { quantile, value }),
            0..3,
        ),
        any::<u32>(),
    )
        .prop_map(
            |(attributes, start, time, count, sum, quantile_values, flags)| SummaryDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: time,
                count,
                sum,
                quantile_values,
                flags,
            },
        )
}

fn metric() -> impl Strategy<Value = Metric> {
    let points = 0..3usize;
    let data = prop_oneof![
        proptest::collection::vec(number_point(), points.clone())
            .prop_map(|data_points| Data::Gauge(Gauge { data_points })),
        (
            proptest::collection::vec(number_point(), points.clone()),
            -1i32..4,
            any::<bool>()
        )
            .prop_map(|(data_points, aggregation_temporality, is_monotonic)| {
                Data::Sum(Sum {
                    data_points,
                    aggregation_temporality,
                    is_monotonic,
                })
            }),
        (
            proptest::collection::vec(histogram_point(), points.clone()),
            0i32..3
        )
            .prop_map(|(data_points, aggregation_temporality)| Data::Histogram(
                Histogram {
                    data_points,
                    aggregation_temporality,
                }
            )),
        (
            proptest::collection::vec(exp_histogram_point(), points.clone()),
            0i32..3
        )
            .prop_map(|(data_points, aggregation_temporality)| {
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points,
                    aggregation_temporality,
                })
            }),
        proptest::collection::vec(summary_point(), points)
            .prop_map(|data_points| Data::Summary(Summary { data_points })),
    ];
    (
        prop_oneof![9 => "[a-z._]{1,12}", 1 => Just(String::new())],
        ".{0,8}",
        ".{0,3}",
        attributes(),
        proptest::option::of(data),
    )
        .prop_map(|(name, description, unit, metadata, data)| Metric {
            name,
            description,
            unit,
            metadata,
            data,
        })
}

fn metrics_request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    let scope_metrics = (scope(), proptest::collection::vec(metric(), 0..4), ".{0,4}").prop_map(
        |(scope, metrics, schema_url)| ScopeMetrics {
            scope,
            metrics,
            schema_url,
        },
    );
    let resource_metrics = (
        resource(),
        proptest::collection::vec(scope_metrics, 0..3),
        ".{0,4}",
    )
        .prop_map(|(resource, scope_metrics, schema_url)| ResourceMetrics {
            resource,
            scope_metrics,
            schema_url,
        });
    proptest::collection::vec(resource_metrics, 0..3)
        .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
}

/// The table a metric's points land in.
fn table_of(data: &Data) -> Signal {
    match data {
        Data::Gauge(_) | Data::Sum(_) => Signal::Metrics,
        Data::Histogram(_) => Signal::Histograms,
        Data::ExponentialHistogram(_) => Signal::ExpHistograms,
        Data::Summary(_) => Signal::Summaries,
    }
}

/// One container per data point, ordered by table (then by original order).
fn flatten_metrics(request: &ExportMetricsServiceRequest, only_valid: bool) -> Vec<Vec<u8>> {
    let mut out: Vec<(Signal, Vec<u8>)> = Vec::new();
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                if only_valid && m.name.is_empty() {
                    continue;
                }
                let Some(data) = &m.data else { continue };
                let single = |data: Data| {
                    ResourceMetrics {
                        resource: Some(rm.resource.clone().unwrap_or_default()),
                        schema_url: rm.schema_url.clone(),
                        scope_metrics: vec![ScopeMetrics {
                            scope: Some(sm.scope.clone().unwrap_or_default()),
                            schema_url: sm.schema_url.clone(),
                            metrics: vec![Metric {
                                data: Some(data),
                                ..m.clone()
                            }],
                        }],
                    }
                    .encode_to_vec()
                };
                let table = table_of(data);
                match data {
                    Data::Gauge(g) => out.extend(g.data_points.iter().map(|p| {
                        (
                            table,
                            single(Data::Gauge(Gauge {
                                data_points: vec![p.clone()],
                            })),
                        )
                    })),
                    Data::Sum(s) => out.extend(s.data_points.iter().map(|p| {
                        (
                            table,
                            single(Data::Sum(Sum {
                                data_points: vec![p.clone()],
                                ..s.clone()
                            })),
                        )
                    })),
                    Data::Histogram(h) => out.extend(h.data_points.iter().map(|p| {
                        (
                            table,
                            single(Data::Histogram(Histogram {
                                data_points: vec![p.clone()],
                                ..h.clone()
                            })),
                        )
                    })),
                    Data::ExponentialHistogram(h) => out.extend(h.data_points.iter().map(|p| {
                        (
                            table,
                            single(Data::ExponentialHistogram(ExponentialHistogram {
                                data_points: vec![p.clone()],
                                ..h.clone()
                            })),
                        )
                    })),
                    Data::Summary(s) => out.extend(s.data_points.iter().map(|p| {
                        (
                            table,
                            single(Data::Summary(Summary {
                                data_points: vec![p.clone()],
                            })),
                        )
                    })),
                }
            }
        }
    }
    out.sort_by_key(|(table, _)| *table);
    out.into_iter().map(|(_, bytes)| bytes).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn traces_round_trip(request in trace_request()) {
        let converted = spans_from_otlp(&request).unwrap();
        let valid = flatten_traces(&request, span_is_valid);
        let all: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        prop_assert_eq!(converted.accepted as usize, valid.len());
        prop_assert_eq!(converted.rejected as usize, all - valid.len());
        prop_assert_eq!(converted.rejection_reason.is_some(), converted.rejected > 0);
        let batches: Vec<_> = converted.batches.iter().map(|b| b.batch.clone()).collect();
        let back = spans_to_otlp(&batches).unwrap();
        prop_assert_eq!(flatten_traces(&back, |_| true), valid);
    }

    #[test]
    fn logs_round_trip(request in logs_request()) {
        let converted = logs_from_otlp(&request).unwrap();
        let valid = flatten_logs(&request, log_is_valid);
        prop_assert_eq!(converted.accepted as usize, valid.len());
        let batches: Vec<_> = converted.batches.iter().map(|b| b.batch.clone()).collect();
        let back = logs_to_otlp(&batches).unwrap();
        prop_assert_eq!(flatten_logs(&back, |_| true), valid);
    }

    #[test]
    fn metrics_round_trip(request in metrics_request()) {
        let converted = metrics_from_otlp(&request).unwrap();
        let valid = flatten_metrics(&request, true);
        let unnamed: usize = request.resource_metrics.iter().flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics).filter(|m| m.name.is_empty()).map(point_count).sum();
        prop_assert_eq!(converted.accepted as usize, valid.len());
        prop_assert_eq!(converted.rejected as usize, unnamed);
        let back = metrics_to_otlp(&converted.batches).unwrap();
        prop_assert_eq!(flatten_metrics(&back, false), valid);
    }

    /// Without repeated containers, the request comes back exactly, grouping included.
    #[test]
    fn traces_come_back_grouped(request in trace_request()) {
        let mut request = request;
        for (i, rs) in request.resource_spans.iter_mut().enumerate() {
            let resource = rs.resource.get_or_insert_with(Default::default);
            resource.attributes.push(KeyValue {
                key: "oxeye.test.resource".into(),
                value: Some(AnyValue { value: Some(any_value::Value::IntValue(i as i64)) }),
                key_strindex: 0,
            });
            rs.scope_spans.retain(|ss| !ss.spans.is_empty() && ss.spans.iter().all(span_is_valid));
            for (j, ss) in rs.scope_spans.iter_mut().enumerate() {
                let scope = ss.scope.get_or_insert_with(Default::default);
                scope.name = format!("scope-{j}");
                for s in &mut ss.spans {
                    if s.status == Some(Status::default()) {
                        s.status = None;
                    }
                }
            }
        }
        request.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
        let converted = spans_from_otlp(&request).unwrap();
        let batches: Vec<_> = converted.batches.iter().map(|b| b.batch.clone()).collect();
        let back = spans_to_otlp(&batches).unwrap();
        prop_assert_eq!(back.encode_to_vec(), request.encode_to_vec());
    }
}

#[test]
fn service_name_and_enums_read_as_text() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                    key_strindex: 0,
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "GET /cart".into(),
                    kind: 2,
                    start_time_unix_nano: 1_000,
                    end_time_unix_nano: 3_500,
                    status: Some(Status {
                        code: 2,
                        message: "boom".into(),
                    }),
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let converted = spans_from_otlp(&request).unwrap();
    let batch = &converted.batches[0].batch;
    let text = |name: &str| {
        let dict = batch
            .column_by_name(name)
            .unwrap()
            .as_dictionary::<Int32Type>();
        let values = dict.values().as_string::<i32>();
        values.value(dict.keys().value(0) as usize).to_string()
    };
    assert_eq!(text("service_name"), "checkout");
    assert_eq!(text("kind"), "SERVER");
    assert_eq!(text("status_code"), "ERROR");
    let duration = batch
        .column_by_name("duration_ns")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    assert_eq!(duration.value(0), 2_500);
    assert!(batch.column_by_name("parent_span_id").unwrap().is_null(0));
}
