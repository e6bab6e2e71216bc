//! Which notifications an evaluation sends. Instances of a rule are grouped: one message per
//! rule and status. A firing message goes out when an instance starts firing (and is not
//! silenced) and again after the rule's repeat interval; a resolved message when a firing
//! instance that receivers were told about ends; an error message when the rule's query fails.
//! Alertmanager expects to hear about firing alerts regularly, so it is refreshed every minute.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::silence::{Silence, is_silenced};
use crate::state::{Instance, InstanceState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeStatus {
    Firing,
    Resolved,
    Error,
}

impl NoticeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeStatus::Firing => "firing",
            NoticeStatus::Resolved => "resolved",
            NoticeStatus::Error => "error",
        }
    }
}

/// One alert in a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeAlert {
    pub status: NoticeStatus,
    pub instance: Instance,
    /// When it resolved (resolved alerts only).
    pub ended_at_ms: Option<i64>,
}

/// One notification of one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub status: NoticeStatus,
    pub alerts: Vec<NoticeAlert>,
    /// A refresh only Alertmanager channels need.
    pub alertmanager_only: bool,
    /// The query error, for error notices.
    pub error: Option<String>,
}

/// How often a rule notifies.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub repeat_ms: i64,
    /// Set when the rule notifies an Alertmanager: how often to re-send firing alerts to it.
    pub alertmanager_refresh_ms: Option<i64>,
}

/// How often firing alerts are re-sent to Alertmanager (Prometheus' resend delay).
pub const ALERTMANAGER_REFRESH_MS: i64 = 60_000;

fn due(i: &Instance, repeat_ms: i64, now_ms: i64) -> bool {
    i.notified_ms.is_none_or(|t| now_ms - t >= repeat_ms)
}

/// Plans the notifications after a step and marks the instances they tell about as notified.
pub fn plan(
    policy: Policy,
    instances: &mut BTreeMap<String, Instance>,
    ended: &[Instance],
    silences: &[Silence],
    last_alertmanager_ms: &mut Option<i64>,
    now_ms: i64,
) -> Vec<Notice> {
    let mut notices = Vec::new();

    let resolved: Vec<NoticeAlert> = ended
        .iter()
        .filter(|i| i.notified_ms.is_some() && i.state != InstanceState::Pending)
        .map(|i| NoticeAlert {
            status: NoticeStatus::Resolved,
            instance: i.clone(),
            ended_at_ms: Some(now_ms),
        })
        .collect();
    if !resolved.is_empty() {
        notices.push(Notice {
            status: NoticeStatus::Resolved,
            alerts: resolved,
            alertmanager_only: false,
            error: None,
        });
    }

    let audible = |i: &Instance| !is_silenced(silences, &i.labels, now_ms);
    let firing_due = instances.values().any(|i| {
        i.state == InstanceState::Firing && audible(i) && due(i, policy.repeat_ms, now_ms)
    });
    let refresh_alertmanager = policy
        .alertmanager_refresh_ms
        .is_some_and(|every| last_alertmanager_ms.is_none_or(|t| now_ms - t >= every));
    if firing_due || refresh_alertmanager {
        let mut alerts = Vec::new();
        for i in instances.values_mut() {
            if i.state == InstanceState::Firing && audible(i) {
                if firing_due {
                    i.notified_ms = Some(now_ms);
                }
                alerts.push(NoticeAlert {
                    status: NoticeStatus::Firing,
                    instance: i.clone(),
                    ended_at_ms: None,
                });
            }
        }
        if !alerts.is_empty() {
            notices.push(Notice {
                status: NoticeStatus::Firing,
                alerts,
                alertmanager_only: !firing_due,
                error: None,
            });
        }
    }

    for i in instances.values_mut() {
        if i.state == InstanceState::Error && audible(i) && due(i, policy.repeat_ms, now_ms) {
            i.notified_ms = Some(now_ms);
            notices.push(Notice {
                status: NoticeStatus::Error,
                error: i.message.clone(),
                alerts: vec![NoticeAlert {
                    status: NoticeStatus::Error,
                    instance: i.clone(),
                    ended_at_ms: None,
                }],
                alertmanager_only: false,
            });
        }
    }

    if policy.alertmanager_refresh_ms.is_some() && !notices.is_empty() {
        *last_alertmanager_ms = Some(now_ms);
    }
    notices
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::silence::{MatchOp, Matcher};
    use crate::state::{Outcome, Sample, step};

    const POLICY: Policy = Policy {
        repeat_ms: 10_000,
        alertmanager_refresh_ms: None,
    };

    fn samples(names: &[&str]) -> Outcome {
        Outcome::Samples(
            names
                .iter()
                .map(|n| Sample {
                    labels: BTreeMap::from([("service_name".to_string(), n.to_string())]),
                    value: 1.0,
                })
                .collect(),
        )
    }

    fn statuses(n: &[Notice]) -> Vec<(NoticeStatus, usize, bool)> {
        n.iter()
            .map(|n| (n.status, n.alerts.len(), n.alertmanager_only))
            .collect()
    }

    struct Rig {
        instances: BTreeMap<String, Instance>,
        silences: Vec<Silence>,
        last_am: Option<i64>,
        policy: Policy,
    }

    impl Rig {
        fn new(policy: Policy) -> Rig {
            Rig {
                instances: BTreeMap::new(),
                silences: vec![],
                last_am: None,
                policy,
            }
        }

        fn eval(&mut self, outcome: Outcome, for_ms: i64, now: i64) -> Vec<Notice> {
            let s = step(&mut self.instances, outcome, for_ms, now);
            plan(
                self.policy,
                &mut self.instances,
                &s.ended,
                &self.silences,
                &mut self.last_am,
                now,
            )
        }
    }

    use NoticeStatus::*;

    #[test]
    fn fires_once_grouped_repeats_after_the_interval_and_resolves_once() {
        let mut r = Rig::new(POLICY);
        assert!(r.eval(samples(&["a"]), 1000, 0).is_empty(), "pending");
        assert_eq!(
            statuses(&r.eval(samples(&["a", "b"]), 1000, 1000)),
            vec![(Firing, 1, false)]
        );
        // b fires: the message groups every firing instance of the rule.
        assert_eq!(
            statuses(&r.eval(samples(&["a", "b"]), 1000, 2000)),
            vec![(Firing, 2, false)]
        );
        assert!(
            r.eval(samples(&["a", "b"]), 1000, 3000).is_empty(),
            "already told"
        );
        assert_eq!(
            statuses(&r.eval(samples(&["a", "b"]), 1000, 12_000)),
            vec![(Firing, 2, false)]
        );
        assert_eq!(
            statuses(&r.eval(samples(&["b"]), 1000, 13_000)),
            vec![(Resolved, 1, false)]
        );
        assert_eq!(
            statuses(&r.eval(samples(&[]), 1000, 14_000)),
            vec![(Resolved, 1, false)]
        );
        assert!(r.eval(samples(&[]), 1000, 15_000).is_empty());
    }

    #[test]
    fn pending_that_ends_tells_no_one() {
        let mut r = Rig::new(POLICY);
        r.eval(samples(&["a"]), 5000, 0);
        assert!(r.eval(samples(&[]), 5000, 1000).is_empty());
    }

    #[test]
    fn silenced_alerts_wait_for_the_silence_to_end() {
        let mut r = Rig::new(POLICY);
        r.silences.push(Silence {
            id: "s".into(),
            matchers: vec![Matcher {
                name: "service_name".into(),
                op: MatchOp::Equal,
                value: "a".into(),
            }],
            starts_at_ms: 0,
            ends_at_ms: 5000,
            comment: String::new(),
            created_by: String::new(),
        });
        assert!(r.eval(samples(&["a"]), 0, 0).is_empty());
        assert!(r.eval(samples(&["a"]), 0, 4000).is_empty());
        assert_eq!(
            statuses(&r.eval(samples(&["a"]), 0, 5000)),
            vec![(Firing, 1, false)]
        );
        // Silenced and never told: its end is not news.
        let mut r2 = Rig::new(POLICY);
        r2.silences = r.silences.clone();
        r2.eval(samples(&["a"]), 0, 0);
        assert!(r2.eval(samples(&[]), 0, 1000).is_empty());
    }

    #[test]
    fn query_errors_notify_and_their_recovery_resolves() {
        let mut r = Rig::new(POLICY);
        let failed = || Outcome::Failed {
            message: "table gone".into(),
            labels: BTreeMap::new(),
        };
        let n = r.eval(failed(), 0, 0);
        assert_eq!(statuses(&n), vec![(Error, 1, false)]);
        assert_eq!(n[0].error.as_deref(), Some("table gone"));
        assert!(r.eval(failed(), 0, 1000).is_empty());
        assert_eq!(
            statuses(&r.eval(samples(&[]), 0, 2000)),
            vec![(Resolved, 1, false)]
        );
    }

    #[test]
    fn alertmanager_hears_about_firing_alerts_every_minute() {
        let mut r = Rig::new(Policy {
            repeat_ms: 4 * 3_600_000,
            alertmanager_refresh_ms: Some(ALERTMANAGER_REFRESH_MS),
        });
        assert_eq!(
            statuses(&r.eval(samples(&["a"]), 0, 0)),
            vec![(Firing, 1, false)]
        );
        assert!(r.eval(samples(&["a"]), 0, 30_000).is_empty());
        assert_eq!(
            statuses(&r.eval(samples(&["a"]), 0, 60_000)),
            vec![(Firing, 1, true)]
        );
        assert!(r.eval(samples(&[]), 0, 61_000).len() == 1);
        assert!(
            r.eval(samples(&[]), 0, 200_000).is_empty(),
            "nothing firing, nothing to refresh"
        );
    }
}
