//! Who evaluates. Several query nodes may serve the same rules, but only the leader evaluates
//! and notifies, so nothing fires twice. On one machine the lease is an exclusive lock on a file
//! in the alerting directory, held for the life of the process and released by the OS when it
//! dies (even with `kill -9`); a cluster takes it in the metastore.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

/// Decides whether this process evaluates rules now.
pub trait Leadership: Send + Sync + 'static {
    /// Whether this process leads; may try to take the lead when it does not.
    fn is_leader(&self) -> bool;
}

/// Leadership through an exclusive lock on a file.
#[derive(Debug)]
pub struct FileLease {
    path: PathBuf,
    held: parking_lot::Mutex<Option<File>>,
}

impl FileLease {
    pub fn new(path: impl Into<PathBuf>) -> FileLease {
        FileLease {
            path: path.into(),
            held: parking_lot::Mutex::new(None),
        }
    }
}

impl Leadership for FileLease {
    fn is_leader(&self) -> bool {
        let mut held = self.held.lock();
        if held.is_some() {
            return true;
        }
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot open the alerting lease file");
                return false;
            }
        };
        match file.try_lock() {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "this process evaluates alert rules");
                *held = Some(file);
                true
            }
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot lock the alerting lease file");
                false
            }
        }
    }
}

/// Leadership that is always held (tests, and a node told to evaluate unconditionally).
#[derive(Debug, Default)]
pub struct AlwaysLeader;

impl Leadership for AlwaysLeader {
    fn is_leader(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_holder_at_a_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("leader.lock");
        let a = FileLease::new(&path);
        let b = FileLease::new(&path);
        assert!(a.is_leader());
        assert!(!b.is_leader(), "the lock is taken");
        assert!(a.is_leader(), "and stays with its holder");
        drop(a);
        assert!(b.is_leader(), "released when the holder goes");
    }
}
