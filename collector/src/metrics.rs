//! The collector's own figures, exposed at `/metrics` as `oxeye_collector_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub signal: &'static str,
    pub protocol: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug)]
pub struct CollectorMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub items_accepted: Family<SignalLabels, Counter>,
    pub items_rejected: Family<SignalLabels, Counter>,
    pub received_bytes: Family<ProtocolLabels, Counter>,
    /// Requests refused because their token was over its ingest limit (labelled by the
    /// token's name: as many series as the token file has limited tokens).
    pub rate_limited: Family<TokenLabels, Counter>,
    pub memory_reserved_bytes: Gauge,
    pub batcher_queue_depth: Gauge,
    pub flushes_in_flight: Gauge,
    pub flushes: Counter,
    pub flush_rows: Histogram,
    pub flush_seconds: Histogram,
    pub attributes_dropped: Family<SignalLabels, Counter>,
    pub attribute_values_truncated: Family<SignalLabels, Counter>,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        CollectorMetrics {
            requests: Family::default(),
            items_accepted: Family::default(),
            items_rejected: Family::default(),
            received_bytes: Family::default(),
            rate_limited: Family::default(),
            memory_reserved_bytes: Gauge::default(),
            batcher_queue_depth: Gauge::default(),
            flushes_in_flight: Gauge::default(),
            flushes: Counter::default(),
            flush_rows: Histogram::new(exponential_buckets(16.0, 4.0, 8)),
            flush_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            attributes_dropped: Family::default(),
            attribute_values_truncated: Family::default(),
        }
    }
}

impl CollectorMetrics {
    /// Creates the metrics and registers them under `oxeye_collector_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = CollectorMetrics::default();
        let r = registry.sub_registry_with_prefix("oxeye_collector");
        r.register(
            "requests",
            "OTLP export requests by signal, protocol and outcome",
            m.requests.clone(),
        );
        r.register(
            "items_accepted",
            "Spans, log records and data points accepted",
            m.items_accepted.clone(),
        );
        r.register(
            "items_rejected",
            "Spans, log records and data points rejected as invalid (partial success)",
            m.items_rejected.clone(),
        );
        r.register(
            "received_bytes",
            "Request body bytes received, before decompression",
            m.received_bytes.clone(),
        );
        r.register(
            "rate_limited_requests",
            "Requests refused because their token was over its ingest_bytes_per_second",
            m.rate_limited.clone(),
        );
        r.register(
            "memory_reserved_bytes",
            "Bytes reserved by requests in flight (admission budget in use)",
            m.memory_reserved_bytes.clone(),
        );
        r.register(
            "batcher_queue_depth",
            "Requests waiting in the batcher queue",
            m.batcher_queue_depth.clone(),
        );
        r.register(
            "flushes_in_flight",
            "Batches being written to the store now",
            m.flushes_in_flight.clone(),
        );
        r.register("flushes", "Batches flushed to the store", m.flushes.clone());
        r.register("flush_rows", "Rows per flushed batch", m.flush_rows.clone());
        r.register(
            "flush_seconds",
            "Time for the store to acknowledge a flushed batch",
            m.flush_seconds.clone(),
        );
        r.register(
            "attributes_dropped",
            "Attributes dropped past the per-item count limit (--max-attributes)",
            m.attributes_dropped.clone(),
        );
        r.register(
            "attribute_values_truncated",
            "Attribute values cut to the length limit (--max-attribute-value-size)",
            m.attribute_values_truncated.clone(),
        );
        m
    }
}
