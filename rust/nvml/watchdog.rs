//! Every NVML call runs under a deadline (SPEC G2): a hung driver is a real failure mode.
//!
//! A thread marks each call it makes on its `Watch`; the monitor's watchdog thread looks at
//! the marks and reports a call older than the deadline. The stuck thread is abandoned,
//! never joined: nothing can interrupt a call into the driver.

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Mark {
    call: &'static str,
    since: Instant,
    /// Time the call may take on purpose (an event wait's own timeout).
    allowance: Duration,
}

pub struct Watch {
    thread: &'static str,
    current: Mutex<Option<Mark>>,
}

impl Watch {
    pub fn new(thread: &'static str) -> Watch {
        Watch {
            thread,
            current: Mutex::new(None),
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
        self.set(Some(Mark {
            call,
            since: Instant::now(),
            allowance,
        }));
        let value = f();
        self.set(None);
        value
    }

    fn set(&self, mark: Option<Mark>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = mark;
    }

    /// The call running longer than `limit` past its allowance, and for how long.
    pub fn overdue(&self, limit: Duration, now: Instant) -> Option<(&'static str, Duration)> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mark = current.as_ref()?;
        let running = now.saturating_duration_since(mark.since);
        (running >= limit + mark.allowance).then_some((mark.call, running))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_overdue_only_past_the_limit_and_its_allowance() {
        let watch = Watch::new("sampler");
        let start = Instant::now();
        assert!(watch.overdue(Duration::ZERO, start).is_none(), "idle");
        let seen = watch.call_allowing("nvmlEventSetWait_v2", Duration::from_secs(1), || {
            let now = Instant::now();
            (
                watch.overdue(Duration::from_secs(10), now + Duration::from_secs(10)),
                watch.overdue(Duration::from_secs(10), now + Duration::from_secs(12)),
            )
        });
        assert_eq!(seen.0, None);
        assert_eq!(seen.1.map(|(call, _)| call), Some("nvmlEventSetWait_v2"));
        assert!(
            watch.overdue(Duration::ZERO, Instant::now()).is_none(),
            "cleared after"
        );
    }
}
