//! The bodies receivers get: oxeye's generic webhook JSON, Alertmanager's `POST /api/v2/alerts`
//! array, and a Slack incoming-webhook message.

use serde_json::{Value, json};

use crate::plan::{Notice, NoticeStatus};
use crate::rule::{ChannelKind, Rule};
use crate::template::format_value;
use crate::time::rfc3339;

/// What every payload needs to know besides the notice.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// oxeye's own address as users reach it (links back to the alerts page).
    pub public_url: &'a str,
    pub now_ms: i64,
}

/// The body for a channel of this kind, and the path to append to its URL.
pub fn body(kind: ChannelKind, rule: &Rule, notice: &Notice, sender: Sender<'_>) -> Value {
    match kind {
        ChannelKind::Webhook => webhook(rule, notice, sender),
        ChannelKind::Alertmanager => alertmanager(rule, notice, sender),
        ChannelKind::Slack => slack(rule, notice, sender),
    }
}

fn alerts_link(rule: &Rule, sender: Sender<'_>) -> String {
    format!(
        "{}/alerts?rule={}",
        sender.public_url.trim_end_matches('/'),
        rule.id
    )
}

/// oxeye's generic JSON: the rule, the status, and per alert its labels, annotations and value.
pub fn webhook(rule: &Rule, notice: &Notice, sender: Sender<'_>) -> Value {
    let alerts: Vec<Value> = notice
        .alerts
        .iter()
        .map(|a| {
            json!({
                "status": a.status.as_str(),
                "labels": a.instance.labels,
                "annotations": a.instance.annotations,
                "value": a.instance.value,
                "starts_at": rfc3339(a.instance.fired_at_ms.unwrap_or(a.instance.active_since_ms)),
                "ends_at": a.ended_at_ms.map(rfc3339),
                "fingerprint": a.instance.fingerprint,
            })
        })
        .collect();
    json!({
        "version": "1",
        "status": notice.status.as_str(),
        "rule": {"id": rule.id, "name": rule.spec.name, "severity": rule.spec.severity.as_str()},
        "rule_name": rule.spec.name,
        "group_labels": {"alertname": rule.spec.name},
        "error": notice.error,
        "alerts": alerts,
        "url": alerts_link(rule, sender),
        "sent_at": rfc3339(sender.now_ms),
    })
}

/// Alertmanager's API v2 alert list. Firing alerts are valid for four refresh periods (as
/// Prometheus does), so Alertmanager resolves them itself if oxeye goes away.
pub fn alertmanager(rule: &Rule, notice: &Notice, sender: Sender<'_>) -> Value {
    let valid_for = 4 * crate::plan::ALERTMANAGER_REFRESH_MS.max(rule.spec.interval.as_millis());
    let alerts: Vec<Value> = notice
        .alerts
        .iter()
        .map(|a| {
            let mut labels = a.instance.labels.clone();
            let mut annotations = a.instance.annotations.clone();
            if a.status == NoticeStatus::Error
                || a.instance.fingerprint == crate::state::ERROR_FINGERPRINT
            {
                labels.insert("oxeye_state".into(), "error".into());
                if let Some(m) = &a.instance.message {
                    annotations.insert("description".into(), format!("query failed: {m}"));
                }
            }
            if let Some(v) = a.instance.value {
                annotations
                    .entry("value".into())
                    .or_insert_with(|| format_value(v));
            }
            let ends = a.ended_at_ms.unwrap_or(sender.now_ms + valid_for);
            json!({
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(a.instance.fired_at_ms.unwrap_or(a.instance.active_since_ms)),
                "endsAt": rfc3339(ends),
                "generatorURL": alerts_link(rule, sender),
            })
        })
        .collect();
    Value::Array(alerts)
}

/// A Slack (or Mattermost, Rocket.Chat) incoming-webhook message.
pub fn slack(rule: &Rule, notice: &Notice, sender: Sender<'_>) -> Value {
    let (icon, colour) = match notice.status {
        NoticeStatus::Firing => (":rotating_light:", "#d62728"),
        NoticeStatus::Resolved => (":white_check_mark:", "#2ca02c"),
        NoticeStatus::Error => (":warning:", "#9467bd"),
    };
    let mut text = format!(
        "{icon} [{}] {} ({}, {} alert{})",
        notice.status.as_str().to_uppercase(),
        rule.spec.name,
        rule.spec.severity.as_str(),
        notice.alerts.len(),
        if notice.alerts.len() == 1 { "" } else { "s" }
    );
    if let Some(e) = &notice.error {
        text.push_str(&format!("\nquery failed: {e}"));
    }
    let attachments: Vec<Value> = notice
        .alerts
        .iter()
        .take(20)
        .map(|a| {
            let labels: Vec<String> = a
                .instance
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let summary = a
                .instance
                .annotations
                .get("summary")
                .or_else(|| a.instance.annotations.get("description"))
                .cloned()
                .unwrap_or_default();
            json!({
                "color": colour,
                "title": labels.join(", "),
                "text": format!(
                    "{summary}{}value: {}",
                    if summary.is_empty() { "" } else { "\n" },
                    a.instance.value.map(format_value).unwrap_or_else(|| "-".into())
                ),
                "title_link": alerts_link(rule, sender),
            })
        })
        .collect();
    json!({"text": text, "attachments": attachments})
}

/// The URL a payload goes to: Alertmanager's API path is appended to its base URL.
pub fn target_url(kind: ChannelKind, url: &str) -> String {
    match kind {
        ChannelKind::Alertmanager if !url.trim_end_matches('/').ends_with("/api/v2/alerts") => {
            format!("{}/api/v2/alerts", url.trim_end_matches('/'))
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::NoticeAlert;
    use crate::rule::{CompareOp, Condition, RuleSource, RuleSpec, Severity};
    use crate::state::{Instance, InstanceState};
    use crate::time::Dur;

    fn rule() -> Rule {
        Rule {
            id: "r1".into(),
            spec: RuleSpec {
                name: "High errors".into(),
                sql: Some("SELECT 1 AS value".into()),
                builder: None,
                condition: Condition {
                    op: CompareOp::Gt,
                    threshold: 5.0,
                },
                interval: Dur::secs(30),
                for_: Dur::secs(60),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                severity: Severity::Critical,
                notify: vec![],
                repeat_interval: Dur::secs(3600),
                enabled: true,
            },
            source: RuleSource::Api,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn notice(status: NoticeStatus) -> Notice {
        let labels = BTreeMap::from([
            ("alertname".to_string(), "High errors".to_string()),
            ("service_name".to_string(), "checkout".to_string()),
        ]);
        Notice {
            status,
            alerts: vec![NoticeAlert {
                status,
                instance: Instance {
                    fingerprint: "f".into(),
                    labels,
                    annotations: BTreeMap::from([(
                        "summary".to_string(),
                        "checkout at 7.5%".to_string(),
                    )]),
                    value: Some(7.5),
                    state: InstanceState::Firing,
                    active_since_ms: 1_000,
                    fired_at_ms: Some(61_000),
                    last_evaluated_ms: 61_000,
                    notified_ms: None,
                    message: None,
                },
                ended_at_ms: (status == NoticeStatus::Resolved).then_some(90_000),
            }],
            alertmanager_only: false,
            error: None,
        }
    }

    const SENDER: Sender<'static> = Sender {
        public_url: "http://oxeye:7700/",
        now_ms: 61_000,
    };

    #[test]
    fn the_webhook_carries_rule_status_and_each_alert() {
        let b = webhook(&rule(), &notice(NoticeStatus::Firing), SENDER);
        assert_eq!(b["status"], "firing");
        assert_eq!(b["rule_name"], "High errors");
        assert_eq!(b["alerts"][0]["labels"]["service_name"], "checkout");
        assert_eq!(b["alerts"][0]["value"], 7.5);
        assert_eq!(b["alerts"][0]["annotations"]["summary"], "checkout at 7.5%");
        assert_eq!(b["url"], "http://oxeye:7700/alerts?rule=r1");
        let b = webhook(&rule(), &notice(NoticeStatus::Resolved), SENDER);
        assert_eq!(b["status"], "resolved");
        assert_eq!(b["alerts"][0]["ends_at"], "1970-01-01T00:01:30.000Z");
    }

    #[test]
    fn alertmanager_gets_its_v2_shape() {
        let b = alertmanager(&rule(), &notice(NoticeStatus::Firing), SENDER);
        let a = &b[0];
        assert_eq!(a["labels"]["alertname"], "High errors");
        assert_eq!(a["startsAt"], "1970-01-01T00:01:01.000Z");
        assert_eq!(a["endsAt"], "1970-01-01T00:05:01.000Z", "4 minutes ahead");
        assert_eq!(a["annotations"]["value"], "7.5");
        assert_eq!(
            target_url(ChannelKind::Alertmanager, "http://am:9093/"),
            "http://am:9093/api/v2/alerts"
        );
        assert_eq!(
            target_url(ChannelKind::Alertmanager, "http://am:9093/api/v2/alerts"),
            "http://am:9093/api/v2/alerts"
        );
    }

    #[test]
    fn slack_gets_readable_text() {
        let b = slack(&rule(), &notice(NoticeStatus::Firing), SENDER);
        let text = b["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("FIRING") && text.contains("High errors"),
            "{text}"
        );
        assert!(
            b["attachments"][0]["title"]
                .as_str()
                .unwrap_or_default()
                .contains("service_name=checkout")
        );
    }
}
