//! A local read cache for segments kept in remote object storage. Segment objects never change
//! once written, so a cached copy is valid until the segment is deleted; the cache holds whole
//! objects in a directory, bounded by size, evicting the least recently used. A query reads
//! Parquet ranges and index bundles from the local copy instead of making a request per range.
//!
//! Concurrent misses of the same object download it once. A file evicted while a reader wanted
//! it is not an error: the reader falls back to the remote object.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;

use crate::StoreError;

#[derive(Debug)]
struct Entry {
    bytes: u64,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    used: u64,
}

#[derive(Debug)]
pub struct ReadCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// One download per object at a time.
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Object paths are `/`-separated and come from the store itself (`segments/<table>/<id>.*`);
/// anything that could climb out of the cache directory is refused.
fn safe(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => walk(&path, root, out),
            Ok(m) => {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    // A download that was cut short.
                    let _ = std::fs::remove_file(&path);
                } else if let Ok(rel) = path.strip_prefix(root) {
                    out.push((rel.to_string_lossy().replace('\\', "/"), m.len()));
                }
            }
            Err(_) => {}
        }
    }
}

impl ReadCache {
    /// Opens the cache in `dir`, adopting the files already there (oldest first to go).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<ReadCache, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io("creating the read cache directory", dir, e))?;
        let mut files = Vec::new();
        walk(dir, dir, &mut files);
        let now = Instant::now();
        let mut index = Index::default();
        for (path, bytes) in files {
            index.used += bytes;
            index.entries.insert(
                path,
                Entry {
                    bytes,
                    last_used: now,
                },
            );
        }
        let cache = ReadCache {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(index),
            downloads: Mutex::new(HashMap::new()),
        };
        cache.evict(None);
        Ok(cache)
    }

    pub fn used_bytes(&self) -> u64 {
        self.index.lock().used
    }

    fn file(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    /// The local copy of `path`, fetched from `remote` when it is not cached. `None` when the
    /// object is larger than the whole cache (read it remotely).
    pub async fn local_copy(
        &self,
        path: &str,
        size_hint: Option<u64>,
        remote: &dyn ObjectStore,
    ) -> Result<Option<PathBuf>, StoreError> {
        if !safe(path) || size_hint.is_some_and(|s| s > self.max_bytes) {
            return Ok(None);
        }
        if self.touch(path) {
            return Ok(Some(self.file(path)));
        }
        let gate = self
            .downloads
            .lock()
            .entry(path.to_string())
            .or_default()
            .clone();
        let _one_download = gate.lock().await;
        if self.touch(path) {
            return Ok(Some(self.file(path)));
        }
        let fetched = async {
            let context = || format!("reading {path} into the read cache");
            let bytes = remote
                .get(&ObjectPath::from(path))
                .await
                .map_err(|e| StoreError::object_store(context(), e))?
                .bytes()
                .await
                .map_err(|e| StoreError::object_store(context(), e))?;
            self.insert(path, bytes).await
        }
        .await;
        self.downloads.lock().remove(path);
        Ok(fetched?.then(|| self.file(path)))
    }

    /// Marks an entry used; false when it is not cached.
    fn touch(&self, path: &str) -> bool {
        let mut index = self.index.lock();
        match index.entries.get_mut(path) {
            Some(e) => {
                e.last_used = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Keeps a copy of an object just written or read; false when it does not fit.
    pub async fn insert(&self, path: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let len = bytes.len() as u64;
        if !safe(path) || len > self.max_bytes {
            return Ok(false);
        }
        let file = self.file(path);
        let write = {
            let file = file.clone();
            move || -> std::io::Result<()> {
                let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                std::fs::create_dir_all(&dir)?;
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &file)
            }
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| StoreError::Invalid {
                reason: format!("cache write task failed: {e}"),
            })?
            .map_err(|e| StoreError::io("writing to the read cache", &file, e))?;
        {
            let mut index = self.index.lock();
            if let Some(old) = index.entries.insert(
                path.to_string(),
                Entry {
                    bytes: len,
                    last_used: Instant::now(),
                },
            ) {
                index.used -= old.bytes;
            }
            index.used += len;
        }
        self.evict(Some(path));
        Ok(true)
    }

    /// Drops an object (its segment was deleted).
    pub fn remove(&self, path: &str) {
        let removed = {
            let mut index = self.index.lock();
            let e = index.entries.remove(path);
            if let Some(e) = &e {
                index.used -= e.bytes;
            }
            e
        };
        if removed.is_some() {
            let _ = std::fs::remove_file(self.file(path));
        }
    }

    /// Evicts least recently used objects until the cache fits, sparing `keep`.
    fn evict(&self, keep: Option<&str>) {
        let victims: Vec<String> = {
            let mut index = self.index.lock();
            if index.used <= self.max_bytes {
                return;
            }
            let mut by_age: Vec<(Instant, String, u64)> = index
                .entries
                .iter()
                .filter(|(p, _)| Some(p.as_str()) != keep)
                .map(|(p, e)| (e.last_used, p.clone(), e.bytes))
                .collect();
            by_age.sort();
            let mut victims = Vec::new();
            for (_, path, bytes) in by_age {
                if index.used <= self.max_bytes {
                    break;
                }
                index.entries.remove(&path);
                index.used -= bytes;
                victims.push(path);
            }
            victims
        };
        for path in victims {
            let _ = std::fs::remove_file(self.file(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    async fn remote_with(objects: &[(&str, usize)]) -> InMemory {
        let store = InMemory::new();
        for (path, len) in objects {
            store
                .put(&ObjectPath::from(*path), PutPayload::from(vec![7u8; *len]))
                .await
                .expect("put");
        }
        store
    }

    #[tokio::test]
    async fn misses_download_hits_stay_local_and_the_size_is_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let remote = remote_with(&[
            ("segments/spans/a.parquet", 600),
            ("segments/spans/b.parquet", 600),
        ])
        .await;
        let cache = ReadCache::open(dir.path(), 1000).expect("open");
        let a = cache
            .local_copy("segments/spans/a.parquet", None, &remote)
            .await
            .expect("a")
            .expect("cached");
        assert_eq!(std::fs::read(&a).expect("read").len(), 600);
        assert_eq!(cache.used_bytes(), 600);
        // b does not fit beside a: a, the least recently used, goes.
        cache
            .local_copy("segments/spans/b.parquet", None, &remote)
            .await
            .expect("b");
        assert_eq!(cache.used_bytes(), 600);
        assert!(!a.exists());
        // Reopening adopts what is on disk.
        drop(cache);
        let cache = ReadCache::open(dir.path(), 1000).expect("reopen");
        assert_eq!(cache.used_bytes(), 600);
        cache.remove("segments/spans/b.parquet");
        assert_eq!(cache.used_bytes(), 0);
    }

    #[tokio::test]
    async fn objects_larger_than_the_cache_and_odd_paths_are_not_cached() {
        let dir = tempfile::tempdir().expect("tmp");
        let remote = remote_with(&[("big", 2000)]).await;
        let cache = ReadCache::open(dir.path(), 1000).expect("open");
        assert_eq!(
            cache.local_copy("big", None, &remote).await.expect("read"),
            None
        );
        assert_eq!(
            cache
                .local_copy("../etc/passwd", None, &remote)
                .await
                .expect("refused"),
            None
        );
        assert_eq!(cache.used_bytes(), 0);
    }
}
