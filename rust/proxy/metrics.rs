//! The metrics layer (A): every request on the proxy port is counted by its status and by
//! who answered it, and timed from its head's arrival to its response's end (or the
//! client leaving, counted as 499) on a monotonic clock with sub-millisecond resolution.

use std::sync::Arc;
use std::time::Instant;

use super::answer::Own;
use super::body::Hook;
use super::layer::{layer, Post, Req, Resp, Then};
use crate::metrics::{Metrics, Source};

layer! {
    /// Requests by status and source; their duration.
    MetricsLayer => MetricsService { metrics: Arc<Metrics> }
    future Then<S::Answer, Timed>
}

impl<S: super::layer::Inner> MetricsService<S> {
    fn handle(&mut self, request: Req) -> Then<S::Answer, Timed> {
        let timed = Timed {
            metrics: Arc::clone(&self.metrics),
            began: Instant::now(),
            answered: false,
        };
        Then::later(self.inner.call(request), timed)
    }
}

/// A request being answered; its time is taken when its response ends, or when the
/// client leaves before any answer.
pub struct Timed {
    metrics: Arc<Metrics>,
    began: Instant,
    answered: bool,
}

impl Post for Timed {
    fn post(mut self, mut response: Resp) -> Resp {
        let source = if response.extensions().get::<Own>().is_some() {
            Source::Runwarden
        } else {
            Source::App
        };
        self.metrics.request(response.status().as_u16(), source);
        self.answered = true;
        response.body_mut().hook(Box::new(self));
        response
    }
}

impl Hook for Timed {}

impl Drop for Timed {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.request(499, Source::Client);
        }
        self.metrics.latency(self.began.elapsed().as_secs_f64());
    }
}
