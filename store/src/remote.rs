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

use arrow::record_batch::RecordBatch;
use oxeye_model::Signal;

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
    async fn snapshots(
        &self,
        signal: Signal,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Vec<ShardSnapshot>;
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
    use crate::segment::SegmentMeta;

    fn seg(id: &str, shard: u32) -> SegmentRef {
        Arc::new(SegmentMeta {
            id: id.into(),
            signal: Signal::Spans,
            shard,
            data_path: format!("{id}.parquet"),
            index_path: format!("{id}.index"),
            min_time: 0,
            max_time: 10,
            rows: 1,
            data_bytes: 1,
            index_bytes: 1,
            granule_rows: 1,
            level: 0,
            created_unix_ms: 0,
        })
    }

    fn ids(segments: &[SegmentRef]) -> Vec<&str> {
        let mut v: Vec<&str> = segments.iter().map(|s| s.id.as_str()).collect();
        v.sort();
        v
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
