use std::time::Duration;

use oxeye_model::ModelError;
use oxeye_model::ingest::IngestError;

/// Why an export request was not (fully) accepted. Each surface maps these to its protocol's
/// codes in one place (`grpc::to_status`, `http::error_response`).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The body is not a valid OTLP message in the declared encoding.
    #[error("malformed {encoding} request: {reason}")]
    Malformed {
        encoding: &'static str,
        reason: String,
    },
    /// The content type is neither protobuf nor JSON, or the content encoding is unknown.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The body (or its decompressed form) is larger than the configured limit.
    #[error("request body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The collector or the store cannot take more right now; retry after the given delay.
    #[error("overloaded: {reason}")]
    Overloaded {
        reason: String,
        retry_after: Duration,
    },
    /// The store cannot be reached or the collector is shutting down; retry later.
    #[error("unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// A bug or an unexpected failure inside oxeye.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<IngestError> for ExportError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Overloaded {
                reason,
                retry_after,
            } => ExportError::Overloaded {
                reason,
                retry_after,
            },
            IngestError::Unavailable {
                reason,
                retry_after,
            } => ExportError::Unavailable {
                reason,
                retry_after,
            },
            IngestError::Rejected { reason } => ExportError::Internal(reason),
        }
    }
}

impl From<ModelError> for ExportError {
    fn from(e: ModelError) -> Self {
        ExportError::Internal(e.to_string())
    }
}

impl ExportError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::Malformed { .. } => "malformed",
            ExportError::UnsupportedMediaType(_) => "unsupported_media_type",
            ExportError::TooLarge { .. } => "too_large",
            ExportError::Overloaded { .. } => "overloaded",
            ExportError::Unavailable { .. } => "unavailable",
            ExportError::Internal(_) => "internal",
        }
    }
}
