//! The byte splice between a client and an upstream WebSocket after both
//! handshakes: bytes are copied as they are in both directions until the
//! upstream's EOF is relayed (a client's EOF is relayed and the upstream's
//! reply still awaited; see [`Bidirectional`]), the session is idle for
//! `ws_idle_timeout`, or `stop` fires: the drain's hard stop (`shutdown_grace`
//! passed), when both TCP connections are closed (the byte-copy path does not
//! know where frames begin, so it cannot insert a close frame safely; until
//! then a drain leaves it running). Upstreams with `ws_inspect` use the
//! frame-aware splice in [`super::inspect`] instead.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustix::net::SendFlags;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::kernel_pipe::{KernelPipe, SpliceSocket};
use crate::shutdown::Stop;

/// Why a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    Closed,
    Idle,
    Drain,
    Error,
    /// Inspected only: a message over `ws_max_message_size`.
    TooBig,
    /// Inspected only: a side missed two keepalive pings.
    PeerDead,
    /// Inspected only: a side sent bytes that are not WebSocket frames.
    Protocol,
    /// Inspected only: the client sent messages faster than `ws_message_rate`.
    Policy,
    /// Inspected only: the client's token expired.
    Expired,
}

impl SpliceEnd {
    /// The name logs give it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpliceEnd::Closed => "closed",
            SpliceEnd::Idle => "idle",
            SpliceEnd::Drain => "drain",
            SpliceEnd::Error => "error",
            SpliceEnd::TooBig => "too_big",
            SpliceEnd::PeerDead => "peer_dead",
            SpliceEnd::Protocol => "protocol",
            SpliceEnd::Policy => "policy",
            SpliceEnd::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SpliceStats {
    pub end: SpliceEnd,
    /// Client → upstream.
    pub bytes_in: u64,
    /// Upstream → client.
    pub bytes_out: u64,
    /// Messages (client → upstream, upstream → client): inspected splices only.
    pub messages: Option<(u64, u64)>,
    /// The session's close code, the first one either side sent or the
    /// gateway sent the client: inspected splices only.
    pub close_code: Option<u16>,
    /// Of the bytes both ways, those moved by `splice(2)` without a copy
    /// through user space.
    pub zero_copy: u64,
}

/// Largest read in one go. Big enough for a 16 KiB message and its frame
/// header in one syscall. It lives on the polling thread's stack, not in the
/// session, so an idle session holds no copy buffer at all.
const READ_CHUNK: usize = 64 * 1024;

/// A read that fills the whole chunk (more was queued than one read takes)
/// switches its direction to `splice(2)` through a pipe, when both sides are
/// plain TCP; a splice that moves less than [`SPLICE_UNTIL`] switches it
/// back. Measured: at 16 and 64 KiB per message the two copies cost about
/// what the pipe does (a cache-hot 16 KiB copies in ~0.35 µs), at 256 KiB
/// the splice saves 17 % of the CPU per message (bench/NOTES.md, fourteenth
/// round), so only bulk reads take it.
const SPLICE_FROM: usize = READ_CHUNK;

/// See [`SPLICE_FROM`].
const SPLICE_UNTIL: usize = 8 * 1024;

/// Copies both ways until done (the upstream's EOF relayed to the client, or an
/// error).
///
/// Unlike `tokio::io::copy_bidirectional`, which allocates a buffer per
/// direction for the whole session, data is read into a stack buffer and
/// written straight out; only bytes the peer is not ready to take are kept, in
/// a heap buffer sized to them, until they are written. Bulk data between two
/// plain TCP sockets skips user space: see [`SPLICE_FROM`] and
/// [`super::kernel_pipe`].
pub async fn splice<C, U>(client: C, upstream: U, idle: Duration, stop: Stop) -> SpliceStats
where
    C: AsyncRead + AsyncWrite + SpliceSocket + Unpin,
    U: AsyncRead + AsyncWrite + SpliceSocket + Unpin,
{
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    // Made by a plain function: a stream borrowed here, in the async body,
    // would keep its storage in the session's future beside the copy's
    // (+272 bytes an idle session, S3).
    let copy = Bidirectional::new(client, upstream, &bytes_in, &bytes_out);
    tokio::pin!(copy);
    let total = || bytes_in.load(Ordering::Relaxed) + bytes_out.load(Ordering::Relaxed);
    let mut idle = IdleCheck::new(idle, total());
    let timer = tokio::time::sleep(idle.step);
    let stopped = stop.cancelled();
    tokio::pin!(timer, stopped);
    // The timer and the stop hold this task's waker since they were last
    // polled (see below).
    let mut armed = false;
    let end = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = copy.as_mut().poll(cx) {
            return Poll::Ready(if r.is_ok() {
                SpliceEnd::Closed
            } else {
                SpliceEnd::Error
            });
        }
        // Woken by a socket, the copy is what moves. Once armed, the timer
        // and the stop wake the task when due and show it first (the timer
        // leaves the wheel, the token is marked before its waiters are
        // woken): until then, polling them again would only register the
        // same waker again, ~300 instructions a spliced message (callgrind,
        // S1). The session is only polled by its own task.
        if armed && !timer.is_elapsed() && !stop.is_cancelled() {
            return Poll::Pending;
        }
        armed = true;
        while timer.as_mut().poll(cx).is_ready() {
            if idle.tick(total()) {
                return Poll::Ready(SpliceEnd::Idle);
            }
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + idle.step);
        }
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(SpliceEnd::Drain);
        }
        Poll::Pending
    })
    .await;
    SpliceStats {
        end,
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        messages: None,
        close_code: None,
        zero_copy: copy.to_upstream.zero_copy + copy.to_client.zero_copy,
    }
}

/// The idle cut: looked at twice per period, a session is cut after
/// between 1 and 1.5 periods without a byte either way. Counted in steps,
/// to keep every spliced session's future small.
struct IdleCheck {
    step: Duration,
    /// Bytes moved both ways at the last look.
    last: u64,
    /// Looks in a row that found no byte moved.
    quiet: u32,
    /// That many quiet looks make the period.
    limit: u32,
}

impl IdleCheck {
    fn new(idle: Duration, total: u64) -> Self {
        let step = (idle / 2).max(Duration::from_millis(10));
        let limit = idle.as_nanos().div_ceil(step.as_nanos());
        Self {
            step,
            last: total,
            quiet: 0,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        }
    }

    /// One look, a step after the last, with `total` bytes moved so far:
    /// whether the session has been idle long enough to be cut.
    fn tick(&mut self, total: u64) -> bool {
        if total == self.last {
            self.quiet = self.quiet.saturating_add(1);
            self.quiet >= self.limit
        } else {
            self.quiet = 0;
            self.last = total;
            false
        }
    }
}

/// Both directions of one session, polled together so each stream is borrowed
/// by one direction at a time without a lock.
struct Bidirectional<C, U> {
    client: C,
    upstream: U,
    to_upstream: Pipe,
    to_client: Pipe,
}

impl<C: SpliceSocket, U: SpliceSocket> Bidirectional<C, U> {
    fn new(client: C, upstream: U, bytes_in: &Arc<AtomicU64>, bytes_out: &Arc<AtomicU64>) -> Self {
        Self {
            to_upstream: Pipe::new(bytes_in.clone(), upstream.tcp().is_some()),
            to_client: Pipe::new(bytes_out.clone(), client.tcp().is_some()),
            client,
            upstream,
        }
    }
}

impl<C, U> Future for Bidirectional<C, U>
where
    C: AsyncRead + AsyncWrite + SpliceSocket + Unpin,
    U: AsyncRead + AsyncWrite + SpliceSocket + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let down = this
            .to_client
            .poll_copy(cx, &mut this.upstream, &mut this.client)?;
        // Polled after `down` so that bytes the client sent before the upstream
        // ended are read before the sockets close (unread, they make the
        // close a reset).
        let up = this
            .to_upstream
            .poll_copy(cx, &mut this.client, &mut this.upstream);
        if down.is_ready() {
            // The upstream's EOF, relayed with everything before it, ends the
            // session, as in nginx and HAProxy: a WebSocket server closes TCP
            // once the closing handshake is over (RFC 6455 §7.1.1), so what
            // the client still sends has no reader. Waiting for the client's
            // own EOF cost a round trip, a wake-up and three syscalls per
            // session. A client that ends first still gets the upstream's
            // reply: its EOF only shuts the upstream's write side.
            return Poll::Ready(Ok(()));
        }
        // The client's EOF relayed (`up` ready) still waits for the upstream's.
        match up {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Pending,
        }
    }
}

/// One direction: read → write, then on EOF shut the writer down.
struct Pipe {
    /// Bytes read but not yet accepted by the writer (only while it is slow).
    backlog: Vec<u8>,
    /// Bytes spliced in but not yet out (only while a message is on its way):
    /// a pooled pipe, given back once empty.
    kernel: Option<KernelPipe>,
    /// Moving bulk data by `splice(2)` (see [`SPLICE_FROM`]).
    large: bool,
    /// Bytes moved that way.
    zero_copy: u64,
    /// How much of `backlog` is already written (at most one read's worth).
    written: u32,
    /// Bytes handed to the writer since the last flush.
    unflushed: bool,
    /// The writer is a bare socket: it can take bulk data by `splice(2)`,
    /// and the last bytes before an EOF with the FIN (see
    /// [`Self::read_behind`]). Asked once, as the writer cannot change.
    to_socket: bool,
    eof: bool,
    done: bool,
    count: Arc<AtomicU64>,
}

impl Pipe {
    fn new(count: Arc<AtomicU64>, to_socket: bool) -> Self {
        Self {
            backlog: Vec::new(),
            kernel: None,
            large: false,
            zero_copy: 0,
            written: 0,
            unflushed: false,
            to_socket,
            eof: false,
            done: false,
            count,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + SpliceSocket + Unpin,
        W: AsyncWrite + SpliceSocket + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            ready!(self.poll_backlog(cx, w))?;
            ready!(self.poll_kernel_out(cx, w))?;
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.large {
                match self.poll_kernel_in(cx, r) {
                    Some(Poll::Ready(Ok(n))) if n > 0 => {
                        self.took(n);
                        self.zero_copy += n as u64;
                        self.large = n >= SPLICE_UNTIL;
                        continue;
                    }
                    Some(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                    Some(Poll::Pending) => return self.poll_idle_flush(cx, w),
                    // Nothing moved (the EOF, an empty socket, urgent data)
                    // or no pipe to be had: a plain read says which, and
                    // copies what there is.
                    _ => {}
                }
            }
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut *r).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.poll_idle_flush(cx, w),
            }
            let n = buf.filled().len();
            self.took(n);
            if n == 0 {
                continue;
            }
            if n >= SPLICE_FROM {
                self.large = self.to_socket && r.tcp_to_read().is_some();
            } else if n < SPLICE_UNTIL {
                self.large = false;
            }
            let behind = if n < READ_CHUNK && self.to_socket {
                self.read_behind(cx, r, &mut buf)
            } else {
                Poll::Ready(Ok(()))
            };
            self.write_or_keep(cx, w, buf.filled())?;
            match behind {
                // The reader is empty and holds the waker: reading it again
                // would only register that waker again.
                Poll::Pending => return self.poll_idle_flush(cx, w),
                Poll::Ready(r) => r?,
            }
        }
    }

    /// Reads once more before the write, into the rest of the chunk, for
    /// the EOF right behind the data: a WebSocket server sends its close
    /// frame, then its FIN. Known, the data goes out held back (`MSG_MORE`)
    /// and the shutdown that follows sends it with the FIN in one segment,
    /// as HAProxy does, where a write and then a bare FIN cost the peer two
    /// segments and an ACK. It costs no syscall when no EOF is known: after
    /// a short read tokio asks the socket again only once the poller has
    /// seen the peer's FIN (it keeps that flag when it clears readiness);
    /// the read after the write found the same EOF before. Pending: the
    /// reader is empty and holds the task's waker.
    fn read_behind<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
    {
        let before = buf.filled().len();
        ready!(Pin::new(r).poll_read(cx, buf))?;
        self.took(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }

    /// Counts `n` bytes read; none is the reader's EOF.
    fn took(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
        }
        self.count.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Nothing to read: pushes out what the writer buffered (TLS) before
    /// sleeping.
    fn poll_idle_flush<W>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        if self.unflushed {
            ready!(Pin::new(&mut *w).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Pending
    }

    /// Splices what the reader has into a pooled pipe; `None` when the reader
    /// is no longer a bare socket or no pipe is to be had. The pipe goes back
    /// to the pool unless it now holds bytes.
    fn poll_kernel_in<R>(&mut self, cx: &mut Context<'_>, r: &R) -> Option<Poll<io::Result<usize>>>
    where
        R: SpliceSocket,
    {
        let from = r.tcp_to_read()?;
        let mut pipe = KernelPipe::take()?;
        let res = pipe.poll_fill(cx, from);
        if pipe.is_empty() {
            pipe.give_back();
        } else {
            self.kernel = Some(pipe);
        }
        Some(res)
    }

    /// Splices out what the pipe holds; ready once it is empty (and back in
    /// the pool).
    fn poll_kernel_out<W>(&mut self, cx: &mut Context<'_>, w: &W) -> Poll<io::Result<()>>
    where
        W: SpliceSocket,
    {
        let Some(pipe) = self.kernel.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        // Filled only when the writer was a socket; it still is.
        let to = w.tcp().ok_or(io::ErrorKind::Unsupported)?;
        ready!(pipe.poll_drain(cx, to))?;
        if let Some(pipe) = self.kernel.take() {
            pipe.give_back();
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `data` directly; whatever the writer does not take now goes to
    /// the backlog. Before an EOF (see [`Self::read_behind`]) a socket takes
    /// it held back for the FIN.
    fn write_or_keep<W>(&mut self, cx: &mut Context<'_>, w: &mut W, data: &[u8]) -> io::Result<()>
    where
        W: AsyncWrite + SpliceSocket + Unpin,
    {
        let mut at = 0;
        if self.eof {
            at = hold_for_fin(w, data)?;
            self.unflushed |= at > 0;
        }
        while at < data.len() {
            match Pin::new(&mut *w).poll_write(cx, &data[at..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    at += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        self.backlog.extend_from_slice(&data[at..]);
        Ok(())
    }

    /// Writes out the backlog; ready once it is empty (its memory then freed).
    fn poll_backlog<W>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        while (self.written as usize) < self.backlog.len() {
            let left = &self.backlog[self.written as usize..];
            let n = ready!(Pin::new(&mut *w).poll_write(cx, left))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n.min(left.len()) as u32;
            self.unflushed = true;
        }
        if !self.backlog.is_empty() {
            self.backlog = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes what `w`'s socket takes of `data` now without sending it
/// (`MSG_MORE`): the shutdown that follows sends it with the FIN. 0 when `w`
/// is not a bare socket or not ready.
fn hold_for_fin<W: SpliceSocket>(w: &W, data: &[u8]) -> io::Result<usize> {
    let Some(tcp) = w.tcp() else {
        return Ok(0);
    };
    let held = tcp.try_io(Interest::WRITABLE, || {
        rustix::net::send(tcp, data, SendFlags::MORE).map_err(io::Error::from)
    });
    match held {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

#[cfg(test)]
#[path = "splice_tcp_tests.rs"]
mod tcp_tests;

#[cfg(test)]
#[path = "splice_tests.rs"]
mod tests;
