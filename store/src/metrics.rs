//! The store's own figures, exposed at `/metrics` as `oxeye_store_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: u32,
}

#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub ingested_rows: Counter,
    pub ingested_bytes: Counter,
    pub wal_bytes: Counter,
    pub wal_fsyncs: Counter,
    pub wal_fsync_seconds: Histogram,
    pub wal_group_size: Histogram,
    pub wal_tails_cut: Counter,
    pub duplicate_batches: Counter,
    pub memtable_bytes: Gauge,
    pub flushes: Counter,
    pub flush_seconds: Histogram,
    pub flush_failures: Counter,
    pub segments: Family<SignalLabels, Gauge>,
    pub segment_bytes: Family<SignalLabels, Gauge>,
    pub segment_rows: Family<SignalLabels, Gauge>,
    pub compactions: Counter,
    pub compaction_seconds: Histogram,
    pub compaction_failures: Counter,
    pub retention_deleted_segments: Counter,
    pub disk_available_bytes: Gauge,
    pub writes_refused_disk: Counter,
    pub index_searches: Counter,
    pub index_cache_bytes: Gauge,
    pub scan_segments_pruned: Counter,
    pub scan_segments_read: Counter,
    pub rows_counted_unread: Counter,
    pub snapshots: Counter,
    pub snapshot_rows: Counter,
    pub snapshot_pins: Gauge,
    pub partial_aggregate_rows: Counter,
    pub snapshot_pinned_rows: Gauge,
    pub shard_leader: Family<ShardLabels, Gauge>,
    pub lease_takeovers: Counter,
    pub wal_files_trimmed: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            ingested_rows: Counter::default(),
            ingested_bytes: Counter::default(),
            wal_bytes: Counter::default(),
            wal_fsyncs: Counter::default(),
            wal_fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            wal_group_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            wal_tails_cut: Counter::default(),
            duplicate_batches: Counter::default(),
            memtable_bytes: Gauge::default(),
            flushes: Counter::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            flush_failures: Counter::default(),
            segments: Family::default(),
            segment_bytes: Family::default(),
            segment_rows: Family::default(),
            compactions: Counter::default(),
            compaction_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            compaction_failures: Counter::default(),
            retention_deleted_segments: Counter::default(),
            disk_available_bytes: Gauge::default(),
            writes_refused_disk: Counter::default(),
            index_searches: Counter::default(),
            index_cache_bytes: Gauge::default(),
            scan_segments_pruned: Counter::default(),
            scan_segments_read: Counter::default(),
            rows_counted_unread: Counter::default(),
            snapshots: Counter::default(),
            shard_leader: Family::default(),
            lease_takeovers: Counter::default(),
            wal_files_trimmed: Counter::default(),
            snapshot_rows: Counter::default(),
            snapshot_pins: Gauge::default(),
            partial_aggregate_rows: Counter::default(),
            snapshot_pinned_rows: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = StoreMetrics::default();
        let r = registry.sub_registry_with_prefix("oxeye_store");
        r.register(
            "ingested_rows",
            "Rows made durable",
            m.ingested_rows.clone(),
        );
        r.register(
            "ingested_bytes",
            "Arrow bytes made durable",
            m.ingested_bytes.clone(),
        );
        r.register(
            "wal_bytes",
            "Bytes appended to WAL files",
            m.wal_bytes.clone(),
        );
        r.register(
            "wal_fsyncs",
            "WAL group commits (one fsync each)",
            m.wal_fsyncs.clone(),
        );
        r.register(
            "wal_fsync_seconds",
            "Time to append and fsync one WAL group",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "wal_group_size",
            "Writes sharing one WAL fsync",
            m.wal_group_size.clone(),
        );
        r.register(
            "wal_tails_cut",
            "Torn or corrupt WAL tails cut off during replay",
            m.wal_tails_cut.clone(),
        );
        r.register(
            "duplicate_batches",
            "Batches a collector delivered again after a lost acknowledgement, dropped because \
             the shard already held them",
            m.duplicate_batches.clone(),
        );
        r.register(
            "memtable_bytes",
            "Unflushed bytes in memtables",
            m.memtable_bytes.clone(),
        );
        r.register(
            "flushes",
            "Memtables flushed to segments",
            m.flushes.clone(),
        );
        r.register(
            "flush_seconds",
            "Time to flush one memtable",
            m.flush_seconds.clone(),
        );
        r.register(
            "flush_failures",
            "Flush attempts that failed (retried later)",
            m.flush_failures.clone(),
        );
        r.register("segments", "Committed segments", m.segments.clone());
        r.register(
            "segment_bytes",
            "Bytes of committed segments (data and index)",
            m.segment_bytes.clone(),
        );
        r.register(
            "segment_rows",
            "Rows in committed segments",
            m.segment_rows.clone(),
        );
        r.register(
            "compactions",
            "Segment merges committed",
            m.compactions.clone(),
        );
        r.register(
            "compaction_seconds",
            "Time of one merge",
            m.compaction_seconds.clone(),
        );
        r.register(
            "compaction_failures",
            "Merges that failed or lost a race",
            m.compaction_failures.clone(),
        );
        r.register(
            "retention_deleted_segments",
            "Segments deleted because they expired",
            m.retention_deleted_segments.clone(),
        );
        r.register(
            "disk_available_bytes",
            "Free bytes on the data disk",
            m.disk_available_bytes.clone(),
        );
        r.register(
            "writes_refused_disk",
            "Writes refused because the disk was nearly full",
            m.writes_refused_disk.clone(),
        );
        r.register(
            "index_searches",
            "Segment index lookups",
            m.index_searches.clone(),
        );
        r.register(
            "index_cache_bytes",
            "Bytes of opened segment indexes in memory",
            m.index_cache_bytes.clone(),
        );
        r.register(
            "scan_segments_pruned",
            "Segments skipped by time or index",
            m.scan_segments_pruned.clone(),
        );
        r.register(
            "scan_segments_read",
            "Segments read by scans",
            m.scan_segments_read.clone(),
        );
        r.register(
            "scan_rows_counted_unread",
            "Segment rows scans counted without reading a page (a count of what the index or \
             the row groups select)",
            m.rows_counted_unread.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots of this node's shards taken for query nodes",
            m.snapshots.clone(),
        );
        r.register(
            "snapshot_rows",
            "Unflushed rows sent to query nodes in snapshots",
            m.snapshot_rows.clone(),
        );
        r.register(
            "snapshot_pins",
            "Snapshots whose unflushed rows are set aside for a query that has not read them yet",
            m.snapshot_pins.clone(),
        );
        r.register(
            "partial_aggregate_rows",
            "Unflushed rows aggregated here for query nodes, which got partial states instead",
            m.partial_aggregate_rows.clone(),
        );
        r.register(
            "snapshot_pinned_rows",
            "Unflushed rows set aside for queries (shared with memtables until flushed)",
            m.snapshot_pinned_rows.clone(),
        );
        r.register(
            "shard_leader",
            "1 while this node leads the shard (holds its rows in memory, serves and flushes \
             them); 0 while it follows (its WAL only)",
            m.shard_leader.clone(),
        );
        r.register(
            "lease_takeovers",
            "Shards this node started leading (at start, or after another replica's lease ran out)",
            m.lease_takeovers.clone(),
        );
        r.register(
            "wal_files_trimmed",
            "WAL files a follower deleted because the leader's flush covers them",
            m.wal_files_trimmed.clone(),
        );
        m
    }
}
