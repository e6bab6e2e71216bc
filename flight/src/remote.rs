//! A query node's view of the store nodes' shards: `DoGet` snapshots (see
//! `oxeye_store::remote`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::Array;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, Ticket};
use futures::StreamExt;
use futures::stream::BoxStream;
use oxeye_store::{
    PinRelease, PinRequest, PinnedRows, RemoteShards, ScanRequest, ShardSnapshot, SnapshotRequest,
    StoreError,
};
use tonic::transport::Channel;

use crate::{PinTicket, SnapshotHeader, SnapshotTicket};

/// How long a query waits for a store node's snapshot before reading that node's shards from
/// the catalog alone.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest snapshot message accepted (the encoder splits batches into ~2 MiB messages; a
/// dictionary resent with a slice can make one bigger).
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// The store nodes to ask, kept current by whoever follows the cluster's membership.
#[derive(Debug)]
pub struct FlightRemoteShards {
    /// Flight URL -> channel (connected lazily, reused across queries).
    nodes: parking_lot::RwLock<BTreeMap<String, Channel>>,
    /// Most bytes of unflushed rows one query takes in from all store nodes together (the
    /// query's memory limit): past it the query fails instead of the node running out of
    /// memory.
    max_bytes: usize,
    /// CA and client certificate for `https://` nodes.
    tls: oxeye_tls::ClientTls,
    /// How big snapshots are answered: their rows set aside until the scan reads them.
    pins: PinRequest,
}

/// Unflushed rows (before filters) a snapshot carries at once; a node with more sets them aside
/// for the scan, which then reads them filtered, or aggregated on the node.
pub const DEFAULT_INLINE_ROWS: usize = 8192;

/// Why one node's snapshot is missing.
enum SnapshotFailure {
    /// The node did not answer or answered wrong: read its shards from the catalog.
    Unavailable(String),
    /// More rows than the query may hold.
    TooLarge,
}

impl FlightRemoteShards {
    /// `pin_ttl` is how long store nodes keep rows set aside for a query: longer than the
    /// query may run.
    pub fn new(
        max_bytes: usize,
        tls: oxeye_tls::ClientTls,
        pin_ttl: Duration,
    ) -> Arc<FlightRemoteShards> {
        Self::with_inline_rows(max_bytes, tls, pin_ttl, DEFAULT_INLINE_ROWS)
    }

    /// [`FlightRemoteShards::new`] with another bound of the rows a snapshot carries at once.
    pub fn with_inline_rows(
        max_bytes: usize,
        tls: oxeye_tls::ClientTls,
        pin_ttl: Duration,
        inline_rows: usize,
    ) -> Arc<FlightRemoteShards> {
        Arc::new(FlightRemoteShards {
            nodes: parking_lot::RwLock::new(BTreeMap::new()),
            max_bytes,
            tls,
            pins: PinRequest {
                inline_rows,
                ttl: pin_ttl,
            },
        })
    }

    /// Replaces the set of live store nodes (Flight URLs such as `http://host:7701`).
    pub fn set_nodes(&self, urls: &[String]) {
        let mut nodes = self.nodes.write();
        nodes.retain(|url, _| urls.contains(url));
        for url in urls {
            if nodes.contains_key(url) {
                continue;
            }
            match self.tls.endpoint(url) {
                Ok(e) => {
                    let channel = e
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .connect_lazy();
                    nodes.insert(url.clone(), channel);
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "cannot reach a store node's Flight address")
                }
            }
        }
    }

    async fn snapshot(
        url: String,
        channel: Channel,
        ticket: Vec<u8>,
        budget: Arc<AtomicUsize>,
    ) -> Result<ShardSnapshot, SnapshotFailure> {
        use SnapshotFailure::Unavailable;
        let mut decoder = do_get(channel.clone(), ticket)
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        let mut header: Option<SnapshotHeader> = None;
        let mut batches: Vec<RecordBatch> = Vec::new();
        while let Some(message) = decoder.next().await {
            let message = message.map_err(|e| Unavailable(e.to_string()))?;
            match message.payload {
                DecodedPayload::Schema(_) if header.is_none() => {
                    header = Some(serde_json::from_slice(&message.inner.app_metadata).map_err(
                        |e| Unavailable(format!("the snapshot header is not valid: {e}")),
                    )?);
                }
                DecodedPayload::RecordBatch(b) => {
                    if !take_from(&budget, &b) {
                        return Err(SnapshotFailure::TooLarge);
                    }
                    batches.push(b);
                }
                DecodedPayload::Schema(_) | DecodedPayload::None => {}
            }
        }
        let header = header.ok_or_else(|| Unavailable("the snapshot has no header".into()))?;
        Ok(ShardSnapshot {
            pinned: header.pinned.map(|p| PinnedRows {
                node: url.clone(),
                id: p.id,
                rows: p.rows,
                budget: budget.clone(),
                release: PinRelease::new(release_later(channel.clone(), p.id)),
            }),
            node: url,
            shards: header.shards,
            segments: header.segments.into_iter().map(Arc::new).collect(),
            batches,
            serves: header.serves,
        })
    }

    fn too_large(&self, url: &str) -> StoreError {
        StoreError::Overloaded(format!(
            "the store nodes' unflushed rows this query needs (from {url} and others) are more \
             than the query memory limit of {} bytes; narrow the time range, look up one trace, \
             or raise --query-memory",
            self.max_bytes
        ))
    }
}

/// Asks a store node to drop rows it set aside under `id`, in the background: best effort, as
/// the node drops them anyway when their time is up.
fn release_later(channel: Channel, id: u64) -> impl FnOnce() + Send + 'static {
    move || {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut client = FlightServiceClient::new(channel);
            let action = arrow_flight::Action::new(crate::RELEASE_PINNED, id.to_string());
            let released = tokio::time::timeout(SNAPSHOT_TIMEOUT, client.do_action(action)).await;
            if !matches!(released, Ok(Ok(_))) {
                tracing::debug!(
                    id,
                    "a store node did not take back rows set aside; they expire"
                );
            }
        });
    }
}

/// Opens a `DoGet` on a store node.
async fn do_get(channel: Channel, ticket: Vec<u8>) -> Result<FlightDataDecoder, String> {
    let inner = FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut client = FlightClient::new_from_inner(inner);
    let stream = client
        .do_get(Ticket::new(ticket))
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream.into_inner())
}

/// Takes `batch`'s bytes from a query's budget (shared by everything it reads from store
/// nodes); false when they do not fit.
fn take_from(budget: &AtomicUsize, batch: &RecordBatch) -> bool {
    let size = rows_bytes(batch);
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(size)
        })
        .is_ok()
}

/// A snapshot ticket for `scan` (what its reads of store nodes keep).
fn ticket_for(scan: &ScanRequest) -> SnapshotTicket {
    let wanted = SnapshotRequest::for_scan(scan);
    SnapshotTicket {
        table: scan.signal.table_name().to_string(),
        start: wanted.start,
        end: wanted.end,
        trace_id: wanted.trace_id.map(hex::encode),
        columns: wanted.columns,
        filters: scan
            .filter
            .iter()
            .filter_map(|stage| stage.wire.clone())
            .take(crate::MAX_SNAPSHOT_FILTERS)
            .collect(),
        limit: wanted.limit,
        pin: None,
        read_pinned: None,
        partial: None,
    }
}

fn encode_ticket(ticket: &SnapshotTicket) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(ticket).map_err(|e| StoreError::Invalid {
        reason: format!("cannot encode a snapshot request: {e}"),
    })
}

/// Bytes of the rows of `batch`. Decoded Flight arrays are slices of one message buffer, whose
/// whole capacity `get_array_memory_size` would count for every column.
fn rows_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

#[async_trait::async_trait]
impl RemoteShards for FlightRemoteShards {
    async fn snapshots(
        &self,
        scan: &ScanRequest,
        pin: bool,
    ) -> Result<Vec<ShardSnapshot>, StoreError> {
        let ticket = SnapshotTicket {
            pin: pin.then(|| PinTicket {
                inline_rows: self.pins.inline_rows,
                ttl_ms: u64::try_from(self.pins.ttl.as_millis()).unwrap_or(u64::MAX),
            }),
            ..ticket_for(scan)
        };
        let ticket = encode_ticket(&ticket)?;
        // A shard whose leader just went has none until a replica takes it over (at once when
        // the leader's process is gone, when its lease runs out otherwise): its newest rows are
        // only in that replica's WAL meanwhile. Rather than answer without them, the query
        // waits for the new leader, up to a bound.
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        // Nodes that did not answer are not asked again while the query waits.
        let mut silent = BTreeSet::new();
        loop {
            let snapshots = self.snapshot_round(&ticket, &mut silent).await?;
            let covered: BTreeSet<u32> = snapshots
                .iter()
                .flat_map(|s| s.shards.iter().copied())
                .collect();
            let leaderless: BTreeSet<u32> = snapshots
                .iter()
                .flat_map(|s| s.serves.iter().copied())
                .filter(|s| !covered.contains(s))
                .collect();
            if leaderless.is_empty() {
                return Ok(snapshots);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(shards = ?leaderless, "no replica leads these shards yet; they are read from the catalog, without their unflushed rows");
                return Ok(snapshots);
            }
            tracing::debug!(shards = ?leaderless, "waiting for a replica to lead shards whose leader went");
            drop(snapshots);
            tokio::time::sleep(LEADERLESS_RETRY).await;
        }
    }

    async fn fetch(
        &self,
        pinned: &PinnedRows,
        scan: &ScanRequest,
        partial: Option<Arc<Vec<u8>>>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError> {
        self.fetch_pinned(pinned, scan, partial).await
    }
}

/// Longest a query waits for a replica to lead a shard that lost its leader (a lease runs out
/// after 10 s, and replicas look every 2 s).
const LEADERLESS_WAIT: Duration = Duration::from_secs(15);
/// How often a waiting query asks again.
const LEADERLESS_RETRY: Duration = Duration::from_millis(250);

impl FlightRemoteShards {
    /// One snapshot of every live store node for `ticket`, but those in `silent`, which gets
    /// the nodes that do not answer.
    async fn snapshot_round(
        &self,
        ticket: &[u8],
        silent: &mut BTreeSet<String>,
    ) -> Result<Vec<ShardSnapshot>, StoreError> {
        let nodes: Vec<(String, Channel)> = self
            .nodes
            .read()
            .iter()
            .filter(|(u, _)| !silent.contains(*u))
            .map(|(u, c)| (u.clone(), c.clone()))
            .collect();
        let budget = Arc::new(AtomicUsize::new(self.max_bytes));
        let asks = nodes.into_iter().map(|(url, channel)| {
            let ticket = ticket.to_vec();
            let budget = budget.clone();
            async move {
                let answer = tokio::time::timeout(
                    SNAPSHOT_TIMEOUT,
                    Self::snapshot(url.clone(), channel, ticket, budget),
                )
                .await;
                match answer {
                    Ok(Ok(snapshot)) => Ok(Ok(snapshot)),
                    Ok(Err(SnapshotFailure::TooLarge)) => Err(url),
                    Ok(Err(SnapshotFailure::Unavailable(e))) => {
                        tracing::warn!(node = %url, error = %e, "no snapshot from a store node; the shards only it leads are read from the catalog, without unflushed rows");
                        Ok(Err(url))
                    }
                    Err(_) => {
                        tracing::warn!(node = %url, "a store node's snapshot timed out; the shards only it leads are read from the catalog, without unflushed rows");
                        Ok(Err(url))
                    }
                }
            }
        });
        let mut snapshots = Vec::new();
        for answer in futures::future::join_all(asks).await {
            match answer {
                Ok(Ok(s)) => snapshots.push(s),
                Ok(Err(url)) => {
                    silent.insert(url);
                }
                Err(url) => return Err(self.too_large(&url)),
            }
        }
        Ok(snapshots)
    }

    async fn fetch_pinned(
        &self,
        pinned: &PinnedRows,
        scan: &ScanRequest,
        partial: Option<Arc<Vec<u8>>>,
    ) -> Result<BoxStream<'static, Result<RecordBatch, StoreError>>, StoreError> {
        use base64::Engine;

        let node = pinned.node.clone();
        let unavailable = move |reason: String| StoreError::Remote {
            node: node.clone(),
            reason,
        };
        // The node drops the rows as it sends them: nothing to give back any more.
        pinned.release.mark_read();
        let channel = self
            .nodes
            .read()
            .get(&pinned.node)
            .cloned()
            .ok_or_else(|| {
                unavailable("it left the cluster while the query ran; run the query again".into())
            })?;
        let ticket = SnapshotTicket {
            read_pinned: Some(pinned.id),
            partial: partial
                .map(|plan| base64::engine::general_purpose::STANDARD.encode(plan.as_slice())),
            ..ticket_for(scan)
        };
        let ticket = encode_ticket(&ticket)?;
        let decoder = tokio::time::timeout(SNAPSHOT_TIMEOUT, do_get(channel, ticket))
            .await
            .map_err(|_| unavailable("it did not answer in time; run the query again".into()))?
            .map_err(|e| {
                unavailable(format!("reading the rows it set aside for the query: {e}"))
            })?;
        let budget = pinned.budget.clone();
        let too_large = self.too_large(&pinned.node).to_string();
        let node = pinned.node.clone();
        let batches = decoder.filter_map(move |message| {
            let out = match message {
                Err(e) => Some(Err(StoreError::Remote {
                    node: node.clone(),
                    reason: format!("reading the rows it set aside for the query: {e}"),
                })),
                Ok(m) => match m.payload {
                    DecodedPayload::RecordBatch(b) if take_from(&budget, &b) => Some(Ok(b)),
                    DecodedPayload::RecordBatch(_) => {
                        Some(Err(StoreError::Overloaded(too_large.clone())))
                    }
                    DecodedPayload::Schema(_) | DecodedPayload::None => None,
                },
            };
            futures::future::ready(out)
        });
        Ok(batches.boxed())
    }
}
