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

/// Leadership through a lease in the PostgreSQL metastore, shared by every query node. A
/// background task renews it every third of its time to live; a node that cannot renew (its
/// database link broke, it stalled) stops evaluating before the lease can pass to another node.
#[derive(Debug)]
pub struct MetastoreLease {
    /// When the lease was last confirmed ours.
    confirmed: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
    ttl: Duration,
}

use std::sync::Arc;
use std::time::Duration;

impl MetastoreLease {
    /// Starts competing for `name` as `holder`; gives the lease up when `stop` is cancelled.
    pub fn start(
        meta: Arc<oxeye_metastore::PgMetastore>,
        name: &str,
        holder: String,
        ttl: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> MetastoreLease {
        let confirmed = Arc::new(parking_lot::Mutex::new(None));
        let lease = MetastoreLease {
            confirmed: confirmed.clone(),
            ttl,
        };
        let name = name.to_string();
        tokio::spawn(async move {
            let mut held = false;
            loop {
                let asked = std::time::Instant::now();
                match meta.acquire_lease(&name, &holder, ttl).await {
                    Ok(true) => {
                        *confirmed.lock() = Some(asked);
                        if !held {
                            tracing::info!(lease = name, holder, "this node evaluates alert rules");
                        }
                        held = true;
                    }
                    Ok(false) => {
                        *confirmed.lock() = None;
                        if held {
                            tracing::warn!(
                                lease = name,
                                holder,
                                "another node took the alerting lease"
                            );
                        }
                        held = false;
                    }
                    Err(e) => {
                        tracing::warn!(lease = name, error = %e, "cannot renew the alerting lease");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
            }
            *confirmed.lock() = None;
            if held && let Err(e) = meta.release_lease(&name, &holder).await {
                tracing::warn!(lease = name, error = %e, "cannot release the alerting lease");
            }
        });
        lease
    }
}

impl Leadership for MetastoreLease {
    fn is_leader(&self) -> bool {
        // Stop a little before the lease could expire in the database.
        self.confirmed
            .lock()
            .is_some_and(|t| t.elapsed() < self.ttl.mul_f64(0.8))
    }
}
