//! The event queue from the core's threads to Python, with a socket that wakes asyncio.
//!
//! A thread pushes an event and writes one byte to a socket; Python's loop watches the
//! other end (`loop.add_reader`) and drains the queue. No Rust thread ever takes the GIL.
//! One observer inside the core (the metrics) sees each event as it is pushed.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, OnceLock};

use crate::verdict::Event;
use crate::worker::lock;

type Observer = Box<dyn Fn(&Event) + Send + Sync>;

pub struct EventQueue {
    queue: Mutex<VecDeque<Event>>,
    observer: OnceLock<Observer>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
}

impl EventQueue {
    pub fn new() -> std::io::Result<EventQueue> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(EventQueue {
            queue: Mutex::new(VecDeque::new()),
            observer: OnceLock::new(),
            wake_tx,
            wake_rx,
        })
    }

    /// The fd that becomes readable while events wait.
    pub fn fd(&self) -> i32 {
        self.wake_rx.as_raw_fd()
    }

    /// Call `observer` with every event from now on, before it is queued; set once.
    pub fn observe(&self, observer: impl Fn(&Event) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(observer));
    }

    pub fn push(&self, event: Event) {
        if let Some(observer) = self.observer.get() {
            observer(&event);
        }
        lock(&self.queue).push_back(event);
        // A full socket buffer already holds a wake-up; losing this byte loses nothing.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Take every waiting event. The wake bytes are read first, so an event pushed
    /// during the drain leaves a byte behind and wakes the reader again: none is lost.
    pub fn drain(&self) -> Vec<Event> {
        let mut buf = [0u8; 256];
        loop {
            match (&self.wake_rx).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let mut queue = lock(&self.queue);
        queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Reason, Verdict};
    use std::time::Duration;

    #[test]
    fn events_arrive_in_order_and_the_socket_is_cleared() {
        let q = EventQueue::new().unwrap();
        for reason in [Reason::App503, Reason::Stalled] {
            q.push(Event::Verdict(Verdict {
                reason,
                detail: String::new(),
                age: Duration::ZERO,
            }));
        }
        let events = q.drain();
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], Event::Verdict(r) if r.reason == Reason::App503));
        assert!(q.drain().is_empty());
        // Nothing left to read on the wake socket.
        let mut buf = [0u8; 1];
        assert_eq!(
            (&q.wake_rx).read(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
    }
}
