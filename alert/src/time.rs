//! Durations as people write them (`30s`, `5m`) and timestamps as RFC 3339, in and out of JSON.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A timestamp in milliseconds as RFC 3339 UTC with milliseconds (`2026-11-24T10:00:00.000Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Reads RFC 3339 into milliseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{text}` is not an RFC 3339 time like 2026-11-24T10:00:00Z: {e}"))
}

/// A duration written `30s`, `1m30s`, `2h`, `500ms`; shown in the shortest such form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub fn as_millis(self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128) as i64
    }

    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        if t == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        humantime::parse_duration(t)
            .map(Dur)
            .map_err(|e| format!("`{text}` is not a duration like 30s, 5m or 2h: {e}"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut s = (ms / 1000) as u64;
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s >= size {
                write!(f, "{}{unit}", s / size)?;
                s %= size;
            }
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(n) => Ok(Dur::secs(n)),
            Raw::Text(t) => Dur::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_compactly() {
        for (text, shown) in [
            ("30s", "30s"),
            ("90s", "1m30s"),
            ("1h", "1h"),
            ("2h 5m", "2h5m"),
            ("500ms", "500ms"),
            ("0s", "0s"),
            ("0", "0s"),
            ("1d", "1d"),
        ] {
            assert_eq!(Dur::parse(text).map(|d| d.to_string()), Ok(shown.into()));
        }
        assert!(Dur::parse("soon").is_err());
        assert!(Dur::parse("-5s").is_err());
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let ms = 1_795_000_000_123;
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Ok(ms));
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
