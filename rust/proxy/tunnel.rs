//! A WebSocket (or any accepted `Upgrade`) proxied as a tunnel: after the app's `101`,
//! bytes are copied both ways as they come. The tunnel is in flight while open (its `101`'s
//! hooks end only when it closes, so the drain waits for it and the door's permit is
//! held), closes when it moves no byte either way for `tunnel_idle_timeout_seconds`, and
//! is cut with its connection (at the drain's deadline, D6, its connection is streaming and
//! is cut).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::body::{End, TunnelHooks};
use super::conn::{now_nanos, ConnState};
use super::log::Log;

pub struct Tunnel {
    pub client: OnUpgrade,
    pub app: OnUpgrade,
    pub hooks: Arc<TunnelHooks>,
    pub conn: Arc<ConnState>,
    pub idle: Duration,
    pub log: Log,
}

pub async fn run(tunnel: Tunnel) {
    let (client, app) = match tokio::try_join!(tunnel.client, tunnel.app) {
        Ok(both) => both,
        Err(error) => {
            tunnel
                .log
                .warn_limited("tunnel", format!("a tunnel could not open: {error}"));
            tunnel.hooks.closed(End::Failed);
            return;
        }
    };
    let moved = Arc::new(AtomicU64::new(now_nanos()));
    let mut client = Touched::new(TokioIo::new(client), Arc::clone(&moved));
    let mut app = Touched::new(TokioIo::new(app), Arc::clone(&moved));
    let end = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut app) => {
            if copied.is_ok() { End::Complete } else { End::Failed }
        }
        () = idle(&moved, tunnel.idle) => End::Complete,
        () = tunnel.conn.killed() => End::Dropped,
    };
    drop((client, app));
    tunnel.hooks.closed(end);
}

/// Returns once no byte has moved for `limit`.
async fn idle(moved: &AtomicU64, limit: Duration) {
    let limit = limit.as_nanos() as u64;
    loop {
        let last = moved.load(Ordering::Relaxed);
        let quiet = now_nanos().saturating_sub(last);
        if quiet >= limit {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(limit - quiet)).await;
    }
}

/// One side of a tunnel, stamping the time of each byte it moves.
struct Touched<T> {
    io: T,
    moved: Arc<AtomicU64>,
}

impl<T> Touched<T> {
    fn new(io: T, moved: Arc<AtomicU64>) -> Touched<T> {
        Touched { io, moved }
    }

    fn touch(&self) {
        self.moved.store(now_nanos(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
