//! The body of every response on the proxy port, and what must happen as it moves.
//!
//! A body is runwarden's own answer (whole, in memory), the app's body streamed as it
//! arrives (S1), or the empty body of a `101` whose connection became a tunnel. Layers that
//! must see a response through to its end (the in-flight count, the door's permit, the
//! judge's trailers and manual check, metrics, the access log) attach a `Hook` instead of
//! wrapping the body again: the hooks see each frame and hear, exactly once, how the body
//! ended. A tunnel's hooks end when the tunnel closes, so whatever they hold (a permit, an
//! in-flight count) lives as long as the tunnel.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Link;
use crate::worker::lock;

/// A time the app's body must have ended by (Q3), and what to do if it has not.
struct Deadline {
    timer: Pin<Box<tokio::time::Sleep>>,
    expired: Box<dyn FnOnce() + Send>,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A way to end one streaming body from outside it (the drain's deadline on HTTP/2): the
/// body fails on its next poll, so hyper resets its stream (`RST_STREAM`) and the rest of
/// the connection lives on to say `GOAWAY`.
#[derive(Default)]
pub struct Cut {
    set: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Cut {
    pub fn cut(&self) {
        self.set.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// Whether it was cut; else wake `cx` when it is.
    fn poll(&self, cx: &Context<'_>) -> bool {
        if self.set.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.set.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The hooks an app's body usually gets (in flight, the door's permit, metrics, its
/// connection's count), room made for them at once.
const HOOKS: usize = 4;

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every byte was handed to hyper.
    Complete,
    /// The app broke off the body (it is cut, so the client sees it broke).
    Failed,
    /// The body was dropped before its end: the client left, or the connection was cut.
    Dropped,
}

/// Something that follows one response's body.
pub trait Hook: Send + 'static {
    /// hyper asks for the next frame (the client has taken the previous one).
    fn polled(&mut self) {}
    /// The app has no frame yet.
    fn pending(&mut self) {}
    /// A frame of the app's body (data or trailers), about to be sent.
    fn frame(&mut self, _frame: &Frame<Bytes>) {}
    /// The body ended, once.
    fn ended(&mut self, _end: End) {}
}

/// The hooks of a tunnel's `101`, kept until the tunnel closes.
#[derive(Default)]
pub struct TunnelHooks(Mutex<Option<Vec<Box<dyn Hook>>>>);

impl TunnelHooks {
    fn keep(&self, hooks: Vec<Box<dyn Hook>>) {
        let mut kept = lock(&self.0);
        match kept.as_mut() {
            Some(list) => list.extend(hooks),
            None => *kept = Some(hooks),
        }
    }

    /// The tunnel closed: its hooks end.
    pub fn closed(&self, end: End) {
        let hooks = lock(&self.0).take();
        for mut hook in hooks.into_iter().flatten() {
            hook.ended(end);
        }
    }
}

enum Inner {
    Full(Option<Bytes>),
    /// The app's body, and the connection it comes on (HTTP/1.1), driven as it is read.
    App(Incoming, Option<Box<Link>>),
    Tunnel(Arc<TunnelHooks>),
}

pub struct ProxyBody {
    inner: Inner,
    hooks: Vec<Box<dyn Hook>>,
    ended: bool,
    /// The app's trailers went by: nothing follows them, the body is whole.
    trailed: bool,
    /// The app broke off its body; said to hyper on the next poll, once what hyper holds
    /// of the body has had its chance to reach the client (hyper drops its write buffer
    /// with a connection whose body failed).
    failed: Option<BoxError>,
    deadline: Option<Box<Deadline>>,
    cut: Option<Arc<Cut>>,
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
        ProxyBody::full(Bytes::new())
    }

    /// runwarden's own answer.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        ProxyBody::new(Inner::Full((!bytes.is_empty()).then_some(bytes)), 0)
    }

    /// The app's body, streamed; `link`: its HTTP/1.1 connection, back to the pool when the
    /// body was read to its end.
    pub fn app(body: Incoming, link: Option<Box<Link>>) -> ProxyBody {
        ProxyBody::new(Inner::App(body, link), HOOKS)
    }

    /// A `101`'s empty body; hooks attached to it end when `tunnel` closes.
    pub fn tunnel(tunnel: Arc<TunnelHooks>) -> ProxyBody {
        ProxyBody::new(Inner::Tunnel(tunnel), HOOKS)
    }

    fn new(inner: Inner, hooks: usize) -> ProxyBody {
        ProxyBody {
            inner,
            hooks: Vec::with_capacity(hooks),
            ended: false,
            trailed: false,
            failed: None,
            deadline: None,
            cut: None,
        }
    }

    /// Let `cut` end this body (an app's body: its response is streaming).
    pub fn cut_by(&mut self, cut: Arc<Cut>) {
        self.cut = Some(cut);
    }

    /// Q3: cut the app's body if it has not ended by `at`, and call `expired` then (a body
    /// runwarden made, or a tunnel's, has no deadline).
    pub fn deadline(&mut self, at: tokio::time::Instant, expired: Box<dyn FnOnce() + Send>) {
        if matches!(self.inner, Inner::App(..)) {
            self.deadline = Some(Box::new(Deadline {
                timer: Box::pin(tokio::time::sleep_until(at)),
                expired,
            }));
        }
    }

    /// A tunnel's answer (`101`, or `200` to WebSocket over HTTP/2).
    pub fn is_tunnel(&self) -> bool {
        matches!(self.inner, Inner::Tunnel(_))
    }

    /// The app's body, or a tunnel (a response whose end is the app's to say).
    pub fn is_app(&self) -> bool {
        !matches!(self.inner, Inner::Full(_))
    }

    pub fn hook(&mut self, hook: Box<dyn Hook>) {
        self.hooks.push(hook);
    }

    fn end(&mut self, end: End) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        match &mut self.inner {
            Inner::Tunnel(tunnel) => {
                tunnel.keep(std::mem::take(&mut self.hooks));
                return;
            }
            Inner::App(_, link) => {
                // Read to its end, the connection can serve again; else hyper closes it.
                if let (Some(link), End::Complete) = (link.take(), end) {
                    link.give_back();
                }
            }
            Inner::Full(_) => {}
        }
        for hook in &mut self.hooks {
            hook.ended(end);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            this.end(End::Failed);
            return Poll::Ready(Some(Err(error)));
        }
        let polled = match &mut this.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Tunnel(_) => Poll::Ready(None),
            Inner::App(body, link) => {
                for hook in &mut this.hooks {
                    hook.polled();
                }
                if let Some(link) = link {
                    link.drive(cx);
                }
                if this.cut.as_ref().is_some_and(|cut| cut.poll(cx)) {
                    this.end(End::Failed);
                    return Poll::Ready(Some(Err("cut at the drain's deadline".into())));
                }
                if let Some(deadline) = &mut this.deadline {
                    if std::future::Future::poll(deadline.timer.as_mut(), cx).is_ready() {
                        let deadline = this.deadline.take().expect("just seen");
                        (deadline.expired)();
                        this.failed =
                            Some("the response did not end within request_timeout_seconds".into());
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        for hook in &mut this.hooks {
                            hook.pending();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        for hook in &mut this.hooks {
                            hook.frame(&frame);
                        }
                        this.trailed = frame.is_trailers();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Poll::Ready(Some(Err(error))) => {
                        // hyper flushes what it holds before it polls again.
                        this.failed = Some(error.into());
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                }
            }
        };
        if let Poll::Ready(None) = polled {
            this.end(End::Complete);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::App(body, _) => body.is_end_stream(),
            Inner::Tunnel(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::App(body, _) => body.size_hint(),
            Inner::Tunnel(_) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper stops polling a body whose length it knows once the last byte is out, so a
        // body dropped at its end is complete.
        let end = if self.failed.is_some() {
            End::Failed
        } else if self.trailed || self.is_end_stream() {
            End::Complete
        } else {
            End::Dropped
        };
        self.end(end);
    }
}
