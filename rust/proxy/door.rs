//! The runner's door: how many requests are at the app at once.
//!
//! A request takes a permit before it is forwarded and keeps it until its response has
//! ended (a tunnel: until it closes). With `--app-protocol http1` each permit is one
//! connection to the app, so the connections runwarden opens to the app stay below
//! `max_app_connections`, whose default stays below the app's fd limit: no client can
//! exhaust the app's fds and fail its checks, which never pass through here. A request
//! over the limit waits for a permit in arrival order; a client that leaves while waiting
//! gives up its place at once, and its request never reaches the app.
//!
//! This is the place of SPEC Q: the concurrency limit, its queue's bounds and the
//! exclusive window of thorough checks belong here, between the drain and the forwarding.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSemaphore;

use super::answer::text;
use super::body::Hook;
use super::conn::ConnState;
use super::layer::{layer, Req, Resp};

/// How often a waiting HTTP/1.1 request looks whether its client is still there: hyper
/// reads the client's socket only when it wants a body's bytes, so a client that left
/// while its request waits is seen by looking (HTTP/2 says so itself, with RST_STREAM).
const GONE_CHECK: Duration = Duration::from_millis(50);

layer! {
    /// The app's permits.
    DoorLayer => DoorService { permits: Arc<Semaphore>, conn: Arc<ConnState> }
    future DoorFuture<S, S::Answer>
}

impl<S: super::layer::Inner> DoorService<S> {
    fn handle(&mut self, request: Req) -> DoorFuture<S, S::Answer> {
        // Taken without waiting when one is free, which is the common case.
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => DoorFuture::Calling {
                answer: self.inner.call(request),
                permit: Some(permit),
            },
            // Boxed: waiting is rare, and the stack's futures nest, each moved into the
            // next one out.
            Err(_) => DoorFuture::Waiting {
                wait: Box::new(Wait {
                    semaphore: PollSemaphore::new(Arc::clone(&self.permits)),
                    inner: Some(self.inner.clone()),
                    request: Some(request),
                    look: Box::pin(tokio::time::sleep(GONE_CHECK)),
                    conn: Arc::clone(&self.conn),
                }),
            },
        }
    }
}

/// A request waiting for a permit.
pub struct Wait<S> {
    semaphore: PollSemaphore,
    inner: Option<S>,
    request: Option<Req>,
    look: Pin<Box<Sleep>>,
    conn: Arc<ConnState>,
}

pin_project! {
    /// Waiting for a permit, then the inner service's answer.
    #[project = DoorProj]
    pub enum DoorFuture<S, F> {
        Waiting { wait: Box<Wait<S>> },
        Calling { #[pin] answer: F, permit: Option<OwnedSemaphorePermit> },
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
                        semaphore,
                        inner,
                        request,
                        look,
                        conn,
                    } = &mut **wait;
                    if let Poll::Ready(permit) = semaphore.poll_acquire(cx) {
                        let permit = permit.expect("the door's semaphore is never closed");
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
            }
        }
    }
}

/// The answer to a client that left while its request waited (it will not read it; 499
/// is what the metrics and the access log count it as).
fn gone() -> Resp {
    text(
        StatusCode::from_u16(499).expect("a status"),
        "the client left while its request waited for the app\n",
    )
}

/// A permit, given back when the response ends.
struct Held(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Hook for Held {}
