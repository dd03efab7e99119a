//! A client's request body on its way to the app (S1, S3, H9): streamed with hyper's
//! back-pressure, bounded in idle time, and honest about how it failed.
//!
//! - A body that sends nothing for `client_body_timeout_seconds` fails (nginx's
//!   `client_body_timeout`): the app's request is aborted and the client answered 408.
//! - A body the client breaks (a malformed chunk) or leaves unfinished fails, so the app's
//!   request is aborted, never ended as if the body were complete (S3).
//! - While runwarden waits for the client's bytes, the request waits on the client, not on
//!   the app: H9 does not count it as the app's stall.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use super::inflight::ClientWait;

/// Why a request body failed, as the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Malformed framing: 400.
    Malformed = 1,
    /// Nothing arrived within the body timeout: 408.
    TimedOut = 2,
    /// The client left before its body's end.
    Gone = 3,
}

/// What the forwarding learns of its body's failure, after the app's request failed.
#[derive(Default)]
pub struct Fate(AtomicU8);

impl Fate {
    pub fn broken(&self) -> Option<Broken> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Broken::Malformed),
            2 => Some(Broken::TimedOut),
            3 => Some(Broken::Gone),
            _ => None,
        }
    }

    fn set(&self, broken: Broken) {
        self.0.store(broken as u8, Ordering::Release);
    }
}

#[derive(Debug)]
struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client sent no byte of its body within client_body_timeout_seconds")
    }
}

impl std::error::Error for TimedOut {}

pub struct Upload {
    body: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A byte arrived since the timer was last armed.
    moved: bool,
    fate: Arc<Fate>,
    /// H9's accounting, when an H9 rule reads it.
    wait: Option<Arc<ClientWait>>,
    waiting_on_client: bool,
}

impl Upload {
    pub fn new(
        body: Incoming,
        timeout: Duration,
        fate: Arc<Fate>,
        wait: Option<Arc<ClientWait>>,
    ) -> Upload {
        Upload {
            body,
            timeout,
            timer: None,
            moved: true,
            fate,
            wait,
            waiting_on_client: false,
        }
    }

    fn client_moved(&mut self) {
        if std::mem::take(&mut self.waiting_on_client) {
            if let Some(wait) = &self.wait {
                wait.finished();
            }
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if !std::mem::replace(&mut this.waiting_on_client, true) {
                    if let Some(wait) = &this.wait {
                        wait.started();
                    }
                }
                let deadline = Instant::now() + this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if std::mem::take(&mut this.moved) {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    this.fate.set(Broken::TimedOut);
                    return Poll::Ready(Some(Err(Box::new(TimedOut))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.client_moved();
                this.moved = true;
                if let Some(wait) = &this.wait {
                    wait.progress();
                }
                // Trailers never become headers (S5); runwarden forwards none of them.
                match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(_) => Poll::Ready(None),
                }
            }
            Poll::Ready(Some(Err(error))) => {
                this.client_moved();
                this.fate.set(classify(&error));
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.client_moved();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.client_moved();
    }
}

/// A body error of hyper's: the client left (its connection ended early), or it sent
/// something that is not the framing it announced.
fn classify(error: &hyper::Error) -> Broken {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return Broken::Gone;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe => Broken::Gone,
                _ => Broken::Malformed,
            };
        }
        source = cause.source();
    }
    Broken::Malformed
}

/// The body runwarden sends the app: the client's, or none (a request sent again).
pub enum Outbound {
    Client(Upload),
    Empty,
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Outbound::Client(upload) => Pin::new(upload).poll_frame(cx),
            Outbound::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outbound::Client(upload) => upload.is_end_stream(),
            Outbound::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outbound::Client(upload) => upload.size_hint(),
            Outbound::Empty => SizeHint::with_exact(0),
        }
    }
}
