//! The rules file: rules and channels in TOML, kept in git and loaded at start and whenever the
//! file changes.
//!
//! ```toml
//! [[channel]]
//! name = "ops"
//! type = "webhook"
//! url = "http://hooks.internal/oxeye"
//!
//! [[rule]]
//! name = "Checkout errors"
//! builder = { kind = "error_rate", service = "checkout", window = "5m" }
//! condition = { op = ">", threshold = 5 }
//! for = "2m"
//! annotations = { summary = "{{ $labels.service_name }} fails {{ $value }}% of requests" }
//! notify = [{ channel = "ops" }]
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::AlertError;
use crate::rule::{Channel, RuleSpec};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default, alias = "rules")]
    pub rule: Vec<RuleSpec>,
    #[serde(default, alias = "channels")]
    pub channel: Vec<Channel>,
}

/// Reads the file; the rules are validated by the caller (which can plan their SQL).
pub fn parse(path: &Path, text: &str) -> Result<RulesFile, AlertError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| AlertError::RulesFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut names = std::collections::BTreeSet::new();
    for r in &file.rule {
        if !names.insert(r.name.trim().to_string()) {
            return Err(AlertError::RulesFile {
                path: path.display().to_string(),
                message: format!("two rules are named `{}`", r.name),
            });
        }
    }
    for c in &file.channel {
        c.validate().map_err(|e| AlertError::RulesFile {
            path: path.display().to_string(),
            message: format!("channel `{}`: {e}", c.name),
        })?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rules_and_channels() {
        let text = r#"
[[channel]]
name = "ops"
type = "webhook"
url = "http://127.0.0.1:9/hook"

[[rule]]
name = "file rule"
sql = "SELECT 'a' AS k, 1.0 AS value"
condition = { op = ">", threshold = 0 }
interval = "1s"
for = "0s"
labels = { team = "core" }
notify = [{ channel = "ops" }]
"#;
        let f = parse(Path::new("rules.toml"), text).expect("parse");
        assert_eq!(f.rule.len(), 1);
        assert_eq!(f.rule[0].interval.to_string(), "1s");
        assert_eq!(f.channel[0].name, "ops");
    }

    #[test]
    fn the_example_rules_file_is_valid() {
        let text = include_str!("../../examples/alerts.toml");
        let f = parse(Path::new("examples/alerts.toml"), text).expect("parse");
        assert_eq!(f.rule.len(), 3);
        for rule in &f.rule {
            rule.validate().expect("valid rule");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let err = parse(Path::new("r.toml"), "[[rule]]\nname = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("r.toml"), "{err}");
        let dup = "[[rule]]\nname='a'\nsql='SELECT 1 AS value'\ncondition={op='>',threshold=0}\n\
                   [[rule]]\nname='a'\nsql='SELECT 1 AS value'\ncondition={op='>',threshold=0}\n";
        assert!(
            parse(Path::new("r.toml"), dup)
                .unwrap_err()
                .to_string()
                .contains("two rules")
        );
    }
}
