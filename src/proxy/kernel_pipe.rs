//! Zero-copy forwarding for the byte splice: `splice(2)` from one TCP socket
//! into a pipe and from the pipe into the other socket, so a large message's
//! bytes move as page references inside the kernel instead of being copied
//! into user space and back (two copies per message per direction).
//!
//! Used only where it pays and where it is safe: both sides plain TCP with
//! nothing buffered in front of the socket ([`SpliceSocket`]), and bulk
//! reads (the splice decides; see `proxy::splice`). Messages up to tens of
//! KiB keep the plain read and write: copying them while cache-hot costs
//! about what the pipe does (measured, bench/NOTES.md).
//!
//! Pipes are pooled per worker thread, as HAProxy does: a direction takes one
//! when it splices a message in and gives it back once the message is out, so
//! an idle session holds no pipe and a busy one costs no `pipe2` per message.
//! The number of pipes alive is capped: at most [`MAX_PIPES`], and their
//! descriptors at most a sixteenth of the process's limit, so they never
//! starve accepts and dials; past the cap the splice copies as before.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use rustix::io::Errno;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::rewind::Rewind;
use crate::server::proxy_protocol::Prefixed;
use crate::upgraded::Io;
use crate::upstream::dial::UpStream;

/// The most pipes alive at once, each two descriptors. Their pages (16 each
/// when full) stay a quarter of Linux's default per-user pipe allowance
/// (`pipe-user-pages-soft`, 16 384), leaving room for a second process
/// during a binary upgrade: past that allowance new pipes get two pages.
const MAX_PIPES: usize = 256;

/// Idle pipes a worker thread keeps for reuse; more are closed.
const POOL_PER_THREAD: usize = 8;

/// Most bytes moved into a pipe at once: its default capacity (16 pages).
const PIPE_CHUNK: usize = 64 * 1024;

/// A stream whose TCP socket the kernel can splice from and to.
pub trait SpliceSocket {
    /// The socket under the stream, when it is plain TCP: to write to.
    fn tcp(&self) -> Option<&TcpStream>;
    /// The socket to read from directly: only once no byte already read
    /// from it waits in user space in front of it (those go out first).
    fn tcp_to_read(&self) -> Option<&TcpStream>;
}

impl SpliceSocket for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
    fn tcp_to_read(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<IO: SpliceSocket> SpliceSocket for Rewind<IO> {
    fn tcp(&self) -> Option<&TcpStream> {
        self.get_ref().tcp()
    }
    fn tcp_to_read(&self) -> Option<&TcpStream> {
        self.drained()?.tcp_to_read()
    }
}

/// A client connection handed over by the fast path: a plain listener's
/// stream is a `Prefixed<TcpStream>` (PROXY protocol or not); TLS and
/// hyper's own upgrades are not sockets the kernel can splice.
impl SpliceSocket for Box<dyn Io> {
    fn tcp(&self) -> Option<&TcpStream> {
        // The stream inside the box, not the box (itself an `Io`).
        let any = (**self).as_any();
        match any.downcast_ref::<Prefixed<TcpStream>>() {
            Some(s) => Some(s.get_ref()),
            None => any.downcast_ref::<TcpStream>(),
        }
    }
    fn tcp_to_read(&self) -> Option<&TcpStream> {
        let any = (**self).as_any();
        match any.downcast_ref::<Prefixed<TcpStream>>() {
            Some(s) => s.drained(),
            None => any.downcast_ref::<TcpStream>(),
        }
    }
}

impl SpliceSocket for UpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            UpStream::Plain(s) => Some(s),
            UpStream::Tls(_) => None,
        }
    }
    fn tcp_to_read(&self) -> Option<&TcpStream> {
        self.tcp()
    }
}

/// One pipe and how many bytes it holds.
#[derive(Debug)]
pub struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// At most [`PIPE_CHUNK`]: 32 bits keep a session's two directions small.
    held: u32,
}

impl KernelPipe {
    /// A pipe from this thread's pool, or a new one while under the cap;
    /// `None` past the cap or when the kernel gives none (the caller copies).
    pub fn take() -> Option<KernelPipe> {
        if DISABLED.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(p) = POOL.with(|pool| pool.borrow_mut().pop()) {
            return Some(p);
        }
        let alive = ALIVE.fetch_add(1, Ordering::Relaxed);
        if alive >= cap() {
            ALIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC) {
            Ok((read, write)) => Some(KernelPipe {
                read,
                write,
                held: 0,
            }),
            Err(e) => {
                ALIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "no pipe for a zero-copy splice; copying");
                None
            }
        }
    }

    /// Gives an empty pipe back to this thread's pool.
    pub fn give_back(self) {
        debug_assert_eq!(self.held, 0);
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.push(self);
            }
            // Else dropped here: closed, and counted out by `Drop`.
        });
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Moves up to [`PIPE_CHUNK`] bytes from `from` into the (empty) pipe,
    /// once `from` is readable. `Ready(Ok(0))` when nothing moved: the
    /// caller reads with `recv` to learn why. That is the socket's EOF, an
    /// empty socket (tokio then clears its readiness, which this leaves
    /// alone), or TCP urgent data, where `splice(2)` stops for good and
    /// `recv` steps over the urgent byte. It is also returned, with
    /// zero-copy turned off for the process, when the kernel refuses
    /// `splice(2)` itself (a seccomp filter, a socket type without it).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, from: &TcpStream) -> Poll<io::Result<usize>> {
        debug_assert_eq!(self.held, 0);
        ready!(from.poll_read_ready(cx))?;
        match splice(from, None, &self.write, None, PIPE_CHUNK, flags()) {
            Ok(n) => {
                self.held = n.min(PIPE_CHUNK) as u32;
                Poll::Ready(Ok(n))
            }
            Err(e) if e == Errno::AGAIN => Poll::Ready(Ok(0)),
            Err(e) if refused(e) => {
                if !DISABLED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "splice(2) refused; byte splices copy from now on");
                }
                Poll::Ready(Ok(0))
            }
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// Moves what the pipe holds into `to`; ready once it is empty.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<()>> {
        while self.held > 0 {
            ready!(to.poll_write_ready(cx))?;
            let moved = to.try_io(Interest::WRITABLE, || {
                let len = self.held as usize;
                splice(&self.read, None, to, None, len, flags()).map_err(io::Error::from)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.held -= n.min(self.held as usize) as u32,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for KernelPipe {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

fn flags() -> SpliceFlags {
    // MOVE: hand pages over rather than copy where the kernel can.
    // NONBLOCK: the pipe never blocks the worker (the sockets are already
    // non-blocking).
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

/// Errors that say `splice(2)` itself is unavailable, not that this socket
/// failed: nothing moved, so copying instead loses nothing.
fn refused(e: Errno) -> bool {
    [Errno::INVAL, Errno::NOSYS, Errno::PERM, Errno::OPNOTSUPP].contains(&e)
}

static ALIVE: AtomicUsize = AtomicUsize::new(0);

/// Set once the kernel refuses `splice(2)`: every splice copies after it.
static DISABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static POOL: RefCell<Vec<KernelPipe>> = const { RefCell::new(Vec::new()) };
}

/// How many pipes may be alive: their two descriptors each take at most a
/// sixteenth of what this process may open.
fn cap() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let fds = limit.current.unwrap_or(u64::MAX);
        usize::try_from(fds / 32)
            .unwrap_or(MAX_PIPES)
            .min(MAX_PIPES)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_cross_from_one_socket_to_another_through_the_pipe() {
        let (mut a, from) = pair().await;
        let (to, mut b) = pair().await;
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut pipe = KernelPipe::take().expect("a pipe under the cap");
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.shutdown().await.unwrap();
            data
        });
        let mut moved = 0;
        loop {
            let n = poll_fn(|cx| pipe.poll_fill(cx, &from)).await.unwrap();
            if n == 0 {
                // Nothing moved: `recv` says whether that was the EOF (and
                // clears tokio's readiness when it was only an empty socket).
                match from.try_read(&mut [0u8; 1]) {
                    Ok(0) => break,
                    Ok(_) => panic!("recv found bytes splice(2) did not move"),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            moved += n;
            poll_fn(|cx| pipe.poll_drain(cx, &to)).await.unwrap();
        }
        drop(to);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let sent = writer.await.unwrap();
        assert_eq!(moved, sent.len());
        assert_eq!(got, sent);
        pipe.give_back();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_emptied_pipe_is_reused_not_reopened() {
        let first = KernelPipe::take().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&first.read);
        first.give_back();
        let again = KernelPipe::take().unwrap();
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&again.read), fd);
        again.give_back();
    }

    /// A plain listener's stream, boxed as the fast path hands it over, is
    /// found behind the box; it may be written at once but read directly
    /// only once the bytes read past the PROXY header are served.
    #[tokio::test]
    async fn the_boxed_client_socket_is_read_directly_only_once_drained() {
        let (_far, near) = pair().await;
        let mut boxed: Box<dyn Io> = Box::new(Prefixed::new(near, b"abc".to_vec()));
        assert!(boxed.tcp().is_some());
        assert!(boxed.tcp_to_read().is_none(), "bytes wait in front");
        let mut first = [0u8; 3];
        boxed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"abc");
        assert!(boxed.tcp_to_read().is_some());
        let tls_like: Box<dyn Io> = Box::new(tokio::io::duplex(64).0);
        assert!(tls_like.tcp().is_none() && tls_like.tcp_to_read().is_none());
    }
}
