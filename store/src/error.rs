use std::path::{Path, PathBuf};

use arrow::error::ArrowError;

/// Errors of the store. Each variant names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: &'static str,
        #[source]
        source: ArrowError,
    },
    #[error("parquet error while {context}: {source}")]
    Parquet {
        context: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("object storage error while {context}: {source}")]
    ObjectStore {
        context: String,
        #[source]
        source: object_store::Error,
    },
    #[error("index error while {context}: {reason}")]
    Index { context: String, reason: String },
    #[error("invalid full-text query `{query}`: {reason}")]
    BadTextQuery { query: String, reason: String },
    #[error("catalog error: {0}")]
    Catalog(String),
    #[error("invalid input: {reason}")]
    Invalid { reason: String },
    #[error(
        "the disk holding {path} has {available} bytes free, below the {required} bytes oxeye keeps free; free space or raise --min-free-disk"
    )]
    DiskFull {
        path: PathBuf,
        available: u64,
        required: u64,
    },
    #[error("segment {segment} cannot be read: {reason}")]
    UnreadableSegment { segment: String, reason: String },
    #[error("the store is overloaded: {0}")]
    Overloaded(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    /// A store node did not give a query the rows it had set aside for it.
    #[error("store node {node}: {reason}")]
    Remote { node: String, reason: String },
    #[error(transparent)]
    Model(#[from] oxeye_model::ModelError),
}

impl StoreError {
    pub fn io(context: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        StoreError::Io {
            context,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn arrow(context: &'static str, source: ArrowError) -> Self {
        StoreError::Arrow { context, source }
    }

    pub fn parquet(context: impl Into<String>, source: parquet::errors::ParquetError) -> Self {
        StoreError::Parquet {
            context: context.into(),
            source,
        }
    }

    pub fn object_store(context: impl Into<String>, source: object_store::Error) -> Self {
        StoreError::ObjectStore {
            context: context.into(),
            source,
        }
    }

    pub fn index(context: impl Into<String>, reason: impl ToString) -> Self {
        StoreError::Index {
            context: context.into(),
            reason: reason.to_string(),
        }
    }

    /// True when the disk is (nearly) full: callers answer with a retryable error.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.raw_os_error() == Some(28) // ENOSPC
                    || source.raw_os_error() == Some(122) // EDQUOT
            }
            _ => false,
        }
    }
}
