//! The evaluator loop: every rule runs on its own interval (never overlapping itself), its
//! result moves its instances through the state machine, the state is saved, and then the
//! planned notifications are queued. Only the lease holder evaluates; the rules file is
//! re-read when it changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::Instrument;

use crate::plan;
use crate::rule::Rule;
use crate::service::{AlertService, events_of, render_annotations, result_rows, samples};
use crate::state::{self, InstanceState, Outcome};
use crate::storage::Evaluation;
use crate::time::now_ms;

/// How often the loop looks for due rules.
const TICK: Duration = Duration::from_millis(100);
/// How often the rules file is checked for changes.
const RULES_FILE_CHECK: Duration = Duration::from_secs(2);
/// How often a node sharing its store with others takes in their changes.
const SHARED_SYNC: Duration = Duration::from_secs(2);

/// Clears a rule's in-flight mark however its evaluation ends.
struct InFlight {
    service: AlertService,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = self.service.inner.core.lock().schedule.get_mut(&self.id) {
            s.in_flight = false;
        }
    }
}

impl AlertService {
    /// Starts the evaluator; it runs until the service's stop token is cancelled.
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move { service.run().await })
    }

    async fn run(self) {
        let mut tasks = JoinSet::new();
        let mut next_file_check = Instant::now() + RULES_FILE_CHECK;
        let shared = self.inner.store.shared();
        let mut next_sync = Instant::now();
        // Whether this node leads with the leader's latest state in hand.
        let mut leading = !shared;
        loop {
            if let Some(path) = self.inner.config.rules_file.clone()
                && Instant::now() >= next_file_check
            {
                next_file_check = Instant::now() + RULES_FILE_CHECK;
                let outcome = match self.load_rules_file(&path).await {
                    Ok(false) => None,
                    Ok(true) => Some("ok"),
                    Err(e) => {
                        tracing::error!(error = %e, "the changed rules file was not loaded; the previous rules stay");
                        Some("error")
                    }
                };
                if let Some(outcome) = outcome {
                    self.inner
                        .metrics
                        .rules_file_reloads
                        .get_or_create(&crate::metrics::OutcomeLabels { outcome })
                        .inc();
                }
            }
            let leader = self.inner.config.evaluate && self.inner.leader.is_leader();
            if shared {
                if !leader {
                    leading = false;
                }
                if Instant::now() >= next_sync || (leader && !leading) {
                    next_sync = Instant::now() + SHARED_SYNC;
                    if let Err(e) = self.sync_config().await {
                        tracing::warn!(error = %e, "cannot read the shared alert configuration");
                    }
                    if !leading {
                        // A follower shows the leader's state; a new leader carries on from
                        // it (pending times, what was notified), so nothing fires twice.
                        match self.sync_state().await {
                            Ok(()) => leading = leader,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the shared alert state")
                            }
                        }
                    }
                }
            }
            if leader && leading {
                for rule in self.take_due(now_ms()) {
                    tasks.spawn(self.clone().evaluate(rule));
                }
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a rule evaluation panicked");
                }
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        tasks.shutdown().await;
        tracing::info!("alert evaluator stopped");
    }

    /// The enabled rules whose time has come, marked in flight and rescheduled.
    fn take_due(&self, now: i64) -> Vec<Arc<Rule>> {
        let mut core = self.inner.core.lock();
        let crate::service::Core {
            rules, schedule, ..
        } = &mut *core;
        let mut due = Vec::new();
        for (id, rule) in rules.iter() {
            if !rule.spec.enabled {
                continue;
            }
            let s = schedule
                .entry(id.clone())
                .or_insert(crate::service::Schedule {
                    next_due_ms: now,
                    in_flight: false,
                });
            if s.in_flight || s.next_due_ms > now {
                continue;
            }
            let interval = rule.spec.interval.as_millis().max(1000);
            s.next_due_ms += interval;
            if s.next_due_ms <= now {
                s.next_due_ms = now + interval;
            }
            s.in_flight = true;
            due.push(rule.clone());
        }
        due
    }

    async fn evaluate(self, rule: Arc<Rule>) {
        let _in_flight = InFlight {
            service: self.clone(),
            id: rule.id.clone(),
        };
        let started = Instant::now();
        let at = now_ms();
        let max = self.inner.config.max_instances;
        let span = tracing::info_span!("alert.evaluate", alert.rule = %rule.id);
        let result = self
            .inner
            .engine
            .sql_limited(rule.sql(), max + 1)
            .instrument(span)
            .await;
        let (outcome, rows) = match result {
            Ok(r) if r.truncated => (
                Err(format!(
                    "the query returns more than {max} rows; aggregate or filter it"
                )),
                r.rows,
            ),
            Ok(r) => (
                result_rows(&r).and_then(|rows| samples(&rule.spec, rows)),
                r.rows,
            ),
            Err(e) => (Err(e.to_string()), 0),
        };
        let ok = outcome.is_ok();
        let outcome = match outcome {
            Ok(samples) => Outcome::Samples(samples),
            Err(message) => {
                tracing::warn!(
                    rule = rule.spec.name,
                    error = message,
                    "alert rule query failed"
                );
                Outcome::Failed {
                    labels: crate::service::instance_labels(&rule.spec, &Default::default()),
                    message,
                }
            }
        };
        let took = started.elapsed();
        let now = now_ms();
        let (events, jobs) = {
            let mut core = self.inner.core.lock();
            // A rule changed or deleted while its query ran: drop this result; the new version
            // is due now.
            if !core
                .rules
                .get(&rule.id)
                .is_some_and(|r| Arc::ptr_eq(r, &rule))
            {
                return;
            }
            let policy = self.policy(&core, &rule);
            let error = match &outcome {
                Outcome::Failed { message, .. } => Some(message.clone()),
                Outcome::Samples(_) => None,
            };
            let core_ref = &mut *core;
            let runtime = core_ref.runtime.entry(rule.id.clone()).or_default();
            let mut step = state::step(
                &mut runtime.instances,
                outcome,
                rule.spec.for_.as_millis(),
                now,
            );
            for i in runtime.instances.values_mut() {
                if i.state != InstanceState::Error {
                    render_annotations(&rule.spec, i);
                }
            }
            for i in &mut step.ended {
                if i.state != InstanceState::Error {
                    render_annotations(&rule.spec, i);
                }
            }
            let notices = plan::plan(
                policy,
                &mut runtime.instances,
                &step.ended,
                &core_ref.silences,
                &mut runtime.last_alertmanager_ms,
                now,
            );
            runtime.last_evaluation = Some(Evaluation {
                at_ms: at,
                duration_ms: took.as_secs_f64() * 1e3,
                error,
                rows,
            });
            let events = events_of(&rule, &step, now);
            let jobs = self.jobs(&core, &rule, &notices, now);
            self.update_gauges(&core);
            (events, jobs)
        };
        for e in &events {
            tracing::info!(rule = rule.spec.name, from = e.from.as_str(), to = e.to.as_str(), labels = ?e.labels, "alert state changed");
        }
        let changed = !events.is_empty() || !jobs.is_empty();
        self.record_events(events);
        // The state (with its notification marks) is saved before anything is sent: a crash in
        // between loses a message rather than repeating one after the restart.
        if changed && let Err(e) = self.save_state().await {
            tracing::error!(error = %e, "cannot save alert state");
        }
        for job in jobs {
            self.inner.notifier.send(job);
        }
        self.inner.metrics.observe_evaluation(ok, took);
    }

    fn update_gauges(&self, core: &crate::service::Core) {
        let (mut pending, mut firing, mut error) = (0i64, 0i64, 0i64);
        for i in core.runtime.values().flat_map(|r| r.instances.values()) {
            match i.state {
                InstanceState::Pending => pending += 1,
                InstanceState::Firing => firing += 1,
                InstanceState::Error => error += 1,
            }
        }
        let m = &self.inner.metrics;
        for (state, n) in [("pending", pending), ("firing", firing), ("error", error)] {
            m.alerts
                .get_or_create(&crate::metrics::StateLabels { state })
                .set(n);
        }
    }
}
