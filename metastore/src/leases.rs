//! Shard leases: which replica of a shard leads it (keeps its rows in memory, serves them,
//! flushes and compacts), with an epoch that fences a leader that lost its lease.
//!
//! Taking a lease locks the catalog row, like every catalog commit, and reads the shard's
//! checkpoint in the same transaction. So a new leader's checkpoint includes every flush of the
//! previous leader that committed, and a flush that commits later is refused: a commit checks,
//! under the same lock, that this node still holds each touched shard's lease at the epoch it
//! took it with. A leader that paused past its lease (a long GC-like stall, a network cut) thus
//! cannot add segments over its successor's.

use std::collections::BTreeMap;
use std::time::Duration;

use oxeye_store::StoreError;
use oxeye_store::catalog::{CatalogChange, CatalogState};
use oxeye_store::delivery::Delivered;

use crate::pg::{PgMetastore, locked_catalog, query_err};

/// The leases this node holds: epoch by shard.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    holder: String,
    epochs: BTreeMap<u32, i64>,
}

/// Shards a catalog change writes to.
fn touched(current: &CatalogState, change: &CatalogChange) -> Vec<u32> {
    let shard_of = |id: &String| {
        current
            .segments
            .iter()
            .find(|s| &s.id == id)
            .map(|s| s.shard)
    };
    let mut shards: Vec<u32> = match change {
        CatalogChange::Flush { shard, .. } => vec![*shard],
        CatalogChange::Replace { removed, added } => removed
            .iter()
            .filter_map(shard_of)
            .chain(added.iter().map(|s| s.shard))
            .collect(),
        CatalogChange::Remove { removed } => removed.iter().filter_map(shard_of).collect(),
    };
    shards.sort_unstable();
    shards.dedup();
    shards
}

fn ttl_secs(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl PgMetastore {
    /// From now on, this node's catalog changes must hold the lease of every shard they touch
    /// (a store node whose shards are replicated), as `holder`.
    pub fn require_shard_leases(&self, holder: &str) {
        *self.fences.write() = Some(Fences {
            holder: holder.to_string(),
            epochs: BTreeMap::new(),
        });
    }

    /// Refuses `change` unless this node holds, at its epoch, the lease of every shard it
    /// touches. Runs inside the commit's transaction, after the catalog row is locked.
    pub(crate) async fn check_fences(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        current: &CatalogState,
        change: &CatalogChange,
    ) -> Result<(), StoreError> {
        let (holder, mine) = match &*self.fences.read() {
            None => return Ok(()),
            Some(f) => (f.holder.clone(), f.epochs.clone()),
        };
        let shards = touched(current, change);
        let ids: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        let rows = tx
            .query(
                "SELECT shard, holder, epoch FROM oxeye_shard_leases WHERE shard = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(|e| query_err("checking shard leases", e))?;
        let held: BTreeMap<u32, (String, i64)> = rows
            .into_iter()
            .map(|r| (r.get::<_, i32>(0) as u32, (r.get(1), r.get(2))))
            .collect();
        for shard in shards {
            let ok = match (mine.get(&shard), held.get(&shard)) {
                (Some(epoch), Some((h, e))) => *h == holder && e == epoch,
                _ => false,
            };
            if !ok {
                return Err(StoreError::Catalog(format!(
                    "this node no longer leads shard {shard} (its lease went to another \
                     replica); the change is refused and the new leader flushes the shard"
                )));
            }
        }
        Ok(())
    }

    /// Takes the lease of `shard` for `holder` when it is free (never taken, given up, or
    /// expired) or already `holder`'s from an earlier run, with a new epoch. Returns the
    /// shard's flush checkpoint as of the takeover, or `None` when another replica holds it.
    pub async fn take_shard_lease(
        &self,
        shard: u32,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Delivered>, StoreError> {
        self.take_lease(shard, holder, None, ttl).await
    }

    /// [`PgMetastore::take_shard_lease`], also while the lease is still `gone`'s: a leader
    /// whose process is known to be gone (its Flight port refuses connections) need not be
    /// waited for. Its epoch fences any commit it could still attempt.
    pub async fn take_shard_lease_from_gone(
        &self,
        shard: u32,
        holder: &str,
        gone: &str,
        ttl: Duration,
    ) -> Result<Option<Delivered>, StoreError> {
        self.take_lease(shard, holder, Some(gone), ttl).await
    }

    /// Every shard lease that has not expired: `(shard, holder, the holder's Flight address)`
    /// (no address when the holder is not a known node).
    pub async fn shard_lease_holders(
        &self,
    ) -> Result<Vec<(u32, String, Option<String>)>, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let rows = client
            .query(
                "SELECT l.shard, l.holder, n.flight_addr FROM oxeye_shard_leases l
                 LEFT JOIN oxeye_nodes n ON n.id = l.holder
                 WHERE l.expires_at >= now() ORDER BY l.shard",
                &[],
            )
            .await
            .map_err(|e| query_err("reading the shard lease holders", e))?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get(1), r.get(2)))
            .collect())
    }

    async fn take_lease(
        &self,
        shard: u32,
        holder: &str,
        gone: Option<&str>,
        ttl: Duration,
    ) -> Result<Option<Delivered>, StoreError> {
        let mut guard = self.client().await?;
        let client = guard
            .as_mut()
            .ok_or_else(|| StoreError::Catalog("no metastore connection".into()))?;
        // Ordered with every catalog commit: see the module comment.
        let tx = locked_catalog(client).await?;
        let taken = tx
            .query_opt(
                "INSERT INTO oxeye_shard_leases (shard, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3::float8))
                 ON CONFLICT (shard) DO UPDATE
                   SET holder = excluded.holder, epoch = oxeye_shard_leases.epoch + 1,
                       expires_at = excluded.expires_at
                   WHERE oxeye_shard_leases.holder = excluded.holder
                      OR oxeye_shard_leases.expires_at < now()
                      OR oxeye_shard_leases.holder = $4
                 RETURNING epoch",
                &[&(shard as i32), &holder, &ttl_secs(ttl), &gone],
            )
            .await
            .map_err(|e| query_err("taking a shard lease", e))?;
        let Some(row) = taken else {
            return Ok(None);
        };
        let epoch: i64 = row.get(0);
        let checkpoint = tx
            .query_opt(
                "SELECT delivered::text FROM oxeye_shards WHERE shard = $1",
                &[&(shard as i32)],
            )
            .await
            .map_err(|e| query_err("reading the shard checkpoint", e))?;
        let delivered: Delivered = match checkpoint {
            None => Delivered::new(),
            Some(row) => serde_json::from_str(&row.get::<_, String>(0)).map_err(|e| {
                StoreError::Catalog(format!(
                    "the delivery positions of shard {shard} in the metastore are not valid: {e}"
                ))
            })?,
        };
        tx.commit()
            .await
            .map_err(|e| query_err("committing a lease takeover", e))?;
        if let Some(f) = self.fences.write().as_mut() {
            f.epochs.insert(shard, epoch);
        }
        Ok(Some(delivered))
    }

    /// Extends this node's lease of `shard`. False when it is no longer this node's: another
    /// replica took it after it expired.
    pub async fn renew_shard_lease(
        &self,
        shard: u32,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Some(epoch) = self.lease_epoch(shard) else {
            return Ok(false);
        };
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let n = client
            .execute(
                "UPDATE oxeye_shard_leases
                 SET expires_at = now() + make_interval(secs => $4::float8)
                 WHERE shard = $1 AND holder = $2 AND epoch = $3",
                &[&(shard as i32), &holder, &epoch, &ttl_secs(ttl)],
            )
            .await
            .map_err(|e| query_err("renewing a shard lease", e))?;
        if n == 0 {
            self.forget_lease(shard);
        }
        Ok(n > 0)
    }

    /// Gives the lease of `shard` up (on shutdown, after the last flush), so a replica takes
    /// over without waiting for it to expire.
    pub async fn release_shard_lease(&self, shard: u32, holder: &str) -> Result<(), StoreError> {
        let Some(epoch) = self.lease_epoch(shard) else {
            return Ok(());
        };
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        client
            .execute(
                "UPDATE oxeye_shard_leases SET expires_at = now() - interval '1 second'
                 WHERE shard = $1 AND holder = $2 AND epoch = $3",
                &[&(shard as i32), &holder, &epoch],
            )
            .await
            .map_err(|e| query_err("releasing a shard lease", e))?;
        self.forget_lease(shard);
        Ok(())
    }

    fn lease_epoch(&self, shard: u32) -> Option<i64> {
        self.fences
            .read()
            .as_ref()
            .and_then(|f| f.epochs.get(&shard).copied())
    }

    fn forget_lease(&self, shard: u32) {
        if let Some(f) = self.fences.write().as_mut() {
            f.epochs.remove(&shard);
        }
    }

    /// The flush checkpoint (delivery positions) of every shard that has one.
    pub async fn shard_checkpoints(&self) -> Result<BTreeMap<u32, Delivered>, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let rows = client
            .query("SELECT shard, delivered::text FROM oxeye_shards", &[])
            .await
            .map_err(|e| query_err("reading shard checkpoints", e))?;
        rows.into_iter()
            .map(|r| {
                let shard = r.get::<_, i32>(0) as u32;
                let delivered = serde_json::from_str(&r.get::<_, String>(1)).map_err(|e| {
                    StoreError::Catalog(format!(
                        "the delivery positions of shard {shard} in the metastore are not valid: {e}"
                    ))
                })?;
                Ok((shard, delivered))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: &str, shard: u32) -> oxeye_store::SegmentMeta {
        oxeye_store::SegmentMeta {
            id: id.into(),
            signal: oxeye_model::Signal::Spans,
            shard,
            data_path: format!("{id}.parquet"),
            index_path: format!("{id}.index"),
            min_time: 0,
            max_time: 10,
            rows: 5,
            data_bytes: 100,
            index_bytes: 10,
            granule_rows: 1024,
            level: 0,
            created_unix_ms: 0,
        }
    }

    #[test]
    fn a_change_touches_the_shards_of_what_it_adds_and_removes() {
        let current = CatalogState {
            segments: vec![seg("a", 1), seg("b", 2), seg("c", 2)],
            ..CatalogState::default()
        };
        let flush = CatalogChange::Flush {
            shard: 7,
            flushed_wal_seq: 0,
            added: vec![seg("d", 7)],
            delivered: Delivered::new(),
        };
        assert_eq!(touched(&current, &flush), vec![7]);
        let merge = CatalogChange::Replace {
            removed: vec!["b".into(), "c".into()],
            added: vec![seg("e", 2)],
        };
        assert_eq!(touched(&current, &merge), vec![2]);
        let expire = CatalogChange::Remove {
            removed: vec!["a".into(), "b".into(), "gone".into()],
        };
        assert_eq!(touched(&current, &expire), vec![1, 2]);
    }
}
