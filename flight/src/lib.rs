//! Arrow Flight between oxeye nodes. A store node serves `DoPut`: a collector streams the
//! batches of one signal for one of the node's shards (the descriptor path is
//! `[table, shard]`, or a command with delivery marks, see [`PutCommand`]), the node appends
//! each batch to that shard's WAL and answers one
//! `PutResult` per batch once it is durable, so the collector acknowledges its client only for
//! what a store holds. Store refusals keep their meaning across the wire: overload and
//! unavailability come back as retryable gRPC codes with the store's advice on when to retry.
//! For query nodes a store node serves `DoGet` snapshots of its shards (committed segments and
//! unflushed rows, taken at one instant), so queries see rows before they are flushed.

mod client;
mod remote;
mod server;

pub use client::FlightShardSink;
pub use remote::FlightRemoteShards;
pub use server::{IngestFlightService, serve};

/// A `DoPut` with delivery marks: a command descriptor holding this as JSON, in place of the
/// `[table, shard]` path. The collector's producer id and one position per batch of the stream
/// let a store drop batches it already holds when a collector sends them again (see
/// `oxeye_store::delivery`). A stream with a path descriptor is written as it comes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PutCommand {
    table: String,
    shard: u32,
    producer: String,
    positions: Vec<u64>,
}

/// Most positions one `DoPut` may announce (a collector sends far fewer per stream).
const MAX_DELIVERY_POSITIONS: usize = 1 << 20;

/// What a query node asks a store node for with `DoGet`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SnapshotTicket {
    table: String,
    start: Option<i64>,
    end: Option<i64>,
    /// Only this trace's unflushed rows (32 hex digits), for trace lookups.
    #[serde(default)]
    trace_id: Option<String>,
}

/// The first message of a snapshot: the shards it covers and their committed segments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SnapshotHeader {
    shards: Vec<u32>,
    segments: Vec<oxeye_store::SegmentMeta>,
}

use std::time::Duration;

use oxeye_model::ingest::IngestError;

/// gRPC metadata key carrying a store's retry advice, in milliseconds.
const RETRY_AFTER_MS: &str = "oxeye-retry-after-ms";

/// A store's refusal as a gRPC status (the inverse of [`status_to_error`]).
fn error_to_status(e: &IngestError) -> tonic::Status {
    let mut status = match e {
        IngestError::Overloaded { reason, .. } => tonic::Status::resource_exhausted(reason.clone()),
        IngestError::Unavailable { reason, .. } => tonic::Status::unavailable(reason.clone()),
        IngestError::Rejected { reason } => tonic::Status::invalid_argument(reason.clone()),
    };
    if let Some(after) = e.retry_after()
        && let Ok(v) = after.as_millis().to_string().parse()
    {
        status.metadata_mut().insert(RETRY_AFTER_MS, v);
    }
    status
}

/// A gRPC status from a store as the ingest error it stands for.
fn status_to_error(store: &str, status: &tonic::Status) -> IngestError {
    let retry_after = status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(1));
    let reason = format!("store {store}: {}", status.message());
    match status.code() {
        tonic::Code::ResourceExhausted => IngestError::Overloaded {
            reason,
            retry_after,
        },
        tonic::Code::InvalidArgument => IngestError::Rejected { reason },
        _ => IngestError::Unavailable {
            reason,
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_kind_and_advice_across_the_wire() {
        for e in [
            IngestError::Overloaded {
                reason: "memtable full".into(),
                retry_after: Duration::from_millis(1500),
            },
            IngestError::Unavailable {
                reason: "disk full".into(),
                retry_after: Duration::from_secs(5),
            },
            IngestError::Rejected {
                reason: "bad batch".into(),
            },
        ] {
            let back = status_to_error("s1", &error_to_status(&e));
            assert_eq!(back.is_retryable(), e.is_retryable());
            assert_eq!(back.retry_after(), e.retry_after());
            assert!(back.to_string().contains("s1"), "{back}");
        }
    }
}
