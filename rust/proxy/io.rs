//! A client connection's socket, watched: what the connection's timeouts (S6) need to know
//! of its bytes, and a lingering close so that an answer sent before closing is read.
//!
//! hyper owns the socket once a connection is served; this wrapper is what it reads from
//! and writes to. It records, without locks, when the next request's head began (its
//! first byte while the connection had no request) and since when a write has been
//! blocked by a client that does not read (`send_timeout_seconds`). When hyper is done with
//! it and drops it while the client may still be sending, the socket is not closed at once
//! (that would reset the connection and could destroy the answer in the client's receive
//! buffer): its write side is shut down and what the client still sends is read and
//! dropped, for a bounded time and size, as nginx's lingering close does.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::conn::ConnState;
use super::sniff::Sniffer;

/// How long a closed connection's remaining input is read and dropped, at most.
const LINGER_SECONDS: f64 = 2.0;
/// ...and at most this many bytes of it: a client still sending after that is cut off.
const LINGER_BYTES: usize = 1 << 20;
/// Connections lingering at once, at most; beyond it a close is immediate, so lingering
/// sockets can never hold the fds a flood would need.
const LINGER_MAX: usize = 256;

static LINGERING: AtomicUsize = AtomicUsize::new(0);

pub struct Watched {
    stream: Option<TcpStream>,
    state: Arc<ConnState>,
    /// The client closed its side: nothing to linger for.
    eof: bool,
    /// Nothing was read yet: the first bytes tell HTTP/2's preface from HTTP/1.1.
    first: bool,
    /// What hyper's parser does not tell of a head (`sniff.rs`).
    sniffer: Sniffer,
}

impl Watched {
    pub fn new(stream: TcpStream, state: Arc<ConnState>) -> Watched {
        Watched {
            stream: Some(stream),
            state,
            eof: false,
            first: true,
            sniffer: Sniffer::default(),
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is taken only on drop"),
        )
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.stream().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            let read = &mut buf.filled_mut()[before..];
            if read.is_empty() {
                this.eof = true;
            } else {
                if std::mem::take(&mut this.first) && read.starts_with(b"PRI * HTTP/2.0") {
                    this.state.set_h2();
                }
                if !this.sniffer.active() && this.state.head_begins() {
                    this.sniffer.start(this.state.requests());
                }
                if this.sniffer.active() {
                    let begun = this.sniffer.in_head();
                    this.sniffer.scan(read);
                    if let Some((number, found)) = this.sniffer.take_flagged() {
                        this.state.flag(number, found);
                    }
                    if this.sniffer.in_head() != begun {
                        this.state.head_pending(this.sniffer.in_head());
                    }
                }
                this.state.read_some();
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = self.stream().poll_write(cx, data);
        self.state.wrote(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.stream().poll_write_vectored(cx, bufs);
        self.state.wrote(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.eof || self.state.is_killed() {
            return; // the client is gone, or runwarden cut the connection on purpose
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

/// Shut the write side, then read and drop what the client still sends until it closes,
/// for at most `LINGER_SECONDS` and `LINGER_BYTES` (at once if `LINGER_MAX` already do).
pub async fn linger(mut stream: TcpStream) {
    if LINGERING.fetch_add(1, Ordering::Relaxed) >= LINGER_MAX {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 16 * 1024];
    let mut taken = 0;
    let _ = tokio::time::timeout(Duration::from_secs_f64(LINGER_SECONDS), async {
        while taken < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => taken += n,
            }
        }
    })
    .await;
    LINGERING.fetch_sub(1, Ordering::Relaxed);
}
