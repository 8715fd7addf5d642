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
//! close with 1013 (see `apps::codec::BUDGET_CLOSE`).
//!
//! A session holding no more than [`UNCOUNTED`] bytes is left out of the
//! total: those bytes sit in the codec's read buffer, which rests at that size
//! in every session anyway, so they cost no memory beyond the idle session's.
//! Small messages then touch only their own session's count: the shared total,
//! a cache line every worker thread writes, moves only for sessions holding
//! more. Per read this costs an atomic addition (a second one and a load when
//! what the total counts changed); per delivered message a load (and a swap
//! when the count was not already zero, a subtraction when it was counted).
//! No lock outside session start, session end and eviction.
//!
//! Every idle session pays for its account, so it is kept small: one 64-byte
//! allocation and an 8-byte slot in the registry (`Registry`); a drain
//! is not the budget's business (sessions watch their drain token themselves).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};

use futures_util::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes from a session's socket. The accounting forgets at
/// most one read per session (see the module doc), so this bounds the error;
/// 64 KiB reads cost nothing measurable against larger ones.
pub const MAX_READ: usize = 64 * 1024;

/// Bytes a session may hold without the total counting them: the size the
/// apps' codec read buffer rests at (`apps::codec` asserts the two agree),
/// held by every session whether filled or not.
pub const UNCOUNTED: usize = 512;

/// What the total counts of a session holding `held` bytes: all of them once
/// past [`UNCOUNTED`], none before.
fn counted(held: usize) -> isize {
    if held > UNCOUNTED {
        isize::try_from(held).unwrap_or(isize::MAX)
    } else {
        0
    }
}

/// Wire size of a client control frame's header: 2 bytes, then the mask (a
/// control payload is at most 125 bytes, so no extended length).
const CONTROL_HEADER: usize = 6;

/// The budget shared by every app session of the process.
pub struct Budget {
    /// `server.max_buffered` in bytes (changed by reload).
    limit: AtomicUsize,
    /// What the accounts count ([`counted`] of each one's bytes), once the
    /// changes in flight have landed: each change to an account's count
    /// moves it by the difference that change made, so changes may land in
    /// any order. Signed, so that one landing early (an eviction's
    /// subtraction before the addition of the read it raced with) dips it
    /// below zero for a moment instead of wrapping it.
    total: AtomicIsize,
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
            total: AtomicIsize::new(0),
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

    /// Bytes held now by the sessions holding more than [`UNCOUNTED`]
    /// (`wsgate_ws_buffered_bytes`).
    pub fn buffered(&self) -> usize {
        usize::try_from(self.total.load(Relaxed)).unwrap_or(0)
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
        let excess = self.buffered().saturating_sub(self.limit());
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
            .filter(|(held, _)| counted(*held) > 0)
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
            self.recount(before, before.saturating_sub(wire));
        }
    }

    /// The codec holds `n` bytes more than it read (a compressed fragment's
    /// inflated payload): counted until the message is delivered, as read
    /// bytes are.
    pub fn hold(&self, n: usize) {
        if n > 0 {
            self.add(n);
        }
    }

    /// `n` bytes were read from the session's socket.
    fn add(&self, n: usize) {
        let before = self.held.fetch_add(n, Relaxed);
        let after = before.saturating_add(n);
        if after <= UNCOUNTED {
            return;
        }
        if let Some(total) = self.recount(before, after) {
            if usize::try_from(total).is_ok_and(|t| t > self.budget.limit()) {
                self.budget.enforce();
            }
        }
    }

    /// Returns everything this account holds to the budget; how much of it
    /// the total counted.
    fn take_all(&self) -> usize {
        let held = self.held.swap(0, Relaxed);
        if held <= UNCOUNTED {
            return 0;
        }
        self.recount(held, 0);
        held
    }

    /// Moves the total by what this account's count going from `before` to
    /// `after` changed in it; the new total, if it moved.
    fn recount(&self, before: usize, after: usize) -> Option<isize> {
        let change = counted(after) - counted(before);
        (change != 0).then(|| self.budget.total.fetch_add(change, Relaxed) + change)
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
#[path = "budget_tests.rs"]
mod tests;
