//! The request timeout (SPEC Q3): a forwarded request whose response has not ended within
//! `request_timeout_seconds` of its forwarding is ended by runwarden. Before the response's
//! head, the client gets `504`; after it, the body is cut (the client sees a truncated
//! response: a connection closed short, or an HTTP/2 stream reset). Either way the app's
//! request is aborted at once (its connection is dropped, or its stream reset), and one
//! extra check is asked for (R4), as for an app's own `504`. A tunnel's response ends at
//! its `101`; the tunnel is bounded by `tunnel_idle_timeout_seconds` instead.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::answer::from as answer_from;
use super::layer::{layer, Req, Resp};
use crate::front::Answer;
use crate::runner::RunnerHandle;

layer! {
    /// Q3.
    DeadlineLayer => DeadlineService { timeout: Option<Duration>, runner: RunnerHandle }
    future DeadlineFuture<S::Answer>
}

impl<S: super::layer::Inner> DeadlineService<S> {
    fn handle(&mut self, request: Req) -> DeadlineFuture<S::Answer> {
        let inner = self.inner.call(request);
        match self.timeout {
            None => DeadlineFuture::Open { inner },
            // Boxed: a timer is large, and only requests under a timeout carry one.
            Some(timeout) => DeadlineFuture::Timed {
                inner,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                runner: self.runner.clone(),
            },
        }
    }
}

pin_project! {
    /// The inner answer, with no timeout, or raced against it.
    #[project = DeadlineProj]
    pub enum DeadlineFuture<F> {
        Open { #[pin] inner: F },
        Timed {
            #[pin] inner: F,
            deadline: Pin<Box<Sleep>>,
            runner: RunnerHandle,
        },
        Done,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Resp, std::convert::Infallible>>,
{
    type Output = Result<Resp, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.as_mut().project() {
            DeadlineProj::Open { inner } => inner.poll(cx),
            DeadlineProj::Timed {
                inner,
                deadline,
                runner,
            } => {
                if let Poll::Ready(Ok(mut response)) = inner.poll(cx) {
                    if !response.body().is_tunnel() {
                        let at = deadline.deadline();
                        let runner = runner.clone();
                        response.body_mut().deadline(
                            at,
                            Box::new(move || {
                                runner.response(504); // R4: one extra check
                            }),
                        );
                    }
                    return Poll::Ready(Ok(response));
                }
                std::task::ready!(deadline.as_mut().poll(cx));
                runner.response(504); // R4
                                      // Dropping the inner future aborts the app's request now.
                self.set(DeadlineFuture::Done);
                Poll::Ready(Ok(answer_from(Answer::timed_out(), Version::HTTP_11)))
            }
            DeadlineProj::Done => panic!("a request's answer is taken once"),
        }
    }
}
