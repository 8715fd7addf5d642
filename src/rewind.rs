//! An IO with bytes already read from it put back in front, so the next
//! reader sees them first, as if they had never been taken: a client
//! connection the HTTP/1.1 fast path (`server::h1`) read from, handed to
//! hyper; an upstream WebSocket stream whose 101 arrived with frames behind
//! it (`proxy::ws_upstream`). A leaf: it imports nothing of the crate.
//!
//! The same front buffer makes small reads cheap: a reader offering less
//! than [`READ_AHEAD`] bytes (the apps' codec rests at 512, so that an idle
//! session holds little) is served from one read of up to that much, and
//! what did not fit waits in front for its next read. Without it, a client
//! pipelining messages costs a `recvfrom` each time the codec's small buffer
//! fills (1.6 per batch at depth 8, where one suffices). The front buffer
//! is sized to what is left and freed once read, so an idle connection
//! still holds nothing here.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads smaller than this go through a stack buffer of this size: one
/// `recvfrom` takes what a pipelining client has sent (or this much), however
/// little room the reader has.
pub const READ_AHEAD: usize = 4096;

/// `io`, with `prefix` read first.
#[derive(Debug)]
pub struct Rewind<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// `io`, whose reads return `prefix` before anything from `io`.
    pub fn new(prefix: Bytes, io: IO) -> Self {
        // An empty view may still hold a whole read buffer; reads never
        // reach it to let it go, and an idle session would keep it for life.
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            prefix
        };
        Rewind { prefix, io }
    }

    /// The stream inside, once every byte put back in front is read: only
    /// then may it be read from directly.
    pub fn drained(&self) -> Option<&IO> {
        self.prefix.is_empty().then_some(&self.io)
    }

    /// The stream inside, to write to (what waits in front is only read).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() && buf.remaining() > 0 {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // The allocation it pointed into is freed now, not at the end
                // of the connection.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 || buf.remaining() >= READ_AHEAD {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        this.poll_read_ahead(cx, buf)
    }
}

impl<IO: AsyncRead + Unpin> Rewind<IO> {
    /// One read of up to [`READ_AHEAD`] bytes for a reader with less room:
    /// what fits goes to `buf`, the rest in front for the next read.
    fn poll_read_ahead(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            self.prefix = Bytes::copy_from_slice(&read[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A socket that counts its reads that returned data.
    struct Counted(TcpStream, Arc<AtomicUsize>);

    impl AsyncRead for Counted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.0).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                this.1.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_read_of_the_socket() {
        let (mut tx, rx) = pair().await;
        let reads = Arc::new(AtomicUsize::new(0));
        let mut r = Rewind::new(Bytes::from_static(b"head:"), Counted(rx, reads.clone()));
        let sent: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        // One write arrives as one segment on loopback.
        tx.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        while got.len() < 5 + sent.len() {
            let n = r.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(&got[..5], b"head:");
        assert_eq!(&got[5..], &sent[..]);
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one read of the socket");
        // Everything read is handed on: nothing is left in front, and the
        // end of the stream comes through.
        assert!(r.prefix.is_empty());
        drop(tx);
        assert_eq!(r.read(&mut small).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reader_with_room_reads_the_socket_directly() {
        let (mut tx, rx) = pair().await;
        let mut r = Rewind::new(Bytes::new(), rx);
        tx.write_all(&[7u8; 300]).await.unwrap();
        let mut big = vec![0u8; READ_AHEAD];
        let mut got = 0;
        while got < 300 {
            got += r.read(&mut big[got..]).await.unwrap();
        }
        assert!(r.prefix.is_empty(), "nothing kept in front");
        assert!(big[..300].iter().all(|&b| b == 7));
    }
}
