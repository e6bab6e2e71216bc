//! Other nodes' shards, as a query node sees them: at one instant, a store node's committed
//! segments of its shards and its unflushed rows.
//!
//! A query node reads segments through the shared catalog, which lags a store node's flushes and
//! knows nothing of rows still in memtables. For the shards a store node answers for, the query
//! uses that node's own snapshot instead: the segment list and the unflushed rows come from the
//! same read lock on the store node, so each row is in exactly one of them. Shards whose node does
//! not answer fall back to the catalog's segments (their unflushed rows are then not visible, and
//! the query still answers).

use std::collections::BTreeSet;

use arrow::array::{Array, BooleanArray, FixedSizeBinaryArray};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use oxeye_model::Signal;

use crate::error::StoreError;
use crate::index::IndexPredicate;
use crate::segment::SegmentRef;

/// One store node's shards at one instant.
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    /// Where the snapshot came from (for logs).
    pub node: String,
    /// The shards it covers: every committed segment and unflushed row of these shards is in
    /// `segments` or `batches`, once.
    pub shards: Vec<u32>,
    /// Committed segments of the signal, of those shards.
    pub segments: Vec<SegmentRef>,
    /// Unflushed rows of the signal overlapping the time range (storage schema).
    pub batches: Vec<RecordBatch>,
}

/// Where a query node gets store nodes' snapshots (Arrow Flight, in a cluster).
#[async_trait::async_trait]
pub trait RemoteShards: Send + Sync + std::fmt::Debug {
    /// Snapshots of every reachable store node; nodes that fail to answer are left out.
    /// `index` is the query's index predicate: what of it every matching row satisfies
    /// ([`required_trace_id`]) may be applied to the unflushed rows before they travel.
    /// Fails ([`StoreError::Overloaded`]) when the unflushed rows a query needs are more than
    /// the query may hold in memory.
    async fn snapshots(
        &self,
        signal: Signal,
        start: Option<i64>,
        end: Option<i64>,
        index: Option<&IndexPredicate>,
    ) -> Result<Vec<ShardSnapshot>, StoreError>;
}

/// The trace id every row matching `predicate` has, if the predicate requires one (a trace
/// lookup, alone or within a conjunction). Unflushed rows of other traces cannot match, so a
/// snapshot may leave them out: a trace lookup then moves one trace, not a store node's
/// memtables.
pub fn required_trace_id(predicate: &IndexPredicate) -> Option<[u8; 16]> {
    match predicate {
        IndexPredicate::TraceId(id) => Some(*id),
        IndexPredicate::And(parts) => parts.iter().find_map(required_trace_id),
        _ => None,
    }
}

/// The rows of `batch` whose `trace_id` is `trace_id` (a batch without the column keeps none).
pub fn rows_of_trace(batch: &RecordBatch, trace_id: &[u8; 16]) -> Result<RecordBatch, ArrowError> {
    let Some(ids) = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
    else {
        return Ok(batch.slice(0, 0));
    };
    let keep: BooleanArray = (0..ids.len())
        .map(|i| Some(ids.is_valid(i) && ids.value(i) == trace_id.as_slice()))
        .collect();
    filter_record_batch(batch, &keep)
}

/// Merges the catalog's segments with store nodes' snapshots: a shard covered by a snapshot
/// takes that snapshot's segments and rows instead of the catalog's segments. A shard claimed by
/// two snapshots (a node that moved and one that still answers for its old shards) is taken from
/// the first only; the second snapshot is dropped whole, since its rows are not split by shard.
pub fn merge_snapshots(
    signal: Signal,
    catalog_segments: Vec<SegmentRef>,
    snapshots: Vec<ShardSnapshot>,
) -> (Vec<SegmentRef>, Vec<RecordBatch>) {
    let mut covered = BTreeSet::new();
    let mut taken = Vec::new();
    for snap in snapshots {
        if snap.shards.iter().any(|s| covered.contains(s)) {
            tracing::warn!(node = %snap.node, shards = ?snap.shards, "two store nodes answer for the same shards; using the first");
            continue;
        }
        covered.extend(snap.shards.iter().copied());
        taken.push(snap);
    }
    let mut segments: Vec<SegmentRef> = catalog_segments
        .into_iter()
        .filter(|s| !covered.contains(&s.shard))
        .collect();
    let mut batches = Vec::new();
    for snap in taken {
        segments.extend(snap.segments.into_iter().filter(|s| s.signal == signal));
        batches.extend(snap.batches);
    }
    (segments, batches)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn seg(id: &str, shard: u32) -> SegmentRef {
        Arc::new(crate::test_support::segment_meta(id, shard))
    }

    fn ids(segments: &[SegmentRef]) -> Vec<&str> {
        let mut v: Vec<&str> = segments.iter().map(|s| s.id.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_trace_lookup_keeps_only_that_traces_rows() {
        let batch = crate::test_support::spans_batch(0, 40).batch;
        let ids = batch
            .column_by_name("trace_id")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
            .expect("trace ids");
        let wanted: [u8; 16] = ids.value(0).try_into().expect("16 bytes");
        let expected = (0..ids.len()).filter(|i| ids.value(*i) == wanted).count();
        assert!(expected > 0 && expected < batch.num_rows());
        let kept = rows_of_trace(&batch, &wanted).expect("filter");
        assert_eq!(kept.num_rows(), expected);

        let lookup = IndexPredicate::And(vec![
            IndexPredicate::Service("svc-0".into()),
            IndexPredicate::TraceId(wanted),
        ]);
        assert_eq!(required_trace_id(&lookup), Some(wanted));
        let either = IndexPredicate::Or(vec![IndexPredicate::TraceId(wanted)]);
        assert_eq!(
            required_trace_id(&either),
            None,
            "an OR does not require the trace"
        );
    }

    #[test]
    fn a_snapshot_replaces_the_catalog_for_its_shards_only() {
        // The catalog lags: it has shard 0's old segment and not yet the one shard 0 just flushed.
        let catalog = vec![seg("old-0", 0), seg("a-1", 1), seg("b-2", 2)];
        let node = ShardSnapshot {
            node: "n0".into(),
            shards: vec![0, 1],
            segments: vec![seg("new-0", 0), seg("a-1", 1)],
            batches: vec![],
        };
        let (segments, batches) = merge_snapshots(Signal::Spans, catalog, vec![node]);
        assert_eq!(ids(&segments), vec!["a-1", "b-2", "new-0"]);
        assert!(batches.is_empty());
    }

    #[test]
    fn a_shard_claimed_twice_is_taken_once() {
        let first = ShardSnapshot {
            node: "n0".into(),
            shards: vec![0],
            segments: vec![seg("x-0", 0)],
            batches: vec![],
        };
        let second = ShardSnapshot {
            node: "n1".into(),
            shards: vec![0, 1],
            segments: vec![seg("y-0", 0), seg("y-1", 1)],
            batches: vec![],
        };
        let (segments, _) =
            merge_snapshots(Signal::Spans, vec![seg("c-1", 1)], vec![first, second]);
        // n1 is dropped whole, so shard 1 comes from the catalog.
        assert_eq!(ids(&segments), vec!["c-1", "x-0"]);
    }
}
