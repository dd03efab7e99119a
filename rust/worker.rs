//! The core's threads and locks, one way everywhere.
//!
//! Every thread is owned by a struct that tells it to stop and joins it within a bound:
//! `Worker` is such a thread, and `Worker::join_within` never waits past its deadline (a
//! thread stuck in the NVML driver is left behind rather than hanging the exit).

use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Lock, ignoring poison. Every mutation under the core's locks is complete before any
/// call that could panic, so a panic leaves consistent data and the poison carries no
/// meaning; propagating it would only turn one panic into many.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A named thread whose end can be awaited with a deadline.
pub struct Worker {
    pub name: &'static str,
    handle: JoinHandle<()>,
    done: Receiver<()>,
}

impl Worker {
    /// Start `body` on a thread named `runwarden-{name}`.
    pub fn spawn(
        name: &'static str,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (done_tx, done) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(format!("runwarden-{name}"))
            .spawn(move || {
                body();
                let _ = done_tx.send(());
            })?;
        Ok(Worker { name, handle, done })
    }

    /// Wait for the thread to end, at most `timeout`; false if it is still running (it is
    /// then left behind, detached).
    pub fn join_within(self, timeout: Duration) -> bool {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => self.handle.join().is_ok(),
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_thread_that_ends_is_joined_and_one_that_hangs_is_left_within_the_bound() {
        let quick = Worker::spawn("test-quick", || {}).unwrap();
        assert!(quick.join_within(Duration::from_secs(2)));
        let slow = Worker::spawn("test-slow", || thread::sleep(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        assert!(!slow.join_within(Duration::from_millis(50)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let poisoner = std::sync::Arc::clone(&mutex);
        let _ = thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert_eq!(*lock(&mutex), 1);
    }
}
