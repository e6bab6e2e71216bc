use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the collector role (the binary fills them from flags, environment and file).
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// OTLP/gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// OTLP/HTTP listen address.
    pub http_listen: SocketAddr,
    /// Largest accepted request: gRPC message size and HTTP body size (compressed).
    pub max_request_bytes: usize,
    /// Largest accepted HTTP body after decompression.
    pub max_decompressed_bytes: usize,
    /// Bytes of requests that may be in flight (decoded, converted, waiting for the store) at
    /// once. Past this, requests are answered with a retryable "overloaded" error.
    pub memory_budget_bytes: usize,
    /// Rows after which a batch is flushed to the store.
    pub batch_max_rows: usize,
    /// Time after which a batch is flushed even if it is small.
    pub batch_max_delay: Duration,
    /// Requests that may wait in the batcher queue; when it is full, requests are answered with
    /// a retryable "overloaded" error instead of queueing without bound.
    pub batch_queue_capacity: usize,
    /// Flushes to the store that may run at once.
    pub max_in_flight_flushes: usize,
    /// Delay clients are told to wait before retrying after an overload.
    pub retry_after: Duration,
    /// Caps on attributes per item and on attribute value length.
    pub attribute_limits: crate::limits::AttributeLimits,
    /// Who may send: every OTLP request needs a token with the ingest role (when enabled).
    pub auth: oxeye_auth::Auth,
    /// Both receivers speak TLS when this has a certificate.
    pub tls: oxeye_tls::Tls,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_request_bytes: 16 * 1024 * 1024,
            max_decompressed_bytes: 64 * 1024 * 1024,
            memory_budget_bytes: 512 * 1024 * 1024,
            batch_max_rows: 16 * 1024,
            batch_max_delay: Duration::from_millis(10),
            batch_queue_capacity: 1024,
            max_in_flight_flushes: 4,
            retry_after: Duration::from_secs(1),
            attribute_limits: crate::limits::AttributeLimits::default(),
            auth: oxeye_auth::Auth::off(),
            tls: oxeye_tls::Tls::off(),
        }
    }
}
