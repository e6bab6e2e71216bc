//! The interface through which collectors hand batches to the store: implemented in-process by
//! the store's shard engine and, in a cluster, by a network client of the same shape.

use std::time::Duration;

use crate::SignalBatch;

/// Why the store did not take a batch. Each variant says whether the client should retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The store is alive but cannot take more now (memory, queue or disk pressure). Retry later.
    #[error("store overloaded: {reason}")]
    Overloaded {
        reason: String,
        retry_after: Duration,
    },
    /// The store cannot be reached or is shutting down. Retry later, perhaps elsewhere.
    #[error("store unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// The batch itself is unacceptable; retrying the same batch will fail again.
    #[error("batch rejected by the store: {reason}")]
    Rejected { reason: String },
}

impl IngestError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, IngestError::Rejected { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Overloaded { retry_after, .. }
            | IngestError::Unavailable { retry_after, .. } => Some(*retry_after),
            IngestError::Rejected { .. } => None,
        }
    }
}

/// Where batches stand in their sender's stream to one shard: the sender's (producer's) id and
/// one position per batch, rising per producer and signal. A store that holds a position
/// already treats the batch as delivered, which makes redelivery after a lost acknowledgement
/// exactly-once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    pub producer: std::sync::Arc<str>,
    pub positions: Vec<u64>,
}

/// Durable ingestion. `ingest` returns `Ok` only once every batch is durable (in the WAL of
/// every replica the write quorum needs), so the caller may acknowledge its client.
#[async_trait::async_trait]
pub trait Ingest: Send + Sync + 'static {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError>;

    /// Ingests batches with their delivery marks (one position per batch). Sinks that keep
    /// positions skip batches they already hold; this default, for sinks that do not, writes
    /// everything.
    async fn ingest_delivery(
        &self,
        batches: Vec<SignalBatch>,
        marks: Marks,
    ) -> Result<(), IngestError> {
        let _ = marks;
        self.ingest(batches).await
    }
}
