//! One client connection (S6, D6): its state, read without locks by the listener's sweeper,
//! and the task that serves it with hyper until it ends, is shut down gracefully or is cut.
//!
//! The timeouts of a connection are decided from its state by `Timeouts::expired`, not by
//! hyper: hyper's `header_read_timeout` starts when a connection becomes idle, so it would
//! also be the keep-alive timeout; runwarden keeps nginx's two (a head must arrive within
//! `header_timeout_seconds` of its first byte, an idle connection lives
//! `keep_alive_seconds`).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::future::{poll_fn, Future};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A one-way flag the connection's task waits on without a lock: it is looked at on every
/// wake of the task, which a `Notify` would make take a mutex.
#[derive(Default)]
struct Signal {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Set it; true if it was not set yet.
    fn raise(&self) -> bool {
        let first = !self.set.swap(true, Ordering::AcqRel);
        if first {
            self.waker.wake();
        }
        first
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_set() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Nanoseconds since the process's first call, never 0 (0 means "not set" below).
pub fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

const NONE: u64 = 0;

/// What the sweeper and the drain need to know of one connection.
pub struct ConnState {
    pub id: u64,
    pub peer: SocketAddr,
    /// The `X-Forwarded-For` of the connection's requests (S2).
    pub forwarded_for: http::HeaderValue,
    /// The client's socket, open while this state is (the connection's task holds it).
    fd: RawFd,
    /// Requests whose response head is not yet sent (HTTP/2: streams).
    active: AtomicU32,
    /// Responses whose body is still being sent.
    streaming: AtomicU32,
    /// Requests begun on this connection.
    served: AtomicU64,
    idle_since: AtomicU64,
    /// The first byte of a request head that is not complete yet (`NONE`: none).
    head_since: AtomicU64,
    /// Since when a write waits on a client that does not read (`NONE`: none).
    write_blocked_since: AtomicU64,
    /// HTTP/2: for each response streaming, since when a frame handed to hyper waits for
    /// the client to open its flow-control window (`NONE`: it does not). A stalled stream
    /// writes nothing, so `write_blocked_since` would never see it.
    h2_streams: Mutex<Vec<Arc<H2Stream>>>,
    /// The client spoke HTTP/2 (prior knowledge).
    h2: AtomicBool,
    /// The first head that showed what hyper does not tell (`sniff.rs`): its number << 8 |
    /// what it showed.
    flagged: AtomicU64,
    /// A head not yet handed on has begun arriving (a pipelined one among them).
    head_pending: AtomicBool,
    killed: Signal,
    /// For whoever else waits on the kill (a tunnel).
    kill: Notify,
    shutdown: Signal,
    /// Nothing is in flight on the connection any more.
    idle: Notify,
}

impl ConnState {
    pub fn new(id: u64, peer: SocketAddr, fd: RawFd) -> ConnState {
        ConnState {
            id,
            peer,
            forwarded_for: super::headers::forwarded_for(peer.ip()),
            fd,
            active: AtomicU32::new(0),
            streaming: AtomicU32::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(now_nanos()),
            head_since: AtomicU64::new(NONE),
            write_blocked_since: AtomicU64::new(NONE),
            h2_streams: Mutex::new(Vec::new()),
            h2: AtomicBool::new(false),
            flagged: AtomicU64::new(0),
            head_pending: AtomicBool::new(false),
            killed: Signal::default(),
            kill: Notify::new(),
            shutdown: Signal::default(),
            idle: Notify::new(),
        }
    }

    pub fn busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) + self.streaming.load(Ordering::Relaxed) > 0
    }

    /// Responses whose body is still being sent (a tunnel: while it is open).
    pub fn streaming(&self) -> u32 {
        self.streaming.load(Ordering::Relaxed)
    }

    /// Whether bytes arriving now begin a new HTTP/1 head: none is in hand or begun.
    pub fn head_begins(&self) -> bool {
        !self.h2.load(Ordering::Relaxed)
            && !self.busy()
            && self.head_since.load(Ordering::Relaxed) == NONE
    }

    /// The requests hyper has handed on so far on this connection; the one it hands on now
    /// is numbered so (the first is 1).
    pub fn requests(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The head numbered `number` showed `found` (`sniff.rs`); the first such head only, as
    /// its refusal ends the connection.
    pub fn flag(&self, number: u64, found: u8) {
        let flagged = (number << 8) | u64::from(found);
        let _ = self
            .flagged
            .compare_exchange(0, flagged, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// What the head of request `number` showed (0: nothing).
    pub fn flagged(&self, number: u64) -> u8 {
        let flagged = self.flagged.load(Ordering::Relaxed);
        if flagged >> 8 == number {
            flagged as u8
        } else {
            0
        }
    }

    /// A head has begun behind the request in hand (pipelined), or the one begun has ended:
    /// its header timeout counts once the connection is free for it.
    pub fn head_pending(&self, begun: bool) {
        self.head_pending.store(begun, Ordering::Relaxed);
    }

    /// Bytes arrived from the client: while no request is in hand, they begin a head.
    pub fn read_some(&self) {
        if !self.busy() && self.head_since.load(Ordering::Relaxed) == NONE {
            self.head_since.store(now_nanos(), Ordering::Relaxed);
        }
    }

    /// A write to the client returned: `blocked` if the client's window is full.
    pub fn wrote(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked && since == NONE {
            self.write_blocked_since
                .store(now_nanos(), Ordering::Relaxed);
        } else if !blocked && since != NONE {
            self.write_blocked_since.store(NONE, Ordering::Relaxed);
        }
    }

    /// Since when the longest-waiting HTTP/2 stream has waited for its client's window.
    fn stalled_since(&self) -> Option<u64> {
        if !self.is_h2() {
            return None;
        }
        crate::worker::lock(&self.h2_streams)
            .iter()
            .map(|stream| stream.stall.load(Ordering::Relaxed))
            .filter(|&since| since != NONE)
            .min()
    }

    /// Whether an HTTP/1 client closed its side (or reset it): looked at without reading,
    /// for a request that waits while hyper reads nothing. HTTP/2 says so itself.
    pub fn peer_gone(&self) -> bool {
        if self.is_h2() {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: the fd is this connection's socket, open while its task (which holds this
        // state's owner) runs; MSG_PEEK takes nothing from it.
        let n = unsafe {
            libc::recv(
                self.fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => {
                let error = std::io::Error::last_os_error();
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                )
            }
        }
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    pub fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
    }

    /// A request's head arrived; its response is on its way until the guard says so.
    pub fn request_started(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NONE, Ordering::Relaxed);
        Active(Some(Arc::clone(self)))
    }

    fn request_left(&self, counter: &AtomicU32) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if !self.busy() {
            let now = now_nanos();
            self.idle_since.store(now, Ordering::Relaxed);
            // A head begun behind this request (pipelined) gets `header_timeout_seconds`
            // from now, as nginx times the next request from when it starts reading it (S6):
            // from its first byte, a long answer before it would close the connection under
            // that answer's last bytes.
            let pending = self.head_pending.load(Ordering::Relaxed);
            self.head_since
                .store(if pending { now } else { NONE }, Ordering::Relaxed);
            self.idle.notify_waiters();
        }
    }

    /// The drain's deadline (D2), for responses still streaming: an HTTP/2 connection says
    /// `GOAWAY` and resets each such stream (`RST_STREAM`), which a client can tell from a
    /// broken connection and retry; an HTTP/1 one can only be closed. Returns how many were
    /// cut.
    pub fn cut_streaming(&self) -> u32 {
        let streaming = self.streaming();
        if streaming == 0 {
            return 0;
        }
        if !self.is_h2() {
            self.kill();
            return streaming;
        }
        self.shut_down();
        for stream in crate::worker::lock(&self.h2_streams).iter() {
            stream.cut.cut();
        }
        streaming
    }

    /// Close the connection now, whatever it is doing.
    pub fn kill(&self) {
        if self.killed.raise() {
            self.kill.notify_waiters();
        }
    }

    pub fn is_killed(&self) -> bool {
        self.killed.is_set()
    }

    /// Returns once the connection is cut.
    pub async fn killed(&self) {
        let notified = self.kill.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_killed() {
            notified.await;
        }
    }

    /// Finish what is in hand, take nothing new (HTTP/2: GOAWAY).
    pub fn shut_down(&self) {
        self.shutdown.raise();
    }

    /// Returns once nothing is in flight on the connection (a tunnel has closed).
    async fn settled(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.busy() {
                return;
            }
            notified.await;
        }
    }

    /// Since when the connection has held no request, if it holds none (nanoseconds).
    pub fn idle_since(&self) -> Option<u64> {
        (!self.busy()).then(|| self.idle_since.load(Ordering::Relaxed))
    }
}

/// A request whose response head is not out yet; dropped unanswered (the client left, an
/// HTTP/2 stream was reset) it leaves all the same.
pub struct Active(Option<Arc<ConnState>>);

impl super::layer::Post for Active {
    /// The response head is out; if its body is the app's and still to come, the
    /// connection is streaming until it ends.
    fn post(mut self, mut response: super::layer::Resp) -> super::layer::Resp {
        let Some(conn) = self.0.take() else {
            return response;
        };
        let streaming = response.body().is_app();
        if streaming {
            conn.streaming.fetch_add(1, Ordering::Relaxed);
        }
        conn.request_left(&conn.active);
        if streaming {
            // Until hyper first asks for the body, it waits for a window too.
            // A tunnel's stream (WebSocket over HTTP/2) sends no body frames to watch.
            let h2 = (conn.is_h2() && !response.body().is_tunnel()).then(|| {
                let stream = Arc::new(H2Stream {
                    stall: AtomicU64::new(now_nanos()),
                    cut: Arc::default(),
                });
                crate::worker::lock(&conn.h2_streams).push(Arc::clone(&stream));
                response.body_mut().cut_by(Arc::clone(&stream.cut));
                stream
            });
            response.body_mut().hook(Box::new(Streaming { conn, h2 }));
        }
        response
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.request_left(&conn.active);
        }
    }
}

/// A streaming response, for its connection: its end, and (HTTP/2) whether it waits on
/// its client.
pub struct Streaming {
    conn: Arc<ConnState>,
    h2: Option<Arc<H2Stream>>,
}

/// An HTTP/2 stream whose response is streaming: since when it has waited for its client's
/// window (`NONE`: it does not), and how to cut it alone.
pub struct H2Stream {
    stall: AtomicU64,
    cut: Arc<super::body::Cut>,
}

impl super::body::Hook for Streaming {
    /// hyper asks for the next frame: the client took the last one.
    fn polled(&mut self) {
        if let Some(stream) = &self.h2 {
            stream.stall.store(NONE, Ordering::Relaxed);
        }
    }

    /// A frame goes to hyper, which sends it once the client's window has room.
    fn frame(&mut self, _frame: &http_body::Frame<bytes::Bytes>) {
        if let Some(stream) = &self.h2 {
            stream.stall.store(now_nanos(), Ordering::Relaxed);
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Some(stream) = self.h2.take() {
            crate::worker::lock(&self.conn.h2_streams).retain(|s| !Arc::ptr_eq(s, &stream));
        }
        self.conn.request_left(&self.conn.streaming);
    }
}

/// The connection timeouts of one port (S6), in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: u64,
    pub keep_alive: u64,
    pub send: u64,
}

impl Timeouts {
    pub fn new(header: Duration, keep_alive: Duration, send: Duration) -> Timeouts {
        Timeouts {
            header: header.as_nanos() as u64,
            keep_alive: keep_alive.as_nanos() as u64,
            send: send.as_nanos() as u64,
        }
    }

    /// Why `conn` should be closed at `now`, if it should. `closing`: since when the port
    /// is closing, and how long an idle connection then waits for a request already on its
    /// way (counted from the close or from its last answer, whichever came later).
    pub fn expired(
        &self,
        conn: &ConnState,
        now: u64,
        closing: Option<(u64, u64)>,
    ) -> Option<&'static str> {
        let blocked = conn.write_blocked_since.load(Ordering::Relaxed);
        if blocked != NONE && now.saturating_sub(blocked) > self.send {
            return Some("the client took no byte of its response within send_timeout_seconds");
        }
        if conn
            .stalled_since()
            .is_some_and(|since| now.saturating_sub(since) > self.send)
        {
            // hyper holds the frame until the window opens: only the connection can go.
            return Some(
                "an HTTP/2 client opened no window for its response within send_timeout_seconds",
            );
        }
        let idle_since = conn.idle_since()?;
        let h2 = conn.h2.load(Ordering::Relaxed);
        let head = conn.head_since.load(Ordering::Relaxed);
        if !h2 && head != NONE {
            return (now.saturating_sub(head) > self.header)
                .then_some("the request head did not arrive within header_timeout_seconds");
        }
        let idle = now.saturating_sub(idle_since);
        if let Some((since, linger)) = closing {
            let waited = now.saturating_sub(idle_since.max(since));
            return (waited > linger).then_some("closing: the connection was idle");
        }
        if conn.served.load(Ordering::Relaxed) == 0 && !h2 {
            return (idle > self.header)
                .then_some("no request arrived within header_timeout_seconds");
        }
        (idle > self.keep_alive).then_some("idle for keep_alive_seconds")
    }
}

/// Serve `stream` with hyper's HTTP/1.1 and HTTP/2 (prior knowledge) until the connection
/// ends, or `state` says to shut it down (gracefully) or to cut it. Returns the status hyper
/// answered a head it could not parse with (its own 400, 414 or 431, which no layer sees).
pub async fn serve<S>(
    stream: TcpStream,
    state: Arc<ConnState>,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    service: S,
) -> Option<u16>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<super::body::ProxyBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(super::io::Watched::new(stream, Arc::clone(&state)));
    let mut connection = Box::pin(builder.serve_connection_with_upgrades(io, service));
    let mut graceful = false;
    let mut unparsed = None;
    let killed = poll_fn(|cx| {
        if state.killed.poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if !graceful && state.shutdown.poll(cx).is_ready() {
            graceful = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx).map(|served| {
            unparsed = served.err().and_then(|e| answered_unparsed(&*e));
            false
        })
    })
    .await;
    if killed {
        return unparsed;
    }
    // What hyper still holds of an unfinished exchange (the client left) goes now.
    drop(connection);
    // An upgraded connection lives on in its tunnel: it counts until the tunnel closes.
    tokio::select! {
        () = state.killed() => {}
        () = state.settled() => {}
    }
    unparsed
}

/// The status hyper wrote itself for a head it could not parse (its `on_error`), if the
/// connection ended so.
fn answered_unparsed(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let error = error.downcast_ref::<hyper::Error>()?;
    if !error.is_parse() || error.is_parse_status() || error.is_parse_version_h2() {
        return None;
    }
    if error.is_parse_too_large() {
        // hyper tells a long target from a long head only in its message.
        return Some(if error.to_string().contains("URI") {
            414
        } else {
            431
        });
    }
    Some(400)
}
