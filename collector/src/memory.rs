//! Admission by bytes: a request reserves memory for its decoded form before it is decoded, and
//! holds it until the store has acknowledged it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Granularity of reservations; permits count KiB so that budgets above 4 GiB fit in `u32`.
const UNIT: usize = 1024;

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    capacity_units: usize,
}

/// Memory held by one request until it is dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    pub bytes: usize,
}

impl MemoryBudget {
    pub fn new(bytes: usize) -> Self {
        let capacity_units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            semaphore: Arc::new(Semaphore::new(capacity_units)),
            capacity_units,
        }
    }

    /// Reserves `bytes` now, or returns `None` when the budget cannot hold them at the moment.
    /// A single request larger than the whole budget is clamped to the whole budget, so it can
    /// still run alone.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.capacity_units);
        let permit = self
            .semaphore
            .clone()
            .try_acquire_many_owned(u32::try_from(units).ok()?)
            .ok()?;
        Some(Reservation {
            _permit: Some(permit),
            bytes,
        })
    }

    /// Bytes currently reserved.
    pub fn reserved_bytes(&self) -> usize {
        (self.capacity_units - self.semaphore.available_permits()) * UNIT
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_units * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_until_dropped() {
        let budget = MemoryBudget::new(10 * UNIT);
        let a = budget.try_reserve(6 * UNIT).unwrap();
        assert!(budget.try_reserve(6 * UNIT).is_none());
        assert_eq!(budget.reserved_bytes(), 6 * UNIT);
        drop(a);
        assert!(budget.try_reserve(6 * UNIT).is_some());
        // Larger than everything: clamped, runs alone.
        assert!(budget.try_reserve(100 * UNIT).is_some());
    }
}
