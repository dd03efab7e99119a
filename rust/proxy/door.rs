//! The door's layer (SPEC Q1, Q2, Q6): each proxied request passes the runner's door
//! (`crate::door`) before it is forwarded, and keeps its permit until its response has
//! ended (a tunnel: until it closes).
//!
//! With no `max_concurrency` the door's only bound is `max_app_connections`: with
//! `--app-protocol http1` each permit is one connection to the app, so no client can
//! exhaust the app's fds and fail its checks, which never pass through here. A request that
//! finds no permit (or a check holding the runner, Q1) waits in arrival order; a client
//! that leaves while waiting gives up its place at once, and its request never reaches the
//! app. A request the door refuses is answered here, `503` with `Retry-After`: it is
//! runwarden's answer, never judged as the app's (R1) and never a failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::answer::from as answer_from;
use super::body::Hook;
use super::conn::ConnState;
use super::drain::{refused, DrainState};
use super::layer::{layer, Req, Resp};
use crate::door::{Door, Entry, Permit, Queued, Refusal};
use crate::front::Answer;
use crate::metrics::Metrics;

/// How often a waiting HTTP/1.1 request looks whether its client is still there: hyper
/// reads the client's socket only when it wants a body's bytes, so a client that left
/// while its request waits is seen by looking (HTTP/2 says so itself, with RST_STREAM).
const GONE_CHECK: Duration = Duration::from_millis(50);

layer! {
    /// Q1, Q2, Q6.
    DoorLayer => DoorService {
        door: Arc<Door>,
        metrics: Arc<Metrics>,
        drain: Arc<DrainState>,
        conn: Arc<ConnState>,
    }
    future DoorFuture<S, S::Answer>
}

impl<S: super::layer::Inner> DoorService<S> {
    fn handle(&mut self, request: Req) -> DoorFuture<S, S::Answer> {
        match self.door.enter() {
            // The common case: a permit at once.
            Entry::Admitted(permit) => DoorFuture::Calling {
                answer: self.inner.call(request),
                permit: Some(permit),
            },
            Entry::Refused(why) => DoorFuture::Refused {
                response: Some(Box::new(self.refused(why, request.version()))),
            },
            // Boxed: waiting is rare, and the stack's futures nest, each moved into the
            // next one out.
            Entry::Queued(queued) => DoorFuture::Waiting {
                wait: Box::new(Wait {
                    queued: Box::pin(queued),
                    inner: Some(self.inner.clone()),
                    request: Some(request),
                    look: Box::pin(tokio::time::sleep(GONE_CHECK)),
                    conn: Arc::clone(&self.conn),
                    metrics: Arc::clone(&self.metrics),
                    drain: Arc::clone(&self.drain),
                }),
            },
        }
    }

    fn refused(&self, why: Refusal, version: Version) -> Resp {
        refused(why, &self.drain, version)
    }
}

/// A request waiting at the door.
pub struct Wait<S> {
    queued: Pin<Box<Queued>>,
    inner: Option<S>,
    request: Option<Req>,
    look: Pin<Box<Sleep>>,
    conn: Arc<ConnState>,
    metrics: Arc<Metrics>,
    drain: Arc<DrainState>,
}

pin_project! {
    /// Waiting for a permit, then the inner service's answer; or the door's refusal.
    #[project = DoorProj]
    pub enum DoorFuture<S, F> {
        Waiting { wait: Box<Wait<S>> },
        Calling { #[pin] answer: F, permit: Option<Permit> },
        Refused { response: Option<Box<Resp>> },
    }
}

impl<S> Future for DoorFuture<S, S::Answer>
where
    S: super::layer::Inner,
{
    type Output = Result<Resp, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                DoorProj::Waiting { wait } => {
                    let Wait {
                        queued,
                        inner,
                        request,
                        look,
                        conn,
                        metrics,
                        drain,
                    } = &mut **wait;
                    if let Poll::Ready(entered) = queued.as_mut().poll(cx) {
                        let version = request.as_ref().map_or(Version::HTTP_11, |r| r.version());
                        let permit = match entered {
                            Ok((permit, waited)) => {
                                metrics.observe_queue_wait(waited);
                                permit
                            }
                            Err(why) => return Poll::Ready(Ok(refused(why, drain, version))),
                        };
                        if conn.peer_gone() {
                            // Left while it waited: the place goes to the next in line.
                            drop(permit);
                            return Poll::Ready(Ok(gone()));
                        }
                        let mut inner = inner.take().expect("called once");
                        let request = request.take().expect("called once");
                        let answer = inner.call(request);
                        self.set(DoorFuture::Calling {
                            answer,
                            permit: Some(permit),
                        });
                        continue;
                    }
                    while look.as_mut().poll(cx).is_ready() {
                        if conn.peer_gone() {
                            return Poll::Ready(Ok(gone()));
                        }
                        look.as_mut().reset(Instant::now() + GONE_CHECK);
                    }
                    return Poll::Pending;
                }
                DoorProj::Calling { answer, permit } => {
                    let Ok(mut response) = std::task::ready!(answer.poll(cx));
                    response.body_mut().hook(Box::new(Held(permit.take())));
                    return Poll::Ready(Ok(response));
                }
                DoorProj::Refused { response } => {
                    return Poll::Ready(Ok(*response.take().expect("an answer is taken once")));
                }
            }
        }
    }
}

/// The answer to a client that left while its request waited.
fn gone() -> Resp {
    answer_from(Answer::gone(), Version::HTTP_11)
}

/// A permit, given back when the response ends.
struct Held(#[allow(dead_code)] Option<Permit>);

impl Hook for Held {}
