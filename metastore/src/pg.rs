use std::collections::BTreeMap;

use oxeye_store::catalog::{CatalogChange, CatalogState, Metastore, ShardCheckpoint};
use oxeye_store::{SegmentMeta, StoreError};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::migrations::{MIGRATION_LOCK, MIGRATIONS};

#[derive(Debug, thiserror::Error)]
pub enum MetastoreError {
    #[error(
        "cannot connect to the metastore at {target}: {source}; check the URL, that PostgreSQL runs and accepts this user"
    )]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("metastore migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the metastore's schema is at version {found}, newer than this oxeye ({known}); upgrade oxeye"
    )]
    TooNew { found: i32, known: i32 },
}

/// The catalog in PostgreSQL.
pub struct PgMetastore {
    url: String,
    /// Where it is, without the password, for messages.
    target: String,
    /// One connection, re-opened when it breaks; commits hold it for their transaction.
    client: Mutex<Option<Client>>,
    /// Set on a store node with replicated shards: its catalog changes must hold each touched
    /// shard's lease (see [`crate::leases`]).
    pub(crate) fences: parking_lot::RwLock<Option<crate::leases::Fences>>,
}

impl std::fmt::Debug for PgMetastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMetastore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `postgres://user:secret@host/db` shown as `postgres://user@host/db`, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn catalog_err(what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::Catalog(format!("{what} in the metastore failed: {e}"))
}

pub(crate) fn query_err(what: &str, e: tokio_postgres::Error) -> StoreError {
    catalog_err(what, e)
}

async fn connect(url: &str, target: &str) -> Result<Client, MetastoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|source| MetastoreError::Connect {
            target: target.to_string(),
            source,
        })?;
    let target = target.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(metastore = target, error = %e, "metastore connection closed");
        }
    });
    Ok(client)
}

impl PgMetastore {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<PgMetastore, MetastoreError> {
        let target = redact(url);
        let mut client = connect(url, &target).await?;
        migrate(&mut client).await?;
        tracing::info!(metastore = target, "metastore ready");
        Ok(PgMetastore {
            url: url.to_string(),
            target,
            client: Mutex::new(Some(client)),
            fences: parking_lot::RwLock::new(None),
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn connected<'a>(
        &self,
        guard: &'a tokio::sync::MutexGuard<'_, Option<Client>>,
    ) -> Result<&'a Client, StoreError> {
        guard
            .as_ref()
            .ok_or_else(|| StoreError::Catalog("no metastore connection".into()))
    }

    /// The connection, re-opened if it broke.
    pub(crate) async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(
                connect(&self.url, &self.target)
                    .await
                    .map_err(|e| StoreError::Catalog(e.to_string()))?,
            );
        }
        Ok(guard)
    }
}

async fn migrate(client: &mut Client) -> Result<(), MetastoreError> {
    let step = |version: i32, name: &'static str| {
        move |source| MetastoreError::Migration {
            version,
            name,
            source,
        }
    };
    let tx = client.transaction().await.map_err(step(0, "lock"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(step(0, "lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS oxeye_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(step(0, "migrations table"))?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM oxeye_migrations",
            &[],
        )
        .await
        .map_err(step(0, "read version"))?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if applied > known {
        return Err(MetastoreError::TooNew {
            found: applied,
            known,
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        tx.batch_execute(sql).await.map_err(step(*version, name))?;
        tx.execute(
            "INSERT INTO oxeye_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(step(*version, name))?;
        tracing::info!(version, name, "metastore migration applied");
    }
    tx.commit().await.map_err(step(known, "commit"))?;
    Ok(())
}

/// A transaction holding the catalog row's lock, which orders every catalog commit (and shard
/// lease takeover) of every node.
pub(crate) async fn locked_catalog(
    client: &mut Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| catalog_err("starting a catalog change", e))?;
    tx.execute("SELECT generation FROM oxeye_catalog FOR UPDATE", &[])
        .await
        .map_err(|e| catalog_err("locking the catalog", e))?;
    Ok(tx)
}

/// Reads the whole catalog (inside the caller's transaction, or alone).
async fn read_state(
    client: &impl tokio_postgres::GenericClient,
) -> Result<CatalogState, StoreError> {
    let row = client
        .query_one("SELECT format, generation FROM oxeye_catalog", &[])
        .await
        .map_err(|e| catalog_err("reading the catalog", e))?;
    let format: i32 = row.get(0);
    let generation: i64 = row.get(1);
    if format as u32 != oxeye_store::catalog::CATALOG_FORMAT_VERSION {
        return Err(StoreError::Catalog(format!(
            "the metastore holds catalog format {format}; this oxeye reads format {}",
            oxeye_store::catalog::CATALOG_FORMAT_VERSION
        )));
    }
    let mut segments = Vec::new();
    for row in client
        .query("SELECT meta::text FROM oxeye_segments ORDER BY id", &[])
        .await
        .map_err(|e| catalog_err("reading segments", e))?
    {
        let text: String = row.get(0);
        let meta: SegmentMeta = serde_json::from_str(&text).map_err(|e| {
            StoreError::Catalog(format!("a segment row in the metastore is not valid: {e}"))
        })?;
        segments.push(meta);
    }
    let mut shards = BTreeMap::new();
    for row in client
        .query(
            "SELECT shard, flushed_wal_seq, delivered::text FROM oxeye_shards",
            &[],
        )
        .await
        .map_err(|e| catalog_err("reading shard checkpoints", e))?
    {
        let shard: i32 = row.get(0);
        let seq: i64 = row.get(1);
        let delivered: String = row.get(2);
        let delivered = serde_json::from_str(&delivered).map_err(|e| {
            StoreError::Catalog(format!(
                "the delivery positions of shard {shard} in the metastore are not valid: {e}"
            ))
        })?;
        shards.insert(
            shard as u32,
            ShardCheckpoint {
                flushed_wal_seq: seq as u64,
                delivered,
            },
        );
    }
    Ok(CatalogState {
        version: oxeye_store::catalog::CATALOG_FORMAT_VERSION,
        generation: generation as u64,
        segments,
        shards,
    })
}

#[async_trait::async_trait]
impl Metastore for PgMetastore {
    fn shared(&self) -> bool {
        true
    }

    async fn load(&self) -> Result<CatalogState, StoreError> {
        let guard = self.client().await?;
        let client = guard
            .as_ref()
            .ok_or_else(|| StoreError::Catalog("no metastore connection".into()))?;
        read_state(client).await
    }

    async fn commit(&self, change: CatalogChange) -> Result<CatalogState, StoreError> {
        let mut guard = self.client().await?;
        let client = guard
            .as_mut()
            .ok_or_else(|| StoreError::Catalog("no metastore connection".into()))?;
        let tx = locked_catalog(client).await?;
        let current = read_state(&tx).await?;
        self.check_fences(&tx, &current, &change).await?;
        // The same checks as the file catalog, on the state every node shares.
        let next = current.apply(&change)?;
        let (removed, added): (&[String], &[SegmentMeta]) = match &change {
            CatalogChange::Flush { added, .. } => (&[], added),
            CatalogChange::Replace { removed, added } => (removed, added),
            CatalogChange::Remove { removed } => (removed, &[]),
        };
        if !removed.is_empty() {
            tx.execute("DELETE FROM oxeye_segments WHERE id = ANY($1)", &[&removed])
                .await
                .map_err(|e| catalog_err("removing segments", e))?;
        }
        for seg in added {
            let meta = serde_json::to_string(seg)
                .map_err(|e| StoreError::Catalog(format!("cannot encode a segment: {e}")))?;
            tx.execute(
                "INSERT INTO oxeye_segments (id, table_name, shard, min_time, max_time, rows, meta)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)",
                &[
                    &seg.id,
                    &seg.signal.table_name(),
                    &(seg.shard as i32),
                    &seg.min_time,
                    &seg.max_time,
                    &(seg.rows as i64),
                    &meta,
                ],
            )
            .await
            .map_err(|e| catalog_err("adding a segment", e))?;
        }
        if let CatalogChange::Flush { shard, .. } = &change {
            let checkpoint = next.shards.get(shard).cloned().unwrap_or_default();
            let flushed_wal_seq = checkpoint.flushed_wal_seq;
            let delivered = serde_json::to_string(&checkpoint.delivered).map_err(|e| {
                StoreError::Catalog(format!("cannot encode delivery positions: {e}"))
            })?;
            tx.execute(
                "INSERT INTO oxeye_shards (shard, flushed_wal_seq, delivered)
                 VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (shard) DO UPDATE SET flushed_wal_seq = excluded.flushed_wal_seq,
                     delivered = excluded.delivered",
                &[&(*shard as i32), &(flushed_wal_seq as i64), &delivered],
            )
            .await
            .map_err(|e| catalog_err("recording the shard checkpoint", e))?;
        }
        tx.execute(
            "UPDATE oxeye_catalog SET generation = $1",
            &[&(next.generation as i64)],
        )
        .await
        .map_err(|e| catalog_err("advancing the catalog generation", e))?;
        tx.commit()
            .await
            .map_err(|e| catalog_err("committing a catalog change", e))?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://oxeye:s3cret@db:5432/oxeye"),
            "postgres://oxeye@db:5432/oxeye"
        );
        assert_eq!(redact("postgres://db/oxeye"), "postgres://db/oxeye");
        assert_eq!(redact("host=db user=oxeye"), "host=db user=oxeye");
    }
}
