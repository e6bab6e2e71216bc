//! A query node's view of the store nodes' shards: `DoGet` snapshots (see
//! `oxeye_store::remote`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::Array;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, Ticket};
use futures::StreamExt;
use oxeye_store::{RemoteShards, ScanRequest, ShardSnapshot, SnapshotRequest, StoreError};
use tonic::transport::Channel;

use crate::{SnapshotHeader, SnapshotTicket};

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
}

/// Why one node's snapshot is missing.
enum SnapshotFailure {
    /// The node did not answer or answered wrong: read its shards from the catalog.
    Unavailable(String),
    /// More rows than the query may hold.
    TooLarge,
}

impl FlightRemoteShards {
    pub fn new(max_bytes: usize, tls: oxeye_tls::ClientTls) -> Arc<FlightRemoteShards> {
        Arc::new(FlightRemoteShards {
            nodes: parking_lot::RwLock::new(BTreeMap::new()),
            max_bytes,
            tls,
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
        let inner = FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut client = FlightClient::new_from_inner(inner);
        let stream = client
            .do_get(Ticket::new(ticket))
            .await
            .map_err(|e| Unavailable(e.to_string()))?;
        let mut decoder: FlightDataDecoder = stream.into_inner();
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
                    // Taken from the query's budget, shared by every node's snapshot.
                    let size = rows_bytes(&b);
                    let left = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        left.checked_sub(size)
                    });
                    if left.is_err() {
                        return Err(SnapshotFailure::TooLarge);
                    }
                    batches.push(b);
                }
                DecodedPayload::Schema(_) | DecodedPayload::None => {}
            }
        }
        let header = header.ok_or_else(|| Unavailable("the snapshot has no header".into()))?;
        Ok(ShardSnapshot {
            node: url,
            shards: header.shards,
            segments: header.segments.into_iter().map(Arc::new).collect(),
            batches,
        })
    }
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
    async fn snapshots(&self, scan: &ScanRequest) -> Result<Vec<ShardSnapshot>, StoreError> {
        let wanted = SnapshotRequest::for_scan(scan);
        let ticket = SnapshotTicket {
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
        };
        let ticket = serde_json::to_vec(&ticket).map_err(|e| StoreError::Invalid {
            reason: format!("cannot encode a snapshot request: {e}"),
        })?;
        let nodes: Vec<(String, Channel)> = self
            .nodes
            .read()
            .iter()
            .map(|(u, c)| (u.clone(), c.clone()))
            .collect();
        let budget = Arc::new(AtomicUsize::new(self.max_bytes));
        let asks = nodes.into_iter().map(|(url, channel)| {
            let ticket = ticket.clone();
            let budget = budget.clone();
            async move {
                let answer = tokio::time::timeout(
                    SNAPSHOT_TIMEOUT,
                    Self::snapshot(url.clone(), channel, ticket, budget),
                )
                .await;
                match answer {
                    Ok(Ok(snapshot)) => Ok(Some(snapshot)),
                    Ok(Err(SnapshotFailure::TooLarge)) => Err(url),
                    Ok(Err(SnapshotFailure::Unavailable(e))) => {
                        tracing::warn!(node = %url, error = %e, "no snapshot from a store node; its shards are read from the catalog, without unflushed rows");
                        Ok(None)
                    }
                    Err(_) => {
                        tracing::warn!(node = %url, "a store node's snapshot timed out; its shards are read from the catalog, without unflushed rows");
                        Ok(None)
                    }
                }
            }
        });
        let mut snapshots = Vec::new();
        for answer in futures::future::join_all(asks).await {
            match answer {
                Ok(Some(s)) => snapshots.push(s),
                Ok(None) => {}
                Err(url) => {
                    return Err(StoreError::Overloaded(format!(
                        "the store nodes' unflushed rows this query needs (from {url} and others) \
                         are more than the query memory limit of {} bytes; narrow the time range, \
                         look up one trace, or raise --query-memory",
                        self.max_bytes
                    )));
                }
            }
        }
        Ok(snapshots)
    }
}
