//! The byte splice between real TCP sockets, where large messages go by
//! `splice(2)` through a pooled pipe and small ones are copied.

use std::future::Future;
use std::time::Duration;

use crate::shutdown::Stop;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio::task::JoinHandle;

use super::{splice, SpliceEnd, SpliceStats, SPLICE_FROM};
use crate::rewind::Rewind;

/// `f`, or a failed test if it takes longer than a session could.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the splice stalled")
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (c, l.accept().await.unwrap().0)
}

/// How long a test's session may sit idle: longer than any test runs.
const IDLE: Duration = Duration::from_secs(30);

/// A splice between two fresh socket pairs: the client's far end, the
/// upstream's far end, and the session.
async fn start() -> (TcpStream, TcpStream, JoinHandle<SpliceStats>) {
    let (client_far, client) = pair().await;
    let (upstream, upstream_far) = pair().await;
    let session = tokio::spawn(splice(client, upstream, IDLE, Stop::default()));
    (client_far, upstream_far, session)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// Messages of sizes on both sides of the switch, written as separate
/// writes, each waited for at the far end so that each is its own read.
fn sizes() -> Vec<usize> {
    vec![
        40,
        20_000,
        64 * 1024 + 7,
        100,
        30,
        16_400,
        16_400,
        5,
        200_000,
        9,
    ]
}

/// Sends each message and waits for it to come out at `far`, so that the
/// splice sees one message per read; returns all bytes seen at `far`.
async fn ping_through(near: &mut TcpStream, far: &mut TcpStream, seed: u8) -> Vec<u8> {
    let mut got = Vec::new();
    for (i, len) in sizes().into_iter().enumerate() {
        let msg = pattern(len, seed.wrapping_add(i as u8));
        near.write_all(&msg).await.unwrap();
        let mut buf = vec![0; len];
        within(far.read_exact(&mut buf)).await.unwrap();
        assert!(buf == msg, "message {i} ({len} B) arrived changed");
        got.extend_from_slice(&buf);
    }
    got
}

/// Large messages both ways cross without a copy, small ones by the copy,
/// in order and intact; the stats count both.
#[tokio::test]
async fn large_messages_go_by_the_kernel_small_ones_by_copy() {
    let (mut client_far, mut upstream_far, session) = start().await;
    let total: usize = sizes().iter().sum();
    let up = ping_through(&mut client_far, &mut upstream_far, 1).await;
    let down = ping_through(&mut upstream_far, &mut client_far, 9).await;
    assert_eq!((up.len(), down.len()), (total, total));
    upstream_far.shutdown().await.unwrap();
    assert_eq!(client_far.read(&mut [0u8; 1]).await.unwrap(), 0);
    let stats = within(session).await.unwrap();
    assert_eq!(stats.end, SpliceEnd::Closed);
    assert_eq!(
        (stats.bytes_in, stats.bytes_out),
        (total as u64, total as u64)
    );
    // What follows a full read of a large message goes by the kernel, while
    // splices stay large; the small messages never do.
    let small: usize = sizes().iter().filter(|&&n| n < SPLICE_FROM).sum();
    assert!(stats.zero_copy > 0, "nothing went by splice(2)");
    assert!(
        stats.zero_copy <= 2 * (total - small) as u64,
        "{} bytes by splice(2) of {} large",
        stats.zero_copy,
        2 * (total - small)
    );
}

/// A writer that takes its bytes slowly leaves them in the pipe, and no
/// more is read meanwhile; everything still arrives in order.
#[tokio::test]
async fn a_slow_reader_gets_every_byte_in_order() {
    let (mut client_far, mut upstream_far, session) = start().await;
    let data = pattern(8 * 1024 * 1024, 3);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client_far.write_all(&sent).await.unwrap();
        client_far.shutdown().await.unwrap();
        client_far
    });
    // Small reads, each handing the thread back: the socket buffers fill
    // and the splice's pipe waits on a full socket, part written.
    let mut got = Vec::with_capacity(data.len());
    let mut buf = [0u8; 1500];
    loop {
        let n = within(upstream_far.read(&mut buf)).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        tokio::task::yield_now().await;
    }
    assert!(
        got == data,
        "bytes differ after {} of {}",
        got.len(),
        data.len()
    );
    let mut client_far = writer.await.unwrap();
    upstream_far.shutdown().await.unwrap();
    assert_eq!(client_far.read(&mut [0u8; 1]).await.unwrap(), 0);
    let stats = within(session).await.unwrap();
    assert_eq!(stats.bytes_in, data.len() as u64);
    assert!(stats.zero_copy > 0, "nothing went by splice(2)");
}

/// Bytes read ahead of the socket (the handshake's leftovers) are copied
/// out before the splice reads the socket itself.
#[tokio::test]
async fn bytes_put_back_in_front_go_first() {
    let (mut client_far, client) = pair().await;
    let (upstream, mut upstream_far) = pair().await;
    let ahead = pattern(100_000, 5);
    let client = Rewind::new(Bytes::from(ahead.clone()), client);
    let session = tokio::spawn(splice(client, upstream, IDLE, Stop::default()));
    let behind = pattern(50_000, 6);
    client_far.write_all(&behind).await.unwrap();
    let mut got = vec![0; ahead.len() + behind.len()];
    within(upstream_far.read_exact(&mut got)).await.unwrap();
    assert!(
        got[..ahead.len()] == ahead[..],
        "the bytes in front came out changed"
    );
    assert!(
        got[ahead.len()..] == behind[..],
        "the socket's bytes came out changed"
    );
    drop(upstream_far);
    let stats = within(session).await.unwrap();
    assert_eq!(stats.bytes_in, got.len() as u64);
}

/// Starts a splice between two fresh pairs and puts its client → upstream
/// direction into kernel mode: a full read, then a full splice, both
/// delivered. Returns the far ends and the session.
async fn in_kernel_mode() -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<super::SpliceStats>,
) {
    let (mut client_far, mut upstream_far, session) = start().await;
    let bulk = pattern(2 * super::READ_CHUNK, 4);
    client_far.write_all(&bulk).await.unwrap();
    let mut got = vec![0; bulk.len()];
    within(upstream_far.read_exact(&mut got)).await.unwrap();
    assert!(got == bulk, "the bulk came out changed");
    (client_far, upstream_far, session)
}

/// `splice(2)` stops for good at TCP urgent data, returning "nothing" (or
/// 0 once a FIN follows); a plain read steps over the urgent byte, as the
/// copy path always did. Neither a stall nor a false EOF: every byte after
/// it arrives, then the EOF.
#[tokio::test]
async fn urgent_data_in_kernel_mode_neither_stalls_nor_ends_the_session() {
    let (mut client_far, mut upstream_far, session) = in_kernel_mode().await;
    rustix::net::send(&client_far, b"!", rustix::net::SendFlags::OOB).unwrap();
    let after = pattern(20_000, 8);
    client_far.write_all(&after).await.unwrap();
    client_far.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(upstream_far.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got.len(), after.len(), "bytes after the urgent byte");
    assert!(
        got == after,
        "the bytes after the urgent byte came out changed"
    );
    upstream_far.shutdown().await.unwrap();
    let stats = within(session).await.unwrap();
    assert!(stats.zero_copy > 0, "the direction never went by splice(2)");
}

/// The upstream's EOF, met while its direction moves by `splice(2)`, ends
/// the session once everything before it is with the client.
#[tokio::test]
async fn the_upstreams_eof_in_kernel_mode_ends_the_session_after_its_bytes() {
    let (mut client_far, mut upstream_far, session) = start().await;
    let down = pattern(1_000_000, 2);
    let sent = down.clone();
    let writer = tokio::spawn(async move {
        upstream_far.write_all(&sent).await.unwrap();
        upstream_far.shutdown().await.unwrap();
        upstream_far
    });
    let mut got = Vec::new();
    within(client_far.read_to_end(&mut got)).await.unwrap();
    assert!(
        got == down,
        "{} of {} bytes, or changed",
        got.len(),
        down.len()
    );
    let stats = within(session).await.unwrap();
    assert_eq!(stats.end, SpliceEnd::Closed);
    assert!(stats.zero_copy > 0, "nothing went by splice(2)");
    drop(writer.await.unwrap());
}

/// Segments `s` has received so far (`TCP_INFO`).
fn segments_in(s: &TcpStream) -> u32 {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel fills at most `len` bytes of a buffer that size; a
    // shorter answer leaves the rest zeroed.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    // SAFETY: zeroed, then filled by the kernel: every field is a number.
    unsafe { info.assume_init() }.tcpi_segs_in
}

/// The upstream's last bytes with its FIN behind them (a WebSocket server's
/// close frame, then its close) reach the client in one segment too: the
/// bytes are written held back (`MSG_MORE`) and the shutdown sends them with
/// the FIN, instead of a segment for each (one more for the client's ACK).
#[tokio::test]
async fn the_upstreams_last_bytes_go_out_with_its_fin() {
    let (mut client_far, upstream_far, session) = start().await;
    let close = [0x88u8, 0x02, 0x03, 0xe8];
    let before = segments_in(&client_far);
    // Sent as a server would that closes right after its last write, in one
    // segment so that the splice meets both at once.
    rustix::net::send(&upstream_far, &close, rustix::net::SendFlags::MORE).unwrap();
    rustix::net::shutdown(&upstream_far, rustix::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    within(client_far.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, close, "the last bytes came out changed");
    assert_eq!(
        segments_in(&client_far) - before,
        1,
        "the last bytes and the FIN came in separate segments"
    );
    let stats = within(session).await.unwrap();
    assert_eq!(stats.end, SpliceEnd::Closed);
    drop(upstream_far);
}
