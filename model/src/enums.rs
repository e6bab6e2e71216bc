//! OTLP enumerations as the text SQL shows (DESIGN.md: `kind`, `status_code`, metric `type`,
//! `temporality`). Values outside the known set are kept as their decimal number so that
//! conversion stays lossless.

use std::borrow::Cow;

fn name_or_number(value: i32, names: &[(i32, &'static str)]) -> Cow<'static, str> {
    names
        .iter()
        .find(|(v, _)| *v == value)
        .map(|(_, n)| Cow::Borrowed(*n))
        .unwrap_or_else(|| Cow::Owned(value.to_string()))
}

fn number_of(text: &str, names: &[(i32, &'static str)]) -> Option<i32> {
    names
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(text))
        .map(|(v, _)| *v)
        .or_else(|| text.parse().ok())
}

const SPAN_KINDS: &[(i32, &str)] = &[
    (0, "UNSPECIFIED"),
    (1, "INTERNAL"),
    (2, "SERVER"),
    (3, "CLIENT"),
    (4, "PRODUCER"),
    (5, "CONSUMER"),
];

const STATUS_CODES: &[(i32, &str)] = &[(0, "UNSET"), (1, "OK"), (2, "ERROR")];

const TEMPORALITIES: &[(i32, &str)] = &[(0, "unspecified"), (1, "delta"), (2, "cumulative")];

pub fn span_kind_name(kind: i32) -> Cow<'static, str> {
    name_or_number(kind, SPAN_KINDS)
}

pub fn span_kind_number(name: &str) -> Option<i32> {
    number_of(name, SPAN_KINDS)
}

pub fn status_code_name(code: i32) -> Cow<'static, str> {
    name_or_number(code, STATUS_CODES)
}

pub fn status_code_number(name: &str) -> Option<i32> {
    number_of(name, STATUS_CODES)
}

pub fn temporality_name(temporality: i32) -> Cow<'static, str> {
    name_or_number(temporality, TEMPORALITIES)
}

pub fn temporality_number(name: &str) -> Option<i32> {
    number_of(name, TEMPORALITIES)
}

/// The conventional severity text for an OTLP severity number (used when a record has none).
pub fn severity_name(number: i32) -> &'static str {
    match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ => "UNSPECIFIED",
    }
}

/// Metric point type in the `metrics` table.
pub const METRIC_TYPE_GAUGE: &str = "gauge";
pub const METRIC_TYPE_SUM: &str = "sum";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_values_round_trip() {
        for v in -3..10 {
            assert_eq!(span_kind_number(&span_kind_name(v)), Some(v));
            assert_eq!(status_code_number(&status_code_name(v)), Some(v));
            assert_eq!(temporality_number(&temporality_name(v)), Some(v));
        }
        assert_eq!(span_kind_name(2), "SERVER");
        assert_eq!(status_code_name(2), "ERROR");
        assert_eq!(temporality_name(2), "cumulative");
        assert_eq!(span_kind_number("server"), Some(2));
    }
}
