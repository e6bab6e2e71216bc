//! Where segments and index bundles live: any `object_store` (a local directory by default,
//! S3-compatible storage in a cluster).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::StoreError;

#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// For a local directory: its root, so that written files can be fsynced (object_store's
    /// local backend renames into place but does not sync, and the WAL is deleted on the
    /// strength of these files being durable).
    local_root: Option<PathBuf>,
    description: String,
}

impl Storage {
    /// Objects under a local directory.
    pub fn local(root: &Path) -> Result<Storage, StoreError> {
        std::fs::create_dir_all(root)
            .map_err(|e| StoreError::io("creating the object directory", root, e))?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|e| StoreError::object_store(format!("opening {}", root.display()), e))?;
        Ok(Storage {
            store: Arc::new(store),
            local_root: Some(root.to_path_buf()),
            description: format!("file://{}", root.display()),
        })
    }

    /// Objects in any other store (S3-compatible in a cluster).
    pub fn remote(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Storage {
        Storage {
            store,
            local_root: None,
            description: description.into(),
        }
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn path(path: &str) -> ObjectPath {
        ObjectPath::from(path)
    }

    pub async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store
            .put(&Self::path(path), PutPayload::from(bytes))
            .await
            .map_err(|e| {
                StoreError::object_store(format!("writing {path} to {}", self.description), e)
            })?;
        if let Some(root) = &self.local_root {
            let file = root.join(path);
            let dir = file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.clone());
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                std::fs::File::open(&file)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| StoreError::io("syncing a segment file", &file, e))?;
                crate::wal::sync_dir(&dir)
            })
            .await
            .map_err(|e| StoreError::Invalid {
                reason: format!("sync task failed: {e}"),
            })??;
        }
        Ok(())
    }

    pub async fn get(&self, path: &str) -> Result<Bytes, StoreError> {
        let context = || format!("reading {path} from {}", self.description);
        self.store
            .get(&Self::path(path))
            .await
            .map_err(|e| StoreError::object_store(context(), e))?
            .bytes()
            .await
            .map_err(|e| StoreError::object_store(context(), e))
    }

    /// Deletes an object; one that is already gone is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), StoreError> {
        match self.store.delete(&Self::path(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::object_store(
                format!("deleting {path} from {}", self.description),
                e,
            )),
        }
    }

    /// Paths and ages (ms since the epoch) of every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        use futures::TryStreamExt;
        let items: Vec<_> = self
            .store
            .list(Some(&Self::path(prefix)))
            .try_collect()
            .await
            .map_err(|e| {
                StoreError::object_store(format!("listing {prefix} in {}", self.description), e)
            })?;
        Ok(items
            .into_iter()
            .map(|m| (m.location.to_string(), m.last_modified.timestamp_millis()))
            .collect())
    }
}

/// Reads a Parquet object through `object_store`, for the async Parquet reader.
#[derive(Clone, Debug)]
pub struct ObjectFileReader {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    size: u64,
}

impl ObjectFileReader {
    pub fn new(storage: &Storage, path: &str, size: u64) -> Self {
        ObjectFileReader {
            store: storage.object_store(),
            path: Storage::path(path),
            size,
        }
    }
}

fn parquet_err(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_reader::AsyncFileReader for ObjectFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        use futures::{FutureExt, TryFutureExt};
        self.store
            .get_range(&self.path, range)
            .map_err(parquet_err)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        use futures::FutureExt;
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        use futures::FutureExt;
        async move {
            let size = self.size;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
