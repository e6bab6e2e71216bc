//! Building blocks of the simulation: a [`Service`] that emits spans and logs at simulated
//! times through its own SDK pipeline, the endpoints services expose, simulated calls between
//! services (with real W3C trace-context propagation), database and cache client spans, and
//! latency distributions.
//!
//! Nothing here sleeps. Every span gets explicit start and end timestamps computed from
//! simulated durations, so a request with a 2-second slow query is generated in microseconds and
//! the demo can produce a realistic picture at any rate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::logs::SdkLogger;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use rand::Rng;
use rand::rngs::SmallRng;

use crate::telemetry::{ExportStats, ServicePipeline};

/// Explicit buckets (seconds) of the request duration histograms, as recommended by the HTTP
/// semantic conventions.
const DURATION_BUCKETS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

const POSTGRES_HOST: &str = "postgres-primary.shop.svc";
const REDIS_HOST: &str = "redis-cache.shop.svc";

/// One simulated service: emits spans and log records through its own pipeline, so they carry
/// its resource.
pub struct Service {
    pub name: &'static str,
    tracer: SdkTracer,
    logger: SdkLogger,
    stats: Arc<ExportStats>,
}

impl Service {
    pub fn new(pipeline: &ServicePipeline) -> Self {
        Self {
            name: pipeline.identity.name,
            tracer: pipeline.tracer.clone(),
            logger: pipeline.logger.clone(),
            stats: Arc::clone(&pipeline.stats),
        }
    }

    /// Starts a span at the simulated time `start`, as a child of the span `parent` carries (a
    /// root span when it carries none). The returned context carries the new span; pass it as
    /// the parent of children and to [`Service::end_span`].
    pub fn start_span(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let builder = SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes);
        parent.with_span(self.tracer.build_with_context(builder, parent))
    }

    /// Ends the span `cx` carries at the simulated time `end`; this hands it to the batch
    /// processor.
    pub fn end_span(&self, cx: &Context, end: SystemTime) {
        cx.span().end_with_timestamp(end);
        self.stats.spans_ended.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an exception event (semantic-convention attributes) on the span `cx` carries and
    /// marks the span as failed.
    pub fn record_exception(
        &self,
        cx: &Context,
        at: SystemTime,
        exception_type: &'static str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let span = cx.span();
        span.add_event_with_timestamp(
            "exception",
            at,
            vec![
                KeyValue::new("exception.type", exception_type),
                KeyValue::new("exception.message", message.clone()),
            ],
        );
        span.set_attribute(KeyValue::new("error.type", exception_type));
        span.set_status(Status::error(message));
    }

    /// Marks the span `cx` carries as failed without an exception (e.g. an error status code
    /// came back).
    pub fn mark_error(&self, cx: &Context, error_type: impl Into<String>, description: String) {
        let span = cx.span();
        span.set_attribute(KeyValue::new("error.type", error_type.into()));
        span.set_status(Status::error(description));
    }

    /// Emits a log record at the simulated time `at`, correlated with the span `cx` carries.
    ///
    /// The trace context is set on the record explicitly rather than by attaching `cx` as the
    /// thread's current context: the simulation passes contexts around by value, and this keeps
    /// the correlation independent of which thread or task emits the record.
    pub fn log(
        &self,
        cx: &Context,
        at: SystemTime,
        severity: Severity,
        body: impl Into<String>,
        attributes: Vec<(&'static str, AnyValue)>,
    ) {
        let mut record = self.logger.create_log_record();
        record.set_timestamp(at);
        record.set_severity_number(severity);
        record.set_severity_text(severity.name());
        record.set_target(self.name);
        record.set_body(AnyValue::from(body.into()));
        record.add_attributes(attributes);
        let span_context = cx.span().span_context().clone();
        if span_context.is_valid() {
            record.set_trace_context(
                span_context.trace_id(),
                span_context.span_id(),
                Some(span_context.trace_flags()),
            );
        }
        self.logger.emit(record);
        self.stats.logs_emitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Spans this service ended that its exporter has not taken yet.
    pub fn span_backlog(&self) -> u64 {
        self.stats.span_backlog()
    }

    /// Starts the SERVER span of a request to `endpoint` that arrived at `start` with the trace
    /// context `parent` (extracted from the request headers).
    pub fn accept(
        &self,
        endpoint: &Endpoint,
        path: &str,
        parent: &Context,
        start: SystemTime,
        extra: Vec<KeyValue>,
    ) -> Context {
        let mut attributes = endpoint.server_attributes(path);
        attributes.extend(extra);
        self.start_span(
            parent,
            endpoint.span_name(),
            SpanKind::Server,
            start,
            attributes,
        )
    }

    /// Finishes the SERVER span `cx` with `status`, records the request in `metrics` and returns
    /// the reply the caller receives.
    pub fn respond(
        &self,
        endpoint: &Endpoint,
        metrics: &ServerMetrics,
        cx: &Context,
        start: SystemTime,
        end: SystemTime,
        status: u16,
    ) -> Reply {
        cx.span().set_attribute(endpoint.response_attribute(status));
        if endpoint.is_server_error(status) {
            // Handlers record exceptions on the child span where the failure happened (the
            // query, the template, the upstream call), so the SERVER span only gets the status.
            cx.span().set_attribute(KeyValue::new(
                "error.type",
                endpoint.error_type(status).to_string(),
            ));
            cx.span().set_status(Status::error(format!(
                "{} answered {}",
                endpoint.span_name(),
                endpoint.error_type(status)
            )));
        }
        metrics.record(
            end.duration_since(start).unwrap_or_default(),
            &endpoint.metric_attributes(status),
        );
        self.end_span(cx, end);
        Reply { end, status }
    }

    /// A PostgreSQL query: a CLIENT span from `start` lasting `duration`, failed with
    /// (SQLSTATE, message) when `error` is set. Returns when the result arrived.
    pub fn postgres(
        &self,
        parent: &Context,
        start: SystemTime,
        query: &Query,
        duration: Duration,
        rows: i64,
        error: Option<(&'static str, &'static str)>,
    ) -> SystemTime {
        let cx = self.start_span(
            parent,
            format!("{} {}", query.operation, query.collection),
            SpanKind::Client,
            start,
            vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.namespace", "shop"),
                KeyValue::new("db.operation.name", query.operation),
                KeyValue::new("db.collection.name", query.collection),
                KeyValue::new("db.query.text", query.text),
                KeyValue::new("server.address", POSTGRES_HOST),
                KeyValue::new("server.port", 5432_i64),
            ],
        );
        let end = start + duration;
        match error {
            Some((sqlstate, message)) => {
                cx.span()
                    .set_attribute(KeyValue::new("db.response.status_code", sqlstate));
                self.record_exception(&cx, end, "PostgresError", message);
            }
            None => cx
                .span()
                .set_attribute(KeyValue::new("db.response.returned_rows", rows)),
        }
        self.end_span(&cx, end);
        end
    }

    /// A Redis command: a CLIENT span from `start` lasting `duration`, failed with `error` when
    /// set. Returns when the reply arrived.
    pub fn redis(
        &self,
        parent: &Context,
        start: SystemTime,
        command: &'static str,
        arguments: &str,
        duration: Duration,
        error: Option<&'static str>,
    ) -> SystemTime {
        let cx = self.start_span(
            parent,
            command,
            SpanKind::Client,
            start,
            vec![
                KeyValue::new("db.system.name", "redis"),
                KeyValue::new("db.namespace", "0"),
                KeyValue::new("db.operation.name", command),
                KeyValue::new("db.query.text", format!("{command} {arguments}")),
                KeyValue::new("server.address", REDIS_HOST),
                KeyValue::new("server.port", 6379_i64),
            ],
        );
        let end = start + duration;
        if let Some(message) = error {
            self.record_exception(&cx, end, "RedisError", message);
        }
        self.end_span(&cx, end);
        end
    }
}

/// A statement a service sends to PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub operation: &'static str,
    pub collection: &'static str,
    pub text: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

/// Something a service serves: an HTTP route or a gRPC method, at `host:port`.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    protocol: Protocol,
    /// HTTP method, or gRPC method name.
    method: &'static str,
    /// HTTP route template, or fully qualified gRPC service name.
    target: &'static str,
    host: &'static str,
    port: i64,
}

impl Endpoint {
    pub const fn http(
        method: &'static str,
        route: &'static str,
        host: &'static str,
        port: i64,
    ) -> Self {
        Self {
            protocol: Protocol::Http,
            method,
            target: route,
            host,
            port,
        }
    }

    pub const fn grpc(
        service: &'static str,
        method: &'static str,
        host: &'static str,
        port: i64,
    ) -> Self {
        Self {
            protocol: Protocol::Grpc,
            method,
            target: service,
            host,
            port,
        }
    }

    /// HTTP method, or gRPC method name.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// HTTP route template, or fully qualified gRPC service name.
    pub fn route(&self) -> &'static str {
        self.target
    }

    /// Span name per the semantic conventions: `{method} {route}` for HTTP,
    /// `{service}/{method}` for gRPC.
    pub fn span_name(&self) -> String {
        match self.protocol {
            Protocol::Http => format!("{} {}", self.method, self.target),
            Protocol::Grpc => format!("{}/{}", self.target, self.method),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.port == 443 { "https" } else { "http" }
    }

    fn rpc_attributes(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", self.target),
            KeyValue::new("rpc.method", self.method),
            KeyValue::new("server.address", self.host),
            KeyValue::new("server.port", self.port),
        ]
    }

    /// Attributes of a CLIENT span calling this endpoint; `path` is the concrete HTTP path.
    pub fn client_attributes(&self, path: &str) -> Vec<KeyValue> {
        match self.protocol {
            Protocol::Http => vec![
                KeyValue::new("http.request.method", self.method),
                KeyValue::new(
                    "url.full",
                    format!("{}://{}:{}{path}", self.scheme(), self.host, self.port),
                ),
                KeyValue::new("url.template", self.target),
                KeyValue::new("server.address", self.host),
                KeyValue::new("server.port", self.port),
                KeyValue::new("network.protocol.version", "1.1"),
            ],
            Protocol::Grpc => self.rpc_attributes(),
        }
    }

    /// Attributes of the SERVER span handling a request to this endpoint.
    pub fn server_attributes(&self, path: &str) -> Vec<KeyValue> {
        match self.protocol {
            Protocol::Http => vec![
                KeyValue::new("http.request.method", self.method),
                KeyValue::new("http.route", self.target),
                KeyValue::new("url.path", path.to_string()),
                KeyValue::new("url.scheme", self.scheme()),
                KeyValue::new("server.address", self.host),
                KeyValue::new("server.port", self.port),
                KeyValue::new("network.protocol.version", "1.1"),
            ],
            Protocol::Grpc => self.rpc_attributes(),
        }
    }

    /// The response status as a span attribute (`status` is HTTP-like; gRPC maps it to a code).
    pub fn response_attribute(&self, status: u16) -> KeyValue {
        match self.protocol {
            Protocol::Http => KeyValue::new("http.response.status_code", i64::from(status)),
            Protocol::Grpc => KeyValue::new("rpc.grpc.status_code", grpc_code(status).0),
        }
    }

    /// Whether `status` is a failure of the server (what makes a SERVER span an error).
    pub fn is_server_error(&self, status: u16) -> bool {
        match self.protocol {
            Protocol::Http => status >= 500,
            // The gRPC conventions count these codes as server errors; the others (NOT_FOUND,
            // FAILED_PRECONDITION, ...) are the caller's problem.
            Protocol::Grpc => matches!(grpc_code(status).0, 2 | 4 | 12 | 13 | 14 | 15),
        }
    }

    /// Whether `status` is a failed call from the caller's point of view (CLIENT span error).
    pub fn is_call_error(&self, status: u16) -> bool {
        match self.protocol {
            Protocol::Http => status >= 400,
            Protocol::Grpc => grpc_code(status).0 != 0,
        }
    }

    /// `error.type` for a failed `status`: the HTTP status code or the gRPC code name.
    pub fn error_type(&self, status: u16) -> Cow<'static, str> {
        match self.protocol {
            Protocol::Http => Cow::Owned(status.to_string()),
            Protocol::Grpc => Cow::Borrowed(grpc_code(status).1),
        }
    }

    /// Attributes of the request count and duration metrics: low cardinality only.
    pub fn metric_attributes(&self, status: u16) -> Vec<KeyValue> {
        match self.protocol {
            Protocol::Http => vec![
                KeyValue::new("http.request.method", self.method),
                KeyValue::new("http.route", self.target),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
            Protocol::Grpc => vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", self.target),
                KeyValue::new("rpc.method", self.method),
                KeyValue::new("rpc.grpc.status_code", grpc_code(status).0),
            ],
        }
    }
}

/// gRPC status code (number, name) for the HTTP-like status the simulation uses internally.
fn grpc_code(status: u16) -> (i64, &'static str) {
    match status {
        200 => (0, "OK"),
        400 => (3, "INVALID_ARGUMENT"),
        404 => (5, "NOT_FOUND"),
        409 => (9, "FAILED_PRECONDITION"),
        500 => (13, "INTERNAL"),
        503 => (14, "UNAVAILABLE"),
        504 => (4, "DEADLINE_EXCEEDED"),
        _ => (2, "UNKNOWN"),
    }
}

/// What a simulated server sends back.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    /// When the server finished (simulated time).
    pub end: SystemTime,
    /// HTTP-like status (gRPC endpoints map it to a gRPC code).
    pub status: u16,
}

/// What the caller of a simulated remote call observed.
#[derive(Debug, Clone, Copy)]
pub struct CallResult {
    /// When the caller got the response or gave up (simulated time).
    pub end: SystemTime,
    /// The response status; `None` when the caller timed out first.
    pub status: Option<u16>,
}

/// A call from one simulated service to another.
pub struct Call<'a> {
    pub caller: &'a Service,
    pub parent: &'a Context,
    pub endpoint: &'a Endpoint,
    /// Concrete HTTP path (ignored for gRPC).
    pub path: &'a str,
    pub start: SystemTime,
    /// The caller gives up after this long; the server keeps going, as real servers do.
    pub timeout: Duration,
    /// Extra attributes of the CLIENT span.
    pub extra: Vec<KeyValue>,
}

/// Runs `call`: a CLIENT span on the caller, the trace context injected into a header map and
/// extracted from it on the other side (exactly what travels in `traceparent` over a network),
/// then `server` handles the request under the extracted context. `server` gets the RNG, the
/// extracted parent context and the simulated arrival time.
pub fn remote_call(
    propagator: &TraceContextPropagator,
    rng: &mut SmallRng,
    call: Call<'_>,
    server: impl FnOnce(&mut SmallRng, &Context, SystemTime) -> Reply,
) -> CallResult {
    let Call {
        caller,
        parent,
        endpoint,
        path,
        start,
        timeout,
        extra,
    } = call;
    let mut attributes = endpoint.client_attributes(path);
    attributes.extend(extra);
    let client = caller.start_span(
        parent,
        endpoint.span_name(),
        SpanKind::Client,
        start,
        attributes,
    );

    let mut headers: HashMap<String, String> = HashMap::new();
    propagator.inject_context(&client, &mut headers);
    let remote_parent = propagator.extract(&headers);

    let arrival = start + network_hop(rng);
    let reply = server(rng, &remote_parent, arrival);
    let response_arrives = reply.end + network_hop(rng);
    let deadline = start + timeout;

    let result = if response_arrives > deadline {
        caller.record_exception(
            &client,
            deadline,
            "TimeoutError",
            format!(
                "{} to {} timed out after {} ms",
                endpoint.span_name(),
                endpoint.host,
                timeout.as_millis()
            ),
        );
        CallResult {
            end: deadline,
            status: None,
        }
    } else {
        client
            .span()
            .set_attribute(endpoint.response_attribute(reply.status));
        if endpoint.is_call_error(reply.status) {
            caller.mark_error(
                &client,
                endpoint.error_type(reply.status),
                format!(
                    "{} answered {}",
                    endpoint.host,
                    endpoint.error_type(reply.status)
                ),
            );
        }
        CallResult {
            end: response_arrives,
            status: Some(reply.status),
        }
    };
    caller.end_span(&client, result.end);
    result
}

/// Request count and duration of one service's server side.
pub struct ServerMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

impl ServerMetrics {
    /// `http.server.request.count` and `http.server.request.duration` (seconds).
    pub fn http(meter: &Meter) -> Self {
        Self::new(
            meter,
            "http.server.request.count",
            "http.server.request.duration",
            "HTTP server requests",
        )
    }

    /// `rpc.server.request.count` and `rpc.server.call.duration` (seconds).
    pub fn rpc(meter: &Meter) -> Self {
        Self::new(
            meter,
            "rpc.server.request.count",
            "rpc.server.call.duration",
            "gRPC calls served",
        )
    }

    fn new(
        meter: &Meter,
        count_name: &'static str,
        duration_name: &'static str,
        what: &'static str,
    ) -> Self {
        Self {
            requests: meter
                .u64_counter(count_name)
                .with_description(format!("Number of {what}"))
                .with_unit("{request}")
                .build(),
            duration: meter
                .f64_histogram(duration_name)
                .with_description(format!("Duration of {what}"))
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS_S.to_vec())
                .build(),
        }
    }

    pub fn record(&self, duration: Duration, attributes: &[KeyValue]) {
        self.requests.add(1, attributes);
        self.duration.record(duration.as_secs_f64(), attributes);
    }
}

/// A [`Duration`] in (fractional) milliseconds, for logs.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Milliseconds as a [`Duration`] (negative and non-finite values become zero).
pub fn ms(millis: f64) -> Duration {
    if millis.is_finite() && millis > 0.0 {
        Duration::from_secs_f64(millis / 1000.0)
    } else {
        Duration::ZERO
    }
}

/// Uniform between `low_ms` and `high_ms` milliseconds.
pub fn between(rng: &mut SmallRng, low_ms: f64, high_ms: f64) -> Duration {
    if high_ms > low_ms {
        ms(rng.random_range(low_ms..high_ms))
    } else {
        ms(low_ms)
    }
}

/// Log-normal latency around `median`: most values near it, a long right tail (`sigma` 0.5 puts
/// p99 at about 3.2x the median). Real service latencies look like this, uniform ones do not.
pub fn lognormal(rng: &mut SmallRng, median: Duration, sigma: f64) -> Duration {
    // Box-Muller: a standard normal from two uniforms; the first must not be 0 for ln().
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    // Bounded so that an extreme draw cannot produce an absurd (or overflowing) duration.
    let factor = (sigma * z).exp().clamp(0.02, 50.0);
    Duration::from_secs_f64(median.as_secs_f64() * factor)
}

/// One-way latency inside the cluster.
pub fn network_hop(rng: &mut SmallRng) -> Duration {
    lognormal(rng, ms(0.25), 0.4)
}

/// Latency of a Redis command.
pub fn redis_latency(rng: &mut SmallRng) -> Duration {
    lognormal(rng, ms(0.4), 0.5)
}

/// Picks one of `items` uniformly.
pub fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}
