//! The connections to the app, on hyper's connection-level client.
//!
//! One app, one address. With HTTP/1.1, a pool of idle connections, the last one back taken
//! first (the most likely still open). A connection is driven by the task of the request
//! that holds it, as nginx drives its upstream connections from the client's event: the
//! request's future polls it while it waits for the answer, and the answer's body polls it
//! while it streams, so a request costs no task switch and no channel hop to a connection
//! task. It goes back to the pool when its answer was read to the end (the door bounds how
//! many are out at once); an idle one is looked at before it is used again, and one the app
//! closed meanwhile is dropped. With `--app-protocol h2c`, one multiplexed HTTP/2
//! connection on a task of its own, made again when it closes.
//!
//! A request that finds its connection closed before it was written is sent on another;
//! one that was written is never sent twice here (see `forward.rs` for the one case that
//! is).
//!
//! Not hyper-util's pooled client: for one key it pays a SipHash of the authority on every
//! checkout and return, moves each request's futures through several boxed layers, and
//! drives each connection from a task of its own (benches/RESULTS.md has the measurement).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::address::AppAddress;
use super::upload::Outbound;
use crate::settings::AppProtocol;
use crate::worker::lock;

/// How long an idle connection to the app is kept: less than the keep-alive of the servers
/// apps run on (uvicorn's and Node's 5 s, gunicorn's 2 s for sync workers aside), so the
/// app seldom closes one just as a request is written to it.
const IDLE: Duration = Duration::from_secs(4);
/// How long dialling the app may take before the request is a 502.
const CONNECT: Duration = Duration::from_secs(5);

type Request = http::Request<Outbound>;
type Response = http::Response<Incoming>;
type Connection = http1::Connection<TokioIo<TcpStream>, Outbound>;

/// Why the app's request failed.
#[derive(Debug)]
pub enum Failure {
    /// The app could not be dialled.
    Connect(io::Error),
    /// The exchange failed: the app closed, reset, or answered something that is not HTTP.
    Http(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(error) => write!(f, "cannot connect: {error}"),
            Failure::Http(error) => {
                let mut text = error.to_string();
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    text = cause.to_string();
                    source = cause.source();
                }
                f.write_str(&text)
            }
        }
    }
}

/// One HTTP/1.1 connection to the app: the handle that sends on it and the state machine
/// that does its I/O, which whoever holds it polls.
pub struct Link {
    sender: http1::SendRequest<Outbound>,
    connection: Connection,
    /// The connection has ended (closed or failed).
    ended: bool,
    pool: Arc<Pool>,
}

impl Link {
    /// Let the connection do what it can now: read, write, notice a close.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && Pin::new(&mut self.connection).poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether it can take a request now; it reads what arrived first (a close).
    fn usable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.ended && !self.sender.is_closed() && self.sender.is_ready()
    }

    /// Its answer was read to the end: back to the pool, if it can serve again. Not while
    /// the request's body is still being sent (the app answered before reading it all): no
    /// one would drive it there, so the connection is closed and the upload ends.
    pub fn give_back(mut self: Box<Self>) {
        if !self.usable() {
            return;
        }
        let pool = Arc::clone(&self.pool);
        let mut idle = lock(&pool.idle);
        if idle.len() < pool.max_idle {
            idle.push((self, Instant::now()));
        }
        drop(idle);
    }
}

pub struct Pool {
    dial: String,
    h2c: bool,
    max_idle: usize,
    idle: Mutex<Vec<(Box<Link>, Instant)>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Outbound>>>,
}

impl Pool {
    pub fn new(address: &AppAddress, protocol: AppProtocol, max_idle: usize) -> Arc<Pool> {
        Arc::new(Pool {
            dial: address.dial(),
            h2c: protocol == AppProtocol::H2c,
            max_idle,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        })
    }

    /// Send `request` and wait for the answer's head. With HTTP/1.1, the link comes with
    /// it: whoever streams the body drives it, then gives it back. `upgrade`: the request
    /// asks to switch protocols, so it gets a connection of its own, on a task of its own
    /// that hands the socket to the tunnel after a `101`, never pooled.
    pub async fn send(
        self: &Arc<Self>,
        request: Request,
        upgrade: bool,
    ) -> Result<(Response, Option<Box<Link>>), Failure> {
        if self.h2c {
            return self.send_h2(request).await.map(|r| (r, None));
        }
        if upgrade {
            let Link {
                mut sender,
                connection,
                ..
            } = *self.connect_h1().await?;
            tokio::spawn(connection.with_upgrades());
            let response = sender.send_request(request).await.map_err(Failure::Http)?;
            return Ok((response, None));
        }
        let mut request = request;
        loop {
            let (mut link, fresh) = match self.checkout() {
                Some(link) => (link, false),
                None => (self.connect_h1().await?, true),
            };
            let mut answer = std::pin::pin!(link.sender.try_send_request(request));
            let answered = poll_fn(|cx| {
                link.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answered {
                Ok(response) => return Ok((response, Some(link))),
                Err(mut error) => match error.take_message() {
                    // Closed before the request was written: another connection takes it.
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(Failure::Http(error.into_error())),
                },
            }
        }
    }

    /// An idle connection that can take a request now, if one is left.
    fn checkout(&self) -> Option<Box<Link>> {
        loop {
            let (mut link, since) = lock(&self.idle).pop()?;
            if since.elapsed() <= IDLE && link.usable() {
                return Some(link);
            }
        }
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, Failure> {
        let stream = tokio::time::timeout(CONNECT, TcpStream::connect(&self.dial))
            .await
            .map_err(|_| Failure::Connect(io::Error::from(io::ErrorKind::TimedOut)))?
            .map_err(Failure::Connect)?;
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        Ok(TokioIo::new(stream))
    }

    async fn connect_h1(self: &Arc<Self>) -> Result<Box<Link>, Failure> {
        let io = self.connect().await?;
        let (sender, connection) = http1::Builder::new()
            // A response head is bounded as a request's is (S6).
            .max_buf_size(super::MAX_HEAD_BYTES)
            .handshake(io)
            .await
            .map_err(Failure::Http)?;
        Ok(Box::new(Link {
            sender,
            connection,
            ended: false,
            pool: Arc::clone(self),
        }))
    }

    async fn send_h2(&self, request: Request) -> Result<Response, Failure> {
        let mut sender = {
            let mut shared = self.h2.lock().await;
            match shared.as_ref().filter(|s| !s.is_closed()) {
                Some(sender) => sender.clone(),
                None => {
                    let io = self.connect().await?;
                    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_header_list_size(super::MAX_HEAD_BYTES as u32)
                        .handshake(io)
                        .await
                        .map_err(Failure::Http)?;
                    tokio::spawn(connection);
                    *shared = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await.map_err(Failure::Http)?;
        sender.send_request(request).await.map_err(Failure::Http)
    }
}
