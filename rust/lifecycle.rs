//! The runner's life (SPEC D): starting → ready → draining(reason) → stopped.
//!
//! The one owner of readiness, of the verdict (why the runner drains; the first reason
//! wins, a clean stop included) and of the exit code. The scheduler holds it; everything
//! else reads a snapshot of it or hears its verdict as an event.

use std::time::Duration;

use crate::verdict::{Reason, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No health check has passed yet: not ready.
    Starting,
    /// A check has passed and nothing drains: ready (A).
    Ready,
    /// A verdict: new requests are refused while those in flight finish (D1, D2).
    Draining,
    /// The drain is over; runwarden exits with the verdict's code.
    Stopped,
}

#[derive(Debug, Default)]
pub struct Lifecycle {
    passed: bool,
    verdict: Option<Verdict>,
    stopped: bool,
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        match (&self.verdict, self.stopped, self.passed) {
            (Some(_), true, _) => Phase::Stopped,
            (Some(_), false, _) => Phase::Draining,
            (None, _, true) => Phase::Ready,
            (None, _, false) => Phase::Starting,
        }
    }

    /// `/readyz` (A): a check has passed and nothing drains.
    pub fn ready(&self) -> bool {
        self.phase() == Phase::Ready
    }

    /// A check has ever passed (startup probes stop then, H5).
    pub fn has_passed(&self) -> bool {
        self.passed
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    pub fn draining(&self) -> bool {
        self.verdict.is_some()
    }

    /// A check passed: true if the runner became ready now.
    pub fn passed(&mut self) -> bool {
        let first = !self.passed && self.verdict.is_none();
        self.passed = true;
        first
    }

    /// Drain for `reason`. The first reason wins: a later one returns None and changes
    /// nothing, whether the first was a replacement or a clean stop.
    pub fn drain(&mut self, reason: Reason, detail: String, age: Duration) -> Option<Verdict> {
        if self.verdict.is_some() {
            return None;
        }
        let verdict = Verdict {
            reason,
            detail,
            age,
        };
        self.verdict = Some(verdict.clone());
        Some(verdict)
    }

    /// K2: a replacement drained and the app was restarted beside a runwarden that stays
    /// up: back to starting. False (and nothing changes) unless a replacement is draining.
    pub fn restart(&mut self) -> bool {
        let replacing = self.verdict.as_ref().is_some_and(|v| v.reason.replaces());
        if !replacing || self.stopped {
            return false;
        }
        *self = Lifecycle::default();
        true
    }

    /// The drain is over. The exit code, or None if nothing drained (then there is no
    /// reason to exit).
    pub fn stop(&mut self) -> Option<i32> {
        let code = self.exit_code()?;
        self.stopped = true;
        Some(code)
    }

    /// The verdict's exit code (D4); None while nothing drains.
    pub fn exit_code(&self) -> Option<i32> {
        self.verdict.as_ref().map(|v| v.reason.exit_code())
    }

    /// The state as `/status` and the metrics name it.
    pub fn state(&self) -> &'static str {
        match (self.phase(), &self.verdict) {
            (Phase::Starting, _) => "starting",
            (Phase::Ready, _) => "ready",
            (Phase::Draining, Some(v)) if v.reason.replaces() => "replacing",
            (Phase::Draining, _) => "stopping",
            (Phase::Stopped, _) => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_then_ready_on_the_first_pass() {
        let mut life = Lifecycle::default();
        assert_eq!(life.phase(), Phase::Starting);
        assert!(!life.ready());
        assert!(life.passed());
        assert!(!life.passed(), "only the first pass makes it ready");
        assert_eq!(life.phase(), Phase::Ready);
        assert_eq!(life.state(), "ready");
    }

    #[test]
    fn the_first_reason_wins_a_clean_stop_included() {
        let mut life = Lifecycle::default();
        life.passed();
        let first = life.drain(Reason::Shutdown, "received SIGTERM".into(), Duration::ZERO);
        assert_eq!(first.unwrap().reason, Reason::Shutdown);
        assert!(life
            .drain(
                Reason::App503,
                "the app answered 503".into(),
                Duration::ZERO
            )
            .is_none());
        assert_eq!(life.verdict().unwrap().reason, Reason::Shutdown);
        assert_eq!(life.state(), "stopping");
        assert!(!life.ready());
        assert_eq!(life.exit_code(), Some(0));
    }

    #[test]
    fn a_replacement_drains_before_any_pass_and_stops_with_its_code() {
        let mut life = Lifecycle::default();
        assert_eq!(life.stop(), None, "nothing drains: no exit code");
        life.drain(Reason::GpuFault, "XID 79".into(), Duration::ZERO);
        assert!(!life.passed(), "a pass while draining opens no readiness");
        assert_eq!(life.phase(), Phase::Draining);
        assert_eq!(life.state(), "replacing");
        assert_eq!(life.stop(), Some(13));
        assert_eq!(life.phase(), Phase::Stopped);
        assert_eq!(life.state(), "stopped");
    }

    #[test]
    fn k2_a_draining_replacement_restarts_to_starting_and_a_clean_stop_does_not() {
        let mut life = Lifecycle::default();
        assert!(!life.restart(), "nothing to undo");
        life.passed();
        life.drain(Reason::App503, "503".into(), Duration::ZERO);
        assert!(life.restart());
        assert_eq!(life.phase(), Phase::Starting);
        assert!(life.verdict().is_none() && !life.has_passed());
        life.drain(Reason::Shutdown, "SIGTERM".into(), Duration::ZERO);
        assert!(!life.restart(), "a clean stop stays");
        let mut stopped = Lifecycle::default();
        stopped.drain(Reason::HealthCheck, "3 failed".into(), Duration::ZERO);
        stopped.stop();
        assert!(!stopped.restart(), "stopped is final");
    }

    #[test]
    fn every_reason_has_its_own_exit_code() {
        let mut codes: Vec<i32> = Reason::ALL.iter().map(|r| r.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::ALL.len());
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert_eq!(reason.replaces(), reason.exit_code() != 0);
        }
    }
}
