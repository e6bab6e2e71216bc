use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use oxeye_model::ingest::{Ingest, Marks};
use oxeye_model::{Signal, SignalBatch};
use oxeye_store::{PartialAggregator, PinRequest, RowFilterCompiler, SnapshotRequest};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    MAX_DELIVERY_POSITIONS, MAX_PARTIAL_PLAN_BYTES, MAX_SNAPSHOT_FILTERS, PinnedHeader, PutCommand,
    RELEASE_PINNED, SnapshotHeader, SnapshotTicket, error_to_status,
};

/// The Flight service of a store node: `DoPut` into its shards, `DoGet` of a snapshot of its
/// shards (for query nodes), and a `ready` action.
#[derive(Clone)]
pub struct IngestFlightService {
    shards: Arc<BTreeMap<u32, Arc<dyn Ingest>>>,
    store: Option<oxeye_store::Store>,
    filters: Option<Arc<dyn RowFilterCompiler>>,
    partials: Option<Arc<dyn PartialAggregator>>,
}

impl std::fmt::Debug for IngestFlightService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestFlightService")
            .field("shards", &self.shards.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl IngestFlightService {
    pub fn new(shards: Vec<(u32, Arc<dyn Ingest>)>) -> IngestFlightService {
        IngestFlightService {
            shards: Arc::new(shards.into_iter().collect()),
            store: None,
            filters: None,
            partials: None,
        }
    }

    /// Serves `DoGet` snapshots of `store`'s shards, filtered by the query's row filters where
    /// `filters` can rebuild them (without it, snapshots are cut by time, trace id, columns
    /// and limit only), and runs query nodes' partial aggregates over rows set aside for them
    /// where `partials` is given.
    pub fn with_snapshots(
        mut self,
        store: oxeye_store::Store,
        filters: Option<Arc<dyn RowFilterCompiler>>,
        partials: Option<Arc<dyn PartialAggregator>>,
    ) -> IngestFlightService {
        self.store = Some(store);
        self.filters = filters;
        self.partials = partials;
        self
    }

    /// The table and shard a `DoPut` writes to, and its delivery marks if it has them: from a
    /// path `[table, shard]` or a [`PutCommand`].
    fn target(&self, d: Option<&FlightDescriptor>) -> Result<PutTarget, Status> {
        let command = match d.filter(|d| !d.cmd.is_empty()) {
            Some(d) => Some(put_command(&d.cmd)?),
            None => None,
        };
        let path = d.map(|d| d.path.as_slice()).unwrap_or_default();
        let (table, shard) = match (&command, path) {
            (Some(c), _) => (c.table.clone(), c.shard.to_string()),
            (None, [table, shard]) => (table.clone(), shard.clone()),
            (None, _) => {
                return Err(Status::invalid_argument(
                    "DoPut needs a descriptor path [table, shard] or a command \
                     {\"table\", \"shard\", \"producer\", \"positions\"}",
                ));
            }
        };
        let (signal, sink) = self.sink(&table, &shard)?;
        Ok(PutTarget {
            signal,
            sink,
            command,
        })
    }

    fn sink(&self, table: &str, shard: &str) -> Result<(Signal, Arc<dyn Ingest>), Status> {
        let signal = Signal::ALL
            .into_iter()
            .find(|s| s.table_name() == table)
            .ok_or_else(|| Status::invalid_argument(format!("unknown table `{table}`")))?;
        let shard: u32 = shard
            .parse()
            .map_err(|_| Status::invalid_argument(format!("shard `{shard}` is not a number")))?;
        let sink = self.shards.get(&shard).cloned().ok_or_else(|| {
            // The collector's shard map is stale: it retries after refreshing it.
            Status::unavailable(format!("this node does not serve shard {shard}"))
        })?;
        Ok((signal, sink))
    }
}

/// A `DoPut` command with delivery marks.
fn put_command(cmd: &[u8]) -> Result<PutCommand, Status> {
    let command: PutCommand = serde_json::from_slice(cmd).map_err(|e| {
        Status::invalid_argument(format!(
            "a DoPut command is JSON {{\"table\", \"shard\", \"producer\", \"positions\"}}: {e}"
        ))
    })?;
    if command.positions.len() > MAX_DELIVERY_POSITIONS {
        return Err(Status::invalid_argument(format!(
            "{} delivery positions in one DoPut; at most {MAX_DELIVERY_POSITIONS}",
            command.positions.len()
        )));
    }
    Ok(command)
}

/// Where a `DoPut` writes, and its delivery marks if it has them.
struct PutTarget {
    signal: Signal,
    sink: Arc<dyn Ingest>,
    command: Option<PutCommand>,
}

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not served by oxeye store nodes"
    )))
}

#[tonic::async_trait]
impl FlightService for IngestFlightService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut input = request.into_inner();
        let Some(first) = input.message().await? else {
            return Err(Status::invalid_argument("empty DoPut stream"));
        };
        let PutTarget {
            signal,
            sink,
            command: delivery,
        } = self.target(first.flight_descriptor.as_ref())?;
        let data = futures::stream::once(async { Ok(first) })
            .chain(input)
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        // What has arrived together is committed together: one shard write (one WAL sync)
        // for every batch already decoded, up to GROUP_COMMIT_MAX_BATCHES.
        let mut arrived = crate::decode_batches(data).ready_chunks(GROUP_COMMIT_MAX_BATCHES);
        // One acknowledgement per batch, sent once the shard holds it durably; the first
        // refusal ends the stream with the store's status. The span (for --self-trace) lasts
        // as long as the stream.
        let span = tracing::info_span!(
            "flight.put",
            otel.kind = "server",
            table = signal.table_name(),
            marked = delivery.is_some(),
        );
        let _in_span = span.enter();
        let acks = async_stream(move |tx| async move {
            let mut seq: u64 = 0;
            while let Some(chunk) = arrived.next().await {
                let mut group = Vec::with_capacity(chunk.len());
                let mut undecodable = None;
                for batch in chunk {
                    match batch {
                        Ok(b) => group.push(SignalBatch::new(signal, b)),
                        Err(e) => {
                            undecodable = Some(e);
                            break;
                        }
                    }
                }
                let n = group.len();
                if n > 0 {
                    let written = match &delivery {
                        None => sink.ingest(group).await,
                        Some(d) => {
                            let from = seq as usize;
                            let Some(positions) = d.positions.get(from..from + n) else {
                                let _ = tx
                                    .send(Err(Status::invalid_argument(format!(
                                        "the stream has more batches than the {} delivery \
                                         positions its descriptor announced",
                                        d.positions.len()
                                    ))))
                                    .await;
                                return;
                            };
                            let marks = Marks {
                                producer: d.producer.as_str().into(),
                                positions: positions.to_vec(),
                            };
                            sink.ingest_delivery(group, marks).await
                        }
                    };
                    if let Err(e) = written {
                        let _ = tx.send(Err(error_to_status(&e))).await;
                        return;
                    }
                    for _ in 0..n {
                        seq += 1;
                        let ack = PutResult {
                            app_metadata: bytes::Bytes::from(seq.to_string()),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                }
                if let Some(e) = undecodable {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "cannot decode a batch: {e}"
                        ))))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(acks))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        match action.r#type.as_str() {
            RELEASE_PINNED => {
                let store = self
                    .store
                    .as_ref()
                    .ok_or_else(|| Status::unimplemented("this node serves no snapshots"))?;
                let id: u64 = std::str::from_utf8(&action.body)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "`release_pinned` takes the id of rows set aside, as decimal text",
                        )
                    })?;
                store.release_pinned(id);
                Ok(Response::new(futures::stream::empty().boxed()))
            }
            "ready" => {
                let body = format!(
                    "{{\"shards\": {:?}}}",
                    self.shards.keys().collect::<Vec<_>>()
                );
                let r = arrow_flight::Result {
                    body: bytes::Bytes::from(body),
                };
                Ok(Response::new(
                    futures::stream::once(async { Ok(r) }).boxed(),
                ))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action `{other}`; oxeye store nodes know `ready` and `{RELEASE_PINNED}`"
            ))),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            ActionType {
                r#type: "ready".into(),
                description: "the shards this node serves, once it accepts writes".into(),
            },
            ActionType {
                r#type: RELEASE_PINNED.into(),
                description: "drops unflushed rows set aside for a query that is done without \
                              them (body: their id)"
                    .into(),
            },
        ];
        Ok(Response::new(
            futures::stream::iter(actions.into_iter().map(Ok)).boxed(),
        ))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("ListFlights")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unimplemented("GetFlightInfo")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unimplemented("GetSchema")
    }

    /// A snapshot of this node's shards for one signal and time range (see
    /// `oxeye_store::remote`): the first message (the schema) carries the shard ids and the
    /// committed segments as JSON in `app_metadata`, the batches that follow are the unflushed
    /// rows.
    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let Some(store) = &self.store else {
            return unimplemented("DoGet");
        };
        let ticket: SnapshotTicket =
            serde_json::from_slice(&request.into_inner().ticket).map_err(|e| {
                Status::invalid_argument(format!(
                    "a DoGet ticket is JSON {{\"table\", \"start\", \"end\"}}: {e}"
                ))
            })?;
        let signal = Signal::ALL
            .into_iter()
            .find(|s| s.table_name() == ticket.table)
            .ok_or_else(|| Status::invalid_argument(format!("unknown table `{}`", ticket.table)))?;
        let trace_id = match ticket.trace_id.as_deref() {
            None => None,
            Some(text) => Some(parse_trace_id(text).ok_or_else(|| {
                Status::invalid_argument(format!("trace_id `{text}` is not 32 hex digits"))
            })?),
        };
        if ticket.filters.len() > MAX_SNAPSHOT_FILTERS {
            return Err(Status::invalid_argument(format!(
                "a snapshot ticket carries {} filters, more than {MAX_SNAPSHOT_FILTERS}",
                ticket.filters.len()
            )));
        }
        let storage = signal.schema();
        let schema = match &ticket.columns {
            None => storage.clone(),
            Some(names) => {
                let indices = names
                    .iter()
                    .map(|n| {
                        storage.index_of(n).map_err(|_| {
                            Status::invalid_argument(format!(
                                "`{}` has no column `{n}`",
                                ticket.table
                            ))
                        })
                    })
                    .collect::<Result<Vec<usize>, Status>>()?;
                Arc::new(storage.project(&indices).map_err(|e| {
                    Status::invalid_argument(format!("cannot project the columns asked for: {e}"))
                })?)
            }
        };
        let filter = match &self.filters {
            None => Vec::new(),
            Some(compiler) => ticket
                .filters
                .iter()
                .filter_map(|wire| {
                    let stage = compiler.compile(signal, wire);
                    if stage.is_none() {
                        tracing::debug!(filter = %wire, "a snapshot filter this node cannot rebuild; sending its rows");
                    }
                    stage
                })
                .collect(),
        };
        let request = SnapshotRequest {
            signal,
            start: ticket.start,
            end: ticket.end,
            trace_id,
            filter,
            columns: ticket.columns,
            limit: ticket.limit,
        };
        if let Some(id) = ticket.read_pinned {
            return self.read_pinned(store, id, &request, schema, ticket.partial);
        }
        let pin = ticket.pin.map(|p| PinRequest {
            inline_rows: p.inline_rows,
            ttl: Duration::from_millis(p.ttl_ms),
        });
        let snapshot = store
            .snapshot(&request, pin)
            .map_err(|e| Status::internal(format!("cannot take a snapshot: {e}")))?;
        let header = SnapshotHeader {
            shards: snapshot.shards,
            segments: snapshot
                .segments
                .iter()
                .map(|s| s.as_ref().clone())
                .collect(),
            pinned: snapshot.pinned.map(|p| PinnedHeader {
                id: p.id,
                rows: p.rows,
            }),
            serves: snapshot.serves,
        };
        let header = serde_json::to_vec(&header)
            .map_err(|e| Status::internal(format!("cannot encode a snapshot: {e}")))?;
        let batches = futures::stream::iter(snapshot.batches.into_iter().map(Ok));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_metadata(bytes::Bytes::from(header))
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(batches)
            .map_err(|e| Status::internal(format!("cannot encode a snapshot: {e}")));
        Ok(Response::new(data.boxed()))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("DoExchange")
    }
}

impl IngestFlightService {
    /// The answer to a ticket that reads rows set aside for a query: those rows, cut by the
    /// ticket's filters, columns and limit, or the states of the ticket's partial aggregate
    /// over them.
    fn read_pinned(
        &self,
        store: &oxeye_store::Store,
        id: u64,
        request: &SnapshotRequest,
        schema: arrow::datatypes::SchemaRef,
        partial: Option<String>,
    ) -> Result<Response<BoxStream<'static, Result<FlightData, Status>>>, Status> {
        use base64::Engine;

        // The plan is checked before the rows are taken, which happens once.
        let plan = match partial {
            None => None,
            Some(text) => {
                if text.len() > MAX_PARTIAL_PLAN_BYTES * 4 / 3 + 4 {
                    return Err(Status::invalid_argument(format!(
                        "a partial aggregate of more than {MAX_PARTIAL_PLAN_BYTES} bytes"
                    )));
                }
                let aggregator = self.partials.clone().ok_or_else(|| {
                    Status::unimplemented("this store node does not run partial aggregates")
                })?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "the partial aggregate is not base64: {e}"
                        ))
                    })?;
                Some((aggregator, bytes))
            }
        };
        let rows = store
            .read_pinned(id, request, plan.is_some())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let (schema, batches): (
            _,
            BoxStream<'static, Result<arrow::record_batch::RecordBatch, FlightError>>,
        ) = match plan {
            None => (
                schema,
                futures::stream::iter(rows.into_iter().map(Ok)).boxed(),
            ),
            Some((aggregator, bytes)) => {
                let (schema, states) =
                    aggregator
                        .aggregate(request.signal, &bytes, rows)
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "cannot run the query's partial aggregate here: {e}"
                            ))
                        })?;
                (
                    schema,
                    states
                        .map_err(|e| FlightError::ExternalError(Box::new(e)))
                        .boxed(),
                )
            }
        };
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(batches)
            .map_err(|e| Status::internal(format!("cannot send rows set aside: {e}")));
        Ok(Response::new(data.boxed()))
    }
}

fn parse_trace_id(text: &str) -> Option<[u8; 16]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// A stream fed by a task through a small bounded channel (the task waits when the client
/// reads slowly).
fn async_stream<T, F, Fut>(f: F) -> BoxStream<'static, T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;

    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx).in_current_span());
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Batches committed with one shard write at most; more that have arrived wait for the next.
const GROUP_COMMIT_MAX_BATCHES: usize = 256;

/// Largest message a store accepts: one batch is one message (collectors cut batches far
/// smaller; see `--batch-max-rows`).
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Serves Flight on `addr` until `stop` is cancelled; over TLS when `tls` is given, and then
/// only to peers with a client certificate when it asks for them (`--tls-client-ca`).
pub async fn serve(
    addr: SocketAddr,
    service: IngestFlightService,
    tls: Option<&oxeye_tls::ServerTls>,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.grpc_between_nodes())
            .map_err(|e| std::io::Error::other(format!("cannot set up TLS for Flight: {e}")))?;
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // Without TCP_NODELAY, each per-batch acknowledgement and window update waits for the
    // collector's delayed ACK (40 ms), which capped delivery at ~25 batches a second.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // gRPC health checking (grpc.health.v1): SERVING while the node takes writes, NOT_SERVING
    // from the moment it starts shutting down, so load balancers and probes stop sending.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FlightServiceServer<IngestFlightService>>()
        .await;
    let shutdown = stop.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        health
            .set_not_serving::<FlightServiceServer<IngestFlightService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    let task = tokio::spawn(async move {
        let server = builder
            .add_service(health_service)
            .add_service(
                FlightServiceServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "Flight server failed");
        }
    });
    tracing::info!(addr = %local, "Arrow Flight listening");
    Ok((local, task))
}
