use std::time::Duration;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use oxeye_model::ingest::{Ingest, IngestError};
use oxeye_model::{Signal, SignalBatch};
use tonic::transport::{Channel, Endpoint};

use crate::status_to_error;

/// One shard of a store node, reached over Flight: the collector's sink for that shard.
#[derive(Debug, Clone)]
pub struct FlightShardSink {
    store: String,
    shard: u32,
    channel: Channel,
}

impl FlightShardSink {
    /// `store` is the node's Flight address (`http://host:7701`); connects lazily and
    /// reconnects by itself.
    pub fn new(store: &str, shard: u32) -> Result<FlightShardSink, IngestError> {
        let endpoint = Endpoint::from_shared(store.to_string())
            .map_err(|e| IngestError::Rejected {
                reason: format!("store address `{store}` is not a URL: {e}"),
            })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30));
        Ok(FlightShardSink {
            store: store.to_string(),
            shard,
            channel: endpoint.connect_lazy(),
        })
    }

    async fn put(&self, signal: Signal, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        let n = batches.len();
        let descriptor = FlightDescriptor::new_path(vec![
            signal.table_name().to_string(),
            self.shard.to_string(),
        ]);
        let input = futures::stream::iter(batches.into_iter().map(|b| Ok(b.batch)));
        // Dictionaries are sent as dictionaries: the store's schema has them, and hydrating
        // would both change the schema and multiply the bytes on the wire.
        let data = FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            .with_flight_descriptor(Some(descriptor))
            .build(input);
        let mut client = FlightClient::new(self.channel.clone());
        let acks: Vec<_> = client
            .do_put(data)
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        if acks.len() != n {
            return Err(IngestError::Unavailable {
                reason: format!(
                    "store {} acknowledged {} of {n} batches",
                    self.store,
                    acks.len()
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }

    fn error(&self, e: FlightError) -> IngestError {
        match e {
            FlightError::Tonic(status) => status_to_error(&self.store, &status),
            other => IngestError::Unavailable {
                reason: format!("store {}: {other}", self.store),
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

#[async_trait::async_trait]
impl Ingest for FlightShardSink {
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        // One stream per signal: a Flight stream carries one schema.
        for signal in Signal::ALL {
            let of_signal: Vec<SignalBatch> = batches
                .iter()
                .filter(|b| b.signal == signal)
                .cloned()
                .collect();
            if !of_signal.is_empty() {
                self.put(signal, of_signal).await?;
            }
        }
        Ok(())
    }
}
