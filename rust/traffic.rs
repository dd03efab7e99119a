//! The proxy's traffic counters (H9), written from Python's hot path without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::scheduler::Traffic;

const NEVER: u64 = u64::MAX;

/// In-flight requests and the time of the last byte moved, as atomics.
pub struct TrafficCounters {
    base: Instant,
    in_flight: AtomicU64,
    /// Nanoseconds since `base`; `NEVER` until the first request.
    last_progress: AtomicU64,
}

impl TrafficCounters {
    pub fn new(base: Instant) -> TrafficCounters {
        TrafficCounters {
            base,
            in_flight: AtomicU64::new(0),
            last_progress: AtomicU64::new(NEVER),
        }
    }

    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.progress();
    }

    pub fn progress(&self) {
        let now = self.base.elapsed().as_nanos() as u64;
        self.last_progress.store(now, Ordering::Relaxed);
    }

    pub fn finished(&self) {
        // Saturate: an unmatched `finished` must not wrap to 2^64 requests.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn snapshot(&self) -> Traffic {
        let last = self.last_progress.load(Ordering::Relaxed);
        Traffic {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_progress: (last != NEVER).then(|| Duration::from_nanos(last)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_never_goes_negative() {
        let t = TrafficCounters::new(Instant::now());
        assert_eq!(t.snapshot().last_progress, None);
        t.started();
        t.started();
        t.finished();
        assert_eq!(t.snapshot().in_flight, 1);
        assert!(t.snapshot().last_progress.is_some());
        t.finished();
        t.finished();
        assert_eq!(t.snapshot().in_flight, 0);
    }
}
