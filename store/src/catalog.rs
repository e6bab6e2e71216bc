//! The catalog: which segments exist, and how far each shard's WAL has been flushed.
//!
//! Every change is one atomic step: the embedded metastore writes the whole catalog to a
//! temporary file, syncs it, renames it over `catalog.json` and syncs the directory, so a crash
//! leaves either the old or the new catalog, never a mix. A segment is visible only once the
//! catalog names it; its files are written (and synced) before that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::delivery::{self, Delivered};
use crate::segment::SegmentMeta;

pub const CATALOG_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// Every WAL file up to and including this sequence number is in committed segments.
    pub flushed_wal_seq: u64,
    /// The highest delivery position per `producer/table` those segments hold (see
    /// `delivery`): what a collector sends again at or below it is a duplicate.
    #[serde(default, skip_serializing_if = "Delivered::is_empty")]
    pub delivered: Delivered,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    pub version: u32,
    /// Incremented by every committed change.
    pub generation: u64,
    pub segments: Vec<SegmentMeta>,
    pub shards: BTreeMap<u32, ShardCheckpoint>,
}

impl Default for CatalogState {
    fn default() -> Self {
        CatalogState {
            version: CATALOG_FORMAT_VERSION,
            generation: 0,
            segments: Vec::new(),
            shards: BTreeMap::new(),
        }
    }
}

/// One atomic change to the catalog.
#[derive(Debug, Clone)]
pub enum CatalogChange {
    /// A flush: new segments, and the shard's WAL is flushed up to `flushed_wal_seq`; the
    /// shard now holds the delivery positions `delivered` in segments.
    Flush {
        shard: u32,
        flushed_wal_seq: u64,
        added: Vec<SegmentMeta>,
        delivered: Delivered,
    },
    /// A compaction: `removed` are replaced by `added`. Fails if any of `removed` is gone.
    Replace {
        removed: Vec<String>,
        added: Vec<SegmentMeta>,
    },
    /// Retention: segments dropped. Fails if any is gone.
    Remove { removed: Vec<String> },
}

impl CatalogState {
    /// Applies a change, or explains why it conflicts with the current state.
    pub fn apply(&self, change: &CatalogChange) -> Result<CatalogState, StoreError> {
        let mut next = self.clone();
        next.generation += 1;
        let remove = |next: &mut CatalogState, ids: &[String]| -> Result<(), StoreError> {
            for id in ids {
                if !next.segments.iter().any(|s| &s.id == id) {
                    return Err(StoreError::Catalog(format!(
                        "segment {id} is no longer in the catalog (removed by a concurrent change)"
                    )));
                }
            }
            next.segments.retain(|s| !ids.contains(&s.id));
            Ok(())
        };
        match change {
            CatalogChange::Flush {
                shard,
                flushed_wal_seq,
                added,
                delivered,
            } => {
                let cp = next.shards.entry(*shard).or_default();
                delivery::merge(&mut cp.delivered, delivered);
                // 0: a replicated shard, whose WAL numbers are each replica's own; its
                // delivery positions are its checkpoint.
                if *flushed_wal_seq != 0 {
                    if *flushed_wal_seq < cp.flushed_wal_seq {
                        return Err(StoreError::Catalog(format!(
                            "shard {shard} flush at WAL {flushed_wal_seq} is behind the catalog's {}",
                            cp.flushed_wal_seq
                        )));
                    }
                    cp.flushed_wal_seq = *flushed_wal_seq;
                }
                next.segments.extend(added.iter().cloned());
            }
            CatalogChange::Replace { removed, added } => {
                remove(&mut next, removed)?;
                next.segments.extend(added.iter().cloned());
            }
            CatalogChange::Remove { removed } => remove(&mut next, removed)?,
        }
        Ok(next)
    }
}

/// Durable home of the catalog: a file here, PostgreSQL in a cluster.
#[async_trait::async_trait]
pub trait Metastore: Send + Sync + 'static {
    async fn load(&self) -> Result<CatalogState, StoreError>;
    /// Applies `change` atomically and returns the new state.
    async fn commit(&self, change: CatalogChange) -> Result<CatalogState, StoreError>;
    /// Whether other nodes commit to this catalog too (then this node's view can be behind it,
    /// and only a fresh `load` says which objects are in use).
    fn shared(&self) -> bool {
        false
    }
}

/// The embedded metastore: `catalog.json` in the data directory.
pub struct FileMetastore {
    path: PathBuf,
    state: Mutex<Option<CatalogState>>,
    /// Serialises commits (the state mutex is not held across file I/O).
    commit_lock: tokio::sync::Mutex<()>,
}

impl FileMetastore {
    pub fn new(dir: &Path) -> FileMetastore {
        FileMetastore {
            path: dir.join("catalog.json"),
            state: Mutex::new(None),
            commit_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn read(path: &Path) -> Result<CatalogState, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: CatalogState = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Catalog(format!("{} is not a valid catalog: {e}", path.display()))
                })?;
                if state.version != CATALOG_FORMAT_VERSION {
                    return Err(StoreError::Catalog(format!(
                        "{} has catalog format {}, this oxeye reads format {CATALOG_FORMAT_VERSION}",
                        path.display(),
                        state.version
                    )));
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CatalogState::default()),
            Err(e) => Err(StoreError::io("reading the catalog", path, e)),
        }
    }

    fn write(path: &Path, state: &CatalogState) -> Result<(), StoreError> {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("creating the catalog directory", dir, e))?;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| StoreError::Catalog(format!("cannot serialise the catalog: {e}")))?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| StoreError::io("writing the catalog", &tmp, e))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::io("writing the catalog", &tmp, e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| StoreError::io("replacing the catalog", path, e))?;
        crate::wal::sync_dir(dir)
    }
}

#[async_trait::async_trait]
impl Metastore for FileMetastore {
    async fn load(&self) -> Result<CatalogState, StoreError> {
        let path = self.path.clone();
        let state = tokio::task::spawn_blocking(move || Self::read(&path))
            .await
            .map_err(|e| StoreError::Catalog(format!("catalog read task failed: {e}")))??;
        *self.state.lock() = Some(state.clone());
        Ok(state)
    }

    async fn commit(&self, change: CatalogChange) -> Result<CatalogState, StoreError> {
        let _serial = self.commit_lock.lock().await;
        let current = match self.state.lock().clone() {
            Some(s) => s,
            None => Self::read(&self.path)?,
        };
        let next = current.apply(&change)?;
        let path = self.path.clone();
        let to_write = next.clone();
        tokio::task::spawn_blocking(move || Self::write(&path, &to_write))
            .await
            .map_err(|e| StoreError::Catalog(format!("catalog write task failed: {e}")))??;
        *self.state.lock() = Some(next.clone());
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_model::Signal;

    fn seg(id: &str) -> SegmentMeta {
        crate::test_support::segment_meta(id, 0)
    }

    #[tokio::test]
    async fn commits_survive_reopen_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = FileMetastore::new(dir.path());
        m.load().await.unwrap();
        m.commit(CatalogChange::Flush {
            shard: 0,
            flushed_wal_seq: 3,
            added: vec![seg("a"), seg("b")],
            delivered: Delivered::from([("c1/spans".to_string(), 7)]),
        })
        .await
        .unwrap();
        m.commit(CatalogChange::Replace {
            removed: vec!["a".into(), "b".into()],
            added: vec![seg("c")],
        })
        .await
        .unwrap();
        // A second compaction of the same inputs must fail, not duplicate rows.
        let err = m
            .commit(CatalogChange::Replace {
                removed: vec!["a".into()],
                added: vec![seg("d")],
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no longer in the catalog"));
        let reopened = FileMetastore::new(dir.path()).load().await.unwrap();
        assert_eq!(
            reopened
                .segments
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>(),
            vec!["c"]
        );
        assert_eq!(reopened.shards[&0].flushed_wal_seq, 3);
        assert_eq!(reopened.shards[&0].delivered["c1/spans"], 7);
        assert_eq!(reopened.generation, 2);
    }

    #[test]
    fn checked_in_fixture_still_reads() {
        // The on-disk catalog format is a contract: this sample must keep loading.
        let fixture = include_str!("../tests/fixtures/catalog-v1.json");
        let state: CatalogState = serde_json::from_str(fixture).unwrap();
        assert_eq!(state.version, CATALOG_FORMAT_VERSION);
        assert_eq!(state.segments[0].signal, Signal::Spans);
    }
}
