//! The echo session's unit tests: its timers, the deflate offer it keeps,
//! and the echo loop against a raw socket (batches, drain, write stalls).

use super::*;

#[test]
fn one_timer_serves_pings_and_the_idle_deadline() {
    let secs = Duration::from_secs;
    let start = tokio::time::Instant::now();
    let mut t = Timers::new(secs(10), secs(25), start);
    assert_eq!(t.next(), start + secs(10));
    assert_eq!(t.fired(start + secs(10)), Due::Ping);
    assert_eq!(t.next(), start + secs(20));
    // A message at 15 s moves the idle deadline to 40 s; the timer set for
    // 20 s finds a ping due, then 30 s, then the idle close at 40 s.
    t.seen(start + secs(15));
    assert_eq!(t.fired(start + secs(20)), Due::Ping);
    assert_eq!(t.fired(start + secs(30)), Due::Ping);
    assert_eq!(t.next(), start + secs(40));
    assert_eq!(t.fired(start + secs(40)), Due::Idle);
    // Without pings the timer is the idle deadline alone, and an early
    // wake-up (the deadline moved) does nothing.
    let mut quiet = Timers::new(Duration::ZERO, secs(5), start);
    assert_eq!(quiet.next(), start + secs(5));
    quiet.seen(start + secs(3));
    assert_eq!(quiet.fired(start + secs(5)), Due::Nothing);
    assert_eq!(quiet.next(), start + secs(8));
}

/// Runs the echo loop on `server` until it ends, as a session with pings
/// off, a minute's idle timeout, `max` bytes per message and `drain`.
async fn echo_on(server: tokio::net::TcpStream, max: u64, drain: Stop) -> End {
    use crate::config::{AppKind, RouteConfig};
    let opts = super::super::codec::options(max, false);
    let ws = yawc::WebSocket::from_stream(server, yawc::Role::Server, opts).unwrap();
    let route = crate::router::Route::new(0, RouteConfig::test_app("/echo", AppKind::Echo));
    let access = crate::access::Access::new(Arc::new(crate::metrics::Metrics::new()), false);
    let mut log = SessionLog::new(&access, &route, "app", [127, 0, 0, 1].into());
    let account = Budget::new(1 << 30, Default::default()).open();
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut ws = Messages::new(ws.into_streaming(), account.clone(), max, false);
    let now = tokio::time::Instant::now();
    let mut timers = Timers::new(Duration::ZERO, Duration::from_secs(60), now);
    echo(&mut ws, &mut timers, &account, &drain, &mut log).await
}

/// A connected pair on loopback: the client's socket, the server's.
async fn pair(client_rcvbuf: Option<u32>) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = client_rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let client = socket.connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (client, server)
}

/// `n` masked (key 0) binary frames of 4 bytes, numbered.
fn small_frames(n: u32) -> Vec<u8> {
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend_from_slice(&[0x82, 0x84, 0, 0, 0, 0]);
        burst.extend_from_slice(&i.to_be_bytes());
    }
    burst
}

/// The echo loop polls the read first. A client whose frames are always
/// ready must still meet the drain, once the batch in hand is echoed,
/// not only after it stops sending. Fails without the checks after each
/// batch: all 1 000 frames come back before the drain is seen.
#[tokio::test]
async fn a_client_that_never_pauses_still_meets_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = pair(None).await;
    // All sent before the session reads: a read finds a frame ready every time.
    client.write_all(&small_frames(1000)).await.unwrap();
    let drain = Stop::default();
    drain.cancel();
    let end = tokio::time::timeout(Duration::from_secs(10), echo_on(server, 1024, drain))
        .await
        .expect("the session ends");
    assert!(matches!(end, End::Drained), "{end:?}");
    // Everything the session flushed is in the client's receive queue
    // (loopback delivers within the write): take the first echo, then
    // all that is there without waiting.
    let mut echoed = vec![0u8; 6];
    client.read_exact(&mut echoed).await.unwrap();
    let mut more = [0u8; 8192];
    while let Ok(n) = client.try_read(&mut more) {
        assert!(n > 0, "the session closed its socket");
        echoed.extend_from_slice(&more[..n]);
    }
    // Unmasked echoes: 2 bytes of header and the 4 of payload.
    let frames = echoed.len() / 6;
    assert!(
        frames <= MAX_BATCH,
        "{frames} frames echoed before the drain"
    );
}

/// A turn that stops at [`MAX_BATCH`] frames leaves the rest in the codec's
/// buffer, with no wake-up to come from the socket: the next turn must read
/// them at once. Fails (stuck after the first 64 echoes) if that turn waits
/// for the socket as after a turn that found it empty.
#[tokio::test]
async fn a_burst_longer_than_a_batch_comes_back_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = pair(None).await;
    let session = tokio::spawn(echo_on(server, 1024, Stop::default()));
    client.write_all(&small_frames(1000)).await.unwrap();
    let mut echoed = vec![0u8; 6 * 1000];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut echoed))
        .await
        .expect("every frame echoed")
        .unwrap();
    let last = &echoed[6 * 999..];
    assert_eq!(last, [0x82, 0x04, 0, 0, 0x03, 0xe7]);
    session.abort();
}

/// A frame that arrives while the session waits to write a large echo wakes
/// it then, and that wake-up is used by the write; once the write is done the
/// next turn must read the socket, not wait for it. Fails (the small frame
/// never answered) if a turn whose flush had to wait were taken as quiet.
#[tokio::test]
async fn a_frame_sent_while_an_echo_waits_to_be_written_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // More than the server's send buffer can take (4 MiB here at most) and
    // the client's small receive window: the echo's flush has to wait.
    const BIG: usize = 12 << 20;
    let (mut client, server) = pair(Some(4096)).await;
    let session = tokio::spawn(echo_on(server, BIG as u64, Stop::default()));
    let mut frame = vec![0x82, 0xff];
    frame.extend_from_slice(&(BIG as u64).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.resize(frame.len() + BIG, 7);
    let wait = Duration::from_secs(10);
    tokio::time::timeout(wait, client.write_all(&frame))
        .await
        .expect("the session reads the large frame")
        .unwrap();
    // The echo has begun: the session is in its flush.
    let mut head = [0u8; 10];
    tokio::time::timeout(wait, client.read_exact(&mut head))
        .await
        .expect("the echo begins")
        .unwrap();
    assert_eq!(head[..2], [0x82, 0x7f]);
    client.write_all(&small_frames(1)).await.unwrap();
    let mut rest = vec![0u8; BIG + 6];
    tokio::time::timeout(wait, client.read_exact(&mut rest))
        .await
        .expect("the large echo and the small one")
        .unwrap();
    assert!(rest[..BIG].iter().all(|&b| b == 7));
    assert_eq!(rest[BIG..], [0x82, 0x04, 0, 0, 0, 0]);
    session.abort();
}

/// Every idle session holds its task's future. A by-value codec once made
/// it 6.9 KB (the codec stored three times, the whole future twice); it is
/// 664 bytes now (in this test's build; 736 before a turn became one poll),
/// the session's one timer and its drain and eviction waits included (they
/// replaced a boxed ping interval and per-turn futures). tokio stores a task
/// with about 100 bytes of its own (header, scheduler handle, trailer) and
/// the tracker's token, in a block rounded up to 128 bytes: 776 keeps the
/// 896-byte block an idle session took at 736 (944 took 1 152, heaptrack on
/// the release build). This fails if a change brings copies back or nears
/// the next block.
#[test]
fn the_session_task_stays_small() {
    fn task_size<F>(
        _: impl FnOnce(Box<super::super::codec::Upgrade>, Timers, SessionLog) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }
    let (account, slot, stop) = (None::<Arc<Account>>, None::<Arc<ConnSlot>>, None::<Stops>);
    let size = task_size(|up, timers, log| {
        crate::shutdown::catch_panics(super::session(
            up,
            timers,
            account.unwrap(),
            log,
            slot.unwrap(),
            stop.unwrap(),
        ))
    });
    assert!(size <= 776, "echo session task is {size} bytes");
}
