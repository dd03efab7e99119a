//! The drain (SPEC D1, D2, D6): the one owner of what happens to traffic once the runner
//! drains, whatever drained it (a failed check, a 503, a GPU fault, a signal).
//!
//! - The `Drain` layer: from the verdict on, a new request is answered `503` with
//!   `Retry-After` and the reason in `x-runwarden-draining`, and never reaches the app (D1);
//!   an answer that finishes while draining carries `Connection: close` (D6); and a request
//!   still waiting for its answer at the drain's deadline is answered `503` to retry
//!   elsewhere, never reset (D6).
//! - `course`: the drain itself. It closes the door (Q6: requests queued for a place at the
//!   app are answered `503` at once, as they never reached it), waits for the requests in
//!   flight (`inflight.rs` counts them, tunnels and streams included) up to
//!   `drain_timeout_seconds` (a second stop signal cuts it short), then answers or cuts what
//!   is left and says so; the ports close next (`DataPlane::close`), or, in sidecar mode,
//!   the runner starts over and the door opens again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Version;
use pin_project_lite::pin_project;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::answer::{close, from as answer_from};
use super::layer::{layer, Req, Resp};
use super::listener::Port;
use super::log::Log;
use crate::door::Refusal;
use crate::front::Answer;
use crate::runner::{LifeView, RunnerHandle};
use crate::verdict::{Drained, Event, Verdict};
/// How long requests answered at the deadline get to have their 503 written before
/// streams still running are cut.
const ANSWER_GRACE: Duration = Duration::from_millis(500);
/// How long an HTTP/2 stream cut at the deadline gets to have its `RST_STREAM` sent before
/// its connection is closed all the same.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// What the drain layer and the drain's course share.
pub struct DrainState {
    life: watch::Receiver<LifeView>,
    /// Cancelled at the drain's deadline; a fresh one once the drain has ended, for the
    /// runner that starts over (K2).
    passed: RwLock<CancellationToken>,
    answered: AtomicU64,
    hurry: Notify,
}

impl DrainState {
    pub fn new(life: watch::Receiver<LifeView>) -> Arc<DrainState> {
        Arc::new(DrainState {
            life,
            passed: RwLock::new(CancellationToken::new()),
            answered: AtomicU64::new(0),
            hurry: Notify::new(),
        })
    }

    /// The verdict, while the runner drains.
    pub fn verdict(&self) -> Option<Verdict> {
        self.life.borrow().verdict.clone()
    }

    /// A second stop signal: stop waiting for requests in flight.
    pub fn hurry(&self) {
        self.hurry.notify_one();
    }

    /// Resolves at the drain's deadline (the drain layer's wait).
    fn passed(&self) -> WaitForCancellationFutureOwned {
        self.passed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .cancelled_owned()
    }

    fn set_passed(&self, passed: bool) {
        let mut token = self.passed.write().unwrap_or_else(|e| e.into_inner());
        if passed {
            token.cancel();
        } else {
            *token = CancellationToken::new();
        }
    }
}

layer! {
    /// D1, D6.
    DrainLayer => DrainService { state: Arc<DrainState> }
    future DrainFuture<S::Answer>
}

impl<S: super::layer::Inner> DrainService<S> {
    fn handle(&mut self, request: Req) -> DrainFuture<S::Answer> {
        let version = request.version();
        if let Some(verdict) = self.state.verdict() {
            return DrainFuture::Now {
                response: Some(Box::new(answer_from(
                    Answer::draining(Some(&verdict), ""),
                    version,
                ))),
            };
        }
        DrainFuture::Later {
            passed: self.state.passed(),
            inner: self.inner.call(request),
            state: Arc::clone(&self.state),
            version,
        }
    }
}

pin_project! {
    /// The answer: the drain's refusal, or the inner service's (with `Connection: close` if
    /// the runner started draining meanwhile), or the 503 to retry elsewhere if the drain's
    /// deadline came first.
    #[project = DrainProj]
    pub enum DrainFuture<F> {
        Now { response: Option<Box<Resp>> },
        Later {
            #[pin] inner: F,
            #[pin] passed: WaitForCancellationFutureOwned,
            state: Arc<DrainState>,
            version: Version,
        },
    }
}

impl<F> Future for DrainFuture<F>
where
    F: Future<Output = Result<Resp, std::convert::Infallible>>,
{
    type Output = Result<Resp, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DrainProj::Now { response } => {
                Poll::Ready(Ok(*response.take().expect("an answer is taken once")))
            }
            DrainProj::Later {
                inner,
                passed,
                state,
                version,
            } => {
                if let Poll::Ready(Ok(mut response)) = inner.poll(cx) {
                    let draining = state.life.borrow().draining();
                    if draining && !response.body().is_tunnel() {
                        close(&mut response, *version);
                    }
                    return Poll::Ready(Ok(response));
                }
                std::task::ready!(passed.poll(cx));
                state.answered.fetch_add(1, Ordering::Relaxed);
                let verdict = state.verdict();
                Poll::Ready(Ok(answer_from(
                    Answer::past_the_drain(verdict.as_ref()),
                    *version,
                )))
            }
        }
    }
}

/// Q6: the answer to a request the door refused (`Refusal::Draining`: the drain's).
pub fn refused(why: Refusal, state: &DrainState, version: Version) -> Resp {
    answer_from(Answer::overloaded(why, state.verdict().as_ref()), version)
}

/// The drain, each time the runner drains: wait for the requests in flight, answer or cut
/// what is left at the deadline, say so (`Event::Drained`), and wait for a restart (K2).
pub async fn course(
    state: Arc<DrainState>,
    runner: RunnerHandle,
    proxy: Option<Arc<Port>>,
    timeout: Duration,
    log: Log,
) {
    let mut life = state.life.clone();
    loop {
        if life.wait_for(LifeView::draining).await.is_err() {
            return;
        }
        // Q6: nothing queued at the door is left waiting; it never reached the app.
        runner.door().close();
        let traffic = runner.traffic();
        let deadline = Instant::now() + timeout;
        loop {
            let idle = runner.idle();
            if traffic.in_flight() == 0 {
                break;
            }
            tokio::select! {
                _ = idle => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = state.hurry.notified() => break,
            }
        }
        let mut drained = Drained {
            in_flight: traffic.in_flight(),
            ..Drained::default()
        };
        // Embedded (no proxy port), the front answers or cuts what is left itself when it
        // hears `Drained`.
        if let (true, Some(proxy)) = (drained.in_flight > 0, &proxy) {
            state.set_passed(true);
            let grace = Instant::now() + ANSWER_GRACE;
            while Instant::now() < grace {
                let streaming: u64 = proxy
                    .connections()
                    .iter()
                    .map(|c| c.streaming() as u64)
                    .sum();
                if traffic.in_flight() <= streaming {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Streams and tunnels still running are cut: HTTP/2 streams each with
            // `RST_STREAM` under a `GOAWAY`, HTTP/1 ones with their connections; what has
            // not ended after `CUT_GRACE` (a stream waiting on its client's window never
            // hears its cut) goes with its connection.
            let mut cut = 0;
            let mut h2 = Vec::new();
            for conn in proxy.connections() {
                let streaming = conn.cut_streaming();
                cut += u64::from(streaming);
                if streaming > 0 && conn.is_h2() {
                    h2.push(conn);
                }
            }
            if !h2.is_empty() {
                tokio::spawn(async move {
                    tokio::time::sleep(CUT_GRACE).await;
                    for conn in h2.into_iter().filter(|c| c.streaming() > 0) {
                        conn.kill();
                    }
                });
            }
            drained.answered = state.answered.swap(0, Ordering::Relaxed);
            drained.cut = cut;
            // Nothing waits on this drain's deadline any more; a request let in once the
            // runner starts over (K2) must not meet it.
            state.set_passed(false);
        }
        log.event(Event::Drained(drained));
        if life.wait_for(|view| !view.draining()).await.is_err() {
            return;
        }
        runner.door().open(); // K2: the runner starts over
    }
}
