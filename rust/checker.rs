//! The threads around the scheduler: one that keeps time, one short-lived thread per probe.
//!
//! The scheduler decides; this file only does what it says. A probe runs on its own
//! thread so a hung app never stalls the clock: at the deadline the scheduler records a
//! timeout and the probe thread, bounded by the same deadline in its HTTP client, ends
//! on its own and its late report is ignored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{CoreError, Result};
use crate::events::EventQueue;
use crate::probe::Probe;
use crate::scheduler::{Action, Scheduler, TriggerAnswer};
use crate::settings::HealthSettings;
use crate::traffic::TrafficCounters;
use crate::verdict::{Event, Outcome, Reason, Trigger, Verdict};
use crate::worker::{lock, Worker};

/// With nothing scheduled (replaced, or `call_regularly=false` once ready) the clock
/// thread still wakes this often; a stop or a new trigger wakes it sooner.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

struct Shared {
    base: Instant,
    scheduler: Mutex<Scheduler>,
    wake: Condvar,
    stop: AtomicBool,
    traffic: TrafficCounters,
    events: Arc<EventQueue>,
    probe: Probe,
}

impl Shared {
    fn now(&self) -> Duration {
        self.base.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        lock(&self.scheduler)
    }

    /// Do what the scheduler asked; called without the lock held.
    fn act(self: &Arc<Self>, actions: Vec<Action>) {
        let mut changed = false;
        for action in actions {
            match action {
                Action::StartCheck { id } => {
                    changed = true;
                    let shared = Arc::clone(self);
                    let spawned = thread::Builder::new()
                        .name(format!("runwarden-probe-{id}"))
                        .spawn(move || shared.probe_once(id));
                    if let Err(error) = spawned {
                        // Nothing to run the probe on: the deadline will record it as failed.
                        eprintln!("runwarden: could not start health check {id}: {error}");
                    }
                }
                Action::Emit(event) => self.events.push(event),
            }
        }
        if changed {
            // A new check moves the clock thread's next deadline (its timeout).
            self.wake.notify_all();
        }
    }

    fn probe_once(self: &Arc<Self>, id: u64) {
        let report = self.probe.run();
        let actions = {
            let mut scheduler = self.lock();
            scheduler.finish(id, report, self.now(), self.traffic.snapshot())
        };
        self.act(actions);
        self.wake.notify_all();
    }

    /// Drain for `reason`; true if this call gave the verdict (the first reason wins).
    fn drain(self: &Arc<Self>, reason: Reason, detail: String) -> bool {
        let actions = self.lock().drain(reason, detail, self.now());
        let first = actions
            .iter()
            .any(|a| matches!(a, Action::Emit(Event::Verdict(_))));
        self.act(actions);
        first
    }

    fn keep_time(self: &Arc<Self>) {
        let mut scheduler = self.lock();
        while !self.stop.load(Ordering::Acquire) {
            let now = self.now();
            let traffic = self.traffic.snapshot();
            let actions = scheduler.tick(now, traffic);
            if !actions.is_empty() {
                drop(scheduler);
                self.act(actions);
                scheduler = self.lock();
                continue;
            }
            let wait = scheduler
                .next_deadline(traffic)
                .map_or(IDLE_WAIT, |deadline| deadline.saturating_sub(now))
                .max(Duration::from_micros(100));
            scheduler = self
                .wake
                .wait_timeout(scheduler, wait)
                .unwrap_or_else(|e| e.into_inner()) // poison: see `worker::lock`
                .0;
        }
    }
}

/// The health checker of one app: owns the clock thread and stops it within a bound.
pub struct Checker {
    shared: Arc<Shared>,
    thread: Mutex<Option<Worker>>,
    /// Whether a request entering an idle runner sets a stall deadline (H9).
    stall_detection: bool,
}

impl Checker {
    pub fn new(
        settings: HealthSettings,
        app_url: &str,
        events: Arc<EventQueue>,
    ) -> Result<Checker> {
        let settings = settings.validate()?;
        let probe = Probe::new(app_url, &settings)?;
        let base = Instant::now();
        Ok(Checker {
            stall_detection: settings.stall_seconds.is_some(),
            shared: Arc::new(Shared {
                base,
                scheduler: Mutex::new(Scheduler::new(settings, Duration::ZERO)),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
                traffic: TrafficCounters::new(base),
                events,
                probe,
            }),
            thread: Mutex::new(None),
        })
    }

    /// Start the clock thread; the runner's age (H2) counts from now.
    pub fn start(&self) -> Result<()> {
        let mut slot = lock(&self.thread);
        if slot.is_some() || self.shared.stop.load(Ordering::Acquire) {
            return Err(CoreError::State("the checker was already started".into()));
        }
        self.restart_clock();
        let shared = Arc::clone(&self.shared);
        let worker = Worker::spawn("scheduler", move || shared.keep_time())
            .map_err(|e| CoreError::State(format!("could not start the scheduler thread: {e}")))?;
        *slot = Some(worker);
        Ok(())
    }

    /// H2: the supervised app started now.
    pub fn restart_clock(&self) {
        self.shared.lock().restart_clock(self.shared.now());
        self.shared.wake.notify_all();
    }

    /// K2: the replaced app was restarted beside a runwarden that stays up: back to
    /// starting. False if no replacement was draining (nothing changes).
    pub fn restart(&self) -> bool {
        let restarted = self.shared.lock().restart(self.shared.now());
        self.shared.wake.notify_all();
        restarted
    }

    /// Stop the clock thread and join it within `timeout`. Probe threads are not joined:
    /// each ends by its own deadline. Returns false if the thread had to be left behind.
    pub fn stop(&self, timeout: Duration) -> bool {
        {
            // Under the lock, so the clock thread is either waiting (and is woken) or has
            // not yet read the flag.
            let _scheduler = self.shared.lock();
            self.shared.stop.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        let taken = lock(&self.thread).take();
        taken.is_none_or(|worker| worker.join_within(timeout))
    }

    fn with_scheduler<T>(&self, f: impl FnOnce(&mut Scheduler, Duration) -> (T, Vec<Action>)) -> T {
        let (value, actions) = {
            let mut scheduler = self.shared.lock();
            f(&mut scheduler, self.shared.now())
        };
        self.shared.act(actions);
        value
    }

    /// H5 and R4.
    pub fn trigger(&self, trigger: Trigger) -> TriggerAnswer {
        self.with_scheduler(|s, now| s.trigger(trigger, now))
    }

    /// H6.
    pub fn manual(&self) {
        self.with_scheduler(|s, now| ((), s.manual(now)))
    }

    /// R1 and R4. The verdict after it, if the runner drains (a 503's, or an earlier one),
    /// so the proxy refuses new requests in this same loop turn.
    pub fn response(&self, status: u16) -> Option<Verdict> {
        self.with_scheduler(|s, now| ((), s.response(status, now)));
        self.verdict()
    }

    /// Drain for a reason found outside the scheduler (a clean stop, the app's exit). The
    /// verdict after it: this one's, or the one that came first.
    pub fn drain(&self, reason: Reason, detail: String) -> Option<Verdict> {
        self.shared.drain(reason, detail);
        self.verdict()
    }

    /// `drain` for another thread to call (the GPU monitor's); true if it gave the verdict.
    pub fn drainer(&self) -> Arc<dyn Fn(Reason, String) -> bool + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |reason, detail| shared.drain(reason, detail))
    }

    /// The runner's verdict, if it drains.
    pub fn verdict(&self) -> Option<Verdict> {
        self.shared.lock().verdict().cloned()
    }

    /// The drain is over; runwarden exits with the returned code (None: nothing drained).
    pub fn finish(&self) -> Option<i32> {
        self.shared.lock().stop()
    }

    pub fn traffic(&self) -> &TrafficCounters {
        &self.shared.traffic
    }

    /// A request entered (H9).
    pub fn request_started(&self) {
        self.becoming_busy(|t| t.started());
    }

    /// A request is now blocked on its client, not on the app (H9).
    pub fn client_wait_started(&self) {
        self.shared.traffic.client_wait_started();
    }

    /// The client moved again: the request waits on the app once more (H9).
    pub fn client_wait_finished(&self) {
        self.becoming_busy(|t| t.client_wait_finished());
    }

    /// With stall detection on, the first request waiting on the app sets a deadline the
    /// clock thread must hear about.
    fn becoming_busy(&self, change: impl FnOnce(&TrafficCounters)) {
        let traffic = &self.shared.traffic;
        let was_idle = traffic.snapshot().in_flight == 0;
        change(traffic);
        if was_idle && self.stall_detection {
            // Through the lock, so the clock thread cannot miss it between deciding to wait
            // and waiting.
            let _scheduler = self.shared.lock();
            self.shared.wake.notify_all();
        }
    }

    pub fn history(&self) -> Vec<Outcome> {
        self.shared.lock().history().cloned().collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.shared.now();
        let scheduler = self.shared.lock();
        Snapshot {
            age: scheduler.age(now),
            state: scheduler.life().state(),
            ready: scheduler.life().ready(),
            exit_code: scheduler.life().exit_code(),
            failures: scheduler.failures(),
            verdict: scheduler.verdict().cloned(),
            running_check: scheduler.running_id(),
            settings: scheduler.settings().clone(),
            probe_url: self.shared.probe.url().to_owned(),
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// The checker's state at one moment, for `/status`.
pub struct Snapshot {
    pub age: Duration,
    /// starting, ready, replacing, stopping or stopped (`Lifecycle::state`).
    pub state: &'static str,
    pub ready: bool,
    pub exit_code: Option<i32>,
    pub failures: u32,
    pub verdict: Option<Verdict>,
    pub running_check: Option<u64>,
    pub settings: HealthSettings,
    pub probe_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Event;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// An app whose /health answers 200 to every request, on its own thread.
    fn healthy_app() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        url
    }

    fn queue() -> Arc<EventQueue> {
        Arc::new(EventQueue::new().unwrap())
    }

    fn wait_for_event(events: &EventQueue) -> Event {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(event) = events.drain().into_iter().next() {
                return event;
            }
            assert!(Instant::now() < deadline, "no event within 5 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn regular_checks_run_on_real_threads_and_stop_promptly() {
        let settings = HealthSettings {
            period_seconds: 0.05,
            timeout_seconds: 1.0,
            ..Default::default()
        };
        let events = queue();
        let checker = Checker::new(settings, &healthy_app(), Arc::clone(&events)).unwrap();
        checker.start().unwrap();
        match wait_for_event(&events) {
            Event::Check(outcome) => assert!(outcome.report.passed(), "{outcome:?}"),
            other => panic!("{other:?}"),
        }
        let started = Instant::now();
        assert!(checker.stop(Duration::from_secs(2)));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn a_check_of_an_app_that_hangs_is_abandoned_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Accept and never answer.
        let _hold = thread::spawn(move || {
            let conns: Vec<_> = listener.incoming().take(3).collect();
            thread::sleep(Duration::from_secs(3));
            drop(conns);
        });
        let settings = HealthSettings {
            period_seconds: 3600.0,
            timeout_seconds: 0.2,
            start_period_seconds: 0,
            ..Default::default()
        };
        let events = queue();
        let checker = Checker::new(settings, &url, Arc::clone(&events)).unwrap();
        checker.start().unwrap();
        let started = Instant::now();
        let TriggerAnswer::Pending(id) = checker.trigger(Trigger::Gateway) else {
            panic!("expected a new check");
        };
        match wait_for_event(&events) {
            Event::Check(outcome) => {
                assert_eq!(outcome.id, id);
                assert!(outcome.report.error.unwrap().starts_with("timed out"));
            }
            other => panic!("{other:?}"),
        }
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_millis(700), "{waited:?}");
    }

    #[test]
    fn starting_twice_is_an_error() {
        let checker =
            Checker::new(HealthSettings::default(), "http://127.0.0.1:9", queue()).unwrap();
        checker.start().unwrap();
        assert!(checker.start().is_err());
    }
}
