//! Rows that are durable in the WAL but not yet in a segment. Visible to queries at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use oxeye_model::{Signal, SignalBatch};

use crate::segment::{SegmentRef, time_range};

/// A batch in memory with its time range (for pruning).
#[derive(Debug, Clone)]
pub struct MemBatch {
    pub batch: RecordBatch,
    pub min_time: i64,
    pub max_time: i64,
}

impl MemBatch {
    pub fn new(b: SignalBatch) -> MemBatch {
        let (min_time, max_time) = time_range(b.signal, &b.batch).unwrap_or((i64::MIN, i64::MAX));
        MemBatch {
            batch: b.batch,
            min_time,
            max_time,
        }
    }

    pub fn overlaps(&self, start: Option<i64>, end: Option<i64>) -> bool {
        start.is_none_or(|s| self.max_time >= s) && end.is_none_or(|e| self.min_time < e)
    }
}

#[derive(Debug, Default)]
pub struct Memtable {
    pub batches: BTreeMap<Signal, Vec<MemBatch>>,
    pub rows: usize,
    pub bytes: usize,
    /// When the first row arrived (drives flush by age).
    pub first_at: Option<Instant>,
}

impl Memtable {
    pub fn insert(&mut self, signal: Signal, b: MemBatch) {
        self.rows += b.batch.num_rows();
        self.bytes += oxeye_model::used_bytes(&b.batch);
        self.first_at.get_or_insert_with(Instant::now);
        self.batches.entry(signal).or_default().push(b);
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// A memtable whose WAL files (up to `sealed_wal_seq`) are closed and which is being flushed.
#[derive(Debug)]
pub struct Frozen {
    pub memtable: Memtable,
    pub sealed_wal_seq: u64,
    /// The delivery positions the shard held when it was sealed: the catalog records them with
    /// the segments, since the WAL records that carry them are deleted after the flush.
    pub delivered: crate::delivery::Delivered,
}

/// One shard's unflushed data.
#[derive(Debug, Default)]
pub struct ShardMemory {
    pub active: Memtable,
    pub frozen: Vec<Arc<Frozen>>,
}

impl ShardMemory {
    pub fn unflushed_bytes(&self) -> usize {
        self.active.bytes + self.frozen.iter().map(|f| f.memtable.bytes).sum::<usize>()
    }
}

/// Everything a query can see, changed only under one lock so that a reader never sees a row
/// twice (in a frozen memtable and in the segment it became) or not at all.
#[derive(Debug, Default)]
pub struct ReadState {
    pub segments: BTreeMap<Signal, Vec<SegmentRef>>,
    /// The catalog generation `segments` reflects (a refresh never goes back past a commit
    /// this process made).
    pub generation: u64,
    pub shards: BTreeMap<u32, ShardMemory>,
}

impl ReadState {
    /// Adds a committed segment unless it is there already (a catalog refresh may have brought
    /// it in first).
    pub fn add_segment(&mut self, meta: SegmentRef) {
        let list = self.segments.entry(meta.signal).or_default();
        if !list.iter().any(|s| s.id == meta.id) {
            list.push(meta);
        }
    }

    /// In-memory batches of `signal` across all shards that overlap the time range.
    pub fn memory_batches(
        &self,
        signal: Signal,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Vec<RecordBatch> {
        self.memory_batches_of(signal, start, end, |_| true)
    }

    /// [`ReadState::memory_batches`] of the shards `wanted` picks.
    pub fn memory_batches_of(
        &self,
        signal: Signal,
        start: Option<i64>,
        end: Option<i64>,
        wanted: impl Fn(u32) -> bool,
    ) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for (_, shard) in self.shards.iter().filter(|(id, _)| wanted(**id)) {
            let tables = shard
                .frozen
                .iter()
                .map(|f| &f.memtable)
                .chain(std::iter::once(&shard.active));
            for t in tables {
                if let Some(bs) = t.batches.get(&signal) {
                    out.extend(
                        bs.iter()
                            .filter(|b| b.overlaps(start, end))
                            .map(|b| b.batch.clone()),
                    );
                }
            }
        }
        out
    }
}
