//! The runner's door (SPEC Q): who may be at the app, and when.
//!
//! One primitive, with no HTTP in it, so that whatever admits requests (the data plane's
//! layer, `proxy/door.rs`, or a later in-process mode inside a Python model server) shares
//! the same rules:
//!
//! - **Permits** (Q2): at most `limit` requests are at the app at once. A request keeps its
//!   permit until its response has ended (a stream's last byte, a tunnel's close).
//! - **One FIFO queue** (Q2): a request that finds no permit waits in arrival order, at most
//!   `queue` of them (more are refused `QueueFull`), each at most `queue_timeout`
//!   (`QueueTimeout`). A waiter that is dropped (its client left) leaves the queue at once.
//! - **The exclusive window** (Q1): a thorough check first holds new requests (they queue,
//!   even with permits free), waits until nothing is at the app (bounded: `Busy` if not),
//!   runs alone, and on closing the window the held requests go on in arrival order.
//! - **Closing** (Q6): when the runner drains, everything queued is refused `Draining` at
//!   once (it never reached the app); `open` lets requests in again (K2's restart).
//!
//! A permit taken at once costs one uncontended lock; nothing else happens per request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// The door's bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests at the app at once.
    pub limit: usize,
    /// Requests that may wait for a permit; None: any number.
    pub queue: Option<usize>,
    /// The longest a request waits for a permit; None: as long as it takes.
    pub queue_timeout: Option<Duration>,
}

impl Limits {
    /// No limit at all: the door only holds requests for an exclusive check (Q1).
    pub const UNBOUNDED: usize = usize::MAX / 2;

    /// Whether the door bounds the requests at the app.
    pub fn bounded(&self) -> bool {
        self.limit < Limits::UNBOUNDED
    }

    /// No bound but `limit`: requests over it wait in arrival order for as long as it takes.
    pub fn permits(limit: usize) -> Limits {
        Limits {
            limit: limit.max(1),
            queue: None,
            queue_timeout: None,
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue held `queue` requests already.
    QueueFull,
    /// No permit came within `queue_timeout`.
    QueueTimeout,
    /// The runner drains: nothing more goes to the app.
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::QueueFull, Refusal::QueueTimeout, Refusal::Draining];

    /// As `x-runwarden-overloaded`, the metrics and `/status` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::QueueTimeout => "queue_timeout",
            Refusal::Draining => "draining",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A thorough check could not have the runner to itself within its bound (Q1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// Requests still at the app when the bound passed.
    pub at_app: usize,
}

/// The door's figures at one moment (Q5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DoorSnapshot {
    pub limits: Limits,
    pub at_app: usize,
    pub queued: usize,
    /// A check holds the door (Q1).
    pub exclusive: bool,
    pub closed: bool,
    /// Requests refused, by `Refusal::ALL`'s order.
    pub refused: [u64; 3],
    pub admitted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Waiting,
    Granted,
    Refused(Refusal),
}

struct Waiter {
    id: u64,
    turn: Turn,
    waker: Option<Waker>,
}

struct State {
    limits: Limits,
    at_app: usize,
    /// Waiting, then granted or refused until the waiter looks (granted and refused ones
    /// are not counted as queued).
    queue: VecDeque<Waiter>,
    waiting: usize,
    next_id: u64,
    /// Checks holding the window or waiting for it.
    exclusive: usize,
    closed: bool,
}

impl State {
    fn find(&mut self, id: u64) -> Option<usize> {
        self.queue.iter().position(|w| w.id == id)
    }

    /// Grant permits to the first waiters while the door lets them in.
    fn dispatch(&mut self) {
        if self.exclusive > 0 || self.closed {
            return;
        }
        for waiter in self.queue.iter_mut() {
            if self.at_app >= self.limits.limit {
                break;
            }
            if waiter.turn == Turn::Waiting {
                waiter.turn = Turn::Granted;
                self.waiting -= 1;
                self.at_app += 1;
                if let Some(waker) = waiter.waker.take() {
                    waker.wake();
                }
            }
        }
    }
}

pub struct Door {
    state: Mutex<State>,
    /// Nothing is at the app any more (the exclusive window's wait).
    idle: Notify,
    refused: [AtomicU64; 3],
    admitted: AtomicU64,
}

impl Door {
    pub fn new(limits: Limits) -> Arc<Door> {
        Arc::new(Door {
            state: Mutex::new(State {
                limits,
                at_app: 0,
                queue: VecDeque::new(),
                waiting: 0,
                next_id: 0,
                exclusive: 0,
                closed: false,
            }),
            idle: Notify::new(),
            refused: Default::default(),
            admitted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::worker::lock(&self.state)
    }

    /// Ask for a permit: now if one is free and nothing waits before this request, else a
    /// place in the queue (`Entry::Queued`, a future), or a refusal.
    pub fn enter(self: &Arc<Self>) -> Entry {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            return Entry::Refused(self.refuse(Refusal::Draining));
        }
        if state.exclusive == 0 && state.waiting == 0 && state.at_app < state.limits.limit {
            state.at_app += 1;
            drop(state);
            self.admitted.fetch_add(1, Ordering::Relaxed);
            return Entry::Admitted(Permit {
                door: Arc::clone(self),
            });
        }
        if state.limits.queue.is_some_and(|max| state.waiting >= max) {
            drop(state);
            return Entry::Refused(self.refuse(Refusal::QueueFull));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.waiting += 1;
        state.queue.push_back(Waiter {
            id,
            turn: Turn::Waiting,
            waker: None,
        });
        let timeout = state.limits.queue_timeout;
        drop(state);
        Entry::Queued(Queued {
            door: Arc::clone(self),
            id,
            since: Instant::now(),
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            done: false,
        })
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        why
    }

    fn release(&self) {
        self.give_back(&mut self.lock());
    }

    /// A place at the app is free again: a check waiting for the runner hears when the app
    /// is idle, and the next in line gets the place.
    fn give_back(&self, state: &mut State) {
        state.at_app -= 1;
        if state.at_app == 0 && state.exclusive > 0 {
            self.idle.notify_waiters();
        }
        state.dispatch();
    }

    /// Q1: hold new requests, wait until nothing is at the app (at most `bound`), and hand
    /// the runner to the caller until the `Window` is dropped.
    pub async fn exclusive(self: &Arc<Self>, bound: Duration) -> Result<Window, Busy> {
        self.lock().exclusive += 1;
        let window = Window {
            door: Arc::clone(self),
        };
        let deadline = Instant::now() + bound;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let at_app = self.lock().at_app;
            if at_app == 0 {
                return Ok(window);
            }
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let at_app = self.lock().at_app;
                    if at_app == 0 {
                        return Ok(window);
                    }
                    return Err(Busy { at_app }); // dropping the window lets the held go on
                }
            }
        }
    }

    /// Q6: the runner drains. Everything queued is refused at once, and so is every request
    /// from now until `open`.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let mut refused = 0;
        for waiter in state.queue.iter_mut() {
            if waiter.turn == Turn::Waiting {
                waiter.turn = Turn::Refused(Refusal::Draining);
                refused += 1;
                if let Some(waker) = waiter.waker.take() {
                    waker.wake();
                }
            }
        }
        state.waiting -= refused;
        drop(state);
        self.refused[Refusal::Draining.index()].fetch_add(refused as u64, Ordering::Relaxed);
    }

    /// K2: the runner starts over; requests are let in again.
    pub fn open(&self) {
        let mut state = self.lock();
        state.closed = false;
        state.dispatch();
    }

    pub fn snapshot(&self) -> DoorSnapshot {
        let state = self.lock();
        DoorSnapshot {
            limits: state.limits,
            at_app: state.at_app,
            queued: state.waiting,
            exclusive: state.exclusive > 0,
            closed: state.closed,
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
            admitted: self.admitted.load(Ordering::Relaxed),
        }
    }
}

/// The answer to `Door::enter`.
pub enum Entry {
    Admitted(Permit),
    Queued(Queued),
    Refused(Refusal),
}

/// A place at the app, given back when dropped.
pub struct Permit {
    door: Arc<Door>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.door.release();
    }
}

/// A check's hold on the runner (Q1); the held requests go on when it is dropped.
pub struct Window {
    door: Arc<Door>,
}

impl Drop for Window {
    fn drop(&mut self) {
        let mut state = self.door.lock();
        state.exclusive -= 1;
        state.dispatch();
    }
}

/// A request waiting for a permit. Resolves to the permit and how long it waited, or to a
/// refusal; dropped before that, it gives up its place at once.
pub struct Queued {
    door: Arc<Door>,
    id: u64,
    since: Instant,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Future for Queued {
    type Output = Result<(Permit, Duration), Refusal>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(!this.done, "a queued entry is polled after its answer");
        let mut state = this.door.lock();
        let index = state
            .find(this.id)
            .expect("a waiter stays queued until it is answered");
        match state.queue[index].turn {
            Turn::Granted => {
                state.queue.remove(index);
                drop(state);
                this.done = true;
                this.door.admitted.fetch_add(1, Ordering::Relaxed);
                let permit = Permit {
                    door: Arc::clone(&this.door),
                };
                return Poll::Ready(Ok((permit, this.since.elapsed())));
            }
            Turn::Refused(why) => {
                state.queue.remove(index);
                this.done = true;
                return Poll::Ready(Err(why)); // counted by `close`
            }
            Turn::Waiting => {}
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                state.queue.remove(index);
                state.waiting -= 1;
                drop(state);
                this.done = true;
                return Poll::Ready(Err(this.door.refuse(Refusal::QueueTimeout)));
            }
        }
        let waker = &mut state.queue[index].waker;
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.door.lock();
        let Some(index) = state.find(self.id) else {
            return;
        };
        let waiter = state.queue.remove(index).expect("found");
        match waiter.turn {
            Turn::Waiting => state.waiting -= 1,
            // Granted to a request that left before it looked: the permit goes on.
            Turn::Granted => self.door.give_back(&mut state),
            Turn::Refused(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(limit: usize, queue: Option<usize>, timeout_ms: Option<u64>) -> Limits {
        Limits {
            limit,
            queue,
            queue_timeout: timeout_ms.map(Duration::from_millis),
        }
    }

    fn admitted(entry: Entry) -> Permit {
        match entry {
            Entry::Admitted(p) => p,
            _ => panic!("expected a permit at once"),
        }
    }

    fn queued(entry: Entry) -> Queued {
        match entry {
            Entry::Queued(q) => q,
            _ => panic!("expected a place in the queue"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn q2_over_the_limit_requests_wait_in_arrival_order() {
        let door = Door::new(limits(1, None, None));
        let first = admitted(door.enter());
        let mut second = Box::pin(queued(door.enter()));
        let mut third = Box::pin(queued(door.enter()));
        assert_eq!(door.snapshot().queued, 2);
        assert!(futures_poll(&mut third).is_none());
        assert!(futures_poll(&mut second).is_none());
        drop(first);
        assert!(
            futures_poll(&mut third).is_none(),
            "the third waits behind the second"
        );
        let (permit, _) = futures_poll(&mut second).unwrap().unwrap();
        assert_eq!(door.snapshot().at_app, 1);
        drop(permit);
        assert!(futures_poll(&mut third).unwrap().is_ok());
        assert_eq!(door.snapshot().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn q2_a_full_queue_refuses_and_a_timeout_refuses() {
        let door = Door::new(limits(1, Some(1), Some(100)));
        let _first = admitted(door.enter());
        let waiting = queued(door.enter());
        assert!(matches!(door.enter(), Entry::Refused(Refusal::QueueFull)));
        assert_eq!(waiting.await.err(), Some(Refusal::QueueTimeout));
        let snapshot = door.snapshot();
        assert_eq!(snapshot.refused, [1, 1, 0]);
        assert_eq!(snapshot.queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn q2_a_waiter_that_leaves_frees_its_place_and_a_granted_permit_goes_on() {
        let door = Door::new(limits(1, Some(1), None));
        let first = admitted(door.enter());
        drop(queued(door.enter()));
        assert_eq!(door.snapshot().queued, 0);
        let granted_then_gone = queued(door.enter());
        let mut next = Box::pin(queued_after(&door, first, granted_then_gone));
        assert!(futures_poll(&mut next).unwrap().is_ok());
    }

    /// The first permit goes back, the waiter it was granted to leaves without looking, and
    /// the one behind it gets it.
    fn queued_after(door: &Arc<Door>, first: Permit, granted: Queued) -> Queued {
        let behind = {
            // Room for one more behind the granted waiter.
            door.lock().limits.queue = Some(2);
            queued(door.enter())
        };
        drop(first);
        assert_eq!(door.snapshot().at_app, 1, "granted to the waiter");
        drop(granted);
        behind
    }

    #[tokio::test(start_paused = true)]
    async fn q1_the_window_waits_for_the_app_and_holds_new_requests() {
        let door = Door::new(limits(4, None, None));
        let busy = admitted(door.enter());
        let d = Arc::clone(&door);
        let window = tokio::spawn(async move { d.exclusive(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        let mut held = Box::pin(queued(door.enter()));
        assert!(
            futures_poll(&mut held).is_none(),
            "held while the check waits"
        );
        drop(busy);
        let window = window.await.unwrap().expect("the runner became idle");
        assert!(
            futures_poll(&mut held).is_none(),
            "held while the check runs"
        );
        drop(window);
        assert!(futures_poll(&mut held).unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn q1_a_runner_that_stays_busy_is_reported_busy_and_lets_the_held_go() {
        let door = Door::new(limits(4, None, None));
        let _busy = admitted(door.enter());
        let d = Arc::clone(&door);
        let window = tokio::spawn(async move { d.exclusive(Duration::from_secs(1)).await });
        tokio::task::yield_now().await;
        let mut held = Box::pin(queued(door.enter()));
        assert!(futures_poll(&mut held).is_none());
        assert_eq!(window.await.unwrap().err(), Some(Busy { at_app: 1 }));
        assert!(futures_poll(&mut held).unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn q6_closing_refuses_the_queued_and_the_new() {
        let door = Door::new(limits(1, None, None));
        let _busy = admitted(door.enter());
        let waiting = queued(door.enter());
        door.close();
        assert_eq!(waiting.await.err(), Some(Refusal::Draining));
        assert!(matches!(door.enter(), Entry::Refused(Refusal::Draining)));
        door.open();
        assert_eq!(door.snapshot().refused, [0, 0, 2]);
    }

    /// Poll a future once: its output, if ready.
    fn futures_poll<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match Pin::new(future).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }
}
