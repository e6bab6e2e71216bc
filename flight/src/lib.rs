//! Arrow Flight between oxeye nodes. A store node serves `DoPut`: a collector streams the
//! batches of one signal for one of the node's shards (the descriptor path is
//! `[table, shard]`, or a command with delivery marks, see [`PutCommand`]), the node appends
//! each batch to that shard's WAL and answers one
//! `PutResult` per batch once it is durable, so the collector acknowledges its client only for
//! what a store holds. Store refusals keep their meaning across the wire: overload and
//! unavailability come back as retryable gRPC codes with the store's advice on when to retry.
//! For query nodes a store node serves `DoGet` snapshots of its shards (committed segments and
//! unflushed rows, taken at one instant), so queries see rows before they are flushed. A big
//! snapshot's rows are set aside on the store node and read by a second `DoGet` when the query's
//! scan runs, filtered there or reduced to partial aggregate states there.

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
    /// Only these storage columns; all when absent.
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// Row filter stages in their wire form (`RowFilterStage::wire`): rows they reject stay
    /// home. A stage the store node cannot rebuild is skipped, since the query node applies
    /// every stage again.
    #[serde(default)]
    filters: Vec<String>,
    /// At most this many rows per node.
    #[serde(default)]
    limit: Option<usize>,
    /// Set the unflushed rows of a big snapshot aside, to be read when the query's scan runs,
    /// instead of sending them now.
    #[serde(default)]
    pin: Option<PinTicket>,
    /// Read the rows set aside under this id (by an earlier snapshot of the same query) instead
    /// of taking a snapshot: the answer is the rows, without a header.
    #[serde(default)]
    read_pinned: Option<u64>,
    /// With `read_pinned`: a partial aggregate (encoded by the query layer, base64) to run
    /// over those rows; the answer is then its states.
    #[serde(default)]
    partial: Option<String>,
}

/// [`oxeye_store::PinRequest`] on the wire.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PinTicket {
    inline_rows: usize,
    ttl_ms: u64,
}

/// Most filter stages one snapshot ticket may carry.
const MAX_SNAPSHOT_FILTERS: usize = 256;

/// The first message of a snapshot: the shards it covers and their committed segments.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SnapshotHeader {
    shards: Vec<u32>,
    segments: Vec<oxeye_store::SegmentMeta>,
    /// The unflushed rows were set aside rather than sent.
    #[serde(default)]
    pinned: Option<PinnedHeader>,
    /// Every shard the node holds a replica of, led or not.
    #[serde(default)]
    serves: Vec<u32>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PinnedHeader {
    id: u64,
    rows: u64,
}

/// The `DoAction` that drops rows a store node set aside for a query (body: their id).
const RELEASE_PINNED: &str = "release_pinned";

/// Largest encoded partial aggregate a ticket may carry.
const MAX_PARTIAL_PLAN_BYTES: usize = 4 * 1024 * 1024;

use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use arrow_flight::FlightData;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use futures::{Stream, StreamExt};
use oxeye_model::ingest::IngestError;

/// Arrow batches from a peer's Flight messages. Arrow's IPC reader panics on some malformed
/// messages instead of failing (arrow-ipc 59.3: buffer offsets past the message body, found by
/// `fuzz/fuzz_targets/flight_put.rs`); a peer's bytes must not take the handler down, so a panic
/// while decoding ends the stream with an error.
pub fn decode_batches<S>(data: S) -> impl Stream<Item = Result<RecordBatch, FlightError>> + Send
where
    S: Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
{
    let mut inner = FlightRecordBatchStream::new_from_flight_data(data);
    let mut broken = false;
    futures::stream::poll_fn(move |cx| {
        if broken {
            return Poll::Ready(None);
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll_next_unpin(cx))) {
            Ok(p) => p,
            Err(_) => {
                broken = true;
                Poll::Ready(Some(Err(FlightError::DecodeError(
                    "a malformed Arrow IPC message (the decoder gave up on it)".into(),
                ))))
            }
        }
    })
}

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
    fn a_malformed_ipc_message_is_an_error_not_a_panic() {
        use futures::TryStreamExt;
        use prost::Message;
        // Found by the flight_put fuzz target: a record batch whose buffer offsets run past
        // the message body. Format: a signal byte, then u16-length-prefixed FlightData.
        let input = include_bytes!("../../fuzz/corpus/flight_put/regression-ipc-buffer-past-body");
        let mut data = &input[1..];
        let mut messages = Vec::new();
        while data.len() >= 2 {
            let len = u16::from_le_bytes([data[0], data[1]]) as usize;
            data = &data[2..];
            let take = len.min(data.len());
            let Ok(m) = FlightData::decode(&data[..take]) else {
                break;
            };
            messages.push(m);
            data = &data[take..];
        }
        let stream = futures::stream::iter(messages.into_iter().map(Ok::<_, FlightError>));
        let decoded = futures::executor::block_on(decode_batches(stream).try_collect::<Vec<_>>());
        let err = decoded.expect_err("the malformed message must fail");
        assert!(err.to_string().contains("malformed"), "{err}");
    }

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
