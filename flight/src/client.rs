use std::time::Duration;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
use oxeye_model::ingest::{Ingest, IngestError, Marks};
use oxeye_model::{Signal, SignalBatch};
use tonic::transport::Channel;

use crate::{PutCommand, status_to_error};

/// One shard of a store node, reached over Flight: the collector's sink for that shard.
#[derive(Debug, Clone)]
pub struct FlightShardSink {
    store: String,
    shard: u32,
    channel: Channel,
}

impl FlightShardSink {
    /// `store` is the node's Flight address (`http://host:7701`, or `https://` over TLS with
    /// `tls`'s CA and client certificate); connects lazily and reconnects by itself.
    pub fn new(
        store: &str,
        shard: u32,
        tls: &oxeye_tls::ClientTls,
    ) -> Result<FlightShardSink, IngestError> {
        let endpoint = tls
            .endpoint(store)
            .map_err(|e| IngestError::Rejected {
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30));
        Ok(FlightShardSink {
            store: store.to_string(),
            shard,
            channel: endpoint.connect_lazy(),
        })
    }

    /// Sends batches of one signal in one stream, with their delivery positions when
    /// `marks` is set (`(producer, one position per batch)`). Returns how many the store
    /// acknowledged (durably in its WAL), in order, and why it stopped if that is fewer than
    /// all: a caller that retries resumes after the acknowledged ones. A batch whose
    /// acknowledgement was lost is sent again; with marks the store drops that second copy.
    pub async fn put(
        &self,
        signal: Signal,
        batches: &[SignalBatch],
        marks: Option<(&str, &[u64])>,
    ) -> (usize, Result<(), IngestError>) {
        use futures::StreamExt;
        let n = batches.len();
        let descriptor = match marks {
            None => FlightDescriptor::new_path(vec![
                signal.table_name().to_string(),
                self.shard.to_string(),
            ]),
            Some((producer, positions)) => {
                let command = PutCommand {
                    table: signal.table_name().to_string(),
                    shard: self.shard,
                    producer: producer.to_string(),
                    positions: positions.to_vec(),
                };
                match serde_json::to_vec(&command) {
                    Ok(cmd) => FlightDescriptor::new_cmd(cmd),
                    Err(e) => {
                        return (
                            0,
                            Err(IngestError::Rejected {
                                reason: format!("cannot encode delivery marks: {e}"),
                            }),
                        );
                    }
                }
            }
        };
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

    /// Sends batches of any signals in order, one `DoPut` per run of one signal, with their
    /// delivery marks if given (one position per batch). Returns how many the store
    /// acknowledged (a prefix of `batches`) and why it stopped if that is fewer than all.
    pub async fn put_all(
        &self,
        batches: &[SignalBatch],
        marks: Option<&Marks>,
    ) -> (usize, Result<(), IngestError>) {
        if let Some(m) = marks
            && m.positions.len() != batches.len()
        {
            return (
                0,
                Err(IngestError::Rejected {
                    reason: format!(
                        "{} delivery positions for {} batches",
                        m.positions.len(),
                        batches.len()
                    ),
                }),
            );
        }
        let mut sent = 0;
        while sent < batches.len() {
            let signal = batches[sent].signal;
            let run = batches[sent..]
                .iter()
                .take_while(|b| b.signal == signal)
                .count();
            let run_marks = marks.map(|m| (&*m.producer, &m.positions[sent..sent + run]));
            let (acked, result) = self
                .put(signal, &batches[sent..sent + run], run_marks)
                .await;
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
        self.put_all(&batches, None).await.1
    }

    async fn ingest_delivery(
        &self,
        batches: Vec<SignalBatch>,
        marks: Marks,
    ) -> Result<(), IngestError> {
        self.put_all(&batches, Some(&marks)).await.1
    }
}
