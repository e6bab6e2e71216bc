//! What other parts of oxeye keep in the metastore besides the catalog: versioned JSON
//! documents (replaced with compare-and-set on their revision, so two nodes never overwrite each
//! other's change unseen), append-only history records, and leases (one holder at a time, for
//! as long as it keeps renewing).

use std::time::Duration;

use crate::pg::{PgMetastore, query_err};
use oxeye_store::StoreError;

/// A document and its revision (1 for the first write).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub revision: i64,
    pub json: String,
}

impl PgMetastore {
    /// The document at `key`, if any.
    pub async fn document(&self, key: &str) -> Result<Option<Document>, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let row = client
            .query_opt(
                "SELECT revision, doc::text FROM oxeye_documents WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(|e| query_err("reading a document", e))?;
        Ok(row.map(|r| Document {
            revision: r.get(0),
            json: r.get(1),
        }))
    }

    /// The revision of the document at `key` (0 when there is none): a cheap change check.
    pub async fn document_revision(&self, key: &str) -> Result<i64, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let row = client
            .query_opt(
                "SELECT revision FROM oxeye_documents WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(|e| query_err("reading a document revision", e))?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// Writes the document at `key` if its revision is still `expected` (0: it must not exist
    /// yet). Returns the new revision, or `None` when another writer got there first.
    pub async fn put_document(
        &self,
        key: &str,
        expected: i64,
        json: &str,
    ) -> Result<Option<i64>, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let next = expected + 1;
        let written = if expected == 0 {
            client
                .execute(
                    "INSERT INTO oxeye_documents (key, revision, doc) VALUES ($1, 1, $2::text::jsonb)
                     ON CONFLICT (key) DO NOTHING",
                    &[&key, &json],
                )
                .await
        } else {
            client
                .execute(
                    "UPDATE oxeye_documents SET revision = $2, doc = $3::text::jsonb, updated_at = now()
                     WHERE key = $1 AND revision = $4",
                    &[&key, &next, &json, &expected],
                )
                .await
        }
        .map_err(|e| query_err("writing a document", e))?;
        Ok((written == 1).then_some(next))
    }

    /// Writes the document at `key` whatever its revision (for data one writer owns).
    pub async fn replace_document(&self, key: &str, json: &str) -> Result<i64, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let row = client
            .query_one(
                "INSERT INTO oxeye_documents (key, revision, doc) VALUES ($1, 1, $2::text::jsonb)
                 ON CONFLICT (key) DO UPDATE
                   SET revision = oxeye_documents.revision + 1, doc = excluded.doc, updated_at = now()
                 RETURNING revision",
                &[&key, &json],
            )
            .await
            .map_err(|e| query_err("writing a document", e))?;
        Ok(row.get(0))
    }

    /// Appends history records of one kind: (time in ms, JSON).
    pub async fn append_history(
        &self,
        kind: &str,
        records: &[(i64, String)],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let times: Vec<i64> = records.iter().map(|r| r.0).collect();
        let docs: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
        client
            .execute(
                "INSERT INTO oxeye_history (kind, time_ms, record)
                 SELECT $1, t, d::jsonb FROM unnest($2::bigint[], $3::text[]) AS u(t, d)",
                &[&kind, &times, &docs],
            )
            .await
            .map_err(|e| query_err("appending history", e))?;
        Ok(())
    }

    /// The newest `limit` records of a kind, oldest first; older ones beyond `keep` are
    /// deleted on the way.
    pub async fn history(
        &self,
        kind: &str,
        limit: i64,
        keep: i64,
    ) -> Result<Vec<String>, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        client
            .execute(
                "DELETE FROM oxeye_history WHERE kind = $1 AND id <
                   (SELECT coalesce(max(id), 0) - $2 FROM oxeye_history WHERE kind = $1)",
                &[&kind, &keep],
            )
            .await
            .map_err(|e| query_err("pruning history", e))?;
        let rows = client
            .query(
                "SELECT record::text FROM
                   (SELECT id, record FROM oxeye_history WHERE kind = $1 ORDER BY id DESC LIMIT $2) r
                 ORDER BY id",
                &[&kind, &limit],
            )
            .await
            .map_err(|e| query_err("reading history", e))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Takes or renews the lease `name` for `holder` for `ttl`; true when `holder` holds it.
    /// A lease whose holder stopped renewing is free once it expires.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let ttl_ms = ttl.as_millis() as f64;
        let row = client
            .query_opt(
                "INSERT INTO oxeye_leases (name, holder, expires_at)
                 VALUES ($1, $2, now() + make_interval(secs => $3::float8 / 1000.0))
                 ON CONFLICT (name) DO UPDATE
                   SET holder = excluded.holder, expires_at = excluded.expires_at
                   WHERE oxeye_leases.holder = excluded.holder OR oxeye_leases.expires_at < now()
                 RETURNING holder",
                &[&name, &holder, &ttl_ms],
            )
            .await
            .map_err(|e| query_err("taking a lease", e))?;
        Ok(row.is_some())
    }

    /// Gives a lease up (on shutdown), so another node takes over without waiting.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        client
            .execute(
                "DELETE FROM oxeye_leases WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(|e| query_err("releasing a lease", e))?;
        Ok(())
    }
}
