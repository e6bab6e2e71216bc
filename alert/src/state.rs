//! The state machine of alert instances. One instance per label set of a rule; each evaluation
//! moves instances inactive -> pending -> firing (once active for the rule's `for`) and back to
//! inactive (a pending one) or resolved (a firing one) when their row stops matching. A query
//! that fails is an instance of its own, in the `error` state, and leaves the others as they
//! were: an outage of the query layer neither fires nor resolves alerts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The fingerprint of the instance that stands for a failing query.
pub const ERROR_FINGERPRINT: &str = "query-error";

/// States an instance can be in while it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Pending,
    Firing,
    Error,
}

/// States in the history (`alert_events.from_state` / `to_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    Inactive,
    Pending,
    Firing,
    Resolved,
    Error,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Inactive => "inactive",
            EventState::Pending => "pending",
            EventState::Firing => "firing",
            EventState::Resolved => "resolved",
            EventState::Error => "error",
        }
    }
}

impl From<InstanceState> for EventState {
    fn from(s: InstanceState) -> EventState {
        match s {
            InstanceState::Pending => EventState::Pending,
            InstanceState::Firing => EventState::Firing,
            InstanceState::Error => EventState::Error,
        }
    }
}

/// One alert: a label set of a rule that is pending, firing or in error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub value: Option<f64>,
    pub state: InstanceState,
    pub active_since_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub last_evaluated_ms: i64,
    /// When a firing (or error) notification last went out for it; `None` if never. Kept
    /// durably so a restart neither forgets nor repeats a notification.
    #[serde(default)]
    pub notified_ms: Option<i64>,
    /// The query error, for the error instance.
    #[serde(default)]
    pub message: Option<String>,
}

/// A row of a rule's result whose value meets the condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What one evaluation produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Samples(Vec<Sample>),
    Failed {
        message: String,
        /// The labels of the error instance (the rule's own).
        labels: BTreeMap<String, String>,
    },
}

/// A change of one instance's state, for the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub from: EventState,
    pub to: EventState,
    pub value: Option<f64>,
    pub message: Option<String>,
}

/// The result of one step: state changes, and the instances that ended (to tell receivers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub transitions: Vec<Transition>,
    pub ended: Vec<Instance>,
}

/// A stable identity of a label set.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut bytes = Vec::new();
    for (k, v) in labels {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    format!("{:016x}", twox_hash::XxHash64::oneshot(0, &bytes))
}

fn transition(i: &Instance, from: EventState, to: EventState) -> Transition {
    Transition {
        fingerprint: i.fingerprint.clone(),
        labels: i.labels.clone(),
        from,
        to,
        value: i.value,
        message: i.message.clone(),
    }
}

/// Applies one evaluation's outcome at `now_ms` to a rule's instances.
pub fn step(
    instances: &mut BTreeMap<String, Instance>,
    outcome: Outcome,
    for_ms: i64,
    now_ms: i64,
) -> Step {
    let mut out = Step::default();
    match outcome {
        Outcome::Samples(samples) => {
            if let Some(err) = instances.remove(ERROR_FINGERPRINT) {
                out.transitions
                    .push(transition(&err, EventState::Error, EventState::Inactive));
                out.ended.push(err);
            }
            let mut seen = BTreeSet::new();
            for sample in samples {
                let fp = fingerprint(&sample.labels);
                seen.insert(fp.clone());
                match instances.get_mut(&fp) {
                    Some(i) => {
                        i.value = Some(sample.value);
                        i.last_evaluated_ms = now_ms;
                        if i.state == InstanceState::Pending && now_ms - i.active_since_ms >= for_ms
                        {
                            i.state = InstanceState::Firing;
                            i.fired_at_ms = Some(now_ms);
                            out.transitions.push(transition(
                                i,
                                EventState::Pending,
                                EventState::Firing,
                            ));
                        }
                    }
                    None => {
                        let mut i = Instance {
                            fingerprint: fp.clone(),
                            labels: sample.labels,
                            annotations: BTreeMap::new(),
                            value: Some(sample.value),
                            state: InstanceState::Pending,
                            active_since_ms: now_ms,
                            fired_at_ms: None,
                            last_evaluated_ms: now_ms,
                            notified_ms: None,
                            message: None,
                        };
                        out.transitions.push(transition(
                            &i,
                            EventState::Inactive,
                            EventState::Pending,
                        ));
                        if for_ms <= 0 {
                            i.state = InstanceState::Firing;
                            i.fired_at_ms = Some(now_ms);
                            out.transitions.push(transition(
                                &i,
                                EventState::Pending,
                                EventState::Firing,
                            ));
                        }
                        instances.insert(fp, i);
                    }
                }
            }
            let gone: Vec<String> = instances
                .keys()
                .filter(|fp| !seen.contains(*fp))
                .cloned()
                .collect();
            for fp in gone {
                if let Some(i) = instances.remove(&fp) {
                    let to = match i.state {
                        InstanceState::Firing => EventState::Resolved,
                        _ => EventState::Inactive,
                    };
                    out.transitions.push(transition(&i, i.state.into(), to));
                    out.ended.push(i);
                }
            }
        }
        Outcome::Failed { message, labels } => match instances.get_mut(ERROR_FINGERPRINT) {
            Some(i) => {
                i.message = Some(message);
                i.last_evaluated_ms = now_ms;
            }
            None => {
                let i = Instance {
                    fingerprint: ERROR_FINGERPRINT.to_string(),
                    labels,
                    annotations: BTreeMap::new(),
                    value: None,
                    state: InstanceState::Error,
                    active_since_ms: now_ms,
                    fired_at_ms: None,
                    last_evaluated_ms: now_ms,
                    notified_ms: None,
                    message: Some(message),
                };
                out.transitions
                    .push(transition(&i, EventState::Inactive, EventState::Error));
                instances.insert(ERROR_FINGERPRINT.to_string(), i);
            }
        },
    }
    out
}

/// Ends every instance (the rule was deleted or disabled): firing ones resolve.
pub fn end_all(instances: &mut BTreeMap<String, Instance>) -> Step {
    let mut out = Step::default();
    for (_, i) in std::mem::take(instances) {
        let to = match i.state {
            InstanceState::Firing => EventState::Resolved,
            _ => EventState::Inactive,
        };
        out.transitions.push(transition(&i, i.state.into(), to));
        out.ended.push(i);
    }
    out
}

/// The state a rule shows: the most urgent of its instances.
pub fn rule_state<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> EventState {
    let mut state = EventState::Inactive;
    for i in instances {
        state = match (state, i.state) {
            (_, InstanceState::Error) | (EventState::Error, _) => EventState::Error,
            (_, InstanceState::Firing) | (EventState::Firing, _) => EventState::Firing,
            _ => EventState::Pending,
        };
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(service: &str, value: f64) -> Sample {
        Sample {
            labels: BTreeMap::from([("service_name".to_string(), service.to_string())]),
            value,
        }
    }

    fn path(step: &Step) -> Vec<(EventState, EventState)> {
        step.transitions.iter().map(|t| (t.from, t.to)).collect()
    }

    use EventState::*;

    #[test]
    fn pending_fires_only_after_for_then_resolves() {
        let mut inst = BTreeMap::new();
        let s = step(&mut inst, Outcome::Samples(vec![sample("a", 7.0)]), 2000, 0);
        assert_eq!(path(&s), vec![(Inactive, Pending)]);
        let s = step(
            &mut inst,
            Outcome::Samples(vec![sample("a", 8.0)]),
            2000,
            1999,
        );
        assert!(s.transitions.is_empty(), "not yet");
        let s = step(
            &mut inst,
            Outcome::Samples(vec![sample("a", 9.0)]),
            2000,
            2000,
        );
        assert_eq!(path(&s), vec![(Pending, Firing)]);
        assert_eq!(s.transitions[0].value, Some(9.0));
        let i = inst.values().next().expect("instance");
        assert_eq!((i.active_since_ms, i.fired_at_ms), (0, Some(2000)));
        let s = step(&mut inst, Outcome::Samples(vec![]), 2000, 3000);
        assert_eq!(path(&s), vec![(Firing, Resolved)]);
        assert_eq!(s.ended.len(), 1);
        assert!(inst.is_empty());
    }

    #[test]
    fn zero_for_fires_at_once_and_pending_that_stops_goes_inactive() {
        let mut inst = BTreeMap::new();
        let s = step(&mut inst, Outcome::Samples(vec![sample("a", 1.0)]), 0, 0);
        assert_eq!(path(&s), vec![(Inactive, Pending), (Pending, Firing)]);
        let mut inst = BTreeMap::new();
        step(&mut inst, Outcome::Samples(vec![sample("a", 1.0)]), 5000, 0);
        let s = step(&mut inst, Outcome::Samples(vec![]), 5000, 1000);
        assert_eq!(path(&s), vec![(Pending, Inactive)]);
    }

    #[test]
    fn each_label_set_has_its_own_state() {
        let mut inst = BTreeMap::new();
        step(&mut inst, Outcome::Samples(vec![sample("a", 1.0)]), 1000, 0);
        let s = step(
            &mut inst,
            Outcome::Samples(vec![sample("a", 1.0), sample("b", 1.0)]),
            1000,
            1000,
        );
        assert_eq!(path(&s), vec![(Pending, Firing), (Inactive, Pending)]);
        assert_eq!(inst.len(), 2);
        assert_eq!(rule_state(inst.values()), Firing);
    }

    #[test]
    fn a_failing_query_is_an_error_instance_and_leaves_the_others_alone() {
        let mut inst = BTreeMap::new();
        step(&mut inst, Outcome::Samples(vec![sample("a", 1.0)]), 0, 0);
        let failed = || Outcome::Failed {
            message: "boom".into(),
            labels: BTreeMap::from([("alertname".to_string(), "r".to_string())]),
        };
        let s = step(&mut inst, failed(), 0, 1000);
        assert_eq!(path(&s), vec![(Inactive, Error)]);
        assert_eq!(inst.len(), 2, "the firing instance stays");
        assert_eq!(rule_state(inst.values()), Error);
        let s = step(&mut inst, failed(), 0, 2000);
        assert!(s.transitions.is_empty(), "a lasting error is one event");
        let s = step(&mut inst, Outcome::Samples(vec![sample("a", 1.0)]), 0, 3000);
        assert_eq!(path(&s), vec![(Error, Inactive)]);
        assert_eq!(rule_state(inst.values()), Firing);
    }

    #[test]
    fn ending_all_resolves_firing_instances() {
        let mut inst = BTreeMap::new();
        step(&mut inst, Outcome::Samples(vec![sample("a", 1.0)]), 0, 0);
        step(
            &mut inst,
            Outcome::Samples(vec![sample("a", 1.0), sample("b", 1.0)]),
            10,
            1,
        );
        let s = end_all(&mut inst);
        let mut p = path(&s);
        p.sort_by_key(|(a, b)| (a.as_str(), b.as_str()));
        assert_eq!(p, vec![(Firing, Resolved), (Pending, Inactive)]);
    }

    #[test]
    fn fingerprints_depend_on_every_label() {
        let a = sample("a", 0.0).labels;
        let mut b = a.clone();
        b.insert("x".into(), "".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    }
}
