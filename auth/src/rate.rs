//! Ingest rate limits per token: a bucket of bytes that refills at the token's rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// An ingest limit of a token or of a tenant, shared by every request made under it.
#[derive(Debug, Clone)]
pub struct IngestLimit {
    /// Whose limit: "token `x`" or "tenant `y`", for the refusal's message.
    whose: Arc<str>,
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
    pub fn new(whose: impl Into<Arc<str>>, bytes_per_second: u64) -> IngestLimit {
        IngestLimit {
            whose: whose.into(),
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

    /// "token `x`" or "tenant `y`".
    pub fn whose(&self) -> &str {
        &self.whose
    }

    /// Takes `bytes` for a request, or says how long to wait before there are enough. A
    /// request larger than one second's worth passes once the bucket is full, leaving it in
    /// debt, so the average stays at the rate whatever the request sizes.
    pub fn take(&self, bytes: u64) -> Result<(), Duration> {
        IngestLimit::take_all(std::slice::from_ref(self), bytes).map_err(|(wait, _)| wait)
    }

    /// Takes `bytes` from every limit, or from none: a request refused by one limit (its
    /// tenant's, say) costs nothing from the others (its token's). On refusal, the longest wait
    /// and the limit that asks for it.
    pub fn take_all(limits: &[IngestLimit], bytes: u64) -> Result<(), (Duration, &IngestLimit)> {
        IngestLimit::take_all_at(limits, bytes, Instant::now())
    }

    fn take_all_at(
        limits: &[IngestLimit],
        bytes: u64,
        now: Instant,
    ) -> Result<(), (Duration, &IngestLimit)> {
        // Locked in one order (by address), so two requests never wait on each other.
        let mut order: Vec<&IngestLimit> = limits.iter().collect();
        order.sort_by_key(|l| Arc::as_ptr(&l.bucket) as usize);
        order.dedup_by_key(|l| Arc::as_ptr(&l.bucket) as usize);
        let mut buckets: Vec<_> = order.iter().map(|l| (*l, l.bucket.lock())).collect();
        let mut refusal: Option<(Duration, &IngestLimit)> = None;
        for (limit, bucket) in buckets.iter_mut() {
            let rate = limit.bytes_per_second as f64;
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.available = (bucket.available + elapsed * rate).min(rate);
            bucket.updated = now;
            let needed = (bytes as f64).min(rate);
            if bucket.available < needed {
                let wait = Duration::from_secs_f64((needed - bucket.available) / rate);
                if refusal.is_none_or(|(longest, _)| wait > longest) {
                    refusal = Some((wait, *limit));
                }
            }
        }
        if let Some(refused) = refusal {
            return Err(refused);
        }
        for (_, bucket) in buckets.iter_mut() {
            bucket.available -= bytes as f64;
        }
        Ok(())
    }

    #[cfg(test)]
    fn take_at(&self, bytes: u64, now: Instant) -> Result<(), Duration> {
        IngestLimit::take_all_at(std::slice::from_ref(self), bytes, now).map_err(|(wait, _)| wait)
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
        let limit = IngestLimit::new("token `t`", 1000);
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
    fn a_request_refused_by_one_limit_costs_nothing_from_the_others() {
        let token = IngestLimit::new("token `t`", 1000);
        let tenant = IngestLimit::new("tenant `a`", 500);
        let both = [token.clone(), tenant.clone()];
        let t0 = Instant::now();
        assert!(IngestLimit::take_all_at(&both, 400, t0).is_ok());
        let (wait, whose) = IngestLimit::take_all_at(&both, 400, t0).expect_err("tenant is short");
        assert_eq!(whose.whose(), "tenant `a`");
        assert!((wait.as_secs_f64() - 0.6).abs() < 1e-9, "{wait:?}");
        // The token kept its 600 bytes.
        assert_eq!(token.take_at(600, t0), Ok(()));
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
