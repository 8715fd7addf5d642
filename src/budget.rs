//! The process-wide budget for WebSocket message bytes held in memory
//! (`server.max_buffered`): what app sessions have read from their clients
//! but not yet handed to the app as a whole message. A leaf: the composition
//! root builds one [`Budget`], the apps open an [`Account`] per session and
//! wrap the session's socket in [`Metered`], which counts what it reads.
//!
//! Accounting without patching the codec: bytes read since the last complete
//! message came out of the codec are the bytes the codec holds for the message
//! in progress (its read buffer and its reassembly of fragments). A delivered
//! message resets the session's count to zero; a delivered control frame
//! subtracts its exact wire size (client control frames are 6 bytes of header
//! plus at most 125 of payload), so pings sent between the fragments of a large
//! message cannot hide it. The count lags by at most one read: bytes of the next
//! message that arrived in the same read as the end of the delivered one are
//! forgotten until that message is delivered ([`MAX_READ`] bounds a read).
//! Bytes the connection read ahead ([`crate::rewind::AHEAD_MAX`], 64 KiB at
//! most) are counted when the codec takes them.
//!
//! Over the limit, the sessions holding the most are evicted, largest first,
//! until what they hold covers the excess: their bytes leave the total at once
//! (so one excess does not evict a second round while they close), their
//! reads stop, and the session waiting on [`Account::evicted`] is woken to
//! close with 1013 (see `apps::codec::BUDGET_CLOSE`). Per read this costs two
//! atomic additions and a load; per delivered message a load (and a swap and a
//! subtraction when the count was not already zero). No lock outside session
//! start, session end and eviction.
//!
//! Every idle session pays for its account, so it is kept small: one 64-byte
//! allocation and an 8-byte slot in the registry (`Registry`); a drain
//! is not the budget's business (sessions watch their drain token themselves).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};

use futures_util::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes from a session's socket. The accounting forgets at
/// most one read per session (see the module doc), so this bounds the error;
/// 64 KiB reads cost nothing measurable against larger ones.
pub const MAX_READ: usize = 64 * 1024;

/// Wire size of a client control frame's header: 2 bytes, then the mask (a
/// control payload is at most 125 bytes, so no extended length).
const CONTROL_HEADER: usize = 6;

/// The budget shared by every app session of the process.
pub struct Budget {
    /// `server.max_buffered` in bytes (changed by reload).
    limit: AtomicUsize,
    /// Bytes held by all accounts. Never below the sum of their counts: an
    /// account adds here before its own count and takes its count before
    /// subtracting here, so a concurrent eviction cannot make it wrap.
    total: AtomicUsize,
    /// Open accounts, for eviction to find the largest holders.
    accounts: Mutex<Registry>,
    /// One eviction pass at a time; others over the limit meanwhile skip it.
    enforcing: AtomicBool,
    /// `wsgate_ws_budget_closed_total`.
    closed: Counter,
}

impl Budget {
    /// A budget of `limit` bytes; `closed` counts the sessions it evicts.
    pub fn new(limit: u64, closed: Counter) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicUsize::new(usize::try_from(limit).unwrap_or(usize::MAX)),
            total: AtomicUsize::new(0),
            accounts: Mutex::new(Registry::default()),
            enforcing: AtomicBool::new(false),
            closed,
        })
    }

    /// Applies a reloaded `server.max_buffered`. A lower limit takes effect
    /// at the next read.
    pub fn set_limit(&self, limit: u64) {
        self.limit
            .store(usize::try_from(limit).unwrap_or(usize::MAX), Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// Bytes held now by every session (`wsgate_ws_buffered_bytes`).
    pub fn buffered(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Open sessions with an account.
    pub fn sessions(&self) -> usize {
        self.registry().len()
    }

    /// Opens a session's account. An eviction wakes [`Account::evicted`].
    pub fn open(self: &Arc<Self>) -> Arc<Account> {
        let mut registry = self.registry();
        let account = Arc::new_cyclic(|me| Account {
            budget: self.clone(),
            held: AtomicUsize::new(0),
            wake: AtomicWaker::new(),
            slot: registry.insert(me.clone()),
            evicted: AtomicBool::new(false),
        });
        drop(registry);
        account
    }

    /// The registry, even if a panic poisoned its lock (it stays consistent:
    /// every change to it is a single push, pop or store).
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Evicts the largest holders until the total is back under the limit.
    fn enforce(&self) {
        if self.enforcing.swap(true, Relaxed) {
            return;
        }
        let live = self.evict_largest();
        self.enforcing.store(false, Relaxed);
        // `live` may hold the last reference to an account whose session has
        // just ended; its drop then empties its registry slot, which takes the
        // registry's lock: fine here, it is no longer held.
        drop(live);
    }

    /// One eviction pass; returns the accounts it looked at, to be dropped
    /// by the caller.
    fn evict_largest(&self) -> Vec<Arc<Account>> {
        let excess = self.total.load(Relaxed).saturating_sub(self.limit());
        if excess == 0 {
            return Vec::new();
        }
        // Upgrade everything under the lock and look at them after it:
        // dropping the last reference to an account removes it from the
        // registry, which takes the lock (a deadlock if still held).
        let live: Vec<Arc<Account>> = self.registry().live();
        let mut holders: Vec<(usize, &Arc<Account>)> = live
            .iter()
            .filter(|a| !a.is_evicted())
            .map(|a| (a.held(), a))
            .filter(|(held, _)| *held > 0)
            .collect();
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut freed = 0;
        for (_, account) in holders {
            if freed >= excess {
                break;
            }
            freed += account.evict();
        }
        live
    }
}

/// The open accounts: a slab of weak references, slots reused through a
/// free list. 8 bytes per session where a hash map (the `DashMap` this
/// replaced) took 17–35 with its control bytes and growth slack, and no
/// per-session token or id. The sessions own their accounts; a dropped
/// account empties its slot.
#[derive(Default)]
struct Registry {
    slots: Vec<Weak<Account>>,
    free: Vec<u32>,
}

impl Registry {
    /// Stores `account`, returns its slot.
    fn insert(&mut self, account: Weak<Account>) -> u32 {
        if let Some(slot) = self.free.pop() {
            self.slots[slot as usize] = account;
            return slot;
        }
        // 2^32 live sessions cannot happen (each holds a file descriptor);
        // were it to, the extra ones would share the last slot, which only
        // hides them from eviction.
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(account);
        slot
    }

    fn remove(&mut self, slot: u32) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Weak::new();
            self.free.push(slot);
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Every account still alive.
    fn live(&self) -> Vec<Arc<Account>> {
        self.slots.iter().filter_map(Weak::upgrade).collect()
    }
}

/// One session's share of the budget; dropping it (the session ended) returns
/// what it holds. 48 bytes (64 with the `Arc`'s counts): one of these lives
/// per idle session.
pub struct Account {
    budget: Arc<Budget>,
    held: AtomicUsize,
    /// The session task waiting in [`Account::evicted`].
    wake: AtomicWaker,
    /// Its slot in the budget's registry.
    slot: u32,
    evicted: AtomicBool,
}

impl Account {
    /// Whether the budget evicted this session (close it with 1013).
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Relaxed)
    }

    /// Resolves once the budget evicts this session. One task at a time may
    /// wait on it (the session's own: a second waiter would take the wake-up
    /// from the first); making it again is free.
    pub fn evicted(&self) -> Evicted<'_> {
        Evicted(self)
    }

    /// Bytes read and not yet delivered as a message.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// A whole data message came out of the codec: what was read for it is
    /// the app's now (or freed).
    #[inline]
    pub fn message_delivered(&self) {
        if self.held.load(Relaxed) != 0 {
            self.take_all();
        }
    }

    /// A control frame with `payload` bytes came out of the codec: its exact
    /// wire size leaves the count, and a message in progress stays counted.
    #[inline]
    pub fn control_delivered(&self, payload: usize) {
        let wire = CONTROL_HEADER + payload;
        if let Ok(before) = self.held.fetch_update(Relaxed, Relaxed, |h| {
            (h != 0).then(|| h.saturating_sub(wire))
        }) {
            self.budget.total.fetch_sub(before.min(wire), Relaxed);
        }
    }

    /// `n` bytes were read from the session's socket.
    fn add(&self, n: usize) {
        // Total first (see `Budget::total`).
        let total = self.budget.total.fetch_add(n, Relaxed) + n;
        self.held.fetch_add(n, Relaxed);
        if total > self.budget.limit() {
            self.budget.enforce();
        }
    }

    /// Returns everything this account holds to the budget; how much that was.
    fn take_all(&self) -> usize {
        let held = self.held.swap(0, Relaxed);
        self.budget.total.fetch_sub(held, Relaxed);
        held
    }

    /// Marks the session evicted, returns its bytes and wakes it to close.
    fn evict(&self) -> usize {
        if self.evicted.swap(true, Relaxed) {
            return 0;
        }
        let freed = self.take_all();
        self.budget.closed.inc();
        tracing::debug!(
            held = freed,
            limit = self.budget.limit(),
            "server.max_buffered exceeded: closing the session holding the most (1013)"
        );
        self.wake.wake();
        freed
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.take_all();
        self.budget.registry().remove(self.slot);
    }
}

/// [`Account::evicted`]: a reference, so a session holds it at no cost and
/// nothing is allocated or registered per session beyond the account.
pub struct Evicted<'a>(&'a Account);

impl Future for Evicted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check: an eviction between the two still
        // finds the waker (it sets the flag before waking).
        self.0.wake.register(cx.waker());
        if self.0.is_evicted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A session's socket as its codec reads it: every byte read is charged to
/// the account; once the account is evicted nothing more reaches the codec.
pub struct Metered<S> {
    io: S,
    account: Arc<Account>,
}

impl<S> Metered<S> {
    pub fn new(io: S, account: Arc<Account>) -> Self {
        Self { io, account }
    }
}

impl<S: AsyncRead + Unpin> Metered<S> {
    /// An evicted session's reads: what the client sends is dropped unread
    /// by the codec (it holds nothing more), until the client closes, which
    /// the codec then sees as the end of the stream. Draining lets the
    /// session close without a reset that could destroy its 1013 close frame
    /// before the client reads it (see `apps::codec::close_evicted`).
    fn discard(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut scratch = [0u8; 8192];
        // A client sending faster than this drains must not hold the thread.
        for _ in 0..DISCARD_READS {
            let mut b = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut b))?;
            if b.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Reads an evicted session drains per poll before yielding.
const DISCARD_READS: usize = 16;

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.account.is_evicted() {
            return this.discard(cx);
        }
        let n = if buf.remaining() > MAX_READ {
            // Only while a large message grew the codec's buffer: read into
            // a bounded, initialised window of it. (Initialising costs a
            // memset of what this read did not fill; it keeps this crate
            // free of `unsafe`.)
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(MAX_READ));
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            buf.advance(n);
            n
        } else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            buf.filled().len() - before
        };
        if n > 0 {
            this.account.add(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    // Not vectored, though the socket is: the codec writes from one
    // contiguous buffer, and tokio-util asks a vectored writer for its chunks
    // through 64 `IoSlice`s it first fills with empty ones, to hand one of
    // them to `writev`: about 170 instructions a flush, 5% of an echoed
    // message at depth 1 (callgrind). A plain `write` of the one chunk is the
    // same syscall work.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn budget(limit: u64) -> (Arc<Budget>, Counter) {
        let closed = Counter::default();
        (Budget::new(limit, closed.clone()), closed)
    }

    #[test]
    fn messages_reset_and_control_frames_subtract_their_wire_size() {
        let (b, _) = budget(1 << 20);
        let a = b.open();
        a.add(1000);
        assert_eq!((a.held(), b.buffered()), (1000, 1000));
        // A ping (6 + 4 bytes on the wire) between fragments: the message in
        // progress stays counted.
        a.control_delivered(4);
        assert_eq!((a.held(), b.buffered()), (990, 990));
        a.message_delivered();
        assert_eq!((a.held(), b.buffered()), (0, 0));
        // A control frame read after the count was reset takes nothing.
        a.control_delivered(125);
        assert_eq!((a.held(), b.buffered()), (0, 0));
        a.add(3);
        a.control_delivered(0);
        assert_eq!((a.held(), b.buffered()), (0, 0));
    }

    #[test]
    fn a_dropped_account_returns_its_bytes() {
        let (b, closed) = budget(1 << 20);
        let a = b.open();
        let c = b.open();
        a.add(700);
        c.add(300);
        assert_eq!((b.buffered(), b.sessions()), (1000, 2));
        drop(a);
        assert_eq!((b.buffered(), b.sessions()), (300, 1));
        drop(c);
        assert_eq!((b.buffered(), b.sessions()), (0, 0));
        assert_eq!(closed.get(), 0);
    }

    #[test]
    fn over_the_limit_the_largest_holders_are_evicted_until_the_excess_is_covered() {
        let (b, closed) = budget(1000);
        let big = b.open();
        let mid = b.open();
        let small = b.open();
        big.add(500);
        mid.add(300);
        small.add(100);
        assert_eq!(closed.get(), 0);
        // 1 150 bytes: 150 over. The largest alone covers it; the reader
        // (`small`) is not among the largest and keeps going.
        small.add(250);
        assert!(big.is_evicted());
        // The session waiting on its eviction sees it (the future is ready).
        assert!(futures_util::FutureExt::now_or_never(big.evicted()).is_some());
        assert!(futures_util::FutureExt::now_or_never(mid.evicted()).is_none());
        assert!(!mid.is_evicted() && !small.is_evicted());
        assert_eq!((big.held(), b.buffered(), closed.get()), (0, 650, 1));
        // Now the reader makes itself the largest: 1 250 bytes, 250 over.
        small.add(600);
        assert!(small.is_evicted() && !mid.is_evicted());
        assert_eq!((b.buffered(), closed.get()), (300, 2));
        // An excess larger than the largest holder takes the next ones too.
        let (b, closed) = budget(100);
        let accounts: Vec<_> = (0..4).map(|_| b.open()).collect();
        for (a, n) in accounts.iter().zip([40, 30, 20, 10]) {
            a.add(n);
        }
        // 175 bytes, 75 over: the reader is now the largest (85) and alone covers it.
        accounts[3].add(75);
        let evicted: Vec<bool> = accounts.iter().map(|a| a.is_evicted()).collect();
        assert_eq!(evicted, [false, false, false, true]);
        // 110 + 30 + 20 = 160 bytes, 60 over: the largest (110) goes.
        accounts[0].add(70);
        let evicted: Vec<bool> = accounts.iter().map(|a| a.is_evicted()).collect();
        assert_eq!(evicted, [true, false, false, true]);
        assert_eq!((b.buffered(), closed.get()), (50, 2));
        // An evicted account's later drop changes nothing twice.
        drop(accounts);
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn the_registry_reuses_the_slots_of_ended_sessions() {
        let (b, _) = budget(100);
        let accounts: Vec<_> = (0..3).map(|_| b.open()).collect();
        let [first, middle, last] = <[_; 3]>::try_from(accounts).ok().expect("three");
        drop(middle);
        assert_eq!(b.sessions(), 2);
        // The new account takes the freed slot: the registry does not grow.
        let newer = b.open();
        assert_eq!((b.sessions(), b.registry().slots.len()), (3, 3));
        // Every live account, the one in the reused slot included, can be
        // found and evicted.
        newer.add(60);
        first.add(30);
        last.add(20);
        assert!(newer.is_evicted() && !first.is_evicted() && !last.is_evicted());
    }

    #[tokio::test]
    async fn an_eviction_wakes_the_session_waiting_for_it() {
        let (b, _) = budget(10);
        let a = b.open();
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.evicted().await }
        });
        // The task is parked on its account (nothing to wake it yet) ...
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // ... until the budget evicts it.
        a.add(11);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("task");
    }

    #[test]
    fn a_lower_limit_applies_at_the_next_read() {
        let (b, closed) = budget(1 << 20);
        let a = b.open();
        a.add(4096);
        b.set_limit(4096);
        assert!(!a.is_evicted());
        a.add(1);
        assert!(a.is_evicted());
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test]
    async fn metered_counts_reads_and_stops_reading_once_evicted() {
        let (b, _) = budget(100 << 10);
        let a = b.open();
        let (client, server) = tokio::io::duplex(256 << 10);
        let mut m = Metered::new(server, a.clone());
        let mut client = client;
        client.write_all(&[7u8; 1000]).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = m.read(&mut buf).await.expect("read");
        assert_eq!((n, a.held()), (1000, 1000));
        // A read never takes more than `MAX_READ`, whatever room it is given.
        client
            .write_all(&vec![1u8; 200 << 10])
            .await
            .expect("write");
        let mut big = vec![0u8; 300 << 10];
        let n = m.read(&mut big).await.expect("read");
        assert_eq!(n, MAX_READ);
        assert_eq!(a.held(), 1000 + MAX_READ);
        // Past 100 KiB: evicted, and nothing more reaches the reader: what
        // arrives is dropped until the peer closes, which reads as the end.
        let n = m.read(&mut big).await.expect("read");
        assert!(a.is_evicted(), "{n} more bytes read");
        assert_eq!(b.buffered(), 0);
        client.write_all(&[3u8; 1000]).await.expect("write");
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), m.read(&mut big));
        assert!(more.await.is_err(), "an evicted socket hands nothing on");
        drop(client);
        let end = m.read(&mut big).await.expect("read");
        assert_eq!((end, a.held(), b.buffered()), (0, 0, 0));
    }
}
