//! What both OTLP surfaces share: admission by bytes, decoding and conversion off the I/O
//! runtime, submission to the batcher, and the accounting of accepted and rejected items.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oxeye_model::logs::logs_from_otlp;
use oxeye_model::metrics::metrics_from_otlp;
use oxeye_model::otlp::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use oxeye_model::otlp::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use oxeye_model::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use oxeye_model::spans::spans_from_otlp;
use oxeye_model::{Converted, ModelError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::ExportError;
use crate::batcher::Batcher;
use crate::decode::{Encoding, decode};
use crate::limits::{AttributeLimits, Limited};
use crate::memory::{MemoryBudget, Reservation};
use crate::metrics::{CollectorMetrics, ProtocolLabels, RequestLabels, SignalLabels, TokenLabels};

/// An OTLP export request type and its response.
pub trait OtlpExport: prost::Message + Default + DeserializeOwned + Send + 'static {
    type Response: prost::Message + Serialize + Default + Send + 'static;
    /// `traces`, `logs` or `metrics`.
    const SIGNAL: &'static str;
    /// Fully qualified gRPC service name.
    const GRPC_SERVICE: &'static str;
    /// Path of the service's `Export` method.
    const GRPC_PATH: &'static str;
    fn convert(&self) -> Result<Converted, ModelError>;
    /// Applies the attribute caps.
    fn limit(&mut self, limits: &AttributeLimits) -> Limited;
    /// The response: empty when everything was accepted, with `partial_success` otherwise.
    fn response(rejected: u64, message: Option<String>) -> Self::Response;
}

impl OtlpExport for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const SIGNAL: &'static str = "traces";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    fn convert(&self) -> Result<Converted, ModelError> {
        spans_from_otlp(self)
    }
    fn limit(&mut self, limits: &AttributeLimits) -> Limited {
        limits.traces(self)
    }
    fn response(rejected: u64, message: Option<String>) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (rejected > 0 || message.is_some()).then(|| {
                ExportTracePartialSuccess {
                    rejected_spans: rejected as i64,
                    error_message: message.unwrap_or_default(),
                }
            }),
        }
    }
}

impl OtlpExport for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const SIGNAL: &'static str = "logs";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    fn convert(&self) -> Result<Converted, ModelError> {
        logs_from_otlp(self)
    }
    fn limit(&mut self, limits: &AttributeLimits) -> Limited {
        limits.logs(self)
    }
    fn response(rejected: u64, message: Option<String>) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (rejected > 0 || message.is_some()).then(|| {
                ExportLogsPartialSuccess {
                    rejected_log_records: rejected as i64,
                    error_message: message.unwrap_or_default(),
                }
            }),
        }
    }
}

impl OtlpExport for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: &'static str = "metrics";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const GRPC_PATH: &'static str =
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    fn convert(&self) -> Result<Converted, ModelError> {
        metrics_from_otlp(self)
    }
    fn limit(&mut self, limits: &AttributeLimits) -> Limited {
        limits.metrics(self)
    }
    fn response(rejected: u64, message: Option<String>) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (rejected > 0 || message.is_some()).then(|| {
                ExportMetricsPartialSuccess {
                    rejected_data_points: rejected as i64,
                    error_message: message.unwrap_or_default(),
                }
            }),
        }
    }
}

/// The outcome of an accepted request: how many items were rejected, and why.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Accepted {
    pub accepted: u64,
    pub rejected: u64,
    pub message: Option<String>,
}

/// Decoded requests are assumed to take this many times their encoded size in memory until the
/// store acknowledges them (protobuf structs while converting, Arrow columns afterwards).
const MEMORY_PER_ENCODED_BYTE: usize = 3;

/// A pipeline per tenant: each request goes to the one of its token's tenant, so a tenant's
/// rows only ever reach that tenant's store.
#[derive(Clone)]
pub struct Pipelines {
    default: Arc<Pipeline>,
    tenants: Arc<BTreeMap<String, Arc<Pipeline>>>,
}

impl Pipelines {
    pub fn new(default: Arc<Pipeline>, tenants: BTreeMap<String, Arc<Pipeline>>) -> Pipelines {
        Pipelines {
            default,
            tenants: Arc::new(tenants),
        }
    }

    /// The pipeline for requests sent with `token` (the default one without tokens).
    pub fn for_token(
        &self,
        token: Option<&oxeye_auth::Principal>,
    ) -> Result<&Arc<Pipeline>, ExportError> {
        match token.and_then(|t| t.tenant.as_deref()) {
            None => Ok(&self.default),
            Some(tenant) => self.tenants.get(tenant).ok_or_else(|| {
                ExportError::Internal(format!(
                    "tenant `{tenant}` has no store on this node; restart oxeye after adding \
                     tenants to the token file"
                ))
            }),
        }
    }

    /// Any pipeline: they share their metrics.
    pub fn metrics(&self) -> &CollectorMetrics {
        self.default.metrics()
    }
}

#[derive(Clone)]
pub struct Pipeline {
    batcher: Batcher,
    memory: MemoryBudget,
    metrics: CollectorMetrics,
    retry_after: Duration,
    limits: AttributeLimits,
}

impl Pipeline {
    pub fn new(
        batcher: Batcher,
        memory: MemoryBudget,
        metrics: CollectorMetrics,
        retry_after: Duration,
        limits: AttributeLimits,
    ) -> Self {
        Pipeline {
            batcher,
            memory,
            metrics,
            retry_after,
            limits,
        }
    }

    pub fn metrics(&self) -> &CollectorMetrics {
        &self.metrics
    }

    /// Admits a request of `encoded_bytes` sent with `token` (when tokens are on): within the
    /// token's ingest limit, and with memory reserved for it; else a retryable error.
    pub fn admit(
        &self,
        encoded_bytes: usize,
        protocol: &'static str,
        token: Option<&oxeye_auth::Principal>,
    ) -> Result<Reservation, ExportError> {
        self.metrics
            .received_bytes
            .get_or_create(&ProtocolLabels { protocol })
            .inc_by(encoded_bytes as u64);
        if let Some(limit) = token.and_then(|t| t.max_request_bytes)
            && encoded_bytes as u64 > limit
        {
            return Err(ExportError::TooLarge {
                size: encoded_bytes,
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            });
        }
        if let Some(token) = token
            && !token.ingest_limits.is_empty()
            && let Err((wait, limit)) =
                oxeye_auth::IngestLimit::take_all(&token.ingest_limits, encoded_bytes as u64)
        {
            self.metrics
                .rate_limited
                .get_or_create(&TokenLabels {
                    token: token.name.clone(),
                })
                .inc();
            return Err(ExportError::Overloaded {
                reason: format!(
                    "{} is over its ingest limit of {} bytes/s; send less, or raise \
                     ingest_bytes_per_second in the token file",
                    limit.whose(),
                    limit.bytes_per_second()
                ),
                retry_after: wait.max(Duration::from_secs(1)),
            });
        }
        let reservation = self
            .memory
            .try_reserve(encoded_bytes.saturating_mul(MEMORY_PER_ENCODED_BYTE))
            .ok_or_else(|| ExportError::Overloaded {
                reason: format!(
                    "the collector's memory budget of {} bytes is in use by other requests",
                    self.memory.capacity_bytes()
                ),
                retry_after: self.retry_after,
            })?;
        self.metrics
            .memory_reserved_bytes
            .set(self.memory.reserved_bytes() as i64);
        Ok(reservation)
    }

    /// Decodes (on a blocking thread) and exports an encoded request body.
    pub async fn export_encoded<R: OtlpExport>(
        &self,
        body: Bytes,
        encoding: Encoding,
        protocol: &'static str,
        reservation: Reservation,
    ) -> Result<Accepted, ExportError> {
        let span = tracing::info_span!(
            "otlp.export",
            otel.name = %format!("export {}", R::SIGNAL),
            otel.kind = "server",
            signal = R::SIGNAL,
            protocol,
            request.bytes = body.len() as u64,
            items.accepted = tracing::field::Empty,
            items.rejected = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let result = self
            .decode_and_submit::<R>(body, encoding, protocol, reservation)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(a) => {
                span.record("items.accepted", a.accepted);
                span.record("items.rejected", a.rejected);
            }
            Err(e) => {
                span.record("error", e.to_string());
            }
        }
        result
    }

    async fn decode_and_submit<R: OtlpExport>(
        &self,
        body: Bytes,
        encoding: Encoding,
        protocol: &'static str,
        reservation: Reservation,
    ) -> Result<Accepted, ExportError> {
        let limits = self.limits;
        let converted = tokio::task::spawn_blocking(move || {
            let mut request: R = decode(&body, encoding)?;
            let limited = request.limit(&limits);
            Ok::<_, ExportError>((limited, request.convert()?))
        })
        .await
        .map_err(|e| ExportError::Internal(format!("conversion task failed: {e}")))
        .and_then(|r| r);
        let result = match converted {
            Ok((limited, c)) => {
                self.count_limited::<R>(limited);
                self.submit::<R>(c).await
            }
            Err(e) => Err(e),
        };
        self.finish::<R>(result, protocol, reservation)
    }

    fn count_limited<R: OtlpExport>(&self, limited: Limited) {
        let labels = SignalLabels { signal: R::SIGNAL };
        if limited.dropped_attributes > 0 {
            self.metrics
                .attributes_dropped
                .get_or_create(&labels)
                .inc_by(limited.dropped_attributes);
        }
        if limited.truncated_values > 0 {
            self.metrics
                .attribute_values_truncated
                .get_or_create(&labels)
                .inc_by(limited.truncated_values);
        }
    }

    async fn submit<R: OtlpExport>(&self, converted: Converted) -> Result<Accepted, ExportError> {
        let Converted {
            batches,
            accepted,
            rejected,
            rejection_reason,
        } = converted;
        self.batcher.submit(batches).await?;
        let signal = R::SIGNAL;
        self.metrics
            .items_accepted
            .get_or_create(&SignalLabels { signal })
            .inc_by(accepted);
        if rejected > 0 {
            self.metrics
                .items_rejected
                .get_or_create(&SignalLabels { signal })
                .inc_by(rejected);
            tracing::debug!(signal, rejected, reason = ?rejection_reason, "rejected invalid items");
        }
        Ok(Accepted {
            accepted,
            rejected,
            message: rejection_reason,
        })
    }

    fn finish<R: OtlpExport>(
        &self,
        result: Result<Accepted, ExportError>,
        protocol: &'static str,
        reservation: Reservation,
    ) -> Result<Accepted, ExportError> {
        drop(reservation);
        self.metrics
            .memory_reserved_bytes
            .set(self.memory.reserved_bytes() as i64);
        let outcome = match &result {
            Ok(a) if a.rejected > 0 => "partial",
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                signal: R::SIGNAL,
                protocol,
                outcome,
            })
            .inc();
        if let Err(e) = &result {
            match e {
                ExportError::Internal(_) => {
                    tracing::error!(signal = R::SIGNAL, protocol, error = %e, "export failed")
                }
                _ => tracing::debug!(signal = R::SIGNAL, protocol, error = %e, "export refused"),
            }
        }
        result
    }
}
