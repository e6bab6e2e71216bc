//! Delivery of notifications over HTTP with retries and backoff.
//!
//! Each (rule, destination) pair has its own small queue and worker, so messages about one rule
//! reach a receiver in the order they were planned (a `resolved` never overtakes its `firing`)
//! while a slow or failing receiver delays no one else. A queue holds [`QUEUE_PER_DESTINATION`]
//! messages; when it is full the new message is dropped, counted and recorded as failed (the
//! receiver has been failing for minutes by then). Idle workers exit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::AlertMetrics;
use crate::rule::ChannelKind;
use crate::storage::Delivery;
use crate::time::now_ms;

/// Messages waiting per (rule, destination).
pub const QUEUE_PER_DESTINATION: usize = 64;

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Time allowed for one HTTP request.
    pub timeout: Duration,
    /// How long a destination's worker waits for work before it exits.
    pub idle: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            max_attempts: 5,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        }
    }
}

/// One message to one destination.
#[derive(Debug, Clone)]
pub struct Job {
    pub rule_id: String,
    pub rule_name: String,
    /// The channel's name, or `type url` for one given inline.
    pub channel: String,
    pub kind: ChannelKind,
    pub url: String,
    pub status: &'static str,
    pub alerts: usize,
    pub body: Value,
}

/// Where delivery attempts are recorded.
pub type Recorder = Arc<dyn Fn(Delivery) + Send + Sync>;

#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

struct Inner {
    client: reqwest::Client,
    config: NotifyConfig,
    workers: parking_lot::Mutex<HashMap<String, mpsc::Sender<Job>>>,
    record: Recorder,
    metrics: AlertMetrics,
    stop: CancellationToken,
}

/// How an attempt ended.
enum Attempt {
    Delivered,
    /// Worth trying again (network error, 5xx, 429).
    Retry(String),
    /// Trying again will not help (4xx: the receiver rejects the message).
    Rejected(String),
}

impl Notifier {
    pub fn new(
        config: NotifyConfig,
        record: Recorder,
        metrics: AlertMetrics,
        stop: CancellationToken,
    ) -> Result<Notifier, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("oxeye-alerts/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Notifier {
            inner: Arc::new(Inner {
                client,
                config,
                workers: parking_lot::Mutex::new(HashMap::new()),
                record,
                metrics,
                stop,
            }),
        })
    }

    /// Queues a message; never waits.
    pub fn send(&self, job: Job) {
        let key = format!("{}\u{0}{}", job.rule_id, job.url);
        let mut workers = self.inner.workers.lock();
        let job = match workers.get(&key) {
            None => job,
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(job)) => job,
                Err(mpsc::error::TrySendError::Full(job)) => {
                    drop(workers);
                    self.inner.metrics.delivery(job.kind.as_str(), "dropped");
                    tracing::error!(
                        rule = job.rule_name,
                        channel = job.channel,
                        "notification queue full; message dropped"
                    );
                    (self.inner.record)(delivery(
                        &job,
                        0,
                        false,
                        Some(format!(
                            "dropped: {QUEUE_PER_DESTINATION} messages already wait for this destination"
                        )),
                    ));
                    return;
                }
            },
        };
        let (tx, rx) = mpsc::channel(QUEUE_PER_DESTINATION);
        // A fresh channel has room for one message.
        let _ = tx.try_send(job);
        workers.insert(key.clone(), tx);
        tokio::spawn(worker(self.inner.clone(), key, rx));
    }
}

fn delivery(job: &Job, attempt: u32, ok: bool, error: Option<String>) -> Delivery {
    Delivery {
        time_ms: now_ms(),
        rule_id: job.rule_id.clone(),
        rule_name: job.rule_name.clone(),
        channel: job.channel.clone(),
        kind: job.kind.as_str().to_string(),
        status: job.status.to_string(),
        alerts: job.alerts,
        attempt,
        ok,
        error,
    }
}

async fn worker(inner: Arc<Inner>, key: String, mut rx: mpsc::Receiver<Job>) {
    loop {
        let next = tokio::select! {
            _ = inner.stop.cancelled() => return,
            next = tokio::time::timeout(inner.config.idle, rx.recv()) => next,
        };
        match next {
            Ok(Some(job)) => deliver(&inner, &job).await,
            Ok(None) => return,
            Err(_) => {
                // Idle: leave, unless a message arrived meanwhile (checked under the lock the
                // sender takes, so none can slip in between).
                let mut workers = inner.workers.lock();
                if rx.is_empty() {
                    workers.remove(&key);
                    return;
                }
            }
        }
    }
}

async fn attempt(inner: &Inner, job: &Job) -> Attempt {
    match inner.client.post(&job.url).json(&job.body).send().await {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        Ok(r) => {
            let status = r.status();
            let text: String = r
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let message = format!("{} answered {status}: {text}", job.url);
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Attempt::Retry(message)
            } else {
                Attempt::Rejected(message)
            }
        }
        Err(e) => Attempt::Retry(format!("cannot reach {}: {e}", job.url)),
    }
}

async fn deliver(inner: &Inner, job: &Job) {
    let kind = job.kind.as_str();
    let mut backoff = inner.config.first_backoff;
    for n in 1..=inner.config.max_attempts.max(1) {
        match attempt(inner, job).await {
            Attempt::Delivered => {
                inner.metrics.delivery(kind, "ok");
                tracing::info!(
                    rule = job.rule_name,
                    channel = job.channel,
                    status = job.status,
                    attempt = n,
                    "notification delivered"
                );
                (inner.record)(delivery(job, n, true, None));
                return;
            }
            Attempt::Rejected(e) => {
                inner.metrics.delivery(kind, "failed");
                tracing::warn!(
                    rule = job.rule_name,
                    channel = job.channel,
                    error = e,
                    "notification rejected; not retried"
                );
                (inner.record)(delivery(job, n, false, Some(e)));
                return;
            }
            Attempt::Retry(e) => {
                let last = n == inner.config.max_attempts.max(1);
                inner
                    .metrics
                    .delivery(kind, if last { "failed" } else { "retry" });
                tracing::warn!(
                    rule = job.rule_name,
                    channel = job.channel,
                    attempt = n,
                    error = e,
                    "notification failed"
                );
                (inner.record)(delivery(job, n, false, Some(e)));
                if last {
                    return;
                }
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(inner.config.max_backoff);
            }
        }
    }
}
