//! oxeye's own traces, stored in oxeye (`--self-trace`, off by default).
//!
//! A tracing layer turns oxeye's request-level spans (targets `oxeye*` at INFO or above: OTLP
//! exports, HTTP API requests, SQL queries, flushes, compactions, Flight writes, alert
//! evaluations) into OTLP spans of the service `oxeye`, parented as the spans nest. They wait in
//! a bounded queue; when it is full, new spans are dropped and counted rather than slowing the
//! request that made them. A task batches them (up to [`BATCH`] spans or every [`INTERVAL`]) and
//! writes them straight into this process's own `Ingest` (the store's shards, or a collector's
//! queues), not through the OTLP receivers: storing self-traces makes no further spans to trace.
//!
//! Spans take their OTLP name from an `otel.name` field when they record one, their kind from
//! `otel.kind` (`server`, `client`, else internal) and an error status from an `error` field.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oxeye_model::ingest::Ingest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use oxeye_model::otlp::resource::v1::Resource;
use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Finished spans waiting to be stored; past this, new ones are dropped.
const QUEUE: usize = 8192;
/// Most spans stored in one write.
const BATCH: usize = 1024;
/// Longest a finished span waits before it is written.
const INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type Outcomes = Family<OutcomeLabels, Counter>;

/// Records spans into the queue; see the module docs.
pub struct SelfTraceLayer {
    queue: mpsc::Sender<Span>,
    outcomes: Outcomes,
}

/// The other end of the queue: [`SelfTraceQueue::start`] stores what arrives.
pub struct SelfTraceQueue {
    spans: mpsc::Receiver<Span>,
    outcomes: Outcomes,
}

/// The layer, with its filter (oxeye's own spans at INFO and above), and its queue.
pub fn layer<S>() -> (Filtered<SelfTraceLayer, FilterFn, S>, SelfTraceQueue)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (queue, spans) = mpsc::channel(QUEUE);
    let outcomes = Outcomes::default();
    let layer = SelfTraceLayer {
        queue,
        outcomes: outcomes.clone(),
    };
    let ours: fn(&Metadata<'_>) -> bool =
        |m| m.is_span() && m.target().starts_with("oxeye") && *m.level() <= Level::INFO;
    (
        layer.with_filter(FilterFn::new(ours)),
        SelfTraceQueue { spans, outcomes },
    )
}

/// A span while it is open: what it becomes when it closes.
struct Open {
    span: Span,
}

impl<S> Layer<S> for SelfTraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(current) = ctx.span(id) else {
            return;
        };
        let parent = current.parent().and_then(|p| {
            p.extensions()
                .get::<Open>()
                .map(|o| (o.span.trace_id.clone(), o.span.span_id.clone()))
        });
        let (trace_id, parent_span_id) = match parent {
            Some((trace, span)) => (trace, span),
            None => (random_id::<16>(), Vec::new()),
        };
        let mut span = Span {
            trace_id,
            span_id: random_id::<8>(),
            parent_span_id,
            name: attrs.metadata().name().to_string(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: now_ns(),
            ..Span::default()
        };
        attrs.record(&mut Fields(&mut span));
        current.extensions_mut().insert(Open { span });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(current) = ctx.span(id)
            && let Some(open) = current.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut open.span));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(current) = ctx.span(&id) else {
            return;
        };
        let Some(Open { mut span }) = current.extensions_mut().remove::<Open>() else {
            return;
        };
        span.end_time_unix_nano = now_ns().max(span.start_time_unix_nano);
        let outcome = match self.queue.try_send(span) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "dropped",
            Err(mpsc::error::TrySendError::Closed(_)) => "dropped",
        };
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Copies a span's fields into its OTLP attributes (and name, kind, status).
struct Fields<'a>(&'a mut Span);

impl Fields<'_> {
    fn set(&mut self, field: &Field, value: any_value::Value) {
        match (field.name(), &value) {
            ("otel.name", any_value::Value::StringValue(name)) => self.0.name = name.clone(),
            ("otel.kind", any_value::Value::StringValue(kind)) => {
                self.0.kind = match kind.as_str() {
                    "server" => span::SpanKind::Server,
                    "client" => span::SpanKind::Client,
                    "producer" => span::SpanKind::Producer,
                    "consumer" => span::SpanKind::Consumer,
                    _ => span::SpanKind::Internal,
                } as i32
            }
            ("error", _) => {
                let message = match &value {
                    any_value::Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                self.0.status = Some(Status {
                    message,
                    code: status::StatusCode::Error as i32,
                });
            }
            (name, _) => {
                let key = name.to_string();
                self.0.attributes.retain(|kv| kv.key != key);
                self.0.attributes.push(KeyValue {
                    key,
                    value: Some(AnyValue { value: Some(value) }),
                    ..KeyValue::default()
                });
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, any_value::Value::StringValue(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field, any_value::Value::IntValue(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(
            field,
            any_value::Value::IntValue(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field, any_value::Value::BoolValue(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field, any_value::Value::DoubleValue(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field, any_value::Value::StringValue(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field, any_value::Value::StringValue(format!("{value:?}")));
    }
}

impl SelfTraceQueue {
    /// Stores queued spans into `sink` until `stop`, as the service `oxeye` with `resource`'s
    /// attributes; what is queued when `stop` comes is stored before the task ends.
    pub fn start(
        mut self,
        sink: Arc<dyn Ingest>,
        resource: Vec<(&'static str, String)>,
        registry: &mut Registry,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        registry.register(
            "oxeye_self_trace_spans",
            "oxeye's own spans (--self-trace) by outcome: stored, dropped (queue full), failed (the store refused them)",
            self.outcomes.clone(),
        );
        let resource = Resource {
            attributes: [("service.name", "oxeye".to_string())]
                .into_iter()
                .chain([("service.version", env!("CARGO_PKG_VERSION").to_string())])
                .chain(resource)
                .map(|(key, value)| KeyValue {
                    key: key.to_string(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(value)),
                    }),
                    ..KeyValue::default()
                })
                .collect(),
            ..Resource::default()
        };
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut tick = tokio::time::interval(INTERVAL);
            loop {
                let stopping = tokio::select! {
                    _ = stop.cancelled() => true,
                    received = self.spans.recv() => match received {
                        Some(span) => {
                            batch.push(span);
                            if batch.len() < BATCH {
                                continue;
                            }
                            false
                        }
                        None => true,
                    },
                    _ = tick.tick() => false,
                };
                if stopping {
                    while let Ok(span) = self.spans.try_recv() {
                        batch.push(span);
                    }
                }
                if !batch.is_empty() {
                    let spans = std::mem::take(&mut batch);
                    store(sink.as_ref(), &resource, spans, &self.outcomes).await;
                }
                if stopping {
                    return;
                }
            }
        })
    }
}

async fn store(sink: &dyn Ingest, resource: &Resource, spans: Vec<Span>, outcomes: &Outcomes) {
    let n = spans.len() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "oxeye".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let result = match oxeye_model::spans::spans_from_otlp(&request) {
        Ok(converted) => sink
            .ingest(converted.batches)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let outcome = match result {
        Ok(()) => "stored",
        Err(e) => {
            tracing::debug!(error = %e, spans = n, "cannot store oxeye's own spans");
            "failed"
        }
    };
    outcomes.get_or_create(&OutcomeLabels { outcome }).inc_by(n);
}

fn random_id<const N: usize>() -> Vec<u8> {
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id.to_vec();
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use oxeye_model::SignalBatch;
    use oxeye_model::ingest::IngestError;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Default)]
    struct Collected(Mutex<Vec<SignalBatch>>);

    #[async_trait::async_trait]
    impl Ingest for Collected {
        async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
            self.0
                .lock()
                .map_err(|_| IngestError::Rejected {
                    reason: "poisoned".into(),
                })?
                .extend(batches);
            Ok(())
        }
    }

    #[tokio::test]
    async fn nested_spans_become_one_trace_with_parents_names_and_errors() {
        let (layer, queue) = layer();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(target: "oxeye::test", "http.request", otel.name = "GET /api/v1/sql", otel.kind = "server", status = tracing::field::Empty);
            let _in_outer = outer.enter();
            {
                let inner = tracing::info_span!(target: "oxeye::test", "sql.query", rows = 3u64, error = tracing::field::Empty);
                inner.record("error", "division by zero");
            }
            outer.record("status", 400i64);
            // Not ours (target) and too verbose (level): not traced.
            let _other = tracing::info_span!(target: "hyper", "connection");
            let _debug = tracing::debug_span!(target: "oxeye::test", "detail");
        });
        let sink = Arc::new(Collected::default());
        let stop = CancellationToken::new();
        let mut registry = Registry::default();
        let task = queue.start(
            sink.clone(),
            vec![("oxeye.role", "test".into())],
            &mut registry,
            stop.clone(),
        );
        stop.cancel();
        task.await.expect("the task ends");
        let batches = sink.0.lock().expect("lock").clone();
        let batches: Vec<_> = batches.into_iter().map(|b| b.batch).collect();
        let request = oxeye_model::spans::spans_to_otlp(&batches).expect("converts back");
        let spans: Vec<&Span> = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let outer = spans
            .iter()
            .find(|s| s.name == "GET /api/v1/sql")
            .expect("outer");
        let inner = spans.iter().find(|s| s.name == "sql.query").expect("inner");
        assert_eq!(outer.kind, span::SpanKind::Server as i32);
        assert!(outer.parent_span_id.is_empty());
        assert_eq!(inner.trace_id, outer.trace_id);
        assert_eq!(inner.parent_span_id, outer.span_id);
        let status = inner.status.clone().unwrap_or_default();
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "division by zero");
        assert!(outer.attributes.iter().any(|kv| kv.key == "status"));
        let service = request.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .cloned();
        assert_eq!(
            service.and_then(|kv| kv.value).and_then(|v| v.value),
            Some(any_value::Value::StringValue("oxeye".into()))
        );
    }
}
