//! Where segments and index bundles live: any `object_store` (a local directory by default,
//! S3-compatible storage in a cluster).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::StoreError;
use crate::cache::ReadCache;

/// Where an S3-compatible bucket is and how to sign requests to it.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (MinIO, Ceph, moto...); AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Credentials; when unset, the standard `AWS_*` environment variables are used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Options {
    /// The bucket and the key prefix of the URL.
    pub fn bucket_and_prefix(&self) -> Result<(String, String), StoreError> {
        let rest = self
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Invalid {
                reason: format!(
                    "object store URL `{}` must look like s3://bucket or s3://bucket/prefix",
                    self.url
                ),
            })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Invalid {
                reason: format!("object store URL `{}` names no bucket", self.url),
            });
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }
}

#[derive(Clone, Debug)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Local copies of remote objects (remote storage only).
    cache: Option<Arc<ReadCache>>,
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
            cache: None,
            local_root: Some(root.to_path_buf()),
            description: format!("file://{}", root.display()),
        })
    }

    /// Objects in any other store (S3-compatible in a cluster).
    pub fn remote(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Storage {
        Storage {
            store,
            cache: None,
            local_root: None,
            description: description.into(),
        }
    }

    /// Objects in an S3-compatible bucket. Requests are retried with backoff by object_store;
    /// a bucket that stays unreachable fails the flush, and the rows wait in the WAL.
    pub fn s3(options: &S3Options) -> Result<Storage, StoreError> {
        let (bucket, prefix) = options.bucket_and_prefix()?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                // S3-compatible servers address buckets by path, not by host name.
                .with_virtual_hosted_style_request(false);
        }
        builder = builder.with_region(options.region.as_deref().unwrap_or("us-east-1"));
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = builder
            .build()
            .map_err(|e| StoreError::object_store(format!("configuring {}", options.url), e))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
        };
        let description = match &options.endpoint {
            Some(e) => format!("{} at {e}", options.url),
            None => options.url.clone(),
        };
        Ok(Storage::remote(store, description))
    }

    /// Keeps local copies of what is read and written, up to `max_bytes` in `dir`.
    pub fn with_read_cache(mut self, dir: &Path, max_bytes: u64) -> Result<Storage, StoreError> {
        self.cache = Some(Arc::new(ReadCache::open(dir, max_bytes)?));
        Ok(self)
    }

    pub fn read_cache(&self) -> Option<&Arc<ReadCache>> {
        self.cache.as_ref()
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
        let bytes = Bytes::from(bytes);
        self.store
            .put(&Self::path(path), PutPayload::from(bytes.clone()))
            .await
            .map_err(|e| {
                StoreError::object_store(format!("writing {path} to {}", self.description), e)
            })?;
        // New segments are the ones queried next: keep them at hand.
        if let Some(cache) = &self.cache
            && let Err(e) = cache.insert(path, bytes).await
        {
            tracing::warn!(path, error = %e, "cannot keep a copy in the read cache");
        }
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
        if let Some(cache) = &self.cache
            && let Some(file) = cache.local_copy(path, None, self.store.as_ref()).await?
        {
            match tokio::fs::read(&file).await {
                Ok(bytes) => return Ok(Bytes::from(bytes)),
                // Evicted meanwhile: read it remotely.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("reading from the read cache", &file, e)),
            }
        }
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
        if let Some(cache) = &self.cache {
            cache.remove(path);
        }
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

/// Reads a Parquet object through `object_store`, for the async Parquet reader; from the local
/// copy when the storage has a read cache.
#[derive(Clone, Debug)]
pub struct ObjectFileReader {
    storage: Storage,
    path: ObjectPath,
    size: u64,
    /// The cached copy, once looked up (`Some(None)`: read remotely).
    local: Option<Option<PathBuf>>,
}

impl ObjectFileReader {
    pub fn new(storage: &Storage, path: &str, size: u64) -> Self {
        ObjectFileReader {
            storage: storage.clone(),
            path: Storage::path(path),
            size,
            local: None,
        }
    }

    async fn local_file(&mut self) -> parquet::errors::Result<Option<PathBuf>> {
        if let Some(local) = &self.local {
            return Ok(local.clone());
        }
        let local = match &self.storage.cache {
            Some(cache) => cache
                .local_copy(
                    self.path.as_ref(),
                    Some(self.size),
                    self.storage.store.as_ref(),
                )
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?,
            None => None,
        };
        self.local = Some(local.clone());
        Ok(local)
    }

    async fn read_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> parquet::errors::Result<Vec<Bytes>> {
        if let Some(file) = self.local_file().await? {
            let wanted = ranges.clone();
            let read = tokio::task::spawn_blocking(move || read_file_ranges(&file, &wanted))
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            match read {
                Ok(parts) => return Ok(parts),
                // Evicted meanwhile: from now on read remotely.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.local = Some(None),
                Err(e) => return Err(parquet::errors::ParquetError::External(Box::new(e))),
            }
        }
        self.storage
            .store
            .get_ranges(&self.path, &ranges)
            .await
            .map_err(parquet_err)
    }
}

fn read_file_ranges(file: &Path, ranges: &[std::ops::Range<u64>]) -> std::io::Result<Vec<Bytes>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file)?;
    ranges
        .iter()
        .map(|r| {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            f.read_exact_at(&mut buf, r.start)?;
            Ok(Bytes::from(buf))
        })
        .collect()
}

fn parquet_err(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_reader::AsyncFileReader for ObjectFileReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        use futures::FutureExt;
        async move {
            let mut parts = self.read_ranges(vec![range]).await?;
            parts
                .pop()
                .ok_or_else(|| parquet::errors::ParquetError::General("empty read".into()))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        use futures::FutureExt;
        async move { self.read_ranges(ranges).await }.boxed()
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
