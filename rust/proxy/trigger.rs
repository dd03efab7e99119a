//! The layer of gateway checks (H5): a request carrying the check header from a trusted
//! peer is a gateway's request for a check, answered here with the check's outcome and
//! never forwarded. From any other peer the header is removed and the request goes on as
//! an ordinary one, so no client can turn a slow moment of the app into checks that count.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use super::answer::from as answer_from;
use super::conn::ConnState;
use super::layer::{layer, Req, Resp};
use super::log::Log;
use crate::front::{Answer, Trusted};
use crate::runner::{CheckWait, RunnerHandle};
use crate::verdict::{Outcome, Trigger};

layer! {
    /// H5.
    TriggerLayer => TriggerService {
        header: HeaderName,
        trusted: Trusted,
        runner: RunnerHandle,
        conn: Arc<ConnState>,
        log: Log,
        warned: Arc<AtomicBool>,
    }
    future TriggerFuture<S::Answer>
}

impl<S: super::layer::Inner> TriggerService<S> {
    fn handle(&mut self, mut request: Req) -> TriggerFuture<S::Answer> {
        if request.headers().contains_key(&self.header) {
            if !self.trusted.contains(self.conn.peer.ip()) {
                request.headers_mut().remove(&self.header);
            } else {
                self.behind_a_front_proxy(&request);
                return match self.runner.trigger_and_wait(Trigger::Gateway) {
                    CheckWait::Latest(outcome) => TriggerFuture::Now {
                        response: Some(Box::new(answer(Some(&outcome)))),
                    },
                    CheckWait::Pending(outcome) => TriggerFuture::Check { outcome },
                };
            }
        }
        TriggerFuture::Pass {
            inner: self.inner.call(request),
        }
    }
}

impl<S> TriggerService<S> {
    /// Trust is the peer's address: a front proxy on this host (nginx, Envoy) makes every
    /// client behind it a loopback peer, so every client is trusted. Said once, when a
    /// trusted loopback peer's check request shows a front proxy's header.
    fn behind_a_front_proxy(&self, request: &Req) {
        if self.conn.peer.ip().is_loopback()
            && request.headers().contains_key(X_FORWARDED_FOR)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            self.log.warn(format!(
                "a check request ({}) came from {} with X-Forwarded-For: a front proxy on \
                 this host forwards clients as loopback peers, and loopback is trusted, so \
                 every client behind it can trigger checks; set --check-trusted-sources to \
                 the gateway's own address (README: security model)",
                self.header,
                self.conn.peer.ip()
            ));
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pin_project! {
    /// The inner service's answer, or the check's.
    #[project = TriggerProj]
    pub enum TriggerFuture<F> {
        Pass { #[pin] inner: F },
        Now { response: Option<Box<Resp>> },
        Check { #[pin] outcome: oneshot::Receiver<Outcome> },
    }
}

impl<F> Future for TriggerFuture<F>
where
    F: Future<Output = Result<Resp, std::convert::Infallible>>,
{
    type Output = Result<Resp, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TriggerProj::Pass { inner } => inner.poll(cx),
            TriggerProj::Now { response } => {
                Poll::Ready(Ok(*response.take().expect("an answer is taken once")))
            }
            TriggerProj::Check { outcome } => {
                let outcome = std::task::ready!(outcome.poll(cx));
                Poll::Ready(Ok(answer(outcome.as_ref().ok())))
            }
        }
    }
}

/// H5's answer (`Answer::check`); a check request is answered as HTTP/1.1 would be.
fn answer(outcome: Option<&Outcome>) -> Resp {
    answer_from(Answer::check(outcome), http::Version::HTTP_11)
}
