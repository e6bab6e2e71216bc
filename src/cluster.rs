//! The wiring of the scale-out roles: a store node's Flight service and heartbeat, and a
//! collector's shard map, read from the live store nodes in the metastore and turned into a
//! rendezvous router over Flight sinks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use oxeye_collector::routing::{ShardRouter, ShardTarget};
use oxeye_metastore::{Node, PgMetastore};
use oxeye_model::SignalBatch;
use oxeye_model::ingest::{Ingest, IngestError};
use tokio_util::sync::CancellationToken;

/// How often nodes announce themselves and collectors re-read the shard map.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent for this long is out of the shard map.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Announces a store node every [`HEARTBEAT`] until `stop`.
pub fn heartbeat(meta: Arc<PgMetastore>, node: Node, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = meta.heartbeat(&node).await {
                tracing::warn!(error = %e, "cannot record this node's heartbeat in the metastore");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    });
}

/// Which store node (Flight URL) serves each shard.
type ShardMap = BTreeSet<(u32, String)>;

/// A collector's router over the store nodes that are alive now.
pub struct ClusterRouter {
    current: parking_lot::RwLock<(ShardMap, Arc<ShardRouter>)>,
}

impl ClusterRouter {
    /// Starts following the shard map in the metastore.
    pub fn start(meta: Arc<PgMetastore>, stop: CancellationToken) -> Arc<ClusterRouter> {
        let router = Arc::new(ClusterRouter {
            current: parking_lot::RwLock::new((
                BTreeSet::new(),
                Arc::new(ShardRouter::new(vec![])),
            )),
        });
        let r = router.clone();
        tokio::spawn(async move {
            loop {
                match meta.live_nodes("store", NODE_TIMEOUT).await {
                    Ok(nodes) => r.update(&nodes),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the shard map; keeping the last one")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        });
        router
    }

    fn update(&self, nodes: &[Node]) {
        let map: ShardMap = nodes
            .iter()
            .flat_map(|n| {
                (n.first_shard..n.first_shard + n.shards).map(|s| (s, n.flight_addr.clone()))
            })
            .collect();
        if self.current.read().0 == map {
            return;
        }
        let mut targets = Vec::new();
        for (shard, addr) in &map {
            match oxeye_flight::FlightShardSink::new(addr, *shard) {
                Ok(sink) => targets.push(ShardTarget {
                    id: *shard,
                    sink: Arc::new(sink),
                }),
                Err(e) => tracing::warn!(shard, addr, error = %e, "skipping a store shard"),
            }
        }
        tracing::info!(shards = ?map, "shard map changed");
        *self.current.write() = (map, Arc::new(ShardRouter::new(targets)));
    }
}

#[async_trait::async_trait]
impl Ingest for ClusterRouter {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        let router = self.current.read().1.clone();
        router.ingest(batches).await
    }
}
