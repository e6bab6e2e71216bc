//! Caps on attributes, applied to every request before conversion, as the OpenTelemetry SDKs
//! apply their attribute limits: attributes past the count limit are dropped (last ones first)
//! and counted in the item's `dropped_attributes_count`, and string or bytes values longer than
//! the value limit are cut (at a character boundary). A hostile or buggy client then cannot
//! make one span cost megabytes of every column it touches.

use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::any_value::Value;
use oxeye_model::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use oxeye_model::otlp::metrics::v1::metric::Data;
use oxeye_model::otlp::resource::v1::Resource;

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeLimits {
    /// Attributes kept per span, event, link, log record, data point, resource and scope.
    pub max_count: usize,
    /// Longest string or bytes value kept, in bytes.
    pub max_value_bytes: usize,
}

impl Default for AttributeLimits {
    fn default() -> Self {
        AttributeLimits {
            // The SDKs' default attribute count limit.
            max_count: 128,
            max_value_bytes: 16 * 1024,
        }
    }
}

/// What the caps changed in one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub dropped_attributes: u64,
    pub truncated_values: u64,
}

impl AttributeLimits {
    /// Caps one attribute list; returns how many attributes it dropped.
    fn list(&self, attrs: &mut Vec<KeyValue>, out: &mut Limited) -> u32 {
        let dropped = attrs.len().saturating_sub(self.max_count);
        attrs.truncate(self.max_count);
        for kv in attrs.iter_mut() {
            if let Some(v) = kv.value.as_mut() {
                self.value(v, out);
            }
        }
        out.dropped_attributes += dropped as u64;
        u32::try_from(dropped).unwrap_or(u32::MAX)
    }

    fn value(&self, v: &mut AnyValue, out: &mut Limited) {
        match &mut v.value {
            Some(Value::StringValue(s)) if s.len() > self.max_value_bytes => {
                let mut cut = self.max_value_bytes;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                out.truncated_values += 1;
            }
            Some(Value::BytesValue(b)) if b.len() > self.max_value_bytes => {
                b.truncate(self.max_value_bytes);
                out.truncated_values += 1;
            }
            Some(Value::ArrayValue(a)) => {
                for x in a.values.iter_mut() {
                    self.value(x, out);
                }
            }
            Some(Value::KvlistValue(l)) => {
                for kv in l.values.iter_mut() {
                    if let Some(x) = kv.value.as_mut() {
                        self.value(x, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn resource(&self, r: Option<&mut Resource>, out: &mut Limited) {
        if let Some(r) = r {
            let d = self.list(&mut r.attributes, out);
            r.dropped_attributes_count = r.dropped_attributes_count.saturating_add(d);
        }
    }

    fn scope(&self, s: Option<&mut InstrumentationScope>, out: &mut Limited) {
        if let Some(s) = s {
            let d = self.list(&mut s.attributes, out);
            s.dropped_attributes_count = s.dropped_attributes_count.saturating_add(d);
        }
    }

    pub fn traces(&self, request: &mut ExportTraceServiceRequest) -> Limited {
        let mut out = Limited::default();
        for rs in &mut request.resource_spans {
            self.resource(rs.resource.as_mut(), &mut out);
            for ss in &mut rs.scope_spans {
                self.scope(ss.scope.as_mut(), &mut out);
                for span in &mut ss.spans {
                    let d = self.list(&mut span.attributes, &mut out);
                    span.dropped_attributes_count = span.dropped_attributes_count.saturating_add(d);
                    for e in &mut span.events {
                        let d = self.list(&mut e.attributes, &mut out);
                        e.dropped_attributes_count = e.dropped_attributes_count.saturating_add(d);
                    }
                    for l in &mut span.links {
                        let d = self.list(&mut l.attributes, &mut out);
                        l.dropped_attributes_count = l.dropped_attributes_count.saturating_add(d);
                    }
                }
            }
        }
        out
    }

    pub fn logs(&self, request: &mut ExportLogsServiceRequest) -> Limited {
        let mut out = Limited::default();
        for rl in &mut request.resource_logs {
            self.resource(rl.resource.as_mut(), &mut out);
            for sl in &mut rl.scope_logs {
                self.scope(sl.scope.as_mut(), &mut out);
                for r in &mut sl.log_records {
                    // The body is the record itself, not an attribute: the request size limit
                    // bounds it.
                    let d = self.list(&mut r.attributes, &mut out);
                    r.dropped_attributes_count = r.dropped_attributes_count.saturating_add(d);
                }
            }
        }
        out
    }

    /// Data points have no dropped-attributes count in OTLP: what is dropped is only counted
    /// in the collector's metrics.
    pub fn metrics(&self, request: &mut ExportMetricsServiceRequest) -> Limited {
        let mut out = Limited::default();
        for rm in &mut request.resource_metrics {
            self.resource(rm.resource.as_mut(), &mut out);
            for sm in &mut rm.scope_metrics {
                self.scope(sm.scope.as_mut(), &mut out);
                for m in &mut sm.metrics {
                    let lists: Vec<&mut Vec<KeyValue>> = match m.data.as_mut() {
                        Some(Data::Gauge(g)) => g
                            .data_points
                            .iter_mut()
                            .map(|p| &mut p.attributes)
                            .collect(),
                        Some(Data::Sum(s)) => s
                            .data_points
                            .iter_mut()
                            .map(|p| &mut p.attributes)
                            .collect(),
                        Some(Data::Histogram(h)) => h
                            .data_points
                            .iter_mut()
                            .map(|p| &mut p.attributes)
                            .collect(),
                        Some(Data::ExponentialHistogram(h)) => h
                            .data_points
                            .iter_mut()
                            .map(|p| &mut p.attributes)
                            .collect(),
                        Some(Data::Summary(s)) => s
                            .data_points
                            .iter_mut()
                            .map(|p| &mut p.attributes)
                            .collect(),
                        None => Vec::new(),
                    };
                    for attrs in lists {
                        self.list(attrs, &mut out);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_model::otlp::common::v1::{ArrayValue, KeyValueList};
    use oxeye_model::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use oxeye_model::otlp::trace::v1::span::Event;
    use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn text(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn string_of(kv: &KeyValue) -> &str {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn spans_keep_the_first_attributes_and_count_the_rest() {
        let limits = AttributeLimits {
            max_count: 3,
            max_value_bytes: 8,
        };
        let attrs: Vec<KeyValue> = (0..5).map(|i| text(&format!("k{i}"), "v")).collect();
        let mut request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        attributes: attrs.clone(),
                        dropped_attributes_count: 1,
                        events: vec![Event {
                            attributes: attrs,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let limited = limits.traces(&mut request);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["k0", "k1", "k2"]);
        // What the SDK dropped already, plus what the cap dropped.
        assert_eq!(span.dropped_attributes_count, 3);
        assert_eq!(span.events[0].dropped_attributes_count, 2);
        assert_eq!(limited.dropped_attributes, 4);
        assert_eq!(limited.truncated_values, 0);
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary_also_inside_arrays_and_maps() {
        let limits = AttributeLimits {
            max_count: 10,
            // "é" is two bytes: a cut at 5 would split the third one.
            max_value_bytes: 5,
        };
        let nested = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![text("inner", "0123456789")],
                    })),
                }],
            })),
        };
        let mut request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        attributes: vec![
                            text("accents", "ééééé"),
                            text("short", "ok"),
                            KeyValue {
                                key: "nested".into(),
                                value: Some(nested),
                                ..Default::default()
                            },
                        ],
                        body: Some(AnyValue {
                            value: Some(Value::StringValue("a body longer than the cap".into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let limited = limits.logs(&mut request);
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(string_of(&record.attributes[0]), "éé");
        assert_eq!(string_of(&record.attributes[1]), "ok");
        let Some(Value::ArrayValue(a)) = record.attributes[2]
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
        else {
            panic!("array expected");
        };
        let Some(Value::KvlistValue(l)) = a.values[0].value.as_ref() else {
            panic!("map expected");
        };
        assert_eq!(string_of(&l.values[0]), "01234");
        assert_eq!(limited.truncated_values, 2);
        assert_eq!(record.dropped_attributes_count, 0);
        // The body is not an attribute.
        assert!(matches!(
            record.body.as_ref().and_then(|b| b.value.as_ref()),
            Some(Value::StringValue(s)) if s.len() > 5
        ));
    }
}
