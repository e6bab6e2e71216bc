//! Ingest rate limits per token: a bucket of bytes that refills at the token's rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token's ingest limit, shared by every request made with the token.
#[derive(Debug, Clone)]
pub struct IngestLimit {
    bytes_per_second: u64,
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be sent now; negative after a request bigger than the bucket.
    available: f64,
    updated: Instant,
}

impl IngestLimit {
    /// Starts full: one second's worth of bytes may be sent at once.
    pub fn new(bytes_per_second: u64) -> IngestLimit {
        IngestLimit {
            bytes_per_second: bytes_per_second.max(1),
            bucket: Arc::new(Mutex::new(Bucket {
                available: bytes_per_second.max(1) as f64,
                updated: Instant::now(),
            })),
        }
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Takes `bytes` for a request, or says how long to wait before there are enough. A
    /// request larger than one second's worth passes once the bucket is full, leaving it in
    /// debt, so the average stays at the rate whatever the request sizes.
    pub fn take(&self, bytes: u64) -> Result<(), Duration> {
        self.take_at(bytes, Instant::now())
    }

    fn take_at(&self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let rate = self.bytes_per_second as f64;
        let mut bucket = self.bucket.lock();
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.available = (bucket.available + elapsed * rate).min(rate);
        bucket.updated = now;
        let needed = (bytes as f64).min(rate);
        if bucket.available >= needed {
            bucket.available -= bytes as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - bucket.available) / rate))
        }
    }
}

impl PartialEq for IngestLimit {
    fn eq(&self, other: &IngestLimit) -> bool {
        Arc::ptr_eq(&self.bucket, &other.bucket)
    }
}

impl Eq for IngestLimit {}

/// A size in bytes, written `1048576`, `64KiB`, `16MiB`, `2GiB` (or KB/MB/GB, powers of 1000):
/// the one parser of sizes for the token file and the command line.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 64MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_and_lets_big_requests_into_debt() {
        let limit = IngestLimit::new(1000);
        let t0 = Instant::now();
        assert_eq!(limit.take_at(600, t0), Ok(()));
        assert_eq!(limit.take_at(400, t0), Ok(()));
        let wait = limit.take_at(500, t0).expect_err("the bucket is empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Half a second later, 500 bytes are back.
        assert_eq!(limit.take_at(500, t0 + Duration::from_millis(500)), Ok(()));
        // Refills stop at one second's worth.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(limit.take_at(1000, later), Ok(()));
        assert!(limit.take_at(1, later).is_err());
        // A request of three seconds' worth passes on a full bucket and leaves it in debt.
        let full = later + Duration::from_secs(1);
        assert_eq!(limit.take_at(3000, full), Ok(()));
        let wait = limit.take_at(1, full).expect_err("in debt");
        assert!(wait > Duration::from_secs(1), "{wait:?}");
        assert_eq!(limit.take_at(1000, full + Duration::from_secs(3)), Ok(()));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("2MiB"), Ok(2 << 20));
        assert_eq!(parse_bytes("500 KB"), Ok(500_000));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert!(parse_bytes("fast").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(parse_bytes("0"), Ok(0));
    }
}
