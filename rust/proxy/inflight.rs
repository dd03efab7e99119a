//! The layer that counts the requests in flight to the app (D2, H9): the one count the
//! drain waits on and `/status` shows, from a request's admission until its response's end
//! (a stream's last byte, a tunnel's close, or the client leaving).
//!
//! With an H9 rule on (`allow_on_busy`, `stall_seconds`), it also tells the runner when a
//! response is held up by its client rather than by the app: between handing hyper a
//! frame and hyper asking for the next one, the request waits on the client's socket, so a
//! client that does not read never makes a healthy app look stalled.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;

use super::body::Hook;
use super::layer::{layer, Post, Req, Resp, Then};
use crate::runner::RunnerHandle;

layer! {
    /// D2, H9.
    InFlightLayer => InFlightService { runner: RunnerHandle, h9: bool }
    future Then<S::Answer, InFlight>
}

impl<S: super::layer::Inner> InFlightService<S> {
    fn handle(&mut self, mut request: Req) -> Then<S::Answer, InFlight> {
        self.runner.request_started();
        let wait = self.h9.then(|| {
            let wait = Arc::new(ClientWait {
                runner: self.runner.clone(),
                sides: AtomicU8::new(0),
            });
            // For the upload's side (`forward.rs`).
            request.extensions_mut().insert(Arc::clone(&wait));
            wait
        });
        let guard = InFlight {
            runner: self.runner.clone(),
            wait,
            waiting_on_client: false,
        };
        Then::later(self.inner.call(request), guard)
    }
}

/// H9: whether one request waits on its client, its upload not sent or its answer not
/// taken; counted once when both are.
pub struct ClientWait {
    runner: RunnerHandle,
    /// The sides waiting (0, 1 or 2).
    sides: AtomicU8,
}

impl ClientWait {
    pub fn started(&self) {
        if self.sides.fetch_add(1, Ordering::Relaxed) == 0 {
            self.runner.traffic().client_wait_started();
        }
    }

    pub fn finished(&self) {
        if self.sides.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.runner.client_wait_finished();
        }
    }

    /// Bytes moved on the exchange.
    pub fn progress(&self) {
        self.runner.traffic().progress();
    }
}

impl Post for InFlight {
    fn post(self, mut response: Resp) -> Resp {
        response.body_mut().hook(Box::new(self));
        response
    }
}

/// One request in flight; it leaves when dropped (before its answer, if the client left).
pub struct InFlight {
    runner: RunnerHandle,
    /// H9's accounting, when an H9 rule reads it.
    wait: Option<Arc<ClientWait>>,
    waiting_on_client: bool,
}

impl Hook for InFlight {
    fn polled(&mut self) {
        if let Some(wait) = &self.wait {
            if std::mem::take(&mut self.waiting_on_client) {
                wait.finished();
            }
        }
    }

    fn frame(&mut self, _frame: &Frame<Bytes>) {
        if let Some(wait) = &self.wait {
            wait.progress();
            if !std::mem::replace(&mut self.waiting_on_client, true) {
                wait.started();
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.polled();
        self.runner.request_finished();
    }
}
