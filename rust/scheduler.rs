//! The health-check scheduler of SPEC H: a pure state machine.
//!
//! It takes events (a tick of the clock, a finished probe, a trigger, an app response)
//! with the time they happened and returns actions (start a probe, emit an event).
//! Threads, sockets and clocks live in `runner.rs`; here every rule is deterministic,
//! so the tests below drive it with made-up times and no sleeps.

use std::collections::VecDeque;
use std::time::Duration;

use crate::lifecycle::Lifecycle;
use crate::settings::HealthSettings;
use crate::verdict::{Counted, Event, Outcome, ProbeReport, Reason, Trigger, Verdict};

/// What the I/O layer must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a probe now; report it back to `finish` with this id. `exclusive` (Q1): first
    /// have the runner to itself (`Door::exclusive`), then say so (`began`), or report the
    /// check `busy`.
    StartCheck {
        id: u64,
        exclusive: bool,
    },
    Emit(Event),
}

/// The answer to a gateway (H5) or extra (R4) trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerAnswer {
    /// Wait for this check's outcome (a running check is shared).
    Pending(u64),
    /// Rate-limited: this recent outcome is the answer.
    Latest(Box<Outcome>),
}

/// The proxy's traffic at one moment (H9).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Requests waiting on the app (those blocked on their client are left out).
    pub in_flight: u64,
    /// Clock time of the last byte moved to or from the app, or of the last request start.
    pub last_progress: Option<Duration>,
    /// Clock time a request blocked on its client last went back to waiting on the app.
    pub last_resumed: Option<Duration>,
}

impl Traffic {
    /// Since when the app has owed bytes: the stall clock's start.
    fn last_activity(&self) -> Option<Duration> {
        self.last_progress.max(self.last_resumed)
    }
}

#[derive(Debug)]
struct Running {
    id: u64,
    triggers: Vec<Trigger>,
    started: Duration,
    /// Q1: waiting for the runner to itself; its timeout starts once it has it.
    window: bool,
}

impl Running {
    /// When the check times out (a check waiting for its window has no deadline here: the
    /// wait is bounded where it happens).
    fn deadline(&self, timeout: Duration) -> Option<Duration> {
        (!self.window).then(|| self.started + timeout)
    }
}

#[derive(Debug)]
pub struct Scheduler {
    settings: HealthSettings,
    /// Clock time the runner's age counts from (H2).
    origin: Duration,
    next_regular: Option<Duration>,
    /// K3 after the start period: until the first pass, a start-up probe this often between
    /// the regular checks (its failures are not counted; the regular ones are).
    next_fast: Option<Duration>,
    running: Option<Running>,
    /// Triggers that wait for the running check to end (a delayed regular check, a manual one).
    queued: Vec<Trigger>,
    next_id: u64,
    failures: u32,
    /// The runner's life: readiness, the verdict, the exit code.
    life: Lifecycle,
    history: VecDeque<Outcome>,
}

impl Scheduler {
    pub fn new(settings: HealthSettings, now: Duration) -> Scheduler {
        let mut scheduler = Scheduler {
            settings,
            origin: now,
            next_regular: None,
            next_fast: None,
            running: None,
            queued: Vec::new(),
            next_id: 1,
            failures: 0,
            life: Lifecycle::default(),
            history: VecDeque::new(),
        };
        scheduler.restart_clock(now);
        scheduler
    }

    /// H2: the supervised app started; its age counts from now. H3, K3: the first check is
    /// one startup interval on.
    pub fn restart_clock(&mut self, now: Duration) {
        self.origin = now;
        self.next_regular = Some(now + self.interval(now));
        self.next_fast = Some(now + self.settings.startup_interval());
    }

    /// H3 and K3: the time from one regular check to the next. Until the first pass, while
    /// the start period lasts (its failures are not counted), the startup interval, so the
    /// runner is ready soon after its app; otherwise the period. A replacement never comes
    /// sooner than with the period alone.
    fn interval(&self, now: Duration) -> Duration {
        if !self.life.has_passed() && self.age(now) < self.settings.effective_start_period() {
            self.settings.startup_interval()
        } else {
            self.settings.period()
        }
    }

    /// K2: the app was replaced beside a runwarden that stays up (sidecar mode): back to
    /// starting, with no failure counted and the age from now; the history stays. Only a
    /// replacement can be undone, and only while it drains: a clean stop cannot.
    pub fn restart(&mut self, now: Duration) -> bool {
        if !self.life.restart() {
            return false;
        }
        self.failures = 0;
        self.running = None; // a probe still out reports to an id no longer running
        self.queued.clear();
        self.restart_clock(now);
        true
    }

    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.origin)
    }

    pub fn life(&self) -> &Lifecycle {
        &self.life
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        self.life.verdict()
    }

    pub fn running_id(&self) -> Option<u64> {
        self.running.as_ref().map(|r| r.id)
    }

    pub fn history(&self) -> impl Iterator<Item = &Outcome> {
        self.history.iter()
    }

    fn latest(&self) -> Option<&Outcome> {
        self.history.back()
    }

    /// The regular trigger due now: the schedule (H3), or startup probes until the first pass.
    fn regular_trigger(&self) -> Option<Trigger> {
        if self.life.draining() {
            None
        } else if self.settings.call_regularly {
            Some(Trigger::Regular)
        } else if !self.life.has_passed() {
            Some(Trigger::Startup)
        } else {
            None
        }
    }

    /// The next clock time at which `tick` has something to do, given the traffic now.
    pub fn next_deadline(&self, traffic: Traffic) -> Option<Duration> {
        let mut deadline = None;
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                deadline = Some(deadline.map_or(t, |d: Duration| d.min(t)));
            }
        };
        let timeout = self.settings.timeout();
        consider(self.running.as_ref().and_then(|r| r.deadline(timeout)));
        if self.life.draining() {
            return deadline;
        }
        if self.running.is_none() && self.regular_trigger().is_some() {
            consider(self.next_regular);
        }
        if self.running.is_none() {
            consider(self.fast_due());
        }
        if let (Some(stall), true) = (self.settings.stall(), traffic.in_flight > 0) {
            consider(traffic.last_activity().map(|t| t + stall));
        }
        deadline
    }

    /// The clock moved: time out a hung probe, detect a stall, start a due check.
    pub fn tick(&mut self, now: Duration, traffic: Traffic) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(running) = &self.running {
            let deadline = running.deadline(self.settings.timeout());
            if deadline.is_some_and(|deadline| now >= deadline) {
                // The probe is abandoned: its late report will not match a running id.
                let report = ProbeReport {
                    status: None,
                    error: Some(format!(
                        "timed out after {}s",
                        trim_float(self.settings.timeout_seconds)
                    )),
                    latency: self.settings.timeout(),
                    local: false,
                };
                let id = running.id;
                actions.extend(self.finish(id, report, now, traffic));
            }
        }
        if self.life.draining() {
            return actions;
        }
        if let (Some(stall), true) = (self.settings.stall(), traffic.in_flight > 0) {
            if let Some(last) = traffic.last_activity() {
                if now >= last + stall {
                    let detail = format!(
                        "{} request(s) in flight moved no byte for {}s",
                        traffic.in_flight,
                        trim_float(stall.as_secs_f64())
                    );
                    actions.extend(self.drain(Reason::Stalled, detail, now));
                    return actions;
                }
            }
        }
        if let (Some(due), Some(trigger)) = (self.next_regular, self.regular_trigger()) {
            if now >= due {
                if self.running.is_some() {
                    // H3: a running check delays the next one; it starts when that one ends.
                    self.queue(trigger);
                    self.next_regular = None;
                } else {
                    actions.extend(self.start(vec![trigger], now));
                }
            }
        }
        if self.running.is_none() && self.fast_due().is_some_and(|due| now >= due) {
            // K3 past the start period: a start-up probe, so readiness still follows the
            // app within about a second; the regular schedule (and what counts) is unchanged.
            actions.extend(self.start(vec![Trigger::Startup], now));
        }
        actions
    }

    /// When the next K3 probe is due past the start period: until the first pass, with
    /// nothing draining, between the regular checks.
    fn fast_due(&self) -> Option<Duration> {
        let past_start = self.age_at(self.next_fast?) >= self.settings.effective_start_period();
        (!self.life.has_passed() && !self.life.draining() && past_start)
            .then_some(self.next_fast)
            .flatten()
    }

    fn age_at(&self, t: Duration) -> Duration {
        t.saturating_sub(self.origin)
    }

    fn queue(&mut self, trigger: Trigger) {
        if !self.queued.contains(&trigger) {
            self.queued.push(trigger);
        }
    }

    fn start(&mut self, triggers: Vec<Trigger>, now: Duration) -> Vec<Action> {
        let fast = triggers == [Trigger::Startup] && self.fast_due().is_some_and(|d| now >= d);
        if !fast
            && triggers
                .iter()
                .any(|t| matches!(t, Trigger::Regular | Trigger::Startup))
        {
            self.next_regular = Some(now + self.interval(now));
        }
        // Any check is as good as a K3 probe: the next one is an interval after it.
        self.next_fast = Some(now + self.settings.startup_interval());
        let id = self.next_id;
        self.next_id += 1;
        let exclusive = self.exclusive(&triggers);
        self.running = Some(Running {
            id,
            triggers,
            started: now,
            window: exclusive,
        });
        vec![Action::StartCheck { id, exclusive }]
    }

    /// Q1: a check runs alone when `exclusive_checks` says so, once the runner has passed a
    /// check (before that, checks are start-up probes, K3, and run as they come).
    fn exclusive(&self, triggers: &[Trigger]) -> bool {
        self.settings.exclusive()
            && self.life.has_passed()
            && !self.life.draining()
            && triggers != [Trigger::Startup]
    }

    /// Q1: the check has the runner to itself from now; its timeout counts from now too.
    pub fn began(&mut self, id: u64, now: Duration) {
        if let Some(running) = self.running.as_mut().filter(|r| r.id == id) {
            running.started = now;
            running.window = false;
        }
    }

    /// Q1: the check could not have the runner to itself within its bound: it is not run,
    /// not counted, and reported `busy`.
    pub fn busy(
        &mut self,
        id: u64,
        detail: String,
        waited: Duration,
        now: Duration,
    ) -> Vec<Action> {
        let report = ProbeReport {
            status: None,
            error: Some(detail),
            latency: waited,
            local: false,
        };
        self.conclude(id, report, now, Traffic::default(), Some(Counted::Busy))
    }

    /// A probe finished. Reports for a check already timed out are ignored.
    pub fn finish(
        &mut self,
        id: u64,
        report: ProbeReport,
        now: Duration,
        traffic: Traffic,
    ) -> Vec<Action> {
        self.conclude(id, report, now, traffic, None)
    }

    fn conclude(
        &mut self,
        id: u64,
        report: ProbeReport,
        now: Duration,
        traffic: Traffic,
        counted: Option<Counted>,
    ) -> Vec<Action> {
        let running = match self.running.take() {
            Some(running) if running.id == id => running,
            other => {
                self.running = other;
                return Vec::new();
            }
        };
        let age = running.started.saturating_sub(self.origin);
        let was_ready = self.life.ready();
        let counted = match counted {
            Some(_) if self.life.draining() => Counted::AfterReplace,
            Some(counted) => counted,
            None => self.judge(&running, &report, age, now, traffic),
        };
        let outcome = Outcome {
            made_ready: !was_ready && self.life.ready(),
            id,
            triggers: running.triggers,
            report,
            age,
            finished_at: now,
            counted,
            consecutive_failures: self.failures,
        };
        if outcome.made_ready && self.next_regular.is_some() {
            // K3 is over: the schedule goes on at the period from this check.
            self.next_regular = Some(running.started + self.settings.period());
        }
        let mut actions = Vec::new();
        let replace_reason = match counted {
            Counted::Manual => Some(Reason::ManualCheck),
            Counted::Counted if self.failures >= self.settings.failure_threshold => {
                Some(Reason::HealthCheck)
            }
            _ => None,
        };
        let detail = replace_reason.map(|reason| {
            let mut detail = describe_failure(reason, &outcome);
            if reason == Reason::HealthCheck && !self.life.has_passed() {
                detail.push_str(&self.never_passed(now));
            }
            detail
        });
        self.remember(outcome.clone());
        actions.push(Action::Emit(Event::Check(outcome)));
        if let (Some(reason), Some(detail)) = (replace_reason, detail) {
            actions.extend(self.drain(reason, detail, now));
        }
        if !self.life.draining() && !self.queued.is_empty() {
            let queued = std::mem::take(&mut self.queued);
            actions.extend(self.start(queued, now));
        }
        actions
    }

    /// H4, H6, H9: how a finished check counts.
    fn judge(
        &mut self,
        running: &Running,
        report: &ProbeReport,
        age: Duration,
        now: Duration,
        traffic: Traffic,
    ) -> Counted {
        if self.life.draining() {
            return Counted::AfterReplace;
        }
        if report.passed() {
            self.failures = 0;
            self.life.passed();
            return Counted::Pass;
        }
        if report.local {
            return Counted::Local; // S6: not the app's failure, manual or not
        }
        if running.triggers.contains(&Trigger::Manual) {
            return Counted::Manual;
        }
        if running.triggers == [Trigger::Startup] {
            return Counted::NotReady;
        }
        if age < self.settings.effective_start_period() {
            return Counted::StartPeriod;
        }
        let moving = traffic
            .last_progress
            .is_some_and(|t| now.saturating_sub(t) <= self.settings.timeout());
        if self.settings.allow_on_busy && traffic.in_flight > 0 && moving {
            return Counted::Busy;
        }
        self.failures += 1;
        Counted::Counted
    }

    fn remember(&mut self, outcome: Outcome) {
        if self.history.len() == self.settings.history_size {
            self.history.pop_front();
        }
        self.history.push_back(outcome);
    }

    /// H5 and R4: run a check now, share the running one, or answer with a recent outcome.
    pub fn trigger(&mut self, trigger: Trigger, now: Duration) -> (TriggerAnswer, Vec<Action>) {
        if let Some(running) = &mut self.running {
            if !running.triggers.contains(&trigger) {
                running.triggers.push(trigger);
            }
            return (TriggerAnswer::Pending(running.id), Vec::new());
        }
        if let Some(latest) = self.latest() {
            if now < latest.finished_at + self.settings.trigger_interval() {
                return (TriggerAnswer::Latest(Box::new(latest.clone())), Vec::new());
            }
        }
        let actions = self.start(vec![trigger], now);
        (TriggerAnswer::Pending(self.next_id - 1), actions)
    }

    /// H6: a manual check, fresh (after the running one, if any); repeated asks coalesce.
    pub fn manual(&mut self, now: Duration) -> Vec<Action> {
        if self.life.draining() {
            return Vec::new();
        }
        match &self.running {
            Some(running) if running.triggers.contains(&Trigger::Manual) => Vec::new(),
            Some(_) => {
                self.queue(Trigger::Manual);
                Vec::new()
            }
            None => self.start(vec![Trigger::Manual], now),
        }
    }

    /// R1 and R4: an app response's status.
    pub fn response(&mut self, status: u16, now: Duration) -> Vec<Action> {
        match status {
            503 => self.drain(Reason::App503, "the app answered 503".to_owned(), now),
            500 | 502 | 504 if !self.life.draining() => self.trigger(Trigger::Extra, now).1,
            _ => Vec::new(),
        }
    }

    /// Drain for `reason`, a replacement or a clean stop (D1, D4); the first reason wins
    /// and later ones return nothing. Checks stop being scheduled.
    pub fn drain(&mut self, reason: Reason, detail: String, now: Duration) -> Vec<Action> {
        let Some(verdict) = self.life.drain(reason, detail, self.age(now)) else {
            return Vec::new();
        };
        self.queued.clear();
        self.next_regular = None;
        vec![Action::Emit(Event::Verdict(verdict))]
    }

    /// H1: a runner replaced before its app ever passed a check was most likely still
    /// loading (a model server reads its weights for minutes): say so, and which setting
    /// gives it longer.
    fn never_passed(&self, now: Duration) -> String {
        format!(
            "; the app never passed a check in its {} s: if it was still loading, give it \
             longer with --startup-timeout-seconds (RUNWARDEN_STARTUP_TIMEOUT_SECONDS; the \
             start period is now {} s)",
            trim_float(self.age(now).as_secs_f64().round()),
            trim_float(self.settings.effective_start_period().as_secs_f64()),
        )
    }

    /// The drain is over and runwarden exits: its exit code (None if nothing drained).
    pub fn stop(&mut self) -> Option<i32> {
        self.life.stop()
    }
}

fn describe_failure(reason: Reason, outcome: &Outcome) -> String {
    let what = outcome.report.describe();
    match reason {
        Reason::ManualCheck => format!("manual check {} failed: {what}", outcome.id),
        _ => format!(
            "{} consecutive failed checks; last (check {}): {what}",
            outcome.consecutive_failures, outcome.id
        ),
    }
}

/// 0.3 → "0.3", 5.0 → "5": seconds as a person writes them.
pub fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
