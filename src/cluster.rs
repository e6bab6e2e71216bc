//! The wiring of the scale-out roles: a store node's heartbeat, and a collector's shard map,
//! read from the store nodes in the metastore and turned into a rendezvous router over
//! persistent per-shard queues that deliver over Flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let mut state = LeaseState::default();
    lease_round(&meta, &store, &holder, &mut state).await;
    let task = tokio::spawn(keep_leases(
        meta.clone(),
        store.clone(),
        holder.clone(),
        state,
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
    mut state: LeaseState,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        lease_round(&meta, &store, &holder, &mut state).await;
    }
}

/// How long a replica leaves a free lease to a replica that leads fewer shards: past it (that
/// replica did not take it), it takes the lease itself, so no shard stays without a leader.
const FREE_LEASE_GRACE: Duration = Duration::from_secs(5);

/// How long a node leads a shard before it may hand it to another replica, so leadership does
/// not flap while nodes come and go.
const SETTLE_BEFORE_HAND_OFF: Duration = LEASE_TTL;

/// What a store node remembers between lease rounds.
#[derive(Debug, Default)]
struct LeaseState {
    /// When each held lease was last renewed.
    renewed: BTreeMap<u32, Instant>,
    /// Since when this node leads each shard.
    led_since: BTreeMap<u32, Instant>,
    /// Since when each of this node's shards has had no leader, as last seen.
    free_since: BTreeMap<u32, Instant>,
}

/// What one store node does in a lease round to spread leadership over the live store nodes.
#[derive(Debug, Default, PartialEq)]
struct Balance {
    /// Free leases this node leaves, for now, to a replica that leads fewer shards.
    leave: BTreeSet<u32>,
    /// A shard this node hands to a replica that leads fewer shards.
    hand_off: Option<u32>,
}

/// Each live store node should lead about its share: the shards over the live nodes, rounded
/// up. A node at or over its share leaves a free lease to a replica under it, and a node over
/// its share hands one settled shard a round to such a replica. `leaders` holds the unexpired
/// leases; `settled` says whether this node has led a shard long enough to hand it off.
fn balance(
    me: &str,
    live: &[Node],
    leaders: &BTreeMap<u32, String>,
    settled: impl Fn(u32) -> bool,
) -> Balance {
    let Some(mine) = live.iter().find(|n| n.id == me) else {
        // Not announced yet: nothing to compare with.
        return Balance::default();
    };
    let shards: BTreeSet<u32> = live
        .iter()
        .flat_map(|n| n.shard_ids.iter().copied())
        .collect();
    let fair = shards.len().div_ceil(live.len().max(1));
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for holder in leaders.values() {
        *led.entry(holder.as_str()).or_default() += 1;
    }
    let leads = |id: &str| led.get(id).copied().unwrap_or(0);
    let under_replica = |shard: u32| {
        live.iter()
            .filter(|n| n.id != me && n.shard_ids.contains(&shard))
            .any(|n| leads(&n.id) < fair)
    };
    let mut out = Balance::default();
    if leads(me) >= fair {
        out.leave = mine
            .shard_ids
            .iter()
            .copied()
            .filter(|s| !leaders.contains_key(s) && under_replica(*s))
            .collect();
    }
    if leads(me) > fair {
        out.hand_off =
            mine.shard_ids.iter().copied().find(|s| {
                leaders.get(s).is_some_and(|h| h == me) && settled(*s) && under_replica(*s)
            });
    }
    out
}

/// Renews each lease held (stepping down from a shard whose lease is lost), hands a shard to a
/// replica that leads fewer when this node leads more than its share, and tries to take each
/// lease not held (leaving one, for a while, to a replica that leads fewer).
async fn lease_round(
    meta: &PgMetastore,
    store: &oxeye_store::Store,
    holder: &str,
    state: &mut LeaseState,
) {
    let now = Instant::now();
    let plan = match (
        meta.live_nodes("store", STORE_NODE_LIVENESS).await,
        meta.shard_leaders().await,
    ) {
        (Ok(live), Ok(leaders)) => {
            for shard in store.shard_ids() {
                if leaders.contains_key(&shard) {
                    state.free_since.remove(&shard);
                } else {
                    state.free_since.entry(shard).or_insert(now);
                }
            }
            let led_since = &state.led_since;
            balance(holder, &live, &leaders, |s| {
                led_since
                    .get(&s)
                    .is_some_and(|t| t.elapsed() >= SETTLE_BEFORE_HAND_OFF)
            })
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "cannot read the store nodes and leases; not balancing this round");
            Balance::default()
        }
    };
    for shard in store.shard_ids() {
        if store.leads(shard) {
            let lost = match meta.renew_shard_lease(shard, holder, LEASE_TTL).await {
                Ok(true) => {
                    state.renewed.insert(shard, Instant::now());
                    false
                }
                Ok(false) => {
                    tracing::warn!(shard, "another replica took over the shard's lease");
                    true
                }
                Err(e) => {
                    // Commits are fenced anyway; past the lease's life, another replica
                    // may lead, so stop serving rows it also serves.
                    let expired = state
                        .renewed
                        .get(&shard)
                        .is_none_or(|t| t.elapsed() >= LEASE_TTL);
                    tracing::warn!(shard, error = %e, expired, "cannot renew the shard's lease");
                    expired
                }
            };
            if lost {
                state.led_since.remove(&shard);
                if let Err(e) = store.follow(shard).await {
                    tracing::warn!(shard, error = %e, "cannot step down from leading the shard");
                }
            } else if plan.hand_off == Some(shard) {
                hand_off(meta, store, holder, shard).await;
                state.led_since.remove(&shard);
            }
            continue;
        }
        let waited = state
            .free_since
            .get(&shard)
            .is_some_and(|t| t.elapsed() >= FREE_LEASE_GRACE);
        if plan.leave.contains(&shard) && !waited {
            continue;
        }
        match meta.take_shard_lease(shard, holder, LEASE_TTL).await {
            Ok(Some(flushed)) => {
                state.renewed.insert(shard, Instant::now());
                state.led_since.insert(shard, Instant::now());
                match store.lead(shard, flushed).await {
                    Ok(rows) => tracing::info!(shard, rows, "leading the shard"),
                    Err(e) => {
                        tracing::error!(shard, error = %e, "cannot take the shard over; giving its lease up");
                        state.led_since.remove(&shard);
                        if let Err(e) = meta.release_shard_lease(shard, holder).await {
                            tracing::warn!(shard, error = %e, "cannot give up the shard's lease");
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(shard, error = %e, "cannot try to take the shard's lease"),
        }
    }
}

/// Hands `shard` to another replica: flushes it (so the checkpoint covers what this node
/// held and the next leader replays little), steps down and gives the lease up; a replica
/// that leads fewer shards takes it in its next round.
async fn hand_off(meta: &PgMetastore, store: &oxeye_store::Store, holder: &str, shard: u32) {
    if let Err(e) = store.flush_shard(shard).await {
        // Not needed for safety: the next leader replays its WAL past the checkpoint.
        tracing::warn!(shard, error = %e, "cannot flush the shard before handing it off");
    }
    if let Err(e) = store.follow(shard).await {
        tracing::warn!(shard, error = %e, "cannot step down from leading the shard; keeping it");
        return;
    }
    match meta.release_shard_lease(shard, holder).await {
        Ok(()) => tracing::info!(
            shard,
            "handed the shard to a replica that leads fewer shards"
        ),
        // Its lease runs out on its own and a replica takes it then.
        Err(e) => tracing::warn!(shard, error = %e, "cannot give up the shard's lease"),
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
    use super::*;

    fn node(id: &str, shards: &[u32]) -> Node {
        Node {
            id: id.into(),
            role: "store".into(),
            flight_addr: format!("http://{id}"),
            shard_ids: shards.to_vec(),
        }
    }

    fn leaders(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
        pairs.iter().map(|(s, h)| (*s, h.to_string())).collect()
    }

    #[test]
    fn leadership_spreads_to_replicas_that_lead_fewer_shards() {
        let live = [node("a", &[0, 1, 2, 3]), node("b", &[0, 1, 2, 3])];
        // a leads all four; b just joined: a hands one settled shard a round to b.
        let all_on_a = leaders(&[(0, "a"), (1, "a"), (2, "a"), (3, "a")]);
        let plan = balance("a", &live, &all_on_a, |_| true);
        assert_eq!(plan.hand_off, Some(0));
        assert!(plan.leave.is_empty());
        // Not before a has led the shard a while.
        assert_eq!(balance("a", &live, &all_on_a, |_| false).hand_off, None);
        // b leads nothing: it takes what is free, it leaves nothing.
        assert_eq!(balance("b", &live, &all_on_a, |_| true), Balance::default());

        // Shard 0 is free after the hand-off: a, at 3 of a fair 2, leaves it to b.
        let handed = leaders(&[(1, "a"), (2, "a"), (3, "a")]);
        let plan = balance("a", &live, &handed, |_| true);
        assert_eq!(plan.leave, BTreeSet::from([0]));
        assert_eq!(plan.hand_off, Some(1));

        // Balanced at 2 and 2: nothing moves.
        let even = leaders(&[(0, "b"), (1, "b"), (2, "a"), (3, "a")]);
        for me in ["a", "b"] {
            assert_eq!(balance(me, &live, &even, |_| true), Balance::default());
        }
    }

    #[test]
    fn a_shard_is_only_left_to_a_replica_of_it() {
        // Overlapping replica sets: a and b share 0,1; b and c share 2,3; c and a share 4,5.
        let live = [
            node("a", &[0, 1, 4, 5]),
            node("b", &[0, 1, 2, 3]),
            node("c", &[2, 3, 4, 5]),
        ];
        // a leads 0,1,4,5 and c leads 2,3: fair is 2. a hands 0 or 1 to b (b leads none), never
        // 4 or 5 to c, which is at its share.
        let skewed = leaders(&[(0, "a"), (1, "a"), (4, "a"), (5, "a"), (2, "c"), (3, "c")]);
        assert_eq!(balance("a", &live, &skewed, |_| true).hand_off, Some(0));
        assert_eq!(balance("c", &live, &skewed, |_| true), Balance::default());
        // A node not yet announced compares with nobody.
        assert_eq!(balance("d", &live, &skewed, |_| true), Balance::default());
        // With every lease free, nobody leaves anything: each leads none.
        let none = BTreeMap::new();
        assert!(balance("a", &live, &none, |_| true).leave.is_empty());
    }
}
