//! An IO with bytes already read from it put back in front, so the next
//! reader sees them first, as if they had never been taken: a client
//! connection the HTTP/1.1 fast path (`server::h1`) read from, handed to
//! hyper; an upstream WebSocket stream whose 101 arrived with frames behind
//! it (`proxy::ws_upstream`). A leaf: it imports nothing of the crate.
//!
//! The same front buffer makes small reads cheap: a reader offering less
//! than [`READ_AHEAD`] bytes (the apps' codec rests at 512, so that an idle
//! session holds little) is served from one read of up to [`AHEAD_MAX`],
//! and what did not fit waits in front for its next read. Without it, a
//! client pipelining messages costs a `recvfrom` each time the codec's small
//! buffer fills (1.6 per batch at depth 8, where one suffices), and a 16 KiB
//! message came in over three to six, as the codec's buffer doubled. The front
//! buffer is sized to what is left (memory follows what arrived) and freed
//! once read, so an idle connection still holds nothing here.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Readers with less room than this are read ahead for: one `recvfrom`
/// takes what the client has sent (up to [`AHEAD_MAX`]), however little
/// room the reader has.
pub const READ_AHEAD: usize = 4096;

/// The most one read ahead takes: what a client sending large messages has
/// waiting, a whole 16 KiB message and more, in one syscall. The apps' reads
/// are bounded by the same (`budget::MAX_READ`).
pub const AHEAD_MAX: usize = 64 * 1024;

thread_local! {
    /// Where a read ahead lands: one buffer per thread that reads ahead (the
    /// runtime's workers), allocated at its first read ahead. Never counted
    /// against a session (it is the thread's, reused by every session on it),
    /// and no stack probe per page as a stack buffer this large would need.
    /// Allocated, not static: static thread-local storage is cleared as each
    /// thread starts, so every thread of the process (the blocking pool's
    /// up to 512 that serve static files and resolve names) would hold 64 KiB
    /// resident that only the workers use. Zeroed, so its pages are touched
    /// only as far as reads have reached.
    static SCRATCH: RefCell<Option<Box<[u8]>>> = const { RefCell::new(None) };
}

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
    /// One read of up to [`AHEAD_MAX`] bytes for a reader with less room than
    /// [`READ_AHEAD`]: what fits goes to `buf`, the rest in front for the next
    /// read.
    fn poll_read_ahead(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let ahead = SCRATCH.try_with(|scratch| {
            // Only a reader polled inside another's read would find it taken.
            let mut scratch = scratch.try_borrow_mut().ok()?;
            let scratch = scratch.get_or_insert_with(|| vec![0; AHEAD_MAX].into_boxed_slice());
            Some(self.poll_read_into(cx, buf, scratch))
        });
        match ahead {
            Ok(Some(polled)) => polled,
            // Or a thread already tearing its storage down.
            _ => Pin::new(&mut self.io).poll_read(cx, buf),
        }
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        scratch: &mut [u8],
    ) -> Poll<io::Result<()>> {
        let mut ahead = ReadBuf::new(scratch);
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
    async fn a_large_message_is_read_from_the_socket_once() {
        let (mut tx, rx) = pair().await;
        let reads = Arc::new(AtomicUsize::new(0));
        let mut r = Rewind::new(Bytes::new(), Counted(rx, reads.clone()));
        let sent: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).await.unwrap();
        // Read as the apps' codec reads (tokio-util's `Framed`): a buffer
        // resting at 512 bytes, doubled only when a read has filled it.
        let mut buf = bytes::BytesMut::with_capacity(512);
        while buf.len() < sent.len() {
            buf.reserve(1);
            let n = std::future::poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut r), cx, &mut buf)
            })
            .await
            .unwrap();
            assert!(n > 0);
        }
        assert_eq!(&buf[..], &sent[..]);
        // Three with a read ahead of 4 KiB, six without one.
        assert_eq!(reads.load(Ordering::Relaxed), 1, "one read of the socket");
        assert!(r.prefix.is_empty());
    }

    fn holds_scratch() -> bool {
        SCRATCH.with(|s| s.borrow().is_some())
    }

    /// The scratch is the reading threads' only: a thread that never reads
    /// ahead (a blocking thread serving a file) holds none.
    #[test]
    fn only_a_thread_that_reads_ahead_holds_the_scratch() {
        let idle = std::thread::spawn(holds_scratch).join().expect("thread");
        assert!(!idle, "a thread that never read ahead");
        let reader = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let (mut tx, rx) = pair().await;
                let mut r = Rewind::new(Bytes::new(), rx);
                tx.write_all(b"ahead").await.unwrap();
                let mut small = [0u8; 8];
                assert_eq!(r.read(&mut small).await.unwrap(), 5);
            });
            holds_scratch()
        });
        assert!(reader.join().expect("thread"), "a thread that read ahead");
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
