//! The listening socket's guards, for what happens before any handler runs. There are two:
//!
//! * at most `max_connections` at once: a connection over the limit is accepted and closed at
//!   once, instead of waiting in the kernel or taking the last file descriptors;
//! * a connection to which the server has written nothing for `idle` is closed, whatever the
//!   peer sends meanwhile.
//!
//! These close connect-only sockets, idle keep-alives, stalled slow-loris requests and
//! trickling ones (a header line every few seconds, which kept a connection open for good while
//! any traffic counted), and peers that stop reading. Before, 1 050 silent sockets took every
//! descriptor, and `/api/health` and new hellos timed out. Long-lived connections stay open
//! because the server writes on them: WebSockets get a ping every [`crate::ws::PING_EVERY`], and
//! the dashboard's event stream a keep-alive every 15 s.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::warn;

/// Connections at once by default: below the common 1 024 open-file limit, leaving room for
/// the store and the static files.
pub const MAX_CONNECTIONS: usize = 900;
/// A connection the server has written nothing to for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP listener with a connection limit and an idle timeout (see the module doc).
pub struct GuardedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            idle,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: wait a little.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return (GuardedStream::new(stream, permit, self.idle), addr),
                // Dropping the stream closes it: over the limit, nothing is read or kept.
                Err(_) => warn!(%addr, "connection limit reached: closing a new connection"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds one permit of its listener and closes when the server has had
/// nothing to say on it for `idle` (the request never completed, or the peer stopped reading).
pub struct GuardedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl GuardedStream {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            stream,
            _permit: permit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn active(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// `Pending` from the socket: an error instead once the server has written nothing for
    /// too long.
    fn idle_check<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no traffic for the idle timeout: closed",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Reading does not count as activity: a peer trickling a request byte by byte is
        // exactly what must time out.
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.idle_check(cx),
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.idle_check(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(max: usize, idle: Duration) -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/health", get(|| async { "ok" }));
        tokio::spawn(async move {
            axum::serve(GuardedListener::new(listener, max, idle), app)
                .await
                .unwrap();
        });
        addr
    }

    /// What the server answers to a plain request on a new connection (empty if it closed it).
    async fn get_health(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let sent = s
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        let mut out = String::new();
        if sent.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        }
        out
    }

    #[tokio::test]
    async fn silent_sockets_are_closed_and_cannot_starve_the_server() {
        // The attack: connect-only sockets, as many as the limit allows.
        let addr = serve(3, Duration::from_millis(300)).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Over the limit: closed at once, not queued.
        assert_eq!(get_health(addr).await, "");
        // Silent sockets are closed after the idle timeout (the read sees EOF)…
        for s in &mut silent {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
                .await
                .expect("closed within the idle timeout");
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        // …and the server answers again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(get_health(addr).await.ends_with("ok"));
    }

    #[tokio::test]
    async fn a_request_trickled_a_line_at_a_time_is_closed() {
        // The attack: a request head that never ends, one header line every 100 ms (traffic
        // well within the 300 ms idle timeout, so it kept the connection open for good).
        let addr = serve(3, Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        let closed = loop {
            if s.write_all(b"x-pad: a\r\n").await.is_err() {
                break true;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut byte)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => panic!("the server answered a request it never received"),
                Err(_) if start.elapsed() > Duration::from_secs(5) => break false,
                Err(_) => {}
            }
        };
        assert!(closed, "still open after {:?}", start.elapsed());
        // A connection that keeps receiving from the server stays: a normal request.
        assert!(get_health(addr).await.ends_with("ok"));
    }
}
