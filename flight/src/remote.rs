//! A query node's view of the store nodes' shards: `DoGet` snapshots (see
//! `oxeye_store::remote`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, Ticket};
use futures::StreamExt;
use oxeye_model::Signal;
use oxeye_store::{IndexPredicate, RemoteShards, ShardSnapshot};
use tonic::transport::{Channel, Endpoint};

use crate::{SnapshotHeader, SnapshotTicket};

/// How long a query waits for a store node's snapshot before reading that node's shards from
/// the catalog alone.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest snapshot message accepted (the encoder splits batches into ~2 MiB messages; a
/// dictionary resent with a slice can make one bigger).
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// The store nodes to ask, kept current by whoever follows the cluster's membership.
#[derive(Debug, Default)]
pub struct FlightRemoteShards {
    /// Flight URL -> channel (connected lazily, reused across queries).
    nodes: parking_lot::RwLock<BTreeMap<String, Channel>>,
}

impl FlightRemoteShards {
    pub fn new() -> Arc<FlightRemoteShards> {
        Arc::new(FlightRemoteShards::default())
    }

    /// Replaces the set of live store nodes (Flight URLs such as `http://host:7701`).
    pub fn set_nodes(&self, urls: &[String]) {
        let mut nodes = self.nodes.write();
        nodes.retain(|url, _| urls.contains(url));
        for url in urls {
            if nodes.contains_key(url) {
                continue;
            }
            match Endpoint::from_shared(url.clone()) {
                Ok(e) => {
                    let channel = e
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .connect_lazy();
                    nodes.insert(url.clone(), channel);
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "a store node's Flight address is not a URL")
                }
            }
        }
    }

    async fn snapshot(
        url: String,
        channel: Channel,
        ticket: Vec<u8>,
    ) -> Result<ShardSnapshot, String> {
        let inner = FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut client = FlightClient::new_from_inner(inner);
        let stream = client
            .do_get(Ticket::new(ticket))
            .await
            .map_err(|e| e.to_string())?;
        let mut decoder: FlightDataDecoder = stream.into_inner();
        let mut header: Option<SnapshotHeader> = None;
        let mut batches: Vec<RecordBatch> = Vec::new();
        while let Some(message) = decoder.next().await {
            let message = message.map_err(|e| e.to_string())?;
            match message.payload {
                DecodedPayload::Schema(_) if header.is_none() => {
                    header = Some(
                        serde_json::from_slice(&message.inner.app_metadata)
                            .map_err(|e| format!("the snapshot header is not valid: {e}"))?,
                    );
                }
                DecodedPayload::RecordBatch(b) => batches.push(b),
                DecodedPayload::Schema(_) | DecodedPayload::None => {}
            }
        }
        let header = header.ok_or("the snapshot has no header")?;
        Ok(ShardSnapshot {
            node: url,
            shards: header.shards,
            segments: header.segments.into_iter().map(Arc::new).collect(),
            batches,
        })
    }
}

#[async_trait::async_trait]
impl RemoteShards for FlightRemoteShards {
    async fn snapshots(
        &self,
        signal: Signal,
        start: Option<i64>,
        end: Option<i64>,
        index: Option<&IndexPredicate>,
    ) -> Vec<ShardSnapshot> {
        let trace_id = index.and_then(oxeye_store::remote::required_trace_id);
        let ticket = SnapshotTicket {
            table: signal.table_name().to_string(),
            start,
            end,
            trace_id: trace_id.map(hex::encode),
        };
        let Ok(ticket) = serde_json::to_vec(&ticket) else {
            return Vec::new();
        };
        let nodes: Vec<(String, Channel)> = self
            .nodes
            .read()
            .iter()
            .map(|(u, c)| (u.clone(), c.clone()))
            .collect();
        let asks = nodes.into_iter().map(|(url, channel)| {
            let ticket = ticket.clone();
            async move {
                let answer = tokio::time::timeout(
                    SNAPSHOT_TIMEOUT,
                    Self::snapshot(url.clone(), channel, ticket),
                )
                .await;
                match answer {
                    Ok(Ok(snapshot)) => Some(snapshot),
                    Ok(Err(e)) => {
                        tracing::warn!(node = %url, error = %e, "no snapshot from a store node; its shards are read from the catalog, without unflushed rows");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(node = %url, "a store node's snapshot timed out; its shards are read from the catalog, without unflushed rows");
                        None
                    }
                }
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
