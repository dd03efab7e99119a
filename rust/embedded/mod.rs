//! The embedded front (SPEC E): runwarden inside a Python ASGI server's own process. The
//! ASGI middleware (`python/runwarden/asgi.py`) makes one call here per request, and this
//! front asks the core's rules in the order the proxy's layers do (drain, trigger, in
//! flight, door; then the judge on the response), so each rule is decided once, in the
//! core, whichever front a request came through (`front/`).
//!
//! A request's stay at the runner is a `Visit`: counted in flight (D2) from its entry until
//! it ends, holding a place at the app (Q2) while it is there, and judging the app's answer
//! (R1, R4, H6). Waits that outlast the call (a place at the door) run on the core's runtime
//! and end with an event, so the app's loop is never blocked and never polls.

pub mod check;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::door::{Entry as DoorEntry, Limits, Permit, Refusal};
use crate::events::EventQueue;
use crate::front::{Answer, Trusted};
use crate::metrics::{Metrics, Source};
use crate::runner::{LifeView, RunnerHandle};
use crate::settings::ProxySettings;
use crate::verdict::Event;
use crate::worker::lock;

/// SPEC Q2 in-process: with no `max_concurrency` the app's server bounds its connections
/// and the door only holds requests for an exclusive check (Q1); with one, the proxy's
/// bounds.
pub fn door_limits(settings: &ProxySettings) -> Limits {
    match settings.max_concurrency {
        0 => Limits::permits(Limits::UNBOUNDED),
        _ => crate::proxy::door_limits(settings),
    }
}

/// What the runner says to a new request.
pub enum Entry {
    /// It goes on to the app.
    Admitted(Visit),
    /// runwarden answers it itself (the drain's refusal, the door's).
    Answer(Answer),
    /// A trusted gateway's check request (H5): run a check and answer with it.
    Check,
    /// It waits for a place at the app; `Event::Entered` says when the wait is over.
    Queued(Wait),
}

/// The embedded front of one runner.
pub struct Front {
    runner: RunnerHandle,
    life: watch::Receiver<LifeView>,
    trusted: Trusted,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    events: Arc<EventQueue>,
    next_wait: AtomicU64,
    h9: bool,
    /// Whether a wait at the door has a deadline (a timer of the core's runtime).
    timed_waits: bool,
}

impl Front {
    pub fn new(
        runner: RunnerHandle,
        trusted: Trusted,
        metrics: Arc<Metrics>,
        runtime: tokio::runtime::Handle,
        events: Arc<EventQueue>,
    ) -> Front {
        Front {
            h9: runner.h9(),
            timed_waits: runner.door().snapshot().limits.queue_timeout.is_some(),
            life: runner.life(),
            runner,
            trusted,
            metrics,
            runtime,
            events,
            next_wait: AtomicU64::new(1),
        }
    }

    /// A new request from `peer` (an address as text, if the server knows one), carrying
    /// the check header or not. With it, the second value says whether the header must be
    /// removed before the app sees the request (an untrusted peer's, H5).
    pub fn enter(&self, check_header: bool, peer: Option<&str>) -> (Entry, bool) {
        // D1: nothing new reaches a draining runner.
        let verdict = self.life.borrow().verdict.clone();
        if let Some(verdict) = verdict {
            return (self.own(Answer::draining(Some(&verdict), "")), false);
        }
        // H5: a trusted gateway's check is answered here; anyone else's header is dropped.
        let mut strip = false;
        if check_header {
            if self.trusted.contains_text(peer) {
                return (Entry::Check, false);
            }
            strip = true;
        }
        // D2: in flight from here, queued or not, until the visit ends.
        self.runner.request_started();
        let mut visit = Visit {
            runner: self.runner.clone(),
            metrics: Arc::clone(&self.metrics),
            permit: None,
            status: None,
            manual: false,
            finished: false,
        };
        // Q1, Q2: a place at the app now, a wait for one, or a refusal. A wait's timer
        // (`queue_timeout_seconds`, with `max_concurrency`) is the core runtime's.
        let _runtime = self.timed_waits.then(|| self.runtime.enter());
        let entry = match self.runner.door().enter() {
            DoorEntry::Admitted(permit) => {
                visit.permit = Some(permit);
                Entry::Admitted(visit)
            }
            DoorEntry::Refused(why) => {
                drop(visit);
                self.own(Answer::overloaded(why, self.verdict().as_ref()))
            }
            DoorEntry::Queued(queued) => {
                let call = self.next_wait.fetch_add(1, Ordering::Relaxed);
                let slot: Arc<Mutex<Option<Result<Permit, Refusal>>>> = Arc::default();
                let (filled, events, metrics) = (
                    Arc::clone(&slot),
                    Arc::clone(&self.events),
                    Arc::clone(&self.metrics),
                );
                let task = self.runtime.spawn(async move {
                    let entered = queued.await.map(|(permit, waited)| {
                        metrics.observe_queue_wait(waited);
                        permit
                    });
                    *lock(&filled) = Some(entered);
                    events.push(Event::Entered { call });
                });
                Entry::Queued(Wait {
                    call,
                    slot,
                    task,
                    visit: Some(visit),
                })
            }
        };
        (entry, strip)
    }

    /// H5's answer to a gateway once its check is done (None: abandoned).
    pub fn check_answer(&self, outcome: Option<&crate::verdict::Outcome>) -> Answer {
        let answer = Answer::check(outcome);
        self.metrics
            .request(answer.status.as_u16(), Source::Runwarden);
        answer
    }

    /// D6: the answer to a request still in flight at the drain's deadline that had not
    /// begun its response.
    pub fn past_the_drain(&self) -> Answer {
        let answer = Answer::past_the_drain(self.verdict().as_ref());
        self.metrics
            .request(answer.status.as_u16(), Source::Runwarden);
        answer
    }

    /// Whether an H9 rule reads the bytes requests move (`allow_on_busy`, `stall_seconds`).
    pub fn h9(&self) -> bool {
        self.h9
    }

    /// The runner drains: responses carry `Connection: close` (D6).
    pub fn draining(&self) -> bool {
        self.life.borrow().draining()
    }

    fn verdict(&self) -> Option<crate::verdict::Verdict> {
        self.life.borrow().verdict.clone()
    }

    fn own(&self, answer: Answer) -> Entry {
        self.metrics
            .request(answer.status.as_u16(), Source::Runwarden);
        Entry::Answer(answer)
    }
}

/// One request's stay at the runner: in flight until it ends, at the app while it holds a
/// place there.
pub struct Visit {
    runner: RunnerHandle,
    metrics: Arc<Metrics>,
    permit: Option<Permit>,
    status: Option<u16>,
    manual: bool,
    finished: bool,
}

impl Visit {
    /// The app's response began with `status`, carrying the check header or not: R1 and R4
    /// are judged now, before the response goes on (a 503 drains the runner first, so no
    /// request admitted after it reaches the app); H6's manual check runs once it has ended.
    pub fn respond(&mut self, status: u16, asks_check: bool) {
        self.status = Some(status);
        self.manual |= asks_check;
        self.metrics.request(status, Source::App);
        self.runner.response(status);
    }

    /// Bytes moved on the exchange (H9: a busy runner is not a hung one).
    pub fn progress(&self) {
        self.runner.traffic().progress();
    }

    /// Whether the app's response has begun.
    pub fn responded(&self) -> bool {
        self.status.is_some()
    }

    /// Q3: the request outlived `request_timeout_seconds` and the app's task is cancelled.
    /// One extra check is asked for (R4, as for an app's own 504); the client gets the 504
    /// if the response had not begun (else it is cut).
    pub fn timed_out(&mut self) -> Option<Answer> {
        self.runner.response(504);
        if self.responded() {
            return None;
        }
        let answer = Answer::timed_out();
        self.metrics
            .request(answer.status.as_u16(), Source::Runwarden);
        self.status = Some(answer.status.as_u16());
        Some(answer)
    }

    /// The response has ended, or the request was given up: the place at the app is free,
    /// the request leaves the in-flight count, and a manual check asked for runs (H6).
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.permit = None;
        self.runner.request_finished();
        if self.manual {
            self.runner.manual();
        }
    }
}

impl Drop for Visit {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request waiting at the door. Dropped, it gives up its place (or the place it was
/// given) at once.
pub struct Wait {
    call: u64,
    slot: Arc<Mutex<Option<Result<Permit, Refusal>>>>,
    task: JoinHandle<()>,
    visit: Option<Visit>,
}

impl Wait {
    /// Names the wait in `Event::Entered`.
    pub fn call(&self) -> u64 {
        self.call
    }

    /// Once `Event::Entered` came: the visit, now at the app, or the door's refusal.
    /// None if the wait is not over (or was taken).
    pub fn take(&mut self, front: &Front) -> Option<Result<Visit, Answer>> {
        let entered = lock(&self.slot).take()?;
        let mut visit = self.visit.take()?;
        Some(match entered {
            Ok(permit) => {
                visit.permit = Some(permit);
                Ok(visit)
            }
            Err(why) => {
                drop(visit);
                let answer = Answer::overloaded(why, front.verdict().as_ref());
                front
                    .metrics
                    .request(answer.status.as_u16(), Source::Runwarden);
                Err(answer)
            }
        })
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.task.abort();
    }
}
