//! The layer that counts the requests in flight to the app (D2, H9): the one count the
//! drain waits on and `/status` shows, from a request's admission until its response's end
//! (a stream's last byte, a tunnel's close, or the client leaving).
//!
//! With an H9 rule on (`allow_on_busy`, `stall_seconds`), it also tells the checker when a
//! response is held up by its client rather than by the app: between handing hyper a
//! frame and hyper asking for the next one, the request waits on the client's socket, so a
//! client that does not read never makes a healthy app look stalled.

use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;

use super::body::Hook;
use super::drain::DrainState;
use super::layer::{layer, Post, Req, Resp, Then};
use crate::checker::CheckerHandle;

layer! {
    /// D2, H9.
    InFlightLayer => InFlightService { checker: CheckerHandle, drain: Arc<DrainState>, h9: bool }
    future Then<S::Answer, InFlight>
}

impl<S: super::layer::Inner> InFlightService<S> {
    fn handle(&mut self, request: Req) -> Then<S::Answer, InFlight> {
        self.checker.request_started();
        let guard = InFlight {
            checker: self.checker.clone(),
            drain: Arc::clone(&self.drain),
            h9: self.h9,
            waiting_on_client: false,
        };
        Then::later(self.inner.call(request), guard)
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
    checker: CheckerHandle,
    drain: Arc<DrainState>,
    h9: bool,
    waiting_on_client: bool,
}

impl Hook for InFlight {
    fn polled(&mut self) {
        if self.h9 && std::mem::take(&mut self.waiting_on_client) {
            self.checker.client_wait_finished();
        }
    }

    fn frame(&mut self, _frame: &Frame<Bytes>) {
        if self.h9 {
            let traffic = self.checker.traffic();
            traffic.progress();
            if !self.waiting_on_client {
                self.waiting_on_client = true;
                traffic.client_wait_started();
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.polled();
        if self.checker.traffic().finished() == 0 {
            self.drain.idle.notify_waiters();
        }
    }
}
