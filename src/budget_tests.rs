//! Unit tests of the budget: counting, eviction, the meter over an
//! in-memory stream, and the total's exactness under concurrent changes.

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
fn a_session_holding_little_is_not_counted() {
    let (b, _) = budget(1 << 20);
    let a = b.open();
    let c = b.open();
    a.add(UNCOUNTED);
    c.add(100);
    assert_eq!((a.held(), c.held(), b.buffered()), (UNCOUNTED, 100, 0));
    // One byte more and all of it counts; back under, none of it.
    a.add(1);
    assert_eq!(b.buffered(), UNCOUNTED + 1);
    a.control_delivered(0);
    assert_eq!((a.held(), b.buffered()), (UNCOUNTED - 5, 0));
    a.add(100);
    assert_eq!(b.buffered(), UNCOUNTED + 95);
    a.message_delivered();
    c.message_delivered();
    assert_eq!((a.held(), c.held(), b.buffered()), (0, 0, 0));
    // Over the limit, the sessions the total counts cover the excess: one
    // it leaves out is not among those evicted.
    let (b, closed) = budget(1000);
    let small = b.open();
    let big = b.open();
    small.add(UNCOUNTED);
    big.add(1001);
    assert!(big.is_evicted() && !small.is_evicted());
    assert_eq!((b.buffered(), closed.get()), (0, 1));
}

/// Sessions on several threads reading, delivering and being evicted at
/// once: whatever order their changes land in, the total ends at what
/// the accounts hold (here nothing), neither leaked nor wrapped.
#[test]
fn the_total_stays_exact_under_concurrent_changes() {
    let (b, closed) = budget(16 << 10);
    std::thread::scope(|scope| {
        for t in 0..4usize {
            let b = &b;
            scope.spawn(move || {
                let accounts: Vec<_> = (0..8).map(|_| b.open()).collect();
                for i in 0..20_000usize {
                    let a = &accounts[(i * 7 + t) % accounts.len()];
                    match (i + t) % 5 {
                        0..=2 => a.add((i * 131 + t * 17) % 3000),
                        3 => a.control_delivered(i % 126),
                        _ => a.message_delivered(),
                    }
                    let total = b.total.load(Relaxed);
                    assert!(total > -(1 << 30) && total < 1 << 30, "{total}");
                }
            });
        }
    });
    assert!(closed.get() > 0, "the load went over the limit");
    assert_eq!((b.total.load(Relaxed), b.sessions()), (0, 0));
}

#[test]
fn a_dropped_account_returns_its_bytes() {
    let (b, closed) = budget(1 << 20);
    let a = b.open();
    let c = b.open();
    a.add(700);
    c.add(600);
    assert_eq!((b.buffered(), b.sessions()), (1300, 2));
    drop(a);
    assert_eq!((b.buffered(), b.sessions()), (600, 1));
    drop(c);
    assert_eq!((b.buffered(), b.sessions()), (0, 0));
    assert_eq!(closed.get(), 0);
}

#[test]
fn over_the_limit_the_largest_holders_are_evicted_until_the_excess_is_covered() {
    let (b, closed) = budget(10_000);
    let big = b.open();
    let mid = b.open();
    let small = b.open();
    big.add(5000);
    mid.add(3000);
    small.add(1000);
    assert_eq!(closed.get(), 0);
    // 11 500 bytes: 1 500 over. The largest alone covers it; the reader
    // (`small`) is not among the largest and keeps going.
    small.add(2500);
    assert!(big.is_evicted());
    // The session waiting on its eviction sees it (the future is ready).
    assert!(futures_util::FutureExt::now_or_never(big.evicted()).is_some());
    assert!(futures_util::FutureExt::now_or_never(mid.evicted()).is_none());
    assert!(!mid.is_evicted() && !small.is_evicted());
    assert_eq!((big.held(), b.buffered(), closed.get()), (0, 6500, 1));
    // Now the reader makes itself the largest: 12 500 bytes, 2 500 over.
    small.add(6000);
    assert!(small.is_evicted() && !mid.is_evicted());
    assert_eq!((b.buffered(), closed.get()), (3000, 2));
    // An excess larger than the largest holder takes the next ones too.
    let (b, closed) = budget(10_000);
    let accounts: Vec<_> = (0..4).map(|_| b.open()).collect();
    for (a, n) in accounts.iter().zip([4000, 3000, 2000, 1000]) {
        a.add(n);
    }
    // 17 500 bytes, 7 500 over: the reader is now the largest (8 500)
    // and alone covers it.
    accounts[3].add(7500);
    let evicted: Vec<bool> = accounts.iter().map(|a| a.is_evicted()).collect();
    assert_eq!(evicted, [false, false, false, true]);
    // 11 000 + 3 000 + 2 000 = 16 000 bytes, 6 000 over: the largest goes.
    accounts[0].add(7000);
    let evicted: Vec<bool> = accounts.iter().map(|a| a.is_evicted()).collect();
    assert_eq!(evicted, [true, false, false, true]);
    assert_eq!((b.buffered(), closed.get()), (5000, 2));
    // An evicted account's later drop changes nothing twice.
    drop(accounts);
    assert_eq!(b.buffered(), 0);
}

#[test]
fn the_registry_reuses_the_slots_of_ended_sessions() {
    let (b, _) = budget(10_000);
    let accounts: Vec<_> = (0..3).map(|_| b.open()).collect();
    let [first, middle, last] = <[_; 3]>::try_from(accounts).ok().expect("three");
    drop(middle);
    assert_eq!(b.sessions(), 2);
    // The new account takes the freed slot: the registry does not grow.
    let newer = b.open();
    assert_eq!((b.sessions(), b.registry().slots.len()), (3, 3));
    // Every live account, the one in the reused slot included, can be
    // found and evicted.
    newer.add(6000);
    first.add(3000);
    last.add(2000);
    assert!(newer.is_evicted() && !first.is_evicted() && !last.is_evicted());
}

#[tokio::test]
async fn an_eviction_wakes_the_session_waiting_for_it() {
    let (b, _) = budget(1000);
    let a = b.open();
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.evicted().await }
    });
    // The task is parked on its account (nothing to wake it yet) ...
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    // ... until the budget evicts it.
    a.add(1001);
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
