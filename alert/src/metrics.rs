//! Alerting's own figures at `/metrics` (`oxeye_alert_*`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug)]
pub struct AlertMetrics {
    pub evaluations: Family<OutcomeLabels, Counter>,
    pub evaluation_seconds: Histogram,
    pub notifications: Family<DeliveryLabels, Counter>,
    pub alerts: Family<StateLabels, Gauge>,
    pub rules: Gauge,
    pub rules_file_reloads: Family<OutcomeLabels, Counter>,
}

impl AlertMetrics {
    pub fn register(registry: &mut Registry) -> AlertMetrics {
        let m = AlertMetrics {
            evaluations: Family::default(),
            evaluation_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            notifications: Family::default(),
            alerts: Family::default(),
            rules: Gauge::default(),
            rules_file_reloads: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("oxeye_alert");
        r.register(
            "evaluations",
            "Rule evaluations by outcome (ok, error)",
            m.evaluations.clone(),
        );
        r.register(
            "evaluation_seconds",
            "Time to evaluate one rule",
            m.evaluation_seconds.clone(),
        );
        r.register(
            "notifications",
            "Notification delivery attempts by channel type and outcome (ok, retry, failed, dropped)",
            m.notifications.clone(),
        );
        r.register(
            "instances",
            "Alert instances by state (pending, firing, error)",
            m.alerts.clone(),
        );
        r.register("rules", "Alert rules loaded", m.rules.clone());
        r.register(
            "rules_file_reloads",
            "Loads of the rules file by outcome",
            m.rules_file_reloads.clone(),
        );
        m
    }

    pub fn observe_evaluation(&self, ok: bool, took: Duration) {
        self.evaluations
            .get_or_create(&OutcomeLabels {
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
        self.evaluation_seconds.observe(took.as_secs_f64());
    }

    pub fn delivery(&self, channel: &'static str, outcome: &'static str) {
        self.notifications
            .get_or_create(&DeliveryLabels { channel, outcome })
            .inc();
    }
}
