//! The metrics layer (A): every request on the proxy port is counted by its status and by
//! who answered it, and timed from its head's arrival to its response's end (or the
//! client leaving, counted as 499) on a monotonic clock with sub-millisecond resolution.

use std::sync::Arc;
use std::time::Instant;

use super::answer::Own;
use super::body::{End, Hook};
use super::layer::{layer, Answer, Req};
use crate::metrics::{Metrics, Source};

layer! {
    /// Requests by status and source; their duration.
    MetricsLayer => MetricsService { metrics: Arc<Metrics> }
}

impl<S: super::layer::Inner> MetricsService<S> {
    fn handle(&mut self, request: Req) -> Answer {
        let mut timed = Timed {
            metrics: Arc::clone(&self.metrics),
            began: Instant::now(),
            answered: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let source = if response.extensions().get::<Own>().is_some() {
                Source::Runwarden
            } else {
                Source::App
            };
            timed.metrics.request(response.status().as_u16(), source);
            timed.answered = true;
            response.body_mut().hook(Box::new(timed));
            Ok(response)
        })
    }
}

/// A request being answered; its time is taken when its response ends, or when the
/// client leaves before any answer.
struct Timed {
    metrics: Arc<Metrics>,
    began: Instant,
    answered: bool,
}

impl Hook for Timed {
    fn ended(&mut self, _end: End) {}
}

impl Drop for Timed {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.request(499, Source::Client);
        }
        self.metrics.latency(self.began.elapsed().as_secs_f64());
    }
}
