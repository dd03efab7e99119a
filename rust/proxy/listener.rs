//! One listening port (S6, D6): its connections, their cap and timeouts, and its close.
//!
//! - A cap on open connections, below the fd limit with room for the app's connections and
//!   the checks. At the cap, the connection that has waited longest without a request (idle,
//!   or still sending its head) is closed to make room; one that is being answered never is,
//!   so no number of silent or slow clients keeps a real request out. When every connection
//!   is being answered, the newcomer gets `503` with `Retry-After`, not a reset.
//! - A sweeper closes connections whose head, idle time or blocked write ran past its
//!   timeout (`conn::Timeouts`), every quarter of the shortest one.
//! - Closing (D6): the listener stops, connections the kernel had already accepted are taken
//!   and answered, idle ones linger briefly for a request already on its way, HTTP/2 ones
//!   get GOAWAY, and `close` returns once every connection is closed or its deadline passed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::conn::{self, now_nanos, ConnState, Timeouts};
use super::log::Log;
use crate::worker::lock;

/// While closing, how long an idle connection waits for a request already on its way.
pub const LINGER: Duration = Duration::from_millis(250);
/// At the cap, how many connections are looked at for the one idle longest: all of them on
/// any ordinary port, a bounded sample on a huge one, so a flood costs O(1) per accept.
const EVICTION_SAMPLE: usize = 4096;
const MIN_TICK: Duration = Duration::from_millis(20);
const MAX_TICK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Slots {
    slots: Vec<Option<Arc<ConnState>>>,
    free: Vec<usize>,
    open: usize,
    cursor: usize,
}

impl Slots {
    fn insert(&mut self, make: impl FnOnce(usize) -> Arc<ConnState>) -> Arc<ConnState> {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let conn = make(index);
        self.slots[index] = Some(Arc::clone(&conn));
        self.open += 1;
        conn
    }

    fn remove(&mut self, conn: &Arc<ConnState>) {
        let index = conn.id as usize;
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *slot = None;
                self.free.push(index);
                self.open -= 1;
            }
        }
    }

    /// The connection idle longest among a sample, if any is idle.
    fn longest_idle(&mut self) -> Option<Arc<ConnState>> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        let mut best: Option<(u64, &Arc<ConnState>)> = None;
        for step in 0..len.min(EVICTION_SAMPLE) {
            let Some(conn) = &self.slots[(self.cursor + step) % len] else {
                continue;
            };
            if let Some(since) = conn.idle_since() {
                if best.is_none_or(|(b, _)| since < b) {
                    best = Some((since, conn));
                }
            }
        }
        self.cursor = (self.cursor + EVICTION_SAMPLE) % len;
        best.map(|(_, conn)| Arc::clone(conn))
    }

    fn all(&self) -> Vec<Arc<ConnState>> {
        self.slots.iter().flatten().cloned().collect()
    }
}

/// One port's connections and their limits.
pub struct Port {
    pub name: &'static str,
    pub cap: usize,
    timeouts: Timeouts,
    slots: Mutex<Slots>,
    refused: AtomicU64,
    /// Since when the port is closing (`now_nanos`; 0: it is not).
    closing_since: AtomicU64,
    stop: Notify,
    /// The listener is gone, and every connection the kernel had accepted is admitted.
    accepting_ended: AtomicBool,
    ended: Notify,
    left: Notify,
    log: Log,
    /// Told of each head hyper refused itself (its status), as no layer sees those.
    unparsed: std::sync::OnceLock<Unparsed>,
}

/// What a port does with a head hyper refused itself: the connection, hyper's status.
pub type Unparsed = Box<dyn Fn(&ConnState, u16) + Send + Sync>;

impl Port {
    pub fn new(name: &'static str, cap: usize, timeouts: Timeouts, log: Log) -> Arc<Port> {
        Arc::new(Port {
            name,
            cap: cap.max(1),
            timeouts,
            slots: Mutex::new(Slots::default()),
            refused: AtomicU64::new(0),
            closing_since: AtomicU64::new(0),
            stop: Notify::new(),
            accepting_ended: AtomicBool::new(false),
            ended: Notify::new(),
            left: Notify::new(),
            log,
            unparsed: std::sync::OnceLock::new(),
        })
    }

    /// Count and log the heads hyper refuses itself with `unparsed`.
    pub fn on_unparsed(&self, unparsed: Unparsed) {
        let _ = self.unparsed.set(unparsed);
    }

    pub fn open(&self) -> usize {
        lock(&self.slots).open
    }

    /// Since when the port is closing, if it is.
    fn closing(&self) -> Option<u64> {
        Some(self.closing_since.load(Ordering::Acquire)).filter(|&since| since != 0)
    }

    fn accepting_ended(&self) -> bool {
        self.accepting_ended.load(Ordering::Acquire)
    }

    /// Returns once `run` has stopped accepting and admitted what the kernel had accepted.
    async fn accepted_all(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.accepting_ended() {
                return;
            }
            ended.await;
        }
    }

    /// Clients answered 503 at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections whose response is streaming, for the drain's deadline.
    pub fn connections(&self) -> Vec<Arc<ConnState>> {
        lock(&self.slots).all()
    }

    /// Accept connections and serve each with `service(conn)` until `close`.
    pub async fn run<S>(
        self: Arc<Self>,
        listener: TcpListener,
        builder: Arc<Builder<TokioExecutor>>,
        service: impl Fn(Arc<ConnState>) -> S + Send + Sync + 'static,
    ) where
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<super::body::ProxyBody>,
                Error = std::convert::Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        tokio::spawn(Arc::clone(&self).sweep());
        let service = Arc::new(service);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.stop.notified() => break,
            };
            match accepted {
                Ok((stream, peer)) => self.admit(stream, peer, &builder, &service),
                Err(error) => {
                    // Out of fds (or another transient error): say so, and give the
                    // connections in hand time to close instead of spinning.
                    self.log.warn_limited(
                        "accept",
                        format!("{} port: cannot accept a connection: {error}", self.name),
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        // D6: connections the kernel accepted already are taken and answered, not reset.
        if let Ok(listener) = listener.into_std() {
            if listener.set_nonblocking(true).is_ok() {
                while let Ok((stream, peer)) = listener.accept() {
                    if let Ok(stream) = stream
                        .set_nonblocking(true)
                        .and_then(|()| TcpStream::from_std(stream))
                    {
                        self.admit(stream, peer, &builder, &service);
                    }
                }
            }
        }
        self.accepting_ended.store(true, Ordering::Release);
        self.ended.notify_waiters();
    }

    fn admit<S>(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        builder: &Arc<Builder<TokioExecutor>>,
        service: &Arc<impl Fn(Arc<ConnState>) -> S + Send + Sync + 'static>,
    ) where
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<super::body::ProxyBody>,
                Error = std::convert::Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        let state = {
            let mut slots = lock(&self.slots);
            if slots.open >= self.cap {
                match slots.longest_idle() {
                    Some(victim) => {
                        slots.remove(&victim);
                        victim.kill();
                    }
                    None => {
                        drop(slots);
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(refuse_full(stream));
                        return;
                    }
                }
            }
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            slots.insert(|index| Arc::new(ConnState::new(index as u64, peer, fd)))
        };
        let port = Arc::clone(self);
        let service = service(Arc::clone(&state));
        let builder = Arc::clone(builder);
        tokio::spawn(async move {
            let unparsed = conn::serve(stream, Arc::clone(&state), builder, service).await;
            if let (Some(status), Some(told)) = (unparsed, port.unparsed.get()) {
                told(&state, status);
            }
            lock(&port.slots).remove(&state);
            port.left.notify_waiters();
        });
    }

    fn tick(&self) -> Duration {
        let t = &self.timeouts;
        let shortest = if self.closing().is_some() {
            LINGER.as_nanos() as u64
        } else {
            t.header.min(t.keep_alive).min(t.send)
        };
        (Duration::from_nanos(shortest) / 4).clamp(MIN_TICK, MAX_TICK)
    }

    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.tick()).await;
            let closing = self
                .closing()
                .map(|since| (since, LINGER.as_nanos() as u64));
            let now = now_nanos();
            for conn in self.connections() {
                if self.timeouts.expired(&conn, now, closing).is_some() {
                    conn.kill();
                }
            }
            if closing.is_some() && self.accepting_ended() && self.open() == 0 {
                return;
            }
        }
    }

    /// D6: stop listening, answer what had arrived, and wait until every connection is
    /// closed or `deadline` passes; then cut the rest. How many had to be cut.
    pub async fn close(&self, deadline: Instant) -> usize {
        self.closing_since.store(now_nanos(), Ordering::Release);
        self.stop.notify_one();
        let deadline = deadline.max(Instant::now() + LINGER);
        // Every connection the kernel had accepted is one of ours before any is counted.
        let _ = tokio::time::timeout_at(deadline, self.accepted_all()).await;
        for conn in self.connections() {
            // HTTP/2: GOAWAY. HTTP/1.1 is left to the sweeper's linger: hyper's graceful
            // close would drop an idle connection at once, and with it a request the
            // client may have just sent on it.
            if conn.is_h2() {
                conn.shut_down();
            }
        }
        loop {
            let left = self.left.notified();
            if self.open() == 0 {
                return 0;
            }
            tokio::select! {
                _ = left => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let rest = self.connections();
        for conn in &rest {
            conn.kill();
        }
        rest.len()
    }
}

/// The answer to a client over the cap: come back (or go elsewhere) in a second.
async fn refuse_full(mut stream: TcpStream) {
    const BODY: &str = "runwarden is at its connection limit; retry\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_ok() {
        super::io::linger(stream).await;
    }
}
