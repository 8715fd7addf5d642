//! `server.send_timeout` (nginx's `send_timeout`): a client that takes none
//! of what is written to it for that long is closed. Without it, a client
//! that stops reading a response holds its connection (and the upstream
//! connection or stream behind it) for as long as it likes.
//!
//! [`SendTimed`] wraps a connection's stream: only a write that has to wait
//! arms the timer, and any progress disarms it, so the common case (the
//! socket takes the bytes at once) costs no timer at all.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail once one has waited `limit` for the client.
pub struct SendTimed<IO> {
    io: IO,
    limit: Duration,
    /// Allocated the first time a write waits, then reused.
    stall: Option<Pin<Box<Sleep>>>,
    /// The stall timer runs (a write is waiting since it was set).
    armed: bool,
}

impl<IO> SendTimed<IO> {
    pub fn new(io: IO, limit: Duration) -> Self {
        Self {
            io,
            limit,
            stall: None,
            armed: false,
        }
    }

    /// Passes a write's outcome on; a wait past the limit is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = Instant::now() + self.limit;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            stall.as_mut().reset(deadline);
            self.armed = true;
        }
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that stalls (a full socket) fails after the limit; one that
    /// takes bytes, however slowly, never does.
    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_past_the_limit_fails() {
        let (client, server) = tokio::io::duplex(16);
        let mut timed = SendTimed::new(server, Duration::from_secs(60));
        timed.write_all(&[0; 16]).await.expect("fits the pipe");
        let e = timed
            .write_all(&[0; 16])
            .await
            .expect_err("the client never reads");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(16);
        let mut timed = SendTimed::new(server, Duration::from_secs(60));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 8];
            let mut n = 0;
            while n < 64 {
                // Slower than the limit in all, never a whole limit at once.
                tokio::time::sleep(Duration::from_secs(40)).await;
                n += tokio::io::AsyncReadExt::read(&mut client, &mut buf)
                    .await
                    .expect("read");
            }
        });
        timed
            .write_all(&[0; 64])
            .await
            .expect("progress disarms the timer");
        reader.await.expect("reader");
    }
}
