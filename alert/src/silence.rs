//! Silences: label matchers and a time window during which matching alerts send nothing. The
//! alerts still evaluate and show (marked silenced); notifications resume when the silence ends.

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::AlertError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Regex,
    #[serde(rename = "!~")]
    NotRegex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    #[serde(default = "equal")]
    pub op: MatchOp,
    pub value: String,
}

fn equal() -> MatchOp {
    MatchOp::Equal
}

/// A regex anchored at both ends, as Alertmanager's matchers are.
fn anchored(pattern: &str) -> Result<Regex, AlertError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| AlertError::invalid(format!("matcher regex `{pattern}` is not valid: {e}")))
}

impl Matcher {
    pub fn validate(&self) -> Result<(), AlertError> {
        if self.name.trim().is_empty() {
            return Err(AlertError::invalid("a matcher needs a label name"));
        }
        if matches!(self.op, MatchOp::Regex | MatchOp::NotRegex) {
            anchored(&self.value)?;
        }
        Ok(())
    }

    /// An absent label matches as the empty string (Alertmanager's rule).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(&self.name).map_or("", String::as_str);
        match self.op {
            MatchOp::Equal => actual == self.value,
            MatchOp::NotEqual => actual != self.value,
            MatchOp::Regex => anchored(&self.value).is_ok_and(|r| r.is_match(actual)),
            MatchOp::NotRegex => anchored(&self.value).is_ok_and(|r| !r.is_match(actual)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceStatus {
    Pending,
    Active,
    Expired,
}

impl Silence {
    pub fn status(&self, now_ms: i64) -> SilenceStatus {
        if now_ms < self.starts_at_ms {
            SilenceStatus::Pending
        } else if now_ms < self.ends_at_ms {
            SilenceStatus::Active
        } else {
            SilenceStatus::Expired
        }
    }

    pub fn validate(&self) -> Result<(), AlertError> {
        if self.matchers.is_empty() {
            return Err(AlertError::invalid(
                "a silence needs at least one matcher, e.g. {\"name\": \"alertname\", \"op\": \"=\", \"value\": \"...\"}",
            ));
        }
        for m in &self.matchers {
            m.validate()?;
        }
        if self.ends_at_ms <= self.starts_at_ms {
            return Err(AlertError::invalid("a silence must end after it starts"));
        }
        Ok(())
    }

    /// Whether this silence mutes an alert with these labels at this time.
    pub fn mutes(&self, labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
        self.status(now_ms) == SilenceStatus::Active
            && self.matchers.iter().all(|m| m.matches(labels))
    }
}

/// Whether any silence mutes these labels now.
pub fn is_silenced(silences: &[Silence], labels: &BTreeMap<String, String>, now_ms: i64) -> bool {
    silences.iter().any(|s| s.mutes(labels, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
        Matcher {
            name: name.into(),
            op,
            value: value.into(),
        }
    }

    #[test]
    fn matchers_follow_alertmanager_rules() {
        let l = labels(&[("service_name", "checkout"), ("env", "prod")]);
        assert!(m("service_name", MatchOp::Equal, "checkout").matches(&l));
        assert!(!m("service_name", MatchOp::NotEqual, "checkout").matches(&l));
        assert!(m("service_name", MatchOp::Regex, "check.*").matches(&l));
        assert!(
            !m("service_name", MatchOp::Regex, "check").matches(&l),
            "anchored"
        );
        assert!(m("env", MatchOp::NotRegex, "dev|staging").matches(&l));
        assert!(m("absent", MatchOp::Equal, "").matches(&l));
        assert!(m("[", MatchOp::Regex, "[").validate().is_err());
    }

    #[test]
    fn a_silence_mutes_only_inside_its_window_and_when_all_matchers_match() {
        let s = Silence {
            id: "s1".into(),
            matchers: vec![
                m("service_name", MatchOp::Equal, "checkout"),
                m("env", MatchOp::Equal, "prod"),
            ],
            starts_at_ms: 1000,
            ends_at_ms: 2000,
            comment: String::new(),
            created_by: String::new(),
        };
        let l = labels(&[("service_name", "checkout"), ("env", "prod")]);
        assert!(!s.mutes(&l, 999));
        assert!(s.mutes(&l, 1000));
        assert!(!s.mutes(&l, 2000));
        assert!(!s.mutes(&labels(&[("service_name", "checkout")]), 1500));
        assert_eq!(s.status(5000), SilenceStatus::Expired);
    }
}
