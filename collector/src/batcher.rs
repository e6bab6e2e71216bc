//! Coalesces converted batches (by rows and by time) before they go to the store, so that the
//! store sees fewer, larger writes and shares one WAL fsync among many requests.
//!
//! Flow control: requests wait in a bounded queue. When it is full, [`Batcher::submit`] fails at
//! once with a retryable "overloaded" error; nothing queues without bound. At most
//! `max_in_flight` flushes run at once; while all are busy the batcher stops draining its queue,
//! so pressure from a slow store reaches clients as retryable errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::compute::concat_batches;
use oxeye_model::ingest::{Ingest, IngestError};
use oxeye_model::{Signal, SignalBatch};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::CollectorMetrics;

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_rows: usize,
    pub max_delay: Duration,
    pub queue_capacity: usize,
    pub max_in_flight: usize,
    pub retry_after: Duration,
}

struct Pending {
    batches: Vec<SignalBatch>,
    ack: oneshot::Sender<Result<(), IngestError>>,
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    retry_after: Duration,
    metrics: CollectorMetrics,
}

impl Batcher {
    /// Starts the batching task; it runs until `shutdown` is cancelled, then flushes what it holds.
    pub fn spawn(
        sink: Arc<dyn Ingest>,
        config: BatcherConfig,
        metrics: CollectorMetrics,
        shutdown: CancellationToken,
    ) -> (Batcher, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let task = tokio::spawn(run(rx, sink, config.clone(), metrics.clone(), shutdown));
        (
            Batcher {
                tx,
                retry_after: config.retry_after,
                metrics,
            },
            task,
        )
    }

    /// Queues batches and waits until the store has acknowledged them.
    pub async fn submit(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
        if batches.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        match self.tx.try_send(Pending { batches, ack }) {
            Ok(()) => {
                self.metrics.batcher_queue_depth.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(IngestError::Overloaded {
                    reason: "the collector's batch queue is full".into(),
                    retry_after: self.retry_after,
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(IngestError::Unavailable {
                    reason: "the collector is shutting down".into(),
                    retry_after: self.retry_after,
                });
            }
        }
        done.await.unwrap_or_else(|_| {
            Err(IngestError::Unavailable {
                reason: "the batch was dropped before the store acknowledged it".into(),
                retry_after: self.retry_after,
            })
        })
    }
}

/// What has been gathered for the next flush.
#[derive(Default)]
struct Gathered {
    by_signal: BTreeMap<Signal, Vec<arrow::record_batch::RecordBatch>>,
    acks: Vec<oneshot::Sender<Result<(), IngestError>>>,
    rows: usize,
    since: Option<Instant>,
}

impl Gathered {
    fn add(&mut self, p: Pending) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        for b in p.batches {
            self.rows += b.num_rows();
            self.by_signal.entry(b.signal).or_default().push(b.batch);
        }
        self.acks.push(p.ack);
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    sink: Arc<dyn Ingest>,
    config: BatcherConfig,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut gathered = Gathered::default();
    loop {
        let deadline = gathered
            .since
            .map(|t| tokio::time::Instant::from_std(t + config.max_delay));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded by the if")).await }, if deadline.is_some() => {
                flush(&mut gathered, &sink, &in_flight, &metrics).await;
            }
            msg = rx.recv() => match msg {
                Some(p) => {
                    metrics.batcher_queue_depth.dec();
                    gathered.add(p);
                    if gathered.rows >= config.max_rows {
                        flush(&mut gathered, &sink, &in_flight, &metrics).await;
                    }
                }
                None => break,
            },
        }
    }
    // Shutting down: take what is queued, flush it, and wait for every flush to finish.
    rx.close();
    while let Some(p) = rx.recv().await {
        metrics.batcher_queue_depth.dec();
        gathered.add(p);
    }
    flush(&mut gathered, &sink, &in_flight, &metrics).await;
    let all = config.max_in_flight.max(1) as u32;
    let _ = in_flight.acquire_many(all).await;
}

async fn flush(
    gathered: &mut Gathered,
    sink: &Arc<dyn Ingest>,
    in_flight: &Arc<Semaphore>,
    metrics: &CollectorMetrics,
) {
    if gathered.is_empty() {
        gathered.since = None;
        return;
    }
    let work = std::mem::take(gathered);
    // Waiting here (instead of spawning unboundedly) is the backpressure: the queue fills and
    // new requests get a retryable error.
    let Ok(permit) = in_flight.clone().acquire_owned().await else {
        return;
    };
    let sink = sink.clone();
    let metrics = metrics.clone();
    metrics.flushes_in_flight.inc();
    tokio::spawn(async move {
        let started = Instant::now();
        let rows = work.rows;
        let result = write(work.by_signal, &*sink).await;
        metrics.flushes.inc();
        metrics.flush_rows.observe(rows as f64);
        metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(error = %e, rows, "flush to the store failed");
        }
        for ack in work.acks {
            let _ = ack.send(result.clone());
        }
        metrics.flushes_in_flight.dec();
        drop(permit);
    });
}

async fn write(
    by_signal: BTreeMap<Signal, Vec<arrow::record_batch::RecordBatch>>,
    sink: &dyn Ingest,
) -> Result<(), IngestError> {
    let mut out = Vec::with_capacity(by_signal.len());
    for (signal, batches) in by_signal {
        let batch = if batches.len() == 1 {
            batches.into_iter().next().expect("one batch")
        } else {
            concat_batches(&signal.schema(), &batches).map_err(|e| IngestError::Rejected {
                reason: format!("cannot concatenate {signal} batches: {e}"),
            })?
        };
        out.push(SignalBatch::new(signal, batch));
    }
    sink.ingest(out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use oxeye_model::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<usize>>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl Ingest for Recorder {
        async fn ingest(&self, batches: Vec<SignalBatch>) -> Result<(), IngestError> {
            if self.fail {
                return Err(IngestError::Unavailable {
                    reason: "down".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            self.writes
                .lock()
                .push(batches.iter().map(|b| b.num_rows()).sum());
            Ok(())
        }
    }

    fn spans(n: usize) -> Vec<SignalBatch> {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            trace_id: vec![1; 16],
                            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        oxeye_model::spans::spans_from_otlp(&request)
            .unwrap()
            .batches
    }

    fn config(max_rows: usize, queue: usize) -> BatcherConfig {
        BatcherConfig {
            max_rows,
            max_delay: Duration::from_millis(20),
            queue_capacity: queue,
            max_in_flight: 2,
            retry_after: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn coalesces_concurrent_requests() {
        let sink = Arc::new(Recorder::default());
        let token = CancellationToken::new();
        let (b, task) = Batcher::spawn(
            sink.clone(),
            config(1000, 64),
            CollectorMetrics::default(),
            token.clone(),
        );
        let mut joins = Vec::new();
        for _ in 0..10 {
            let b = b.clone();
            joins.push(tokio::spawn(async move { b.submit(spans(3)).await }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        let writes = sink.writes.lock().clone();
        assert_eq!(writes.iter().sum::<usize>(), 30);
        assert!(writes.len() < 10, "expected coalescing, got {writes:?}");
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn store_errors_reach_every_waiting_request() {
        let sink = Arc::new(Recorder {
            fail: true,
            ..Default::default()
        });
        let token = CancellationToken::new();
        let (b, _task) = Batcher::spawn(sink, config(1, 8), CollectorMetrics::default(), token);
        let err = b.submit(spans(2)).await.unwrap_err();
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn shutdown_flushes_what_was_queued() {
        let sink = Arc::new(Recorder::default());
        let token = CancellationToken::new();
        let mut cfg = config(1_000_000, 8);
        cfg.max_delay = Duration::from_secs(3600);
        let (b, task) = Batcher::spawn(
            sink.clone(),
            cfg,
            CollectorMetrics::default(),
            token.clone(),
        );
        let waiting = tokio::spawn(async move { b.submit(spans(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
        task.await.unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(sink.writes.lock().iter().sum::<usize>(), 5);
    }
}
