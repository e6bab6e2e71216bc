//! Other nodes' shards, as a query node sees them: at one instant, a store node's committed
//! segments of its shards and its unflushed rows.
//!
//! A query node reads segments through the shared catalog, which lags a store node's flushes and
//! knows nothing of rows still in memtables. For the shards a store node answers for, the query
//! uses that node's own snapshot instead: the segment list and the unflushed rows come from the
//! same read lock on the store node, so each row is in exactly one of them. Shards whose node does
//! not answer fall back to the catalog's segments (their unflushed rows are then not visible, and
//! the query still answers).
//!
//! A snapshot with few unflushed rows carries them at once. A bigger one leaves them on the store
//! node, set aside for the query ([`PinnedRows`]): they are read when the scan runs, still cut by
//! the query's filters and columns, or aggregated on the store node so that only partial
//! aggregate states travel ([`PartialAggregator`]). Setting them aside (cheap: the batches are
//! shared, not copied) keeps them consistent with the segment list whatever is flushed in
//! between.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, FixedSizeBinaryArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use oxeye_model::Signal;

use crate::error::StoreError;
use crate::index::IndexPredicate;
use crate::scan::{RowFilterStage, ScanRequest};
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
    /// Unflushed rows the node set aside for the query instead of sending them now.
    pub pinned: Option<PinnedRows>,
    /// Every shard the node holds a replica of, led or not: a shard here that no snapshot
    /// covers has no leader at the moment (its leader just went), and will have one soon.
    pub serves: Vec<u32>,
}

/// Unflushed rows a store node set aside for one query when it answered the query's snapshot
/// request; the query reads them once, when its scan runs ([`RemoteShards::fetch`]).
#[derive(Debug, Clone)]
pub struct PinnedRows {
    /// The store node (its Flight address).
    pub node: String,
    pub id: u64,
    /// Rows set aside, before any filter: the most a read of them yields.
    pub rows: u64,
    /// Bytes the query may still take in from store nodes, shared by all its reads of them.
    pub budget: Arc<AtomicUsize>,
    /// Gives the rows back to their node if the query never reads them.
    pub release: Arc<PinRelease>,
}

/// Gives rows set aside back to their store node when a query is done with them unread (a
/// `LIMIT` met before the scan got to them, an `EXPLAIN`, a failed query), so the node need not
/// keep them until their time runs out. Runs once the last copy of the scan plan is dropped.
pub struct PinRelease {
    read: AtomicBool,
    release: parking_lot::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl PinRelease {
    pub fn new(release: impl FnOnce() + Send + 'static) -> Arc<PinRelease> {
        Arc::new(PinRelease {
            read: AtomicBool::new(false),
            release: parking_lot::Mutex::new(Some(Box::new(release))),
        })
    }

    /// Nothing to give back (the rows were not set aside by a remote node).
    pub fn none() -> Arc<PinRelease> {
        Arc::new(PinRelease {
            read: AtomicBool::new(true),
            release: parking_lot::Mutex::new(None),
        })
    }

    /// The query is reading the rows: the node drops them as it sends them.
    pub fn mark_read(&self) {
        self.read.store(true, Ordering::Relaxed);
    }
}

impl Drop for PinRelease {
    fn drop(&mut self) {
        if !self.read.load(Ordering::Relaxed)
            && let Some(release) = self.release.lock().take()
        {
            release();
        }
    }
}

impl std::fmt::Debug for PinRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinRelease")
            .field("read", &self.read.load(Ordering::Relaxed))
            .finish()
    }
}

/// How a query node wants big snapshots answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRequest {
    /// Up to this many unflushed rows (before filters) travel with the snapshot; more are set
    /// aside for the query.
    pub inline_rows: usize,
    /// How long the node keeps rows set aside that are never read (a query that failed or was
    /// only explained).
    pub ttl: Duration,
}

/// Where a query node gets store nodes' snapshots (Arrow Flight, in a cluster).
#[async_trait::async_trait]
pub trait RemoteShards: Send + Sync + std::fmt::Debug {
    /// Snapshots of every reachable store node for a scan; nodes that fail to answer are left
    /// out. What of the request every row read must satisfy travels with it (see
    /// [`SnapshotRequest::for_scan`]), so store nodes send only those unflushed rows, and only
    /// the columns the scan reads. Fails ([`StoreError::Overloaded`]) when the unflushed rows a
    /// query needs are more than the query may hold in memory. With `pin`, nodes may set big
    /// sets of unflushed rows aside for the scan to read when it runs ([`PinnedRows`]);
    /// without, every row travels now.
    async fn snapshots(
        &self,
        request: &ScanRequest,
        pin: bool,
    ) -> Result<Vec<ShardSnapshot>, StoreError>;

    /// Reads rows a store node set aside for this query: those that pass `scan`'s filters,
    /// time range, trace id and limit, in the storage columns it reads. With `partial`, an
    /// encoded partial aggregate the node runs over those rows ([`PartialAggregator`]), the
    /// stream carries its states instead. Rows set aside are given once.
    async fn fetch(
        &self,
        pinned: &PinnedRows,
        scan: &ScanRequest,
        partial: Option<Arc<Vec<u8>>>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError>;
}

/// Runs a query node's partial aggregate over a store node's rows. The query layer owns both
/// ends (it encodes the plan on the query node and decodes and runs it here); the store only
/// carries the bytes.
pub trait PartialAggregator: Send + Sync + std::fmt::Debug {
    /// The states of `plan` over `rows` (storage columns of `signal`, already cut by the
    /// query's filters), and their schema.
    fn aggregate(
        &self,
        signal: Signal,
        plan: &[u8],
        rows: Vec<RecordBatch>,
    ) -> Result<
        (
            SchemaRef,
            BoxStream<'static, Result<RecordBatch, StoreError>>,
        ),
        StoreError,
    >;
}

/// Most rows a store node keeps set aside for queries at once; past it, snapshots carry their
/// rows as small ones do.
const MAX_PINS: usize = 256;
/// Longest a query may ask rows to be kept for.
pub const MAX_PIN_TTL: Duration = Duration::from_secs(3600);

/// Rows set aside on a store node for queries, until read or expired. The batches are shared
/// with the memtables (not copied); after a flush they are the only holders.
#[derive(Debug)]
pub(crate) struct Pins {
    entries: HashMap<u64, Pin>,
    /// Ids start at a random point, so an id from before a restart finds nothing.
    next: u64,
    /// Bytes of the rows set aside, counted once per entry (entries share batches, so this is
    /// the most they can hold once the memtables are flushed).
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Pin {
    signal: Signal,
    batches: Vec<RecordBatch>,
    bytes: usize,
    expires: Instant,
}

impl Default for Pins {
    fn default() -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Pins {
            entries: HashMap::new(),
            next: seed,
            bytes: 0,
        }
    }
}

impl Pins {
    /// Sets `batches` aside for `ttl` and names them; gives them back when too many rows are
    /// set aside already (more than [`MAX_PINS`] entries or `max_bytes`).
    pub fn pin(
        &mut self,
        signal: Signal,
        batches: Vec<RecordBatch>,
        ttl: Duration,
        max_bytes: usize,
    ) -> Result<u64, Vec<RecordBatch>> {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove(id);
        }
        let bytes: usize = batches.iter().map(oxeye_model::used_bytes).sum();
        if self.entries.len() >= MAX_PINS || self.bytes + bytes > max_bytes {
            return Err(batches);
        }
        self.next = self.next.wrapping_add(1);
        let id = self.next;
        self.bytes += bytes;
        self.entries.insert(
            id,
            Pin {
                signal,
                batches,
                bytes,
                expires: now + ttl.min(MAX_PIN_TTL),
            },
        );
        Ok(id)
    }

    /// The rows set aside under `id` for `signal`, handed over once.
    pub fn take(&mut self, id: u64, signal: Signal) -> Option<Vec<RecordBatch>> {
        let now = Instant::now();
        let pin = self.entries.get(&id)?;
        if pin.signal != signal {
            return None;
        }
        let live = pin.expires > now;
        let pin = self.remove(id)?;
        live.then_some(pin.batches)
    }

    /// Drops the rows set aside under `id`, if any.
    pub fn remove(&mut self, id: u64) -> Option<Pin> {
        let pin = self.entries.remove(&id)?;
        self.bytes -= pin.bytes;
        Some(pin)
    }

    /// `(entries, rows)` set aside now.
    pub fn usage(&self) -> (usize, u64) {
        let rows = self
            .entries
            .values()
            .flat_map(|p| p.batches.iter())
            .map(|b| b.num_rows() as u64)
            .sum();
        (self.entries.len(), rows)
    }
}

/// Rebuilds row filter stages from their wire form ([`RowFilterStage::wire`]) on a store node.
/// The query layer owns both ends, since the stages are its compiled filters.
pub trait RowFilterCompiler: Send + Sync + std::fmt::Debug {
    /// The stage `wire` describes, or `None` when this node cannot rebuild it (the snapshot is
    /// then not filtered by it; the query node still applies it).
    fn compile(&self, signal: Signal, wire: &str) -> Option<RowFilterStage>;
}

/// What a store node's snapshot should hold of its unflushed rows.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub signal: Signal,
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Only this trace's rows.
    pub trace_id: Option<[u8; 16]>,
    /// Only rows that pass these stages.
    pub filter: Vec<RowFilterStage>,
    /// Only these storage columns (by name); all when `None`.
    pub columns: Option<Vec<String>>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

impl SnapshotRequest {
    /// Everything of `signal` in the time range.
    pub fn all(signal: Signal, start: Option<i64>, end: Option<i64>) -> SnapshotRequest {
        SnapshotRequest {
            signal,
            start,
            end,
            trace_id: None,
            filter: Vec::new(),
            columns: None,
            limit: None,
        }
    }

    /// What a snapshot for `scan` needs: its time range, trace id, columns and row limit. The
    /// filter stages travel separately, as text ([`RowFilterStage::wire`]).
    pub fn for_scan(scan: &ScanRequest) -> SnapshotRequest {
        SnapshotRequest {
            trace_id: scan.index.as_ref().and_then(required_trace_id),
            columns: scan.column_names(),
            limit: scan.limit.filter(|_| scan.filter.is_empty()),
            ..SnapshotRequest::all(scan.signal, scan.start, scan.end)
        }
    }

    /// The rows of `batches` (unflushed, full storage rows) this request keeps.
    pub fn apply(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, StoreError> {
        let storage = self.signal.schema();
        let projection = match &self.columns {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        storage.index_of(n).map_err(|_| StoreError::Invalid {
                            reason: format!("{} has no column `{n}`", self.signal.table_name()),
                        })
                    })
                    .collect::<Result<Vec<usize>, StoreError>>()?,
            ),
        };
        let mut left = self.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for batch in batches {
            if left == 0 {
                break;
            }
            let mut kept = match &self.trace_id {
                Some(id) => rows_of_trace(&batch, id)
                    .map_err(|e| StoreError::arrow("keeping one trace's unflushed rows", e))?,
                None => batch,
            };
            kept = crate::scan::filter_memory_rows(self.signal, &kept, &self.filter)?;
            if kept.num_rows() == 0 {
                continue;
            }
            if kept.num_rows() > left {
                kept = kept.slice(0, left);
            }
            left -= kept.num_rows();
            if let Some(p) = &projection {
                kept = kept
                    .project(p)
                    .map_err(|e| StoreError::arrow("projecting unflushed rows", e))?;
            }
            out.push(kept);
        }
        Ok(out)
    }
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
) -> (Vec<SegmentRef>, Vec<RecordBatch>, Vec<PinnedRows>) {
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
    let mut pinned = Vec::new();
    for snap in taken {
        segments.extend(snap.segments.into_iter().filter(|s| s.signal == signal));
        batches.extend(snap.batches);
        pinned.extend(snap.pinned);
    }
    (segments, batches, pinned)
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
    fn a_snapshot_request_keeps_its_columns_and_limit() {
        let batches = vec![
            crate::test_support::spans_batch(0, 40).batch,
            crate::test_support::spans_batch(40, 40).batch,
        ];
        let request = SnapshotRequest {
            columns: Some(vec!["trace_id".into(), "name".into()]),
            limit: Some(50),
            ..SnapshotRequest::all(Signal::Spans, None, None)
        };
        let kept = request.apply(batches.clone()).expect("apply");
        assert_eq!(kept.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
        for b in &kept {
            let names: Vec<&str> = b
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(names, ["trace_id", "name"]);
        }
        // The query node reads such a batch by storage column index, whatever it holds.
        let storage = Signal::Spans.schema();
        let name = storage.index_of("name").expect("name");
        let read = crate::scan::project_storage_columns(Signal::Spans, &kept[0], &[name])
            .expect("by name");
        assert_eq!(read.schema_ref().field(0).name(), "name");
        let missing = storage.index_of("span_id").expect("span_id");
        assert!(crate::scan::project_storage_columns(Signal::Spans, &kept[0], &[missing]).is_err());

        let unknown = SnapshotRequest {
            columns: Some(vec!["no_such_column".into()]),
            ..SnapshotRequest::all(Signal::Spans, None, None)
        };
        assert!(unknown.apply(batches).is_err());
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
    fn rows_set_aside_are_given_once_and_not_past_their_time() {
        let batch = crate::test_support::spans_batch(0, 10).batch;
        let mut pins = Pins::default();
        let minute = Duration::from_secs(60);
        let id = pins
            .pin(Signal::Spans, vec![batch.clone()], minute, usize::MAX)
            .expect("room");
        assert_eq!(pins.usage(), (1, 10));
        assert!(
            pins.take(id, Signal::Logs).is_none(),
            "a read of another table"
        );
        assert_eq!(pins.take(id, Signal::Spans).expect("set aside").len(), 1);
        assert!(pins.take(id, Signal::Spans).is_none(), "given once");
        assert_eq!(pins.usage(), (0, 0));

        let expired = pins
            .pin(
                Signal::Spans,
                vec![batch.clone()],
                Duration::ZERO,
                usize::MAX,
            )
            .expect("room");
        assert!(pins.take(expired, Signal::Spans).is_none());
        assert_eq!(pins.usage(), (0, 0));

        let bytes = oxeye_model::used_bytes(&batch);
        let released = pins
            .pin(Signal::Spans, vec![batch.clone()], minute, bytes)
            .expect("room");
        let refused = pins
            .pin(Signal::Spans, vec![batch.clone()], minute, bytes)
            .expect_err("over the bytes");
        assert_eq!(refused.len(), 1, "the rows come back to travel at once");
        assert!(pins.remove(released).is_some());
        for _ in 0..MAX_PINS {
            pins.pin(Signal::Spans, vec![batch.clone()], minute, usize::MAX)
                .expect("room");
        }
        let refused = pins
            .pin(Signal::Spans, vec![batch], minute, usize::MAX)
            .expect_err("full");
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn rows_set_aside_are_given_back_unless_read() {
        let released = Arc::new(AtomicUsize::new(0));
        let counter = released.clone();
        let unread = PinRelease::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let copy = unread.clone();
        drop(unread);
        assert_eq!(released.load(Ordering::Relaxed), 0, "a copy is still held");
        drop(copy);
        assert_eq!(released.load(Ordering::Relaxed), 1);

        let counter = released.clone();
        let read = PinRelease::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        read.mark_read();
        drop(read);
        assert_eq!(
            released.load(Ordering::Relaxed),
            1,
            "read rows are gone already"
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
            pinned: None,
            serves: vec![],
        };
        let (segments, batches, _) = merge_snapshots(Signal::Spans, catalog, vec![node]);
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
            pinned: None,
            serves: vec![],
        };
        let second = ShardSnapshot {
            node: "n1".into(),
            shards: vec![0, 1],
            segments: vec![seg("y-0", 0), seg("y-1", 1)],
            batches: vec![],
            pinned: None,
            serves: vec![],
        };
        let (segments, _, _) =
            merge_snapshots(Signal::Spans, vec![seg("c-1", 1)], vec![first, second]);
        // n1 is dropped whole, so shard 1 comes from the catalog.
        assert_eq!(ids(&segments), vec!["c-1", "x-0"]);
    }
}
