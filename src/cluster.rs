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

use oxeye_flight::FlightShardSink;

use crate::queue::{Queues, Quorum, QuorumSink, SinkFactory};

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

/// How long a shard lease lasts without renewal: how long a replica waits before taking over
/// the shards of a leader that died.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// A store node's leadership of its shards: for each shard, it renews the lease it holds or
/// tries to take a free one (see `oxeye_metastore`'s leases), every [`HEARTBEAT`].
pub struct ShardLeases {
    meta: Arc<PgMetastore>,
    store: oxeye_store::Store,
    holder: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Leads what `store`'s shards let this node lead, as `holder`: takes the free leases now (a
/// node that restarts within its leases' life takes its own back at once, so it is ready with
/// its rows), then keeps renewing and taking them in the background.
pub async fn lead_shards(
    meta: Arc<PgMetastore>,
    store: oxeye_store::Store,
    holder: String,
    stop: CancellationToken,
) -> ShardLeases {
    meta.require_shard_leases(&holder);
    let stop = stop.child_token();
    let mut renewed = BTreeMap::new();
    lease_round(&meta, &store, &holder, &mut renewed).await;
    let task = tokio::spawn(keep_leases(
        meta.clone(),
        store.clone(),
        holder.clone(),
        renewed,
        stop.clone(),
    ));
    ShardLeases {
        meta,
        store,
        holder,
        stop,
        task,
    }
}

impl ShardLeases {
    /// Stops taking and renewing leases (the ones held stay until [`ShardLeases::release`]).
    pub async fn stop(&self) {
        self.stop.cancel();
        while !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Gives up every lease held, so the replicas take over without waiting for them to expire.
    pub async fn release(self) {
        for shard in self.store.shard_ids() {
            if let Err(e) = self.meta.release_shard_lease(shard, &self.holder).await {
                tracing::warn!(shard, error = %e, "cannot give up the shard's lease; a replica takes over once it expires");
            }
        }
    }
}

async fn keep_leases(
    meta: Arc<PgMetastore>,
    store: oxeye_store::Store,
    holder: String,
    mut renewed: BTreeMap<u32, std::time::Instant>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        lease_round(&meta, &store, &holder, &mut renewed).await;
    }
}

/// Renews each lease held (stepping down from a shard whose lease is lost) and tries to take
/// each one not held.
async fn lease_round(
    meta: &PgMetastore,
    store: &oxeye_store::Store,
    holder: &str,
    renewed: &mut BTreeMap<u32, std::time::Instant>,
) {
    // Shards another replica's lease holds.
    let mut held_elsewhere = Vec::new();
    {
        for shard in store.shard_ids() {
            if store.leads(shard) {
                let lost = match meta.renew_shard_lease(shard, holder, LEASE_TTL).await {
                    Ok(true) => {
                        renewed.insert(shard, std::time::Instant::now());
                        false
                    }
                    Ok(false) => {
                        tracing::warn!(shard, "another replica took over the shard's lease");
                        true
                    }
                    Err(e) => {
                        // Commits are fenced anyway; past the lease's life, another replica
                        // may lead, so stop serving rows it also serves.
                        let expired = renewed.get(&shard).is_none_or(|t| t.elapsed() >= LEASE_TTL);
                        tracing::warn!(shard, error = %e, expired, "cannot renew the shard's lease");
                        expired
                    }
                };
                if lost && let Err(e) = store.follow(shard).await {
                    tracing::warn!(shard, error = %e, "cannot step down from leading the shard");
                }
                continue;
            }
            match meta.take_shard_lease(shard, holder, LEASE_TTL).await {
                Ok(Some(flushed)) => {
                    renewed.insert(shard, std::time::Instant::now());
                    lead(meta, store, holder, shard, flushed).await;
                }
                Ok(None) => held_elsewhere.push(shard),
                Err(e) => tracing::warn!(shard, error = %e, "cannot try to take the shard's lease"),
            }
        }
    }
    if !held_elsewhere.is_empty() {
        take_over_from_gone_leaders(meta, store, holder, &held_elsewhere, renewed).await;
    }
}

/// Starts leading `shard`, whose lease this node just took; gives the lease up if it cannot.
async fn lead(
    meta: &PgMetastore,
    store: &oxeye_store::Store,
    holder: &str,
    shard: u32,
    flushed: oxeye_store::delivery::Delivered,
) {
    match store.lead(shard, flushed).await {
        Ok(rows) => tracing::info!(shard, rows, "leading the shard"),
        Err(e) => {
            tracing::error!(shard, error = %e, "cannot take the shard over; giving its lease up");
            if let Err(e) = meta.release_shard_lease(shard, holder).await {
                tracing::warn!(shard, error = %e, "cannot give up the shard's lease");
            }
        }
    }
}

/// How long a probe of a leader's Flight port may take before it counts as unanswered (which
/// proves nothing: only a refused connection shows the process is gone).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Takes over the shards among `shards` whose leader's process is gone (killed, crashed):
/// nothing listens on its Flight port any more, so nothing renews its lease. Waiting for the
/// lease to run out would leave the shard without a leader, and its unflushed rows out of
/// queries, for up to [`LEASE_TTL`]. A leader that is only unreachable (a network cut) does not
/// refuse connections, and keeps its lease until it expires.
async fn take_over_from_gone_leaders(
    meta: &PgMetastore,
    store: &oxeye_store::Store,
    holder: &str,
    shards: &[u32],
    renewed: &mut BTreeMap<u32, std::time::Instant>,
) {
    let holders = match meta.shard_lease_holders().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read who leads the shards");
            return;
        }
    };
    let mut gone: BTreeMap<String, bool> = BTreeMap::new();
    for (shard, leader, flight) in holders {
        if !shards.contains(&shard) || leader == holder {
            continue;
        }
        let Some(flight) = flight else { continue };
        let is_gone = match gone.get(&leader) {
            Some(g) => *g,
            None => {
                let g = refuses_connections(&flight).await;
                gone.insert(leader.clone(), g);
                g
            }
        };
        if !is_gone {
            continue;
        }
        match meta
            .take_shard_lease_from_gone(shard, holder, &leader, LEASE_TTL)
            .await
        {
            Ok(Some(flushed)) => {
                tracing::warn!(
                    shard,
                    leader,
                    "the shard's leader is gone (its Flight port refuses connections); taking the shard over before its lease runs out"
                );
                renewed.insert(shard, std::time::Instant::now());
                lead(meta, store, holder, shard, flushed).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(shard, error = %e, "cannot take over the shard of a gone leader")
            }
        }
    }
}

/// Whether nothing listens at a Flight URL's address (`http://host:port`): a connection there
/// is refused.
async fn refuses_connections(url: &str) -> bool {
    let address = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    }
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

/// The store nodes (Flight URLs) that serve each shard: its replicas.
type ShardMap = BTreeMap<u32, Vec<String>>;
/// Flight sinks by (shard, store URL).
type Sinks = BTreeMap<(u32, String), Arc<oxeye_flight::FlightShardSink>>;

/// A collector's router: rows go by shard key to their shard's persistent queue
/// ([`crate::queue`]), which delivers them to every replica of the shard. The shard map holds
/// every store node that ever announced itself, alive or not: a store that is down keeps its
/// shards (its rows wait in the queue, until it is back or another replica's flush covers
/// them) instead of its rows moving to other shards.
pub struct ClusterRouter {
    queues: Arc<Queues>,
    map: parking_lot::RwLock<ShardMap>,
    router: parking_lot::RwLock<Arc<ShardRouter>>,
    /// A Flight sink per (shard, address), reused across deliveries.
    sinks: Arc<parking_lot::Mutex<Sinks>>,
    /// CA and client certificate for `https://` store nodes.
    tls: oxeye_tls::ClientTls,
    quorum: Quorum,
    stop: CancellationToken,
}

impl ClusterRouter {
    /// Opens the queues under `queue_dir` (delivering what an earlier run left once the shard
    /// map names their replicas) and starts following the shard map and the shards' flush
    /// checkpoints in the metastore.
    pub fn start(
        meta: Arc<PgMetastore>,
        queues: Queues,
        quorum: Quorum,
        tls: oxeye_tls::ClientTls,
        stop: CancellationToken,
    ) -> std::io::Result<Arc<ClusterRouter>> {
        let router = Arc::new(ClusterRouter {
            queues: Arc::new(queues),
            map: parking_lot::RwLock::new(BTreeMap::new()),
            router: parking_lot::RwLock::new(Arc::new(ShardRouter::new(vec![]))),
            sinks: Arc::new(parking_lot::Mutex::new(BTreeMap::new())),
            tls,
            quorum,
            stop: stop.clone(),
        });
        for shard in router.queues.existing_shards() {
            router.queues.get(shard)?;
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
                match meta.shard_checkpoints().await {
                    Ok(checkpoints) => {
                        for (shard, flushed) in checkpoints {
                            if let Some(q) = r.queues.existing(shard) {
                                q.set_flushed(&flushed);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the shards' flush checkpoints")
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

    /// The Flight sink of `shard` on the store node at `addr`, made on first use.
    fn sink_factory(&self) -> SinkFactory {
        let sinks = self.sinks.clone();
        let tls = self.tls.clone();
        Arc::new(move |shard, addr| {
            let mut sinks = sinks.lock();
            if let Some(s) = sinks.get(&(shard, addr.to_string())) {
                return Some(s.clone());
            }
            let sink = match FlightShardSink::new(addr, shard, &tls) {
                Ok(sink) => Arc::new(sink),
                Err(e) => {
                    // The queue keeps the rows and asks again at its next attempt.
                    tracing::warn!(shard, replica = addr, error = %e, "cannot reach a replica of the shard");
                    return None;
                }
            };
            sinks.insert((shard, addr.to_string()), sink.clone());
            Some(sink)
        })
    }

    fn update(&self, nodes: &[Node]) {
        let mut map = ShardMap::new();
        for n in nodes {
            for shard in &n.shard_ids {
                let replicas = map.entry(*shard).or_default();
                if !replicas.contains(&n.flight_addr) {
                    replicas.push(n.flight_addr.clone());
                }
            }
        }
        for replicas in map.values_mut() {
            replicas.sort();
        }
        if *self.map.read() == map {
            return;
        }
        let mut targets = Vec::new();
        for (shard, replicas) in &map {
            let queue = match self.queues.get(*shard) {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(shard, error = %e, "cannot open the shard's queue");
                    continue;
                }
            };
            for addr in queue.set_replicas(replicas) {
                tokio::spawn(
                    queue
                        .clone()
                        .drain_to(addr, self.sink_factory(), self.stop.clone()),
                );
            }
            targets.push(ShardTarget {
                id: *shard,
                sink: Arc::new(QuorumSink {
                    queue,
                    quorum: self.quorum.clone(),
                }),
            });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[tokio::test]
    async fn only_a_port_nothing_listens_on_counts_as_gone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        assert!(
            !super::refuses_connections(&url).await,
            "a listening leader"
        );
        drop(listener);
        assert!(super::refuses_connections(&url).await, "a gone leader");
    }
}
