//! A time limit on reading a connection's first request head, for poem's server.
//!
//! poem builds hyper without a timer, so hyper's header-read timeout is off: a connection
//! that sends half an HTTP request (or trickles a byte now and then) stays open forever, and
//! enough of them exhaust the server's file descriptors. [`HandshakeTimeout`] wraps any
//! acceptor and closes a connection whose first request head (up to its blank line) has not
//! arrived within the limit, counted from the accept, however slowly its bytes come.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Sleep, sleep};

/// The default limit of [`HandshakeTimeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An acceptor whose connections must send their first request head within a time limit
/// (default [`DEFAULT_HANDSHAKE_TIMEOUT`]), counted from the accept however slowly the bytes
/// come. poem builds hyper without a timer, so hyper's own header-read timeout is off: without
/// this, a connection that sends half a request stays open forever.
///
/// # Examples
///
/// ```no_run
/// use poem::listener::{Listener, TcpListener};
/// use poem::{Route, Server};
/// use presence_poem::HandshakeTimeout;
///
/// # async fn run() -> std::io::Result<()> {
/// let acceptor = TcpListener::bind("127.0.0.1:4000").into_acceptor().await?;
/// Server::new_with_acceptor(HandshakeTimeout::new(acceptor))
///     .run(Route::new())
///     .await
/// # }
/// ```
#[derive(Debug)]
pub struct HandshakeTimeout<A> {
    inner: A,
    limit: Duration,
}

impl<A> HandshakeTimeout<A> {
    /// Wraps `acceptor` with the default limit.
    pub fn new(acceptor: A) -> Self {
        HandshakeTimeout {
            inner: acceptor,
            limit: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Sets the limit.
    pub fn limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }
}

impl<A: Acceptor> Acceptor for HandshakeTimeout<A> {
    type Io = TimedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    fn accept(
        &mut self,
    ) -> impl Future<Output = io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)>> + Send {
        let limit = self.limit;
        let accepted = self.inner.accept();
        async move {
            let (io, local, remote, scheme) = accepted.await?;
            let io = TimedIo {
                inner: io,
                deadline: Some(Box::pin(sleep(limit))),
                matched: 0,
            };
            Ok((io, local, remote, scheme))
        }
    }
}

/// A connection under [`HandshakeTimeout`].
#[derive(Debug)]
pub struct TimedIo<Io> {
    inner: Io,
    /// Until the first request head has been read.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How much of `\r\n\r\n` the bytes read so far end with.
    matched: usize,
}

const HEAD_END: &[u8] = b"\r\n\r\n";

impl<Io: AsyncRead + Unpin> AsyncRead for TimedIo<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    for &b in &buf.filled()[before..] {
                        this.matched = if b == HEAD_END[this.matched] {
                            this.matched + 1
                        } else if b == HEAD_END[0] {
                            1
                        } else {
                            0
                        };
                        if this.matched == HEAD_END.len() {
                            this.deadline = None;
                            break;
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    tracing::debug!("closing a connection that did not send its request in time");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for TimedIo<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
