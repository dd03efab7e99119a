//! The proxy's traffic counters, written from Python's hot path without locks: the one
//! count of requests in flight (D2, `/status`), and what H9 needs besides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::scheduler::Traffic;

const NEVER: u64 = u64::MAX;

/// In-flight requests and the time of the last byte moved, as atomics.
///
/// A request blocked on its client (a body not sent yet, a client not reading) is not
/// waiting on the app: it is left out of `in_flight` for H9 until the client moves.
pub struct TrafficCounters {
    base: Instant,
    in_flight: AtomicU64,
    waiting_on_client: AtomicU64,
    /// Nanoseconds since `base`; `NEVER` until the first request.
    last_progress: AtomicU64,
    /// When a request blocked on its client last went back to waiting on the app.
    last_resumed: AtomicU64,
}

impl TrafficCounters {
    pub fn new(base: Instant) -> TrafficCounters {
        TrafficCounters {
            base,
            in_flight: AtomicU64::new(0),
            waiting_on_client: AtomicU64::new(0),
            last_progress: AtomicU64::new(NEVER),
            last_resumed: AtomicU64::new(NEVER),
        }
    }

    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.progress();
    }

    pub fn progress(&self) {
        self.last_progress.store(self.now(), Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// A request left; how many are still in flight.
    pub fn finished(&self) -> u64 {
        decrement(&self.in_flight)
    }

    /// Requests in flight, those waiting on their client included.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn client_wait_started(&self) {
        self.waiting_on_client.fetch_add(1, Ordering::Relaxed);
    }

    /// The client moved: the app's stall clock starts again from now. Not progress of the
    /// app's: bytes from a client do not make a hung app busy (H9's `allow_on_busy`).
    pub fn client_wait_finished(&self) {
        decrement(&self.waiting_on_client);
        self.last_resumed.store(self.now(), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Traffic {
        let time = |at: &AtomicU64| {
            let nanos = at.load(Ordering::Relaxed);
            (nanos != NEVER).then(|| Duration::from_nanos(nanos))
        };
        let waiting = self.waiting_on_client.load(Ordering::Relaxed);
        Traffic {
            in_flight: self
                .in_flight
                .load(Ordering::Relaxed)
                .saturating_sub(waiting),
            last_progress: time(&self.last_progress),
            last_resumed: time(&self.last_resumed),
        }
    }
}

/// Saturate: an unmatched decrement must not wrap to 2^64. Returns the new count.
fn decrement(counter: &AtomicU64) -> u64 {
    match counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) {
        Ok(before) => before - 1,
        Err(_) => 0,
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
        assert_eq!(t.finished(), 1);
        assert_eq!(t.snapshot().in_flight, 1);
        assert!(t.snapshot().last_progress.is_some());
        t.finished();
        t.finished();
        assert_eq!(t.snapshot().in_flight, 0);
    }

    #[test]
    fn h9_a_request_waiting_on_its_client_is_not_waiting_on_the_app() {
        let t = TrafficCounters::new(Instant::now());
        t.started();
        t.client_wait_started();
        assert_eq!(t.snapshot().in_flight, 0);
        let progress = t.snapshot().last_progress;
        t.client_wait_finished();
        let after = t.snapshot();
        assert_eq!(after.in_flight, 1);
        assert!(
            after.last_resumed.is_some(),
            "the client moving restarts the stall clock"
        );
        assert_eq!(
            after.last_progress, progress,
            "but is not the app's progress"
        );
    }
}
