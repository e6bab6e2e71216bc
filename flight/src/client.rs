use std::time::Duration;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
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

    /// Sends batches of one signal in one stream. Returns how many the store acknowledged
    /// (durably in its WAL), in order, and why it stopped if that is fewer than all: a caller
    /// that retries resumes after the acknowledged ones, so nothing is written twice.
    pub async fn put(
        &self,
        signal: Signal,
        batches: &[SignalBatch],
    ) -> (usize, Result<(), IngestError>) {
        use futures::StreamExt;
        let n = batches.len();
        let descriptor = FlightDescriptor::new_path(vec![
            signal.table_name().to_string(),
            self.shard.to_string(),
        ]);
        let input = futures::stream::iter(
            batches
                .iter()
                .map(|b| Ok(b.batch.clone()))
                .collect::<Vec<_>>(),
        );
        // One message per batch (no splitting), so acknowledgements count batches; and
        // dictionaries stay dictionaries: the store's schema has them, and hydrating would
        // multiply the bytes on the wire.
        let data = FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(usize::MAX)
            .with_dictionary_handling(DictionaryHandling::Resend)
            .with_flight_descriptor(Some(descriptor))
            .build(input);
        let mut client = FlightClient::new(self.channel.clone());
        let mut acks = match client.do_put(data).await {
            Ok(acks) => acks,
            Err(e) => return (0, Err(self.error(e))),
        };
        let mut acked = 0;
        while let Some(ack) = acks.next().await {
            match ack {
                Ok(_) => acked += 1,
                Err(e) => return (acked.min(n), Err(self.error(e))),
            }
        }
        if acked < n {
            return (
                acked,
                Err(IngestError::Unavailable {
                    reason: format!("store {} acknowledged {acked} of {n} batches", self.store),
                    retry_after: Duration::from_secs(1),
                }),
            );
        }
        (n, Ok(()))
    }

    /// Sends batches of any signals in order, one `DoPut` per run of one signal. Returns how
    /// many the store acknowledged (a prefix of `batches`) and why it stopped if that is fewer
    /// than all.
    pub async fn put_all(&self, batches: &[SignalBatch]) -> (usize, Result<(), IngestError>) {
        let mut sent = 0;
        while sent < batches.len() {
            let signal = batches[sent].signal;
            let run = batches[sent..]
                .iter()
                .take_while(|b| b.signal == signal)
                .count();
            let (acked, result) = self.put(signal, &batches[sent..sent + run]).await;
            sent += acked;
            if let Err(e) = result {
                return (sent, Err(e));
            }
        }
        (sent, Ok(()))
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
    /// All or an error; callers that retry should use [`FlightShardSink::put_all`] to resume.
    async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        self.put_all(&batches).await.1
    }
}
