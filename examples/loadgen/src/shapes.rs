//! Seeded, realistic telemetry: services calling each other in nested traces, logs with trace
//! context, and the metrics such services export.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What the generated telemetry looks like.
#[derive(Debug, Clone)]
pub struct Shape {
    pub services: usize,
    pub operations_per_service: usize,
    /// Deepest nesting of a trace.
    pub depth: u32,
    /// Most children of a span.
    pub fanout: u32,
    /// Extra attributes per span besides the semantic-convention ones.
    pub attributes: usize,
    /// Bytes of a random payload attribute per span (0: none).
    pub payload_bytes: usize,
    /// Share of traces that end in an error.
    pub error_rate: f64,
    /// Log records per span on average.
    pub logs_per_span: f64,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

const ROUTES: &[&str] = &[
    "/cart",
    "/checkout",
    "/product/{id}",
    "/search",
    "/login",
    "/orders/{id}",
    "/recommendations",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT", "DELETE"];
const DB_STATEMENTS: &[&str] = &[
    "SELECT * FROM carts WHERE user_id = ?",
    "UPDATE inventory SET qty = qty - ? WHERE sku = ?",
    "INSERT INTO orders (user_id, total) VALUES (?, ?)",
];
const LOG_MESSAGES: &[&str] = &[
    "request served",
    "cache miss for key",
    "user checked out cart",
    "retrying upstream call after timeout",
    "payment authorised",
    "inventory reserved",
    "slow query detected",
    "connection refused by upstream, will retry",
];

/// Generates requests; deterministic for a seed.
pub struct Generator {
    rng: SmallRng,
    shape: Shape,
    services: Vec<String>,
    /// Running totals of the cumulative counters and histograms, per series.
    totals: std::collections::HashMap<(usize, usize, usize), (i64, Vec<u64>)>,
}

/// One trace's spans, grouped by service, plus the logs they emitted.
pub struct TraceBatch {
    pub traces: ExportTraceServiceRequest,
    pub logs: ExportLogsServiceRequest,
    pub spans: usize,
    pub log_records: usize,
}

impl Generator {
    pub fn new(seed: u64, shape: Shape) -> Generator {
        let services = (0..shape.services.max(1))
            .map(|i| {
                const NAMES: &[&str] = &[
                    "frontend",
                    "checkout",
                    "payments",
                    "inventory",
                    "cart",
                    "shipping",
                    "email",
                    "recommendation",
                    "ads",
                    "currency",
                ];
                let base = NAMES[i % NAMES.len()];
                if i < NAMES.len() {
                    base.to_string()
                } else {
                    format!("{base}-{}", i / NAMES.len())
                }
            })
            .collect();
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            shape,
            services,
            totals: std::collections::HashMap::new(),
        }
    }

    fn resource(&self, service: &str) -> Resource {
        Resource {
            attributes: vec![
                kv("service.name", s(service)),
                kv("service.version", s("1.4.2")),
                kv("deployment.environment", s("production")),
                kv("host.name", s(format!("{service}-7d9f8b-xk2p"))),
                kv("telemetry.sdk.language", s("rust")),
            ],
            dropped_attributes_count: 0,
            entity_refs: vec![],
        }
    }

    /// About `target_spans` spans in whole traces, starting near `now_ns`.
    pub fn traces(&mut self, target_spans: usize, now_ns: u64) -> TraceBatch {
        let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); self.services.len()];
        let mut logs_by_service: Vec<Vec<LogRecord>> = vec![Vec::new(); self.services.len()];
        let mut spans = 0;
        while spans < target_spans {
            spans += self.trace(now_ns, &mut by_service, &mut logs_by_service);
        }
        let scope = InstrumentationScope {
            name: "oxeye-loadgen".into(),
            version: "0.1.0".into(),
            attributes: vec![],
            dropped_attributes_count: 0,
        };
        let mut traces = ExportTraceServiceRequest::default();
        let mut logs = ExportLogsServiceRequest::default();
        let mut log_records = 0;
        for (i, (sp, lg)) in by_service.into_iter().zip(logs_by_service).enumerate() {
            if !sp.is_empty() {
                traces.resource_spans.push(ResourceSpans {
                    resource: Some(self.resource(&self.services[i])),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: sp,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
            if !lg.is_empty() {
                log_records += lg.len();
                logs.resource_logs.push(ResourceLogs {
                    resource: Some(self.resource(&self.services[i])),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records: lg,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
        }
        TraceBatch {
            traces,
            logs,
            spans,
            log_records,
        }
    }

    fn id<const N: usize>(&mut self) -> Vec<u8> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b[..]);
        b[0] |= 1; // never all zero
        b.to_vec()
    }

    /// One trace; returns its span count.
    fn trace(
        &mut self,
        now_ns: u64,
        spans: &mut [Vec<Span>],
        logs: &mut [Vec<LogRecord>],
    ) -> usize {
        let trace_id = self.id::<16>();
        let failing = self.rng.random_bool(self.shape.error_rate.clamp(0.0, 1.0));
        let root_service = 0;
        let duration = self.latency_ns(self.shape.depth);
        let start = now_ns.saturating_sub(duration + self.rng.random_range(0..1_000_000_000));
        self.span(
            &trace_id,
            None,
            root_service,
            0,
            start,
            duration,
            failing,
            span::SpanKind::Server,
            spans,
            logs,
        )
    }

    fn latency_ns(&mut self, depth: u32) -> u64 {
        // Heavy tail: mostly milliseconds, sometimes a second.
        let base: f64 = self.rng.random_range(0.2..1.0) * 1e6 * f64::from(depth.max(1)) * 3.0;
        let slow = if self.rng.random_bool(0.02) {
            self.rng.random_range(10.0..200.0)
        } else {
            1.0
        };
        (base * slow) as u64
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        trace_id: &[u8],
        parent: Option<&[u8]>,
        service: usize,
        depth: u32,
        start: u64,
        duration: u64,
        failing: bool,
        kind: span::SpanKind,
        spans: &mut [Vec<Span>],
        logs: &mut [Vec<LogRecord>],
    ) -> usize {
        let span_id = self.id::<8>();
        let op = self
            .rng
            .random_range(0..self.shape.operations_per_service.max(1));
        let route = ROUTES[op % ROUTES.len()];
        let method = METHODS[self.rng.random_range(0..METHODS.len())];
        let is_leaf = depth + 1 >= self.shape.depth;
        let error_here = failing && is_leaf;
        let mut attributes = Vec::with_capacity(8 + self.shape.attributes);
        let name;
        match kind {
            span::SpanKind::Client if is_leaf && self.rng.random_bool(0.5) => {
                name = "SELECT shop".to_string();
                attributes.push(kv("db.system", s("postgresql")));
                attributes.push(kv(
                    "db.statement",
                    s(DB_STATEMENTS[op % DB_STATEMENTS.len()]),
                ));
                attributes.push(kv("server.address", s("db.internal")));
                attributes.push(kv("server.port", Value::IntValue(5432)));
            }
            _ => {
                name = format!("{method} {route}");
                attributes.push(kv("http.request.method", s(method)));
                attributes.push(kv("http.route", s(route)));
                attributes.push(kv(
                    "http.response.status_code",
                    Value::IntValue(if error_here { 500 } else { 200 }),
                ));
                attributes.push(kv("url.scheme", s("https")));
            }
        }
        attributes.push(kv(
            "user.id",
            s(format!("user-{}", self.rng.random_range(0..50_000))),
        ));
        for i in 0..self.shape.attributes {
            attributes.push(kv(
                &format!("app.attr_{i}"),
                s(format!("value-{}", self.rng.random_range(0..20))),
            ));
        }
        if self.shape.payload_bytes > 0 {
            let payload: String = (0..self.shape.payload_bytes)
                .map(|_| char::from(b'a' + self.rng.random_range(0..26u8)))
                .collect();
            attributes.push(kv("app.payload", s(payload)));
        }
        let mut events = Vec::new();
        if error_here {
            events.push(span::Event {
                time_unix_nano: start + duration / 2,
                name: "exception".into(),
                attributes: vec![
                    kv("exception.type", s("TimeoutError")),
                    kv("exception.message", s("upstream timed out after 30s")),
                ],
                dropped_attributes_count: 0,
            });
        }
        let mut count = 1;
        // Children, laid out one after another inside this span.
        if !is_leaf {
            let children = self.rng.random_range(1..=self.shape.fanout.max(1));
            let mut child_start = start + duration / 20;
            let slot = duration * 8 / 10 / u64::from(children);
            for _ in 0..children {
                let callee = self.rng.random_range(0..self.services.len());
                let child_duration = (slot as f64 * self.rng.random_range(0.3..0.95)) as u64;
                if callee != service {
                    // A client span here and a server span in the callee.
                    let client_id = self.id::<8>();
                    spans[service].push(Span {
                        trace_id: trace_id.to_vec(),
                        span_id: client_id.clone(),
                        parent_span_id: span_id.clone(),
                        name: format!(
                            "{} {}",
                            METHODS[0],
                            ROUTES[self.rng.random_range(0..ROUTES.len())]
                        ),
                        kind: span::SpanKind::Client as i32,
                        start_time_unix_nano: child_start,
                        end_time_unix_nano: child_start + child_duration,
                        attributes: vec![kv("server.address", s(self.services[callee].clone()))],
                        ..Default::default()
                    });
                    count += 1;
                    count += self.span(
                        trace_id,
                        Some(&client_id),
                        callee,
                        depth + 1,
                        child_start + 50_000,
                        child_duration.saturating_sub(100_000),
                        failing,
                        span::SpanKind::Server,
                        spans,
                        logs,
                    );
                } else {
                    count += self.span(
                        trace_id,
                        Some(&span_id),
                        service,
                        depth + 1,
                        child_start,
                        child_duration,
                        failing,
                        span::SpanKind::Client,
                        spans,
                        logs,
                    );
                }
                child_start += slot;
            }
        }
        let mut logs_here = self.shape.logs_per_span;
        while logs_here > 0.0 {
            if logs_here >= 1.0 || self.rng.random_bool(logs_here) {
                let (severity, text) = if error_here {
                    (17, "ERROR")
                } else if self.rng.random_bool(0.1) {
                    (13, "WARN")
                } else {
                    (9, "INFO")
                };
                let message = if error_here {
                    "timeout talking to db after 30s".to_string()
                } else {
                    format!(
                        "{} ({} ms)",
                        LOG_MESSAGES[self.rng.random_range(0..LOG_MESSAGES.len())],
                        duration / 1_000_000
                    )
                };
                logs[service].push(LogRecord {
                    time_unix_nano: start + duration / 3,
                    observed_time_unix_nano: start + duration / 3 + 1_000,
                    severity_number: severity,
                    severity_text: text.into(),
                    body: Some(AnyValue {
                        value: Some(s(message)),
                    }),
                    attributes: vec![
                        kv("code.function", s(name.clone())),
                        kv("http.route", s(route)),
                    ],
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.clone(),
                    flags: 1,
                    ..Default::default()
                });
            }
            logs_here -= 1.0;
        }
        spans[service].push(Span {
            trace_id: trace_id.to_vec(),
            span_id,
            parent_span_id: parent.map(<[u8]>::to_vec).unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            attributes,
            events,
            flags: 1,
            status: Some(Status {
                message: if error_here {
                    "upstream timed out".into()
                } else {
                    String::new()
                },
                code: if error_here {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
            }),
            ..Default::default()
        });
        count
    }

    /// The metrics each service exports at one collection: request counts and durations per
    /// route, and a queue depth gauge. Returns the request and its number of data points.
    pub fn metrics(&mut self, now_ns: u64, start_ns: u64) -> (ExportMetricsServiceRequest, usize) {
        let mut request = ExportMetricsServiceRequest::default();
        let mut points = 0;
        let bounds = vec![5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];
        for (si, service) in self.services.clone().into_iter().enumerate() {
            let mut counters = Vec::new();
            let mut histograms = Vec::new();
            for (ri, route) in ROUTES
                .iter()
                .take(self.shape.operations_per_service.max(1))
                .enumerate()
            {
                for (sti, status) in ["200", "500"].into_iter().enumerate() {
                    let attrs = vec![
                        kv("http.route", s(*route)),
                        kv("http.response.status_code", s(status)),
                    ];
                    // Errors are rarer than successes; totals only grow (cumulative temporality).
                    let new_requests: u64 = if sti == 0 {
                        self.rng.random_range(50..150)
                    } else {
                        self.rng.random_range(0..5)
                    };
                    let new_buckets: Vec<u64> = (0..=bounds.len())
                        .map(|b| {
                            if b < 4 {
                                self.rng.random_range(0..new_requests / 4 + 1)
                            } else {
                                self.rng.random_range(0..3)
                            }
                        })
                        .collect();
                    let entry = self
                        .totals
                        .entry((si, ri, sti))
                        .or_insert_with(|| (0, vec![0; bounds.len() + 1]));
                    entry.0 += new_requests as i64;
                    for (t, n) in entry.1.iter_mut().zip(&new_buckets) {
                        *t += n;
                    }
                    let (total, buckets) = (entry.0, entry.1.clone());
                    counters.push(NumberDataPoint {
                        attributes: attrs.clone(),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        value: Some(number_data_point::Value::AsInt(total)),
                        ..Default::default()
                    });
                    let count = buckets.iter().sum();
                    histograms.push(HistogramDataPoint {
                        attributes: attrs,
                        start_time_unix_nano: start_ns,
                        time_unix_nano: now_ns,
                        count,
                        sum: Some(count as f64 * 42.0),
                        bucket_counts: buckets,
                        explicit_bounds: bounds.clone(),
                        min: Some(0.4),
                        max: Some(2400.0),
                        ..Default::default()
                    });
                }
            }
            points += counters.len() + histograms.len() + 1;
            request.resource_metrics.push(ResourceMetrics {
                resource: Some(self.resource(&service)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "oxeye-loadgen".into(),
                        ..Default::default()
                    }),
                    metrics: vec![
                        Metric {
                            name: "http.server.request.count".into(),
                            unit: "{request}".into(),
                            description: "Requests served".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: counters,
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "http.server.request.duration".into(),
                            unit: "ms".into(),
                            description: "Request duration".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: histograms,
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "queue.depth".into(),
                            unit: "{job}".into(),
                            data: Some(Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    time_unix_nano: now_ns,
                                    value: Some(number_data_point::Value::AsDouble(
                                        self.rng.random_range(0.0..100.0),
                                    )),
                                    ..Default::default()
                                }],
                            })),
                            ..Default::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        (request, points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            services: 5,
            operations_per_service: 4,
            depth: 4,
            fanout: 3,
            attributes: 4,
            payload_bytes: 16,
            error_rate: 0.05,
            logs_per_span: 0.5,
        }
    }

    #[test]
    fn seeded_and_well_formed() {
        let a = Generator::new(7, shape()).traces(500, 1_700_000_000_000_000_000);
        let b = Generator::new(7, shape()).traces(500, 1_700_000_000_000_000_000);
        assert_eq!(a.traces, b.traces, "same seed, same telemetry");
        assert!(a.spans >= 500);
        let all: Vec<&Span> = a
            .traces
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(all.len(), a.spans);
        let ids: std::collections::HashSet<_> = all.iter().map(|s| s.span_id.clone()).collect();
        for s in &all {
            assert_eq!(s.trace_id.len(), 16);
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
            assert!(
                s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id),
                "parents exist"
            );
        }
        assert!(a.log_records > 0);
    }
}
