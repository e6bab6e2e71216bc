//! The wiring of the scale-out roles: a store node's heartbeat, and a collector's shard map,
//! read from the store nodes in the metastore and turned into a rendezvous router over
//! persistent per-shard queues that deliver over Flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oxeye_collector::routing::{ShardRouter, ShardTarget};
use oxeye_metastore::{Node, PgMetastore};
use oxeye_model::SignalBatch;
use oxeye_model::ingest::{Ingest, IngestError};
use tokio_util::sync::CancellationToken;

use crate::queue::{Queues, ShardQueue};

/// How often nodes announce themselves and collectors re-read the shard map.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

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

/// Store nodes whose last heartbeat is older than this are not asked for snapshots.
const STORE_NODE_LIVENESS: Duration = Duration::from_secs(10);

/// Keeps a query node's list of live store nodes (for their shard snapshots) current.
pub fn follow_store_nodes(
    meta: Arc<PgMetastore>,
    remote: Arc<oxeye_flight::FlightRemoteShards>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            match meta.live_nodes("store", STORE_NODE_LIVENESS).await {
                Ok(nodes) => {
                    let urls: Vec<String> = nodes.into_iter().map(|n| n.flight_addr).collect();
                    remote.set_nodes(&urls);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the store nodes; keeping the last list")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    });
}

/// Which store node (Flight URL) serves each shard.
type ShardMap = BTreeMap<u32, String>;
/// Flight sinks by (shard, store URL).
type Sinks = BTreeMap<(u32, String), Arc<oxeye_flight::FlightShardSink>>;

/// A collector's router: rows go by shard key to their shard's persistent queue
/// ([`crate::queue`]), which delivers them to the store node serving the shard. The shard map
/// holds every store node that ever announced itself, alive or not: a store that is down keeps
/// its shards (its rows wait in the queue) instead of its rows moving to other shards.
pub struct ClusterRouter {
    queues: Arc<Queues>,
    map: Arc<parking_lot::RwLock<ShardMap>>,
    router: parking_lot::RwLock<Arc<ShardRouter>>,
    /// A Flight sink per (shard, address), reused across deliveries.
    sinks: Arc<parking_lot::Mutex<Sinks>>,
    /// CA and client certificate for `https://` store nodes.
    tls: oxeye_tls::ClientTls,
    stop: CancellationToken,
}

impl ClusterRouter {
    /// Opens the queues under `queue_dir` (delivering what an earlier run left) and starts
    /// following the shard map in the metastore.
    pub fn start(
        meta: Arc<PgMetastore>,
        queues: Queues,
        tls: oxeye_tls::ClientTls,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<ClusterRouter>> {
        let router = Arc::new(ClusterRouter {
            queues: Arc::new(queues),
            map: Arc::new(parking_lot::RwLock::new(BTreeMap::new())),
            router: parking_lot::RwLock::new(Arc::new(ShardRouter::new(vec![]))),
            sinks: Arc::new(parking_lot::Mutex::new(BTreeMap::new())),
            tls,
            stop: stop.clone(),
        });
        for shard in router.queues.existing_shards() {
            router.queue(shard)?;
        }
        let r = router.clone();
        tokio::spawn(async move {
            loop {
                match meta.live_nodes("store", FOREVER).await {
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
        Ok(router)
    }

    pub fn queues(&self) -> &Arc<Queues> {
        &self.queues
    }

    /// The queue of `shard`, with its delivery task running.
    fn queue(&self, shard: u32) -> std::io::Result<Arc<ShardQueue>> {
        let (queue, opened) = self.queues.get(shard)?;
        if opened {
            let map = self.map.clone();
            let sinks = self.sinks.clone();
            let tls = self.tls.clone();
            let target: Arc<
                dyn Fn(u32) -> Option<Arc<oxeye_flight::FlightShardSink>> + Send + Sync,
            > = Arc::new(move |shard| {
                let addr = map.read().get(&shard).cloned()?;
                let mut sinks = sinks.lock();
                if let Some(s) = sinks.get(&(shard, addr.clone())) {
                    return Some(s.clone());
                }
                let sink = match oxeye_flight::FlightShardSink::new(&addr, shard, &tls) {
                    Ok(sink) => Arc::new(sink),
                    Err(e) => {
                        // The queue keeps the rows and asks again at its next attempt.
                        tracing::warn!(shard, error = %e, "cannot reach the shard's store node");
                        return None;
                    }
                };
                sinks.insert((shard, addr), sink.clone());
                Some(sink)
            });
            tokio::spawn(queue.clone().drain(target, self.stop.clone()));
        }
        Ok(queue)
    }

    fn update(&self, nodes: &[Node]) {
        let map: ShardMap = nodes
            .iter()
            .flat_map(|n| {
                (n.first_shard..n.first_shard + n.shards).map(|s| (s, n.flight_addr.clone()))
            })
            .collect();
        if *self.map.read() == map {
            return;
        }
        let mut targets = Vec::new();
        for shard in map.keys() {
            match self.queue(*shard) {
                Ok(q) => targets.push(ShardTarget {
                    id: *shard,
                    sink: q,
                }),
                Err(e) => tracing::error!(shard, error = %e, "cannot open the shard's queue"),
            }
        }
        tracing::info!(shards = ?map, "shard map changed");
        *self.map.write() = map;
        *self.router.write() = Arc::new(ShardRouter::new(targets));
    }
}

/// Every store node that announced itself, however long ago.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

#[async_trait::async_trait]
impl Ingest for ClusterRouter {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        let bytes: usize = batches.iter().map(|b| b.memory_size()).sum();
        self.queues.budget().admit(bytes as u64)?;
        let router = self.router.read().clone();
        router.ingest(batches).await
    }
}
