use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oxeye_model::Signal;

/// Settings of the store (the binary fills them from flags, environment and file).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root of the store's local state (WAL, catalog, index cache, and segments when no object
    /// store is configured).
    pub data_dir: PathBuf,
    /// Number of shards this process serves (each has its own WAL); 0 for a node that only
    /// queries what other nodes committed.
    pub shards: u32,
    /// The id of this process's first shard: nodes sharing a metastore serve disjoint ranges
    /// (`first_shard .. first_shard + shards`).
    pub first_shard: u32,
    /// The shards this process serves, when they are not one range (`--shard-ids`): replicas
    /// of a shard on several nodes need overlapping, wrapping sets. Overrides `first_shard`
    /// and `shards`.
    pub shard_list: Option<Vec<u32>>,
    /// Shards are replicated across store nodes: each starts as a follower (its WAL only) and
    /// holds its rows in memory, serves them, flushes and compacts only while this node leads
    /// it ([`crate::Store::lead`]). Writes then need delivery marks, since replicas and the
    /// flush checkpoint agree on rows by their delivery positions.
    pub replicated: bool,
    /// How often a node sharing its catalog takes in other nodes' commits.
    pub catalog_refresh: Duration,
    /// Flush a shard's memtable once it holds this many bytes...
    pub flush_bytes: usize,
    /// ...or once its oldest row is this old.
    pub flush_age: Duration,
    /// Refuse writes (retryably) while a shard's unflushed data exceeds this many bytes.
    pub max_unflushed_bytes: usize,
    /// Rows per data page, and per index granule (the unit index hits map to) except for
    /// logs, which are indexed row by row.
    pub granule_rows: usize,
    /// Target rows per row group in segments.
    pub row_group_rows: usize,
    /// Segments below this many rows are merged by compaction...
    pub compaction_target_rows: u64,
    /// ...at most this many at a time (bounds the memory a merge needs).
    pub compaction_max_inputs: usize,
    /// How often compaction and retention look for work.
    pub maintenance_interval: Duration,
    /// Data older than this is deleted, per signal (no entry: kept forever).
    pub retention: BTreeMap<Signal, Duration>,
    /// Writes are refused (retryably) when the data disk has less free space than this.
    pub min_free_disk_bytes: u64,
    /// Segments deleted by compaction or retention are removed from storage after this delay,
    /// so that queries that already planned over them can finish.
    pub deletion_grace: Duration,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            shards: 1,
            first_shard: 0,
            shard_list: None,
            replicated: false,
            catalog_refresh: Duration::from_secs(5),
            flush_bytes: 128 * 1024 * 1024,
            flush_age: Duration::from_secs(30),
            max_unflushed_bytes: 1024 * 1024 * 1024,
            granule_rows: 1024,
            row_group_rows: 128 * 1024,
            compaction_target_rows: 2_000_000,
            compaction_max_inputs: 16,
            maintenance_interval: Duration::from_secs(10),
            retention: BTreeMap::new(),
            min_free_disk_bytes: 512 * 1024 * 1024,
            deletion_grace: Duration::from_secs(60),
        }
    }
}

impl StoreConfig {
    /// Whether this process serves `shard` (and so compacts and expires its segments).
    pub fn owns(&self, shard: u32) -> bool {
        match &self.shard_list {
            Some(list) => list.contains(&shard),
            None => shard >= self.first_shard && shard - self.first_shard < self.shards,
        }
    }

    /// Every shard this process serves, in order.
    pub fn shard_ids(&self) -> Vec<u32> {
        match &self.shard_list {
            Some(list) => list.clone(),
            None => (self.first_shard..self.first_shard + self.shards).collect(),
        }
    }

    /// How segments of `signal` are cut.
    pub fn layout(&self, signal: Signal) -> crate::segment::Layout {
        crate::segment::Layout::for_signal(signal, self.granule_rows, self.row_group_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_owns_exactly_its_shard_range() {
        let mut c = StoreConfig::new("/tmp/x");
        c.first_shard = 4;
        c.shards = 2;
        assert!(!c.owns(3));
        assert!(c.owns(4) && c.owns(5));
        assert!(!c.owns(6));
        assert_eq!(c.shard_ids(), vec![4, 5]);
        c.shards = 0;
        assert!(!c.owns(4), "a query node owns nothing");
        c.shard_list = Some(vec![4, 5, 0, 1]);
        assert!(c.owns(0) && c.owns(5) && !c.owns(2));
        assert_eq!(c.shard_ids(), vec![4, 5, 0, 1]);
    }
}
