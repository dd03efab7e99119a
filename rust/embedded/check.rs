//! Checks through the app's own event loop (SPEC E4): in the embedded front a check is not
//! a request over loopback but a call of the app's health route on the loop that serves
//! the app. The core asks (an `Event::AppCheck` on the event queue, which wakes the loop);
//! the loop calls the route and answers (`AppChecks::answer`). A loop blocked by synchronous
//! code never hears the ask, and the check fails by timeout, as a hung server's would.
//!
//! In-process rather than over loopback: with several workers on one port a loopback check
//! would reach whichever worker accepts it, not the one whose core asked; and it costs no
//! connection, so a server that sheds load by counting connections never refuses a check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::events::EventQueue;
use crate::verdict::{Event, ProbeReport};
use crate::worker::lock;

/// What the loop answers: the route's status, or why it could not answer.
pub type Answered = Result<u16, String>;

/// The checks asked of one app's loop and not answered yet.
pub struct AppChecks {
    events: Arc<EventQueue>,
    url: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answered>>>,
}

impl AppChecks {
    /// Checks of the route at `path`, asked on `events`.
    pub fn new(events: Arc<EventQueue>, path: &str) -> Arc<AppChecks> {
        Arc::new(AppChecks {
            events,
            url: format!("asgi:{path}"),
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ask the loop for one check and wait for its answer (the runner bounds the wait; a
    /// check abandoned at its deadline is forgotten here, and a late answer ignored).
    pub async fn run(&self) -> ProbeReport {
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(call, tx);
        let _forget = Forget { checks: self, call };
        let started = Instant::now();
        self.events.push(Event::AppCheck { call });
        let answered = rx.await;
        let latency = started.elapsed();
        let (status, error) = match answered {
            Ok(Ok(status)) => (Some(status), None),
            Ok(Err(error)) => (None, Some(error)),
            Err(_) => (
                None,
                Some("the app's event loop dropped the check".to_owned()),
            ),
        };
        ProbeReport {
            status,
            error,
            latency,
            local: false,
        }
    }

    /// The loop's answer to check `call`; false if it is no longer waited for (it timed
    /// out, or the runner stopped).
    pub fn answer(&self, call: u64, answered: Answered) -> bool {
        match lock(&self.waiting).remove(&call) {
            Some(tx) => tx.send(answered).is_ok(),
            None => false,
        }
    }

    /// Whether check `call` is still waited for (the loop skips one that is not).
    pub fn wanted(&self, call: u64) -> bool {
        lock(&self.waiting).contains_key(&call)
    }
}

/// Forgets a check when its wait ends, answered or abandoned.
struct Forget<'a> {
    checks: &'a AppChecks,
    call: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.checks.waiting).remove(&self.call);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn e4_a_check_is_asked_on_the_event_queue_and_answered_by_the_loop() {
        let events = Arc::new(EventQueue::new().unwrap());
        let checks = AppChecks::new(Arc::clone(&events), "/health");
        let asker = Arc::clone(&checks);
        let run = tokio::spawn(async move { asker.run().await });
        let call = loop {
            if let Some(Event::AppCheck { call }) = events.drain().into_iter().next() {
                break call;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(checks.wanted(call));
        assert!(checks.answer(call, Ok(204)));
        let report = run.await.unwrap();
        assert!(report.passed());
        assert!(!checks.wanted(call), "an answered check is forgotten");
    }

    #[tokio::test]
    async fn e4_a_check_abandoned_at_its_deadline_ignores_a_late_answer() {
        let events = Arc::new(EventQueue::new().unwrap());
        let checks = AppChecks::new(Arc::clone(&events), "/health");
        let timed_out = tokio::time::timeout(Duration::from_millis(20), checks.run()).await;
        assert!(timed_out.is_err());
        let Some(Event::AppCheck { call }) = events.drain().into_iter().next() else {
            panic!("the check was asked");
        };
        assert!(!checks.wanted(call));
        assert!(
            !checks.answer(call, Ok(200)),
            "a late answer changes nothing"
        );
    }
}
