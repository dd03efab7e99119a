//! The data plane's log lines, sent to Python as events (Python owns the log and its
//! format); warnings about what a flood can repeat are rate-limited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::EventQueue;
use crate::verdict::{Event, LogLine};
use crate::worker::lock;

/// A rate-limited warning says so at most once this often, with how many it held back.
const EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Log {
    events: Arc<EventQueue>,
    limited: Arc<Mutex<HashMap<&'static str, (Instant, u64)>>>,
}

impl Log {
    pub fn new(events: Arc<EventQueue>) -> Log {
        Log {
            events,
            limited: Arc::default(),
        }
    }

    pub fn info(&self, message: String) {
        self.line("info", message);
    }

    pub fn warn(&self, message: String) {
        self.line("warning", message);
    }

    /// A warning of kind `key`, at most once per `EVERY`.
    pub fn warn_limited(&self, key: &'static str, message: String) {
        let held = {
            let mut limited = lock(&self.limited);
            let now = Instant::now();
            match limited.get_mut(key) {
                Some((next, held)) if now < *next => {
                    *held += 1;
                    return;
                }
                Some(entry) => std::mem::replace(entry, (now + EVERY, 0)).1,
                None => {
                    limited.insert(key, (now + EVERY, 0));
                    0
                }
            }
        };
        let suffix = if held > 0 {
            format!(" ({held} more like it held back)")
        } else {
            String::new()
        };
        self.warn(format!("{message}{suffix}"));
    }

    fn line(&self, level: &'static str, message: String) {
        self.events.push(Event::Log(LogLine {
            level,
            logger: "runwarden.proxy",
            message,
        }));
    }

    pub fn event(&self, event: Event) {
        self.events.push(event);
    }
}
