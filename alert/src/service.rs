//! The alerting service: rules, channels and silences (validated, stored durably), the
//! evaluator's state, and the views the HTTP API and UI show. The evaluator loop itself is in
//! [`crate::evaluator`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::{Array, Float64Array};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use oxeye_query::{QueryEngine, QueryResult};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::AlertError;
use crate::lease::Leadership;
use crate::metrics::AlertMetrics;
use crate::notify::{Job, Notifier, NotifyConfig};
use crate::payload::{self, Sender};
use crate::plan::{self, Notice, Policy};
use crate::rule::{Channel, ChannelKind, Rule, RuleSource, RuleSpec, file_rule_id, new_rule_id};
use crate::rules_file;
use crate::silence::{Matcher, Silence, is_silenced};
use crate::state::{self, Instance, Sample, Step};
use crate::storage::{AlertStore, ConfigDoc, Event, RuleRuntime, StateDoc};
use crate::tables::{self, History};
use crate::template;
use crate::time::{Dur, now_ms, parse_rfc3339, rfc3339};

#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// A TOML file of rules and channels, loaded at start and whenever it changes.
    pub rules_file: Option<PathBuf>,
    /// oxeye's address as people reach it, for links in notifications.
    pub public_url: String,
    /// Whether this node evaluates rules (when it holds the lease).
    pub evaluate: bool,
    /// Events and deliveries kept queryable.
    pub history: usize,
    /// Rows a rule's query may return; more is an error (a missing GROUP BY or filter).
    pub max_instances: usize,
    pub notify: NotifyConfig,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            rules_file: None,
            public_url: "http://127.0.0.1:7700".into(),
            evaluate: true,
            history: 100_000,
            max_instances: 10_000,
            notify: NotifyConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub next_due_ms: i64,
    pub in_flight: bool,
}

#[derive(Default)]
pub(crate) struct Core {
    pub rules: BTreeMap<String, Arc<Rule>>,
    pub channels: BTreeMap<String, (Channel, RuleSource)>,
    pub silences: Vec<Silence>,
    pub runtime: BTreeMap<String, RuleRuntime>,
    pub schedule: BTreeMap<String, Schedule>,
    pub rules_file_stamp: Option<(SystemTime, u64)>,
    /// The revision of the stored configuration this node's view is from.
    pub config_revision: i64,
}

impl Core {
    /// Removes the rules of `source` that `keep` does not name; returns them.
    fn remove_absent(&mut self, source: RuleSource, keep: impl Fn(&str) -> bool) -> Vec<Arc<Rule>> {
        let gone: Vec<String> = self
            .rules
            .values()
            .filter(|r| r.source == source && !keep(&r.id))
            .map(|r| r.id.clone())
            .collect();
        gone.into_iter()
            .filter_map(|id| {
                self.schedule.remove(&id);
                self.rules.remove(&id)
            })
            .collect()
    }
}

pub(crate) struct Inner {
    pub engine: QueryEngine,
    pub store: Arc<dyn AlertStore>,
    pub leader: Arc<dyn Leadership>,
    pub config: AlertConfig,
    pub core: Mutex<Core>,
    pub history: Arc<Mutex<History>>,
    config_writer: tokio::sync::Mutex<()>,
    state_writer: tokio::sync::Mutex<()>,
    pub notifier: Notifier,
    pub metrics: AlertMetrics,
    pub wake: tokio::sync::Notify,
    pub stop: CancellationToken,
}

/// Alerting: cheap to clone, shared by the evaluator and the HTTP handlers.
#[derive(Clone)]
pub struct AlertService {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AlertService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertService").finish_non_exhaustive()
    }
}

/// One row of a rule's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub labels: BTreeMap<String, String>,
    pub value: Option<f64>,
}

/// Reads a rule's result: `value` as a number, every other column as a label (nulls omitted).
pub fn result_rows(result: &QueryResult) -> Result<Vec<ResultRow>, String> {
    let mut rows = Vec::with_capacity(result.rows);
    let options = FormatOptions::default();
    for batch in &result.batches {
        let schema = batch.schema();
        let value_index = schema
            .index_of("value")
            .map_err(|_| "the query returned no `value` column".to_string())?;
        let values = arrow::compute::cast(batch.column(value_index), &DataType::Float64)
            .map_err(|e| format!("the `value` column is not numeric: {e}"))?;
        let values = values
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or("the `value` column is not numeric")?;
        let mut labels = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if i == value_index {
                continue;
            }
            let column = batch.column(i);
            let formatter =
                ArrayFormatter::try_new(column.as_ref(), &options).map_err(|e| e.to_string())?;
            labels.push((field.name().clone(), column.clone(), formatter));
        }
        for row in 0..batch.num_rows() {
            let mut map = BTreeMap::new();
            for (name, column, formatter) in &labels {
                if column.is_valid(row) {
                    map.insert(name.clone(), formatter.value(row).to_string());
                }
            }
            rows.push(ResultRow {
                labels: map,
                value: values.is_valid(row).then(|| values.value(row)),
            });
        }
    }
    Ok(rows)
}

/// The labels of an instance: the row's, then the rule's own, then `alertname` and `severity`.
pub fn instance_labels(
    spec: &RuleSpec,
    row: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = row.clone();
    labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert("alertname".into(), spec.name.clone());
    labels.insert("severity".into(), spec.severity.as_str().into());
    labels
}

/// The active samples of a result, or why they cannot be used.
pub fn samples(spec: &RuleSpec, rows: Vec<ResultRow>) -> Result<Vec<Sample>, String> {
    let mut seen: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut out = Vec::new();
    for row in rows {
        let Some(value) = row.value else { continue };
        if !spec.condition.holds(value) {
            continue;
        }
        let labels = instance_labels(spec, &row.labels);
        let fp = state::fingerprint(&labels);
        if seen.insert(fp, row.labels.clone()).is_some() {
            return Err(format!(
                "two rows have the same labels {:?}; give each row distinct label columns (GROUP BY them)",
                row.labels
            ));
        }
        out.push(Sample { labels, value });
    }
    Ok(out)
}

pub fn render_annotations(spec: &RuleSpec, instance: &mut Instance) {
    let ctx = template::Context {
        labels: &instance.labels,
        value: instance.value,
        threshold: spec.condition.threshold,
        rule: &spec.name,
    };
    instance.annotations = spec
        .annotations
        .iter()
        .map(|(k, t)| (k.clone(), template::render(t, ctx)))
        .collect();
}

/// A silence as the API accepts it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    pub matchers: Vec<Matcher>,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    #[serde(default)]
    pub duration: Option<Dur>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: String,
}

fn spawn_blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AlertError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, AlertError>> {
    let task = tokio::task::spawn_blocking(f);
    async move {
        task.await.map_err(|e| AlertError::Storage {
            path: "alerting store".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

impl AlertService {
    /// Loads rules, state and history, registers the SQL tables and reads the rules file.
    /// Fails when the stored data or the rules file cannot be read.
    pub async fn open(
        engine: QueryEngine,
        store: Arc<dyn AlertStore>,
        leader: Arc<dyn Leadership>,
        config: AlertConfig,
        registry: &mut Registry,
        stop: CancellationToken,
    ) -> Result<AlertService, AlertError> {
        let keep = config.history;
        let loaded = {
            let store = store.clone();
            spawn_blocking_io(move || store.load(keep)).await?
        };
        let history = Arc::new(Mutex::new(History {
            events: loaded.events,
            deliveries: loaded.deliveries,
            limit: keep,
        }));
        for (name, table) in tables::tables(&history) {
            engine
                .register_table(name, table)
                .await
                .map_err(|e| AlertError::invalid(e.to_string()))?;
        }
        let metrics = AlertMetrics::register(registry);
        let record: crate::notify::Recorder = {
            let history = history.clone();
            let store = store.clone();
            Arc::new(move |d| {
                history.lock().push_delivery(d.clone());
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.append_deliveries(&[d]) {
                        tracing::error!(error = %e, "cannot record a notification delivery");
                    }
                });
            })
        };
        let notifier = Notifier::new(config.notify.clone(), record, metrics.clone(), stop.clone())
            .map_err(|e| {
                AlertError::invalid(format!(
                    "cannot build the HTTP client for notifications: {e}"
                ))
            })?;
        let now = now_ms();
        let mut core = Core::default();
        for rule in loaded.config.rules {
            core.schedule.insert(
                rule.id.clone(),
                Schedule {
                    next_due_ms: now,
                    in_flight: false,
                },
            );
            core.rules.insert(rule.id.clone(), Arc::new(rule));
        }
        for c in loaded.config.channels {
            core.channels.insert(c.name.clone(), (c, RuleSource::Api));
        }
        core.silences = loaded.config.silences;
        core.config_revision = loaded.config_revision;
        core.runtime = loaded.state.rules;
        let service = AlertService {
            inner: Arc::new(Inner {
                engine,
                store,
                leader,
                core: Mutex::new(core),
                history,
                config_writer: tokio::sync::Mutex::new(()),
                state_writer: tokio::sync::Mutex::new(()),
                notifier,
                metrics,
                wake: tokio::sync::Notify::new(),
                stop,
                config,
            }),
        };
        if let Some(path) = service.inner.config.rules_file.clone() {
            service.load_rules_file(&path).await?;
        }
        {
            let mut core = service.inner.core.lock();
            let Core { rules, runtime, .. } = &mut *core;
            runtime.retain(|id, _| rules.contains_key(id));
            service.inner.metrics.rules.set(rules.len() as i64);
        }
        Ok(service)
    }

    pub fn config(&self) -> &AlertConfig {
        &self.inner.config
    }

    /// Checks a rule fully: the spec, its channels, and that its SQL plans to a result with a
    /// numeric `value` column. Returns the SQL to run.
    async fn check(
        &self,
        spec: &RuleSpec,
        extra_channels: &[Channel],
    ) -> Result<String, AlertError> {
        let sql = spec.validate()?;
        {
            let core = self.inner.core.lock();
            for target in &spec.notify {
                if let Some(name) = &target.channel
                    && !core.channels.contains_key(name)
                    && !extra_channels.iter().any(|c| &c.name == name)
                {
                    return Err(AlertError::invalid(format!(
                        "channel `{name}` does not exist; create it with POST /api/v1/alerts/channels"
                    )));
                }
            }
        }
        let plan = self
            .inner
            .engine
            .plan(&sql)
            .await
            .map_err(AlertError::Query)?;
        let schema = plan.schema();
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        match schema.fields().iter().find(|f| f.name() == "value") {
            None => Err(AlertError::invalid(format!(
                "the rule's query must return a numeric column named `value` (for example `count(*) AS value`); it returns {}",
                columns.join(", ")
            ))),
            Some(f) if !f.data_type().is_numeric() => Err(AlertError::invalid(format!(
                "the `value` column is {}, not a number; CAST it to DOUBLE",
                f.data_type()
            ))),
            Some(_) => Ok(sql),
        }
    }

    async fn save_config(&self) -> Result<(), AlertError> {
        let _writer = self.inner.config_writer.lock().await;
        let (doc, expected) = {
            let core = self.inner.core.lock();
            let doc = ConfigDoc {
                rules: core
                    .rules
                    .values()
                    .filter(|r| r.source == RuleSource::Api)
                    .map(|r| (**r).clone())
                    .collect(),
                channels: core
                    .channels
                    .values()
                    .filter(|(_, s)| *s == RuleSource::Api)
                    .map(|(c, _)| c.clone())
                    .collect(),
                silences: core.silences.clone(),
            };
            (doc, core.config_revision)
        };
        let store = self.inner.store.clone();
        let revision = spawn_blocking_io(move || store.save_config(&doc, expected)).await?;
        self.inner.core.lock().config_revision = revision;
        Ok(())
    }

    /// Takes in the configuration other nodes saved (shared stores only). Rules that went away
    /// or were disabled end here when this node leads.
    pub(crate) async fn sync_config(&self) -> Result<(), AlertError> {
        let _writer = self.inner.config_writer.lock().await;
        let known = self.inner.core.lock().config_revision;
        let store = self.inner.store.clone();
        let Some((revision, doc)) = spawn_blocking_io(move || store.config_if_newer(known)).await?
        else {
            return Ok(());
        };
        let now = now_ms();
        let mut ended = Vec::new();
        {
            let mut core = self.inner.core.lock();
            let incoming: BTreeMap<String, Rule> =
                doc.rules.into_iter().map(|r| (r.id.clone(), r)).collect();
            for rule in core.remove_absent(RuleSource::Api, |id| incoming.contains_key(id)) {
                ended.push((rule, true));
            }
            for (id, rule) in incoming {
                let old = core.rules.get(&id).cloned();
                if old.as_deref() == Some(&rule) {
                    continue;
                }
                let disabled_now =
                    !rule.spec.enabled && old.as_ref().is_none_or(|o| o.spec.enabled);
                let rule = Arc::new(rule);
                core.rules.insert(id.clone(), rule.clone());
                core.schedule.insert(
                    id,
                    Schedule {
                        next_due_ms: now,
                        in_flight: false,
                    },
                );
                if disabled_now {
                    ended.push((rule, false));
                }
            }
            core.channels
                .retain(|_, (_, source)| *source == RuleSource::File);
            for c in doc.channels {
                core.channels.insert(c.name.clone(), (c, RuleSource::Api));
            }
            core.silences = doc.silences;
            core.config_revision = revision;
            self.inner.metrics.rules.set(core.rules.len() as i64);
        }
        drop(_writer);
        for (rule, removed) in ended {
            self.end_rule(&rule.id, removed.then_some(&rule)).await;
        }
        Ok(())
    }

    /// Takes in the state the leader saved (a follower shows it; a new leader starts from it).
    pub(crate) async fn sync_state(&self) -> Result<(), AlertError> {
        let store = self.inner.store.clone();
        let state = spawn_blocking_io(move || store.load_state()).await?;
        let mut core = self.inner.core.lock();
        let Core { rules, runtime, .. } = &mut *core;
        *runtime = state.rules;
        runtime.retain(|id, _| rules.contains_key(id));
        Ok(())
    }

    pub(crate) async fn save_state(&self) -> Result<(), AlertError> {
        let _writer = self.inner.state_writer.lock().await;
        let doc = StateDoc {
            rules: self.inner.core.lock().runtime.clone(),
        };
        let store = self.inner.store.clone();
        spawn_blocking_io(move || store.save_state(&doc)).await
    }

    pub(crate) fn record_events(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.inner
            .history
            .lock()
            .push_events(events.iter().cloned());
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.append_events(&events) {
                tracing::error!(error = %e, "cannot record alert events");
            }
        });
    }

    fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs a change of the configuration and saves it; if saving fails the change is undone.
    async fn change<T>(
        &self,
        apply: impl FnOnce(&mut Core) -> Result<(T, Box<dyn FnOnce(&mut Core) + Send>), AlertError>,
    ) -> Result<T, AlertError> {
        if self.inner.store.shared() {
            // Change the newest configuration, not this node's possibly older view of it.
            self.sync_config().await?;
        }
        let (out, undo) = apply(&mut self.inner.core.lock())?;
        if let Err(e) = self.save_config().await {
            undo(&mut self.inner.core.lock());
            return Err(e);
        }
        self.inner
            .metrics
            .rules
            .set(self.inner.core.lock().rules.len() as i64);
        self.wake();
        Ok(out)
    }

    // ---- rules ----

    pub async fn create_rule(&self, spec: RuleSpec) -> Result<Value, AlertError> {
        let sql = self.check(&spec, &[]).await?;
        let now = now_ms();
        let mut spec = spec;
        spec.name = spec.name.trim().to_string();
        spec.sql = Some(sql);
        let id = self
            .change(move |core| {
                if let Some(other) = core.rules.values().find(|r| r.spec.name == spec.name) {
                    return Err(AlertError::Conflict(format!(
                        "a rule named `{}` exists already (id {})",
                        spec.name, other.id
                    )));
                }
                let id = new_rule_id();
                core.rules.insert(
                    id.clone(),
                    Arc::new(Rule {
                        id: id.clone(),
                        spec,
                        source: RuleSource::Api,
                        created_at_ms: now,
                        updated_at_ms: now,
                    }),
                );
                core.schedule.insert(
                    id.clone(),
                    Schedule {
                        next_due_ms: now,
                        in_flight: false,
                    },
                );
                let undo_id = id.clone();
                Ok((
                    id,
                    Box::new(move |core: &mut Core| {
                        core.rules.remove(&undo_id);
                        core.schedule.remove(&undo_id);
                    }) as Box<dyn FnOnce(&mut Core) + Send>,
                ))
            })
            .await?;
        tracing::info!(rule = id, "alert rule created");
        self.rule(&id)
    }

    fn api_rule(core: &Core, id: &str) -> Result<Arc<Rule>, AlertError> {
        let rule = core
            .rules
            .get(id)
            .cloned()
            .ok_or_else(|| AlertError::NotFound(format!("alert rule `{id}`")))?;
        if rule.source == RuleSource::File {
            return Err(AlertError::Conflict(format!(
                "rule `{}` comes from the rules file; change it there",
                rule.spec.name
            )));
        }
        Ok(rule)
    }

    pub async fn update_rule(&self, id: &str, spec: RuleSpec) -> Result<Value, AlertError> {
        Self::api_rule(&self.inner.core.lock(), id)?;
        let sql = self.check(&spec, &[]).await?;
        let mut spec = spec;
        spec.name = spec.name.trim().to_string();
        spec.sql = Some(sql);
        self.replace_rule(id, spec).await
    }

    async fn replace_rule(&self, id: &str, spec: RuleSpec) -> Result<Value, AlertError> {
        let now = now_ms();
        let id_owned = id.to_string();
        let disabled = !spec.enabled;
        self.change(move |core| {
            let old = Self::api_rule(core, &id_owned)?;
            if let Some(other) = core
                .rules
                .values()
                .find(|r| r.spec.name == spec.name && r.id != id_owned)
            {
                return Err(AlertError::Conflict(format!(
                    "a rule named `{}` exists already (id {})",
                    spec.name, other.id
                )));
            }
            let new = Arc::new(Rule {
                id: id_owned.clone(),
                spec,
                source: RuleSource::Api,
                created_at_ms: old.created_at_ms,
                updated_at_ms: now,
            });
            core.rules.insert(id_owned.clone(), new);
            core.schedule.insert(
                id_owned.clone(),
                Schedule {
                    next_due_ms: now,
                    in_flight: false,
                },
            );
            Ok((
                (),
                Box::new(move |core: &mut Core| {
                    core.rules.insert(old.id.clone(), old);
                }) as Box<dyn FnOnce(&mut Core) + Send>,
            ))
        })
        .await?;
        if disabled {
            self.end_rule(id, None).await;
        }
        self.rule(id)
    }

    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<Value, AlertError> {
        let rule = Self::api_rule(&self.inner.core.lock(), id)?;
        let mut spec = rule.spec.clone();
        spec.enabled = enabled;
        self.replace_rule(id, spec).await
    }

    pub async fn delete_rule(&self, id: &str) -> Result<Value, AlertError> {
        let id_owned = id.to_string();
        let removed = self
            .change(move |core| {
                let rule = Self::api_rule(core, &id_owned)?;
                core.rules.remove(&id_owned);
                let schedule = core.schedule.remove(&id_owned);
                let undo_rule = rule.clone();
                Ok((
                    rule,
                    Box::new(move |core: &mut Core| {
                        if let Some(s) = schedule {
                            core.schedule.insert(undo_rule.id.clone(), s);
                        }
                        core.rules.insert(undo_rule.id.clone(), undo_rule);
                    }) as Box<dyn FnOnce(&mut Core) + Send>,
                ))
            })
            .await?;
        self.end_rule(id, Some(&removed)).await;
        tracing::info!(rule = id, "alert rule deleted");
        Ok(json!({"deleted": id}))
    }

    /// Ends a rule's instances (deleted or disabled): firing ones resolve and receivers hear.
    async fn end_rule(&self, id: &str, removed: Option<&Arc<Rule>>) {
        // With a shared store only the leader owns instances and notifications; it ends them
        // when it takes in the change.
        if self.inner.store.shared() && !self.inner.leader.is_leader() {
            return;
        }
        let now = now_ms();
        let (events, jobs) = {
            let mut core = self.inner.core.lock();
            let Some(rule) = removed.cloned().or_else(|| core.rules.get(id).cloned()) else {
                return;
            };
            let mut runtime = if removed.is_some() {
                core.runtime.remove(id).unwrap_or_default()
            } else {
                core.runtime
                    .get_mut(id)
                    .map(std::mem::take)
                    .unwrap_or_default()
            };
            let step = state::end_all(&mut runtime.instances);
            let mut last_am = runtime.last_alertmanager_ms;
            let notices = plan::plan(
                self.policy(&core, &rule),
                &mut runtime.instances,
                &step.ended,
                &core.silences,
                &mut last_am,
                now,
            );
            (
                events_of(&rule, &step, now),
                self.jobs(&core, &rule, &notices, now),
            )
        };
        self.record_events(events);
        if let Err(e) = self.save_state().await {
            tracing::error!(error = %e, "cannot save alert state");
        }
        for job in jobs {
            self.inner.notifier.send(job);
        }
    }

    pub(crate) fn policy(&self, core: &Core, rule: &Rule) -> Policy {
        let has_am = self
            .targets(core, rule)
            .iter()
            .any(|t| t.1 == ChannelKind::Alertmanager);
        Policy {
            repeat_ms: rule.spec.repeat_interval.as_millis(),
            alertmanager_refresh_ms: has_am.then_some(plan::ALERTMANAGER_REFRESH_MS),
        }
    }

    /// A rule's destinations as (label, kind, url); named channels that vanished are skipped.
    fn targets(&self, core: &Core, rule: &Rule) -> Vec<(String, ChannelKind, String)> {
        let mut out = Vec::new();
        for t in &rule.spec.notify {
            match (&t.channel, t.kind, &t.url) {
                (Some(name), _, _) => match core.channels.get(name) {
                    Some((c, _)) => out.push((c.name.clone(), c.kind, c.url.clone())),
                    None => tracing::warn!(
                        rule = rule.spec.name,
                        channel = name,
                        "the rule notifies a channel that does not exist"
                    ),
                },
                (None, Some(kind), Some(url)) => {
                    out.push((format!("{} {url}", kind.as_str()), kind, url.clone()))
                }
                _ => {}
            }
        }
        out
    }

    pub(crate) fn jobs(&self, core: &Core, rule: &Rule, notices: &[Notice], now: i64) -> Vec<Job> {
        let targets = self.targets(core, rule);
        let sender = Sender {
            public_url: &self.inner.config.public_url,
            now_ms: now,
        };
        let mut jobs = Vec::new();
        for notice in notices {
            for (name, kind, url) in &targets {
                if notice.alertmanager_only && *kind != ChannelKind::Alertmanager {
                    continue;
                }
                jobs.push(Job {
                    rule_id: rule.id.clone(),
                    rule_name: rule.spec.name.clone(),
                    channel: name.clone(),
                    kind: *kind,
                    url: payload::target_url(*kind, url),
                    status: notice.status.as_str(),
                    alerts: notice.alerts.len(),
                    body: payload::body(*kind, rule, notice, sender),
                });
            }
        }
        jobs
    }

    pub fn rule(&self, id: &str) -> Result<Value, AlertError> {
        let core = self.inner.core.lock();
        let rule = core
            .rules
            .get(id)
            .ok_or_else(|| AlertError::NotFound(format!("alert rule `{id}`")))?;
        Ok(rule_view(&core, rule, now_ms()))
    }

    pub fn rules(&self) -> Value {
        let core = self.inner.core.lock();
        let now = now_ms();
        let mut rules: Vec<&Arc<Rule>> = core.rules.values().collect();
        rules.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        json!({"rules": rules.into_iter().map(|r| rule_view(&core, r, now)).collect::<Vec<_>>()})
    }

    /// Evaluates a rule now without keeping anything or notifying anyone.
    pub async fn dry_run(&self, spec: RuleSpec) -> Result<Value, AlertError> {
        let sql = self.check(&spec, &[]).await?;
        let max = self.inner.config.max_instances;
        let result = self.inner.engine.sql_limited(&sql, max + 1).await;
        let (rows, error, elapsed_ms) = match result {
            Ok(r) if r.truncated => (
                vec![],
                Some(format!(
                    "the query returns more than {max} rows; aggregate or filter it"
                )),
                r.elapsed.as_secs_f64() * 1e3,
            ),
            Ok(r) => match result_rows(&r) {
                Ok(rows) => (rows, None, r.elapsed.as_secs_f64() * 1e3),
                Err(e) => (vec![], Some(e), r.elapsed.as_secs_f64() * 1e3),
            },
            Err(e) => (vec![], Some(e.to_string()), 0.0),
        };
        let instances: Vec<Value> = rows
            .into_iter()
            .map(|row| {
                let labels = instance_labels(&spec, &row.labels);
                let mut instance = Instance {
                    fingerprint: state::fingerprint(&labels),
                    labels,
                    annotations: BTreeMap::new(),
                    value: row.value,
                    state: state::InstanceState::Pending,
                    active_since_ms: 0,
                    fired_at_ms: None,
                    last_evaluated_ms: 0,
                    notified_ms: None,
                    message: None,
                };
                render_annotations(&spec, &mut instance);
                json!({
                    "labels": instance.labels,
                    "value": instance.value,
                    "active": row.value.is_some_and(|v| spec.condition.holds(v)),
                    "annotations": instance.annotations,
                })
            })
            .collect();
        Ok(json!({"sql": sql, "elapsed_ms": elapsed_ms, "error": error, "instances": instances}))
    }

    // ---- alerts and history ----

    pub fn alerts(&self) -> Value {
        let core = self.inner.core.lock();
        let now = now_ms();
        let mut alerts = Vec::new();
        for (id, rt) in &core.runtime {
            let Some(rule) = core.rules.get(id) else {
                continue;
            };
            for i in rt.instances.values() {
                alerts.push(alert_view(
                    rule,
                    i,
                    is_silenced(&core.silences, &i.labels, now),
                ));
            }
        }
        json!({"alerts": alerts})
    }

    pub fn history(&self, rule_id: Option<&str>, limit: usize) -> Value {
        let history = self.inner.history.lock();
        let events: Vec<Value> = history
            .events
            .iter()
            .rev()
            .filter(|e| rule_id.is_none_or(|id| e.rule_id == id))
            .take(limit)
            .map(|e| {
                json!({
                    "time": rfc3339(e.time_ms), "rule_id": e.rule_id, "rule_name": e.rule_name,
                    "severity": e.severity, "fingerprint": e.fingerprint, "labels": e.labels,
                    "from": e.from, "to": e.to, "value": e.value, "message": e.message,
                })
            })
            .collect();
        json!({"events": events})
    }

    // ---- channels ----

    pub fn channels(&self) -> Value {
        let core = self.inner.core.lock();
        let channels: Vec<Value> = core
            .channels
            .values()
            .map(|(c, source)| json!({"name": c.name, "type": c.kind, "url": c.url, "source": source}))
            .collect();
        json!({"channels": channels})
    }

    pub async fn put_channel(&self, channel: Channel) -> Result<Value, AlertError> {
        channel.validate()?;
        let view = json!({"name": channel.name, "type": channel.kind, "url": channel.url, "source": RuleSource::Api});
        self.change(move |core| {
            if let Some((_, RuleSource::File)) = core.channels.get(&channel.name) {
                return Err(AlertError::Conflict(format!(
                    "channel `{}` comes from the rules file; change it there",
                    channel.name
                )));
            }
            let name = channel.name.clone();
            let old = core
                .channels
                .insert(name.clone(), (channel, RuleSource::Api));
            Ok((
                (),
                Box::new(move |core: &mut Core| match old {
                    Some(old) => {
                        core.channels.insert(name, old);
                    }
                    None => {
                        core.channels.remove(&name);
                    }
                }) as Box<dyn FnOnce(&mut Core) + Send>,
            ))
        })
        .await?;
        Ok(view)
    }

    pub async fn delete_channel(&self, name: &str) -> Result<Value, AlertError> {
        let name = name.to_string();
        let deleted = name.clone();
        self.change(move |core| {
            match core.channels.get(&name) {
                None => return Err(AlertError::NotFound(format!("channel `{name}`"))),
                Some((_, RuleSource::File)) => {
                    return Err(AlertError::Conflict(format!(
                        "channel `{name}` comes from the rules file; change it there"
                    )));
                }
                Some(_) => {}
            }
            let users: Vec<&str> = core
                .rules
                .values()
                .filter(|r| {
                    r.spec
                        .notify
                        .iter()
                        .any(|t| t.channel.as_deref() == Some(&name))
                })
                .map(|r| r.spec.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(AlertError::Conflict(format!(
                    "channel `{name}` is used by rules {}; change them first",
                    users.join(", ")
                )));
            }
            let old = core.channels.remove(&name);
            Ok((
                (),
                Box::new(move |core: &mut Core| {
                    if let Some(old) = old {
                        core.channels.insert(name, old);
                    }
                }) as Box<dyn FnOnce(&mut Core) + Send>,
            ))
        })
        .await?;
        Ok(json!({"deleted": deleted}))
    }

    // ---- silences ----

    pub fn silences(&self) -> Value {
        let core = self.inner.core.lock();
        let now = now_ms();
        let silences: Vec<Value> = core
            .silences
            .iter()
            .filter(|s| s.ends_at_ms > now - 86_400_000)
            .map(|s| silence_view(s, now))
            .collect();
        json!({"silences": silences})
    }

    pub async fn create_silence(&self, request: SilenceRequest) -> Result<Value, AlertError> {
        let now = now_ms();
        let starts_at_ms = match &request.starts_at {
            Some(t) => parse_rfc3339(t).map_err(AlertError::Invalid)?,
            None => now,
        };
        let ends_at_ms = match (&request.ends_at, request.duration) {
            (Some(t), _) => parse_rfc3339(t).map_err(AlertError::Invalid)?,
            (None, Some(d)) => starts_at_ms + d.as_millis(),
            (None, None) => {
                return Err(AlertError::invalid(
                    "a silence needs `ends_at` (RFC 3339) or a `duration` such as \"2h\"",
                ));
            }
        };
        let silence = Silence {
            id: format!("s{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            matchers: request.matchers,
            starts_at_ms,
            ends_at_ms,
            comment: request.comment,
            created_by: request.created_by,
        };
        silence.validate()?;
        let view = silence_view(&silence, now);
        self.change(move |core| {
            // Silences that ended a week ago are history nobody reads.
            core.silences
                .retain(|s| s.ends_at_ms > now - 7 * 86_400_000);
            let id = silence.id.clone();
            core.silences.push(silence);
            Ok((
                (),
                Box::new(move |core: &mut Core| core.silences.retain(|s| s.id != id))
                    as Box<dyn FnOnce(&mut Core) + Send>,
            ))
        })
        .await?;
        Ok(view)
    }

    /// Ends a silence now (a future one is removed).
    pub async fn expire_silence(&self, id: &str) -> Result<Value, AlertError> {
        let now = now_ms();
        let id = id.to_string();
        let view = self
            .change(move |core| {
                let s = core
                    .silences
                    .iter_mut()
                    .find(|s| s.id == id)
                    .ok_or_else(|| AlertError::NotFound(format!("silence `{id}`")))?;
                let old = s.clone();
                s.ends_at_ms = s.ends_at_ms.min(now);
                s.starts_at_ms = s.starts_at_ms.min(now);
                let view = silence_view(s, now);
                // The silenced alerts are due at once: receivers hear about them now.
                for sched in core.schedule.values_mut() {
                    sched.next_due_ms = sched.next_due_ms.min(now);
                }
                Ok((
                    view,
                    Box::new(move |core: &mut Core| {
                        if let Some(s) = core.silences.iter_mut().find(|s| s.id == old.id) {
                            *s = old;
                        }
                    }) as Box<dyn FnOnce(&mut Core) + Send>,
                ))
            })
            .await?;
        Ok(view)
    }

    // ---- rules file ----

    /// Loads the rules file if it changed since the last load. On an invalid file nothing
    /// changes and the error says which rule is wrong.
    pub async fn load_rules_file(&self, path: &Path) -> Result<bool, AlertError> {
        let file_error = |message: String| AlertError::RulesFile {
            path: path.display().to_string(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| file_error(e.to_string()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.inner.core.lock().rules_file_stamp == Some(stamp) {
            return Ok(false);
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let parsed = rules_file::parse(path, &text)?;
        let mut specs = Vec::new();
        for mut spec in parsed.rule {
            let sql = self
                .check(&spec, &parsed.channel)
                .await
                .map_err(|e| file_error(format!("rule `{}`: {e}", spec.name)))?;
            spec.name = spec.name.trim().to_string();
            spec.sql = Some(sql);
            specs.push(spec);
        }
        let now = now_ms();
        let mut ended = Vec::new();
        {
            let mut core = self.inner.core.lock();
            for spec in &specs {
                if let Some(r) = core
                    .rules
                    .values()
                    .find(|r| r.source == RuleSource::Api && r.spec.name == spec.name)
                {
                    return Err(file_error(format!(
                        "rule `{}` is also defined through the API (id {}); rename one",
                        spec.name, r.id
                    )));
                }
            }
            core.channels
                .retain(|_, (_, source)| *source == RuleSource::Api);
            for c in parsed.channel {
                core.channels
                    .entry(c.name.clone())
                    .or_insert((c, RuleSource::File));
            }
            let new_ids: BTreeMap<String, RuleSpec> = specs
                .into_iter()
                .map(|s| (file_rule_id(&s.name), s))
                .collect();
            ended.extend(core.remove_absent(RuleSource::File, |id| new_ids.contains_key(id)));
            for (id, spec) in new_ids {
                let existing = core.rules.get(&id).cloned();
                if existing.as_ref().is_some_and(|r| r.spec == spec) {
                    continue;
                }
                let disabled = !spec.enabled;
                core.rules.insert(
                    id.clone(),
                    Arc::new(Rule {
                        id: id.clone(),
                        spec,
                        source: RuleSource::File,
                        created_at_ms: existing.as_ref().map_or(now, |r| r.created_at_ms),
                        updated_at_ms: now,
                    }),
                );
                core.schedule.insert(
                    id.clone(),
                    Schedule {
                        next_due_ms: now,
                        in_flight: false,
                    },
                );
                if disabled && let Some(rule) = core.rules.get(&id) {
                    ended.push(rule.clone());
                }
            }
            core.rules_file_stamp = Some(stamp);
            self.inner.metrics.rules.set(core.rules.len() as i64);
        }
        for rule in ended {
            let removed = (!self.inner.core.lock().rules.contains_key(&rule.id)).then_some(&rule);
            self.end_rule(&rule.id, removed).await;
        }
        tracing::info!(path = %path.display(), "alert rules file loaded");
        self.wake();
        Ok(true)
    }
}

pub(crate) fn events_of(rule: &Rule, step: &Step, now: i64) -> Vec<Event> {
    step.transitions
        .iter()
        .map(|t| Event {
            time_ms: now,
            rule_id: rule.id.clone(),
            rule_name: rule.spec.name.clone(),
            severity: rule.spec.severity.as_str().into(),
            fingerprint: t.fingerprint.clone(),
            labels: t.labels.clone(),
            from: t.from,
            to: t.to,
            value: t.value,
            message: t.message.clone(),
        })
        .collect()
}

fn alert_view(rule: &Rule, i: &Instance, silenced: bool) -> Value {
    json!({
        "rule_id": rule.id, "rule_name": rule.spec.name, "severity": rule.spec.severity,
        "state": i.state, "labels": i.labels, "annotations": i.annotations, "value": i.value,
        "active_since": rfc3339(i.active_since_ms), "fired_at": i.fired_at_ms.map(rfc3339),
        "last_evaluated": rfc3339(i.last_evaluated_ms), "notified_at": i.notified_ms.map(rfc3339),
        "silenced": silenced, "fingerprint": i.fingerprint, "message": i.message,
    })
}

fn rule_view(core: &Core, rule: &Rule, now: i64) -> Value {
    let mut v = match serde_json::to_value(&rule.spec) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let runtime = core.runtime.get(&rule.id);
    let state = if !rule.spec.enabled {
        "disabled"
    } else {
        state::rule_state(runtime.into_iter().flat_map(|r| r.instances.values())).as_str()
    };
    let instances: Vec<Value> = runtime
        .into_iter()
        .flat_map(|r| r.instances.values())
        .map(|i| alert_view(rule, i, is_silenced(&core.silences, &i.labels, now)))
        .collect();
    v.insert("id".into(), json!(rule.id));
    v.insert("source".into(), json!(rule.source));
    v.insert("created_at".into(), json!(rfc3339(rule.created_at_ms)));
    v.insert("updated_at".into(), json!(rfc3339(rule.updated_at_ms)));
    v.insert("state".into(), json!(state));
    v.insert(
        "last_evaluation".into(),
        match runtime.and_then(|r| r.last_evaluation.as_ref()) {
            Some(e) => json!({"at": rfc3339(e.at_ms), "duration_ms": e.duration_ms, "error": e.error, "rows": e.rows}),
            None => Value::Null,
        },
    );
    v.insert("instances".into(), Value::Array(instances));
    Value::Object(v)
}

fn silence_view(s: &Silence, now: i64) -> Value {
    json!({
        "id": s.id, "matchers": s.matchers, "starts_at": rfc3339(s.starts_at_ms),
        "ends_at": rfc3339(s.ends_at_ms), "comment": s.comment, "created_by": s.created_by,
        "status": s.status(now),
    })
}
