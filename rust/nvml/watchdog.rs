//! Every NVML call runs under a deadline (SPEC G2): a hung driver is a real failure mode.
//!
//! A thread marks each call it makes on its `Watch`; the monitor's watchdog thread looks at
//! the marks every tick and reports a call it has seen running longer than the deadline.
//! The stuck thread is abandoned, never joined: nothing can interrupt a call into the driver.
//!
//! Marking is a few atomic stores (a seqlock), with no clock read and no lock, because a
//! sample makes about 20 calls per GPU: the watchdog, not the caller, notes when it first
//! saw a call, which makes a verdict at most one tick late.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Watch {
    thread: &'static str,
    /// Odd while a call runs; bumped as each call starts and ends.
    seq: AtomicU64,
    call_ptr: AtomicPtr<u8>,
    call_len: AtomicUsize,
    /// Milliseconds the current call may take on purpose (an event wait's own timeout).
    allowance_ms: AtomicU64,
}

impl Watch {
    pub fn new(thread: &'static str) -> Watch {
        Watch {
            thread,
            seq: AtomicU64::new(0),
            call_ptr: AtomicPtr::new(std::ptr::null_mut()),
            call_len: AtomicUsize::new(0),
            allowance_ms: AtomicU64::new(0),
        }
    }

    pub fn thread(&self) -> &'static str {
        self.thread
    }

    /// Run one NVML call, marked for the watchdog.
    pub fn call<T>(&self, call: &'static str, f: impl FnOnce() -> T) -> T {
        self.call_allowing(call, Duration::ZERO, f)
    }

    /// Run one NVML call that may take `allowance` on purpose before the deadline counts.
    pub fn call_allowing<T>(
        &self,
        call: &'static str,
        allowance: Duration,
        f: impl FnOnce() -> T,
    ) -> T {
        self.call_ptr
            .store(call.as_ptr().cast_mut(), Ordering::Relaxed);
        self.call_len.store(call.len(), Ordering::Relaxed);
        self.allowance_ms
            .store(allowance.as_millis() as u64, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release); // odd: running
        let value = f();
        self.seq.fetch_add(1, Ordering::Release); // even: idle
        value
    }

    /// The call running now, as (its sequence number, name, allowance); None when idle.
    fn running(&self) -> Option<(u64, &'static str, Duration)> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 0 {
                return None;
            }
            let ptr = self.call_ptr.load(Ordering::Relaxed);
            let len = self.call_len.load(Ordering::Relaxed);
            let allowance = Duration::from_millis(self.allowance_ms.load(Ordering::Relaxed));
            if self.seq.load(Ordering::Acquire) == before {
                // SAFETY: ptr/len were stored together from a `&'static str` before `seq`
                // turned odd, and `seq` did not move while they were read.
                let call =
                    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) };
                return Some((before, call, allowance));
            }
        }
    }
}

/// The watchdog's memory of one watch: the call it saw running and since when.
#[derive(Default)]
pub struct Sighting {
    seen: Option<(u64, Instant)>,
}

impl Sighting {
    /// Look at `watch` at `now`: the call running longer than `limit` past its allowance
    /// (counted from when this sighting first saw it), and for how long.
    pub fn overdue(
        &mut self,
        watch: &Watch,
        limit: Duration,
        now: Instant,
    ) -> Option<(&'static str, Duration)> {
        let Some((seq, call, allowance)) = watch.running() else {
            self.seen = None;
            return None;
        };
        let since = match self.seen {
            Some((seen_seq, since)) if seen_seq == seq => since,
            _ => {
                self.seen = Some((seq, now));
                now
            }
        };
        let running = now.saturating_duration_since(since);
        (running >= limit + allowance).then_some((call, running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_overdue_only_past_the_limit_and_its_allowance() {
        let watch = Watch::new("sampler");
        let mut sighting = Sighting::default();
        let start = Instant::now();
        assert!(
            sighting.overdue(&watch, Duration::ZERO, start).is_none(),
            "idle"
        );
        let limit = Duration::from_secs(10);
        let seen = watch.call_allowing("nvmlEventSetWait_v2", Duration::from_secs(1), || {
            (
                sighting.overdue(&watch, limit, start),
                sighting.overdue(&watch, limit, start + Duration::from_secs(10)),
                sighting.overdue(&watch, limit, start + Duration::from_secs(11)),
            )
        });
        assert_eq!(seen.0, None, "first sighting");
        assert_eq!(seen.1, None, "within the allowance");
        assert_eq!(seen.2.map(|(call, _)| call), Some("nvmlEventSetWait_v2"));
        let later = start + Duration::from_secs(60);
        assert!(
            sighting.overdue(&watch, limit, later).is_none(),
            "cleared after"
        );
    }

    #[test]
    fn a_new_call_starts_its_own_clock() {
        let watch = Watch::new("sampler");
        let mut sighting = Sighting::default();
        let start = Instant::now();
        let limit = Duration::from_secs(1);
        watch.call("nvmlDeviceGetTemperature", || {
            assert!(sighting.overdue(&watch, limit, start).is_none());
        });
        // Another call seen 5 s later is not 5 s old.
        watch.call("nvmlDeviceGetPowerUsage", || {
            let five = start + Duration::from_secs(5);
            assert!(sighting.overdue(&watch, limit, five).is_none());
            let six = start + Duration::from_secs(6);
            let (call, _) = sighting.overdue(&watch, limit, six).unwrap();
            assert_eq!(call, "nvmlDeviceGetPowerUsage");
        });
    }
}
