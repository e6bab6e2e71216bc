//! Node membership: store nodes announce themselves (their Flight address and the shards they
//! serve) with a heartbeat; collectors read the shard map from the live ones.

use std::time::Duration;

use oxeye_store::StoreError;

use crate::pg::{PgMetastore, query_err};

/// A store node as the shard map knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub role: String,
    pub flight_addr: String,
    /// The shards it serves. Several nodes serving a shard are its replicas.
    pub shard_ids: Vec<u32>,
}

impl PgMetastore {
    /// Records that `node` is alive now (and what it serves).
    pub async fn heartbeat(&self, node: &Node) -> Result<(), StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        client
            .execute(
                "INSERT INTO oxeye_nodes (id, role, flight_addr, first_shard, shards, shard_ids,
                   heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now())
                 ON CONFLICT (id) DO UPDATE SET role = excluded.role,
                   flight_addr = excluded.flight_addr, first_shard = excluded.first_shard,
                   shards = excluded.shards, shard_ids = excluded.shard_ids, heartbeat_at = now()",
                &[
                    &node.id,
                    &node.role,
                    &node.flight_addr,
                    &(node.shard_ids.first().copied().unwrap_or(0) as i32),
                    &(node.shard_ids.len() as i32),
                    &node
                        .shard_ids
                        .iter()
                        .map(|s| *s as i32)
                        .collect::<Vec<i32>>(),
                ],
            )
            .await
            .map_err(|e| query_err("recording a heartbeat", e))?;
        Ok(())
    }

    /// Nodes of `role` whose last heartbeat is younger than `max_age`.
    pub async fn live_nodes(&self, role: &str, max_age: Duration) -> Result<Vec<Node>, StoreError> {
        let guard = self.client().await?;
        let client = self.connected(&guard)?;
        let secs = max_age.as_secs_f64();
        let rows = client
            .query(
                "SELECT id, role, flight_addr, first_shard, shards, shard_ids FROM oxeye_nodes
                 WHERE role = $1 AND heartbeat_at > now() - make_interval(secs => $2::float8)
                 ORDER BY first_shard, id",
                &[&role, &secs],
            )
            .await
            .map_err(|e| query_err("reading the live nodes", e))?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let first = r.get::<_, i32>(3) as u32;
                let count = r.get::<_, i32>(4) as u32;
                // Nodes from before shard lists announced a range.
                let shard_ids = match r.get::<_, Option<Vec<i32>>>(5) {
                    Some(list) => list.into_iter().map(|s| s as u32).collect(),
                    None => (first..first + count).collect(),
                };
                Node {
                    id: r.get(0),
                    role: r.get(1),
                    flight_addr: r.get(2),
                    shard_ids,
                }
            })
            .collect())
    }
}
