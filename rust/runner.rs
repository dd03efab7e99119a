//! The runner: its life (readiness, the verdict, the drain's start) and the threads around
//! the scheduler that decides it: one that keeps time, and one that runs the probes.
//!
//! The scheduler decides; this file only does what it says. Probes run as tasks on a small
//! runtime of their own (never the data plane's), so a hung app never stalls the clock and a
//! busy proxy never delays a check: at the deadline the scheduler records a timeout and the
//! probe, bounded by the same deadline, is dropped; a late report is ignored.
//!
//! The runner's life (`lifecycle.rs`) is the scheduler's; every change of it is published at
//! once on a watch channel, which the data plane reads on every request (D1) and the admin
//! port answers `/readyz` from.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::{oneshot, watch, Notify};

use crate::door::{Door, Limits};
use crate::error::{CoreError, Result};
use crate::events::EventQueue;
use crate::lifecycle::Phase;
use crate::probe::{HttpProbe, Probe};
use crate::scheduler::{Action, Scheduler, TriggerAnswer};
use crate::settings::{AppProtocol, HealthSettings};
use crate::traffic::TrafficCounters;
use crate::verdict::{Event, Outcome, Reason, Trigger, Verdict};
use crate::worker::{lock, Worker};

/// With nothing scheduled (replaced, or `call_regularly=false` once ready) the clock
/// thread still wakes this often; a stop or a new trigger wakes it sooner.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The runner's life as the data plane reads it: its phase and, while it drains, why.
#[derive(Debug, Clone, PartialEq)]
pub struct LifeView {
    pub phase: Phase,
    /// starting, ready, replacing, stopping or stopped (`Lifecycle::state`).
    pub state: &'static str,
    pub verdict: Option<Verdict>,
}

impl LifeView {
    pub fn draining(&self) -> bool {
        self.verdict.is_some()
    }
}

/// How requests reach the app (SPEC Q): the door they pass, and how long a thorough check
/// waits for the runner to itself before it is skipped as busy (Q1: the drain timeout).
pub struct Admission {
    pub door: Arc<Door>,
    pub window_bound: Duration,
}

impl Default for Admission {
    /// No limit the door would hold a request for; the drain timeout's default.
    fn default() -> Admission {
        Admission {
            door: Door::new(Limits::permits(Limits::UNBOUNDED)),
            window_bound: Duration::from_secs(30),
        }
    }
}

/// What a check trigger (H5, R4) gets: an outcome now, or one to wait for.
pub enum CheckWait {
    Latest(Box<Outcome>),
    /// Dropped without a value if the check is abandoned (K2 restart, stop).
    Pending(oneshot::Receiver<Outcome>),
}

pub struct Shared {
    base: Instant,
    scheduler: Mutex<Scheduler>,
    wake: Condvar,
    stop: AtomicBool,
    traffic: Arc<TrafficCounters>,
    /// The in-flight count reached 0 (the drain's wait, D2).
    idle: Notify,
    events: Arc<EventQueue>,
    probe: Probe,
    probes: tokio::runtime::Handle,
    life: watch::Sender<LifeView>,
    waiters: Mutex<HashMap<u64, Vec<oneshot::Sender<Outcome>>>>,
    /// Whether a request entering an idle runner sets a stall deadline (H9).
    stall_detection: bool,
    admission: Admission,
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
        let mut life_changed = false;
        for action in actions {
            match action {
                Action::StartCheck { id, exclusive } => {
                    changed = true;
                    let shared = Arc::clone(self);
                    let bound = crate::probe::bound(self.lock().settings().timeout());
                    self.probes.spawn(async move {
                        let _window = if exclusive {
                            match shared.window(id).await {
                                Some(window) => Some(window),
                                None => return,
                            }
                        } else {
                            None
                        };
                        let probe = shared.probe.clone();
                        // At the deadline the scheduler has recorded a timeout already.
                        if let Ok(report) = tokio::time::timeout(bound, probe.run()).await {
                            shared.probe_finished(id, report);
                        }
                        // The held requests go on once the probe is done or abandoned.
                    });
                }
                Action::Emit(event) => {
                    if let Event::Check(outcome) = &event {
                        life_changed |= outcome.made_ready;
                        self.answer_waiters(outcome);
                    }
                    life_changed |= matches!(event, Event::Verdict(_));
                    self.events.push(event);
                }
            }
        }
        if life_changed {
            self.publish();
        }
        if changed {
            // A new check moves the clock thread's next deadline (its timeout).
            self.wake.notify_all();
        }
    }

    /// The runner's life, as the scheduler holds it now, to every reader.
    fn publish(&self) {
        let view = {
            let scheduler = self.lock();
            LifeView {
                phase: scheduler.life().phase(),
                state: scheduler.life().state(),
                verdict: scheduler.verdict().cloned(),
            }
        };
        self.life.send_if_modified(|current| {
            let modified = *current != view;
            *current = view;
            modified
        });
    }

    fn answer_waiters(&self, outcome: &Outcome) {
        for waiter in lock(&self.waiters)
            .remove(&outcome.id)
            .into_iter()
            .flatten()
        {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Q1: have the runner to itself for check `id`, or report the check busy.
    async fn window(self: &Arc<Self>, id: u64) -> Option<crate::door::Window> {
        let asked = std::time::Instant::now();
        let bound = self.admission.window_bound;
        match self.admission.door.exclusive(bound).await {
            Ok(window) => {
                let now = self.now();
                self.lock().began(id, now);
                self.wake.notify_all(); // the check's timeout is a new deadline
                Some(window)
            }
            Err(busy) => {
                let detail = format!(
                    "not run: {} request(s) were still at the app after {}s (exclusive checks \
                     wait at most drain_timeout_seconds for the runner to themselves)",
                    busy.at_app,
                    crate::scheduler::trim_float(bound.as_secs_f64())
                );
                let actions = {
                    let now = self.now();
                    self.lock().busy(id, detail, asked.elapsed(), now)
                };
                self.act(actions);
                self.wake.notify_all();
                None
            }
        }
    }

    fn probe_finished(self: &Arc<Self>, id: u64, report: crate::verdict::ProbeReport) {
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

/// What the data plane and the bindings may ask of the runner; cheap to clone.
#[derive(Clone)]
pub struct RunnerHandle(Arc<Shared>);

impl RunnerHandle {
    fn with_scheduler<T>(&self, f: impl FnOnce(&mut Scheduler, Duration) -> (T, Vec<Action>)) -> T {
        let (value, actions) = {
            let mut scheduler = self.0.lock();
            f(&mut scheduler, self.0.now())
        };
        self.0.act(actions);
        value
    }

    /// H5 and R4.
    pub fn trigger(&self, trigger: Trigger) -> TriggerAnswer {
        self.with_scheduler(|s, now| s.trigger(trigger, now))
    }

    /// H5: trigger a check and get its outcome, or a way to wait for it. The waiter is
    /// registered under the scheduler's lock, so the check cannot finish unheard.
    pub fn trigger_and_wait(&self, trigger: Trigger) -> CheckWait {
        let shared = &self.0;
        let (answer, actions, waiter) = {
            let mut scheduler = shared.lock();
            let (answer, actions) = scheduler.trigger(trigger, shared.now());
            let waiter = match &answer {
                TriggerAnswer::Pending(id) => {
                    let (tx, rx) = oneshot::channel();
                    lock(&shared.waiters).entry(*id).or_default().push(tx);
                    Some(rx)
                }
                TriggerAnswer::Latest(_) => None,
            };
            (answer, actions, waiter)
        };
        shared.act(actions);
        match (answer, waiter) {
            (_, Some(rx)) => CheckWait::Pending(rx),
            (TriggerAnswer::Latest(outcome), None) => CheckWait::Latest(outcome),
            (TriggerAnswer::Pending(_), None) => unreachable!("a pending trigger has a waiter"),
        }
    }

    /// H6.
    pub fn manual(&self) {
        self.with_scheduler(|s, now| ((), s.manual(now)))
    }

    /// R1 and R4, whichever front saw the answer. The verdict after it, if the runner drains
    /// (a 503's, or an earlier one):
    /// published to the data plane before this returns, so no request admitted after it
    /// reaches the app (D1).
    ///
    /// Only 500, 502, 503 and 504 say anything (R2): any other answer costs nothing here.
    pub fn response(&self, status: u16) -> Option<Verdict> {
        if !matches!(status, 500 | 502 | 503 | 504) {
            return None;
        }
        self.with_scheduler(|s, now| ((), s.response(status, now)));
        self.verdict()
    }

    /// Drain for a reason found outside the scheduler (a clean stop, the app's exit, an R1
    /// seen in a gRPC status). The verdict after it: this one's, or the one that came first.
    pub fn drain(&self, reason: Reason, detail: String) -> Option<Verdict> {
        self.0.drain(reason, detail);
        self.verdict()
    }

    /// `drain` for another thread to call (the GPU monitor's); true if it gave the verdict.
    pub fn drainer(&self) -> Arc<dyn Fn(Reason, String) -> bool + Send + Sync> {
        let shared = Arc::clone(&self.0);
        Arc::new(move |reason, detail| shared.drain(reason, detail))
    }

    /// The runner's verdict, if it drains.
    pub fn verdict(&self) -> Option<Verdict> {
        self.0.lock().verdict().cloned()
    }

    /// The runner's life, as the data plane watches it.
    pub fn life(&self) -> watch::Receiver<LifeView> {
        self.0.life.subscribe()
    }

    /// The drain is over; runwarden exits with the returned code (None: nothing drained).
    pub fn finish(&self) -> Option<i32> {
        let code = self.0.lock().stop();
        self.0.publish();
        code
    }

    /// K2: the replaced app was restarted beside a runwarden that stays up: back to
    /// starting. False if no replacement was draining (nothing changes).
    pub fn restart(&self) -> bool {
        let restarted = self.0.lock().restart(self.0.now());
        if restarted {
            // Checks still out report to ids no longer running: their waiters hear nothing.
            lock(&self.0.waiters).clear();
            self.0.publish();
        }
        self.0.wake.notify_all();
        restarted
    }

    /// H2: the supervised app started now.
    pub fn restart_clock(&self) {
        self.0.lock().restart_clock(self.0.now());
        self.0.wake.notify_all();
    }

    pub fn traffic(&self) -> &Arc<TrafficCounters> {
        &self.0.traffic
    }

    /// The door requests pass to reach the app (SPEC Q).
    pub fn door(&self) -> &Arc<Door> {
        &self.0.admission.door
    }

    /// Whether H9's accounting is read by any rule (`allow_on_busy`, `stall_seconds`).
    pub fn h9(&self) -> bool {
        self.0.stall_detection || self.0.lock().settings().allow_on_busy
    }

    /// A request entered (the in-flight count, D2, H9), whichever front took it.
    pub fn request_started(&self) {
        self.becoming_busy(|t| t.started());
    }

    /// A request left (its response ended, or its client left); the drain hears when none
    /// is left.
    pub fn request_finished(&self) {
        if self.0.traffic.finished() == 0 {
            self.0.idle.notify_waiters();
        }
    }

    /// Resolves once the in-flight count next reaches 0 (registered when called: look at
    /// the count after taking it).
    pub fn idle(&self) -> Notified<'_> {
        self.0.idle.notified()
    }

    /// The client moved again: the request waits on the app once more (H9).
    pub fn client_wait_finished(&self) {
        self.becoming_busy(|t| t.client_wait_finished());
    }

    /// With stall detection on, the first request waiting on the app sets a deadline the
    /// clock thread must hear about.
    fn becoming_busy(&self, change: impl FnOnce(&TrafficCounters)) {
        let traffic = &self.0.traffic;
        if !self.0.stall_detection {
            return change(traffic); // every request pays for this look: none without H9
        }
        let was_idle = traffic.snapshot().in_flight == 0;
        change(traffic);
        if was_idle {
            // Through the lock, so the clock thread cannot miss it between deciding to wait
            // and waiting.
            let _scheduler = self.0.lock();
            self.0.wake.notify_all();
        }
    }

    pub fn history(&self) -> Vec<Outcome> {
        self.0.lock().history().cloned().collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.0.now();
        let scheduler = self.0.lock();
        Snapshot {
            age: scheduler.age(now),
            state: scheduler.life().state(),
            ready: scheduler.life().ready(),
            exit_code: scheduler.life().exit_code(),
            failures: scheduler.failures(),
            verdict: scheduler.verdict().cloned(),
            running_check: scheduler.running_id(),
            settings: scheduler.settings().clone(),
            probe_url: self.0.probe.url().to_owned(),
        }
    }
}

/// One app's runner: owns its life, the clock thread and the probes' runtime, and stops
/// them within a bound.
pub struct Runner {
    handle: RunnerHandle,
    thread: Mutex<Option<Worker>>,
    probes: Mutex<Option<(Worker, oneshot::Sender<()>)>>,
}

impl Deref for Runner {
    type Target = RunnerHandle;

    fn deref(&self) -> &RunnerHandle {
        &self.handle
    }
}

impl Runner {
    pub fn new(
        settings: HealthSettings,
        app_url: &str,
        app: AppProtocol,
        events: Arc<EventQueue>,
        admission: Admission,
    ) -> Result<Runner> {
        let probe = Probe::Http(HttpProbe::new(app_url, &settings, app)?);
        Runner::with_probe(settings, probe, events, admission)
    }

    /// A runner whose checks go through `probe` (the embedded front's: the app's own loop).
    pub fn with_probe(
        settings: HealthSettings,
        probe: Probe,
        events: Arc<EventQueue>,
        admission: Admission,
    ) -> Result<Runner> {
        let settings = settings.validate()?;
        let (probes, handle) = probe_runtime()?;
        let base = Instant::now();
        let scheduler = Scheduler::new(settings, Duration::ZERO);
        let view = LifeView {
            phase: scheduler.life().phase(),
            state: scheduler.life().state(),
            verdict: None,
        };
        Ok(Runner {
            handle: RunnerHandle(Arc::new(Shared {
                base,
                stall_detection: scheduler.settings().stall_seconds.is_some(),
                scheduler: Mutex::new(scheduler),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
                traffic: Arc::new(TrafficCounters::new(base)),
                idle: Notify::new(),
                events,
                probe,
                probes: handle,
                life: watch::Sender::new(view),
                waiters: Mutex::new(HashMap::new()),
                admission,
            })),
            thread: Mutex::new(None),
            probes: Mutex::new(Some(probes)),
        })
    }

    pub fn handle(&self) -> RunnerHandle {
        self.handle.clone()
    }

    /// Start the clock thread; the runner's age (H2) counts from now.
    pub fn start(&self) -> Result<()> {
        let mut slot = lock(&self.thread);
        if slot.is_some() || self.handle.0.stop.load(Ordering::Acquire) {
            return Err(CoreError::State("the runner was already started".into()));
        }
        self.restart_clock();
        let shared = Arc::clone(&self.handle.0);
        let worker = Worker::spawn("scheduler", move || shared.keep_time())
            .map_err(|e| CoreError::State(format!("could not start the scheduler thread: {e}")))?;
        *slot = Some(worker);
        Ok(())
    }

    /// Stop the clock thread and the probes' runtime, joining them within `timeout`.
    /// Returns false if one had to be left behind.
    pub fn stop(&self, timeout: Duration) -> bool {
        let shared = &self.handle.0;
        {
            // Under the lock, so the clock thread is either waiting (and is woken) or has
            // not yet read the flag.
            let _scheduler = shared.lock();
            shared.stop.store(true, Ordering::Release);
        }
        shared.wake.notify_all();
        lock(&shared.waiters).clear();
        let deadline = Instant::now() + timeout;
        let clock = lock(&self.thread)
            .take()
            .is_none_or(|worker| worker.join_within(timeout));
        let probes = lock(&self.probes).take().is_none_or(|(worker, stop)| {
            let _ = stop.send(());
            worker.join_within(deadline.saturating_duration_since(Instant::now()))
        });
        clock && probes
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// A one-thread runtime for the probes, on a thread of its own; stopped by its sender.
fn probe_runtime() -> Result<((Worker, oneshot::Sender<()>), tokio::runtime::Handle)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CoreError::State(format!("could not start the probes' runtime: {e}")))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::spawn("probes", move || {
        runtime.block_on(async {
            let _ = stopped.await;
        });
        // Probes still out (a hung app) are dropped with the runtime, not waited for.
        runtime.shutdown_background();
    })
    .map_err(|e| CoreError::State(format!("could not start the probes' thread: {e}")))?;
    Ok(((worker, stop), handle))
}

/// The runner's state at one moment, for `/status`.
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
    use std::thread;

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
        let runner = Runner::new(
            settings,
            &healthy_app(),
            AppProtocol::Http1,
            Arc::clone(&events),
            Admission::default(),
        )
        .unwrap();
        runner.start().unwrap();
        match wait_for_event(&events) {
            Event::Check(outcome) => assert!(outcome.report.passed(), "{outcome:?}"),
            other => panic!("{other:?}"),
        }
        let started = Instant::now();
        assert!(runner.stop(Duration::from_secs(2)));
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
        let runner = Runner::new(
            settings,
            &url,
            AppProtocol::Http1,
            Arc::clone(&events),
            Admission::default(),
        )
        .unwrap();
        runner.start().unwrap();
        let started = Instant::now();
        let TriggerAnswer::Pending(id) = runner.trigger(Trigger::Gateway) else {
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
        let runner = Runner::new(
            HealthSettings::default(),
            "http://127.0.0.1:9",
            AppProtocol::Http1,
            queue(),
            Admission::default(),
        )
        .unwrap();
        runner.start().unwrap();
        assert!(runner.start().is_err());
    }
}
