//! The byte splice between real TCP sockets, where large messages go by
//! `splice(2)` through a pooled pipe and small ones are copied.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{splice, SpliceEnd, SPLICE_FROM};
use crate::rewind::Rewind;

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (c, l.accept().await.unwrap().0)
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
        far.read_exact(&mut buf).await.unwrap();
        assert!(buf == msg, "message {i} ({len} B) arrived changed");
        got.extend_from_slice(&buf);
    }
    got
}

/// Large messages both ways cross without a copy, small ones by the copy,
/// in order and intact; the stats count both.
#[tokio::test]
async fn large_messages_go_by_the_kernel_small_ones_by_copy() {
    let (mut client_far, client) = pair().await;
    let (upstream, mut upstream_far) = pair().await;
    let idle = Duration::from_secs(30);
    let session = tokio::spawn(splice(client, upstream, idle, CancellationToken::new()));
    let total: usize = sizes().iter().sum();
    let up = ping_through(&mut client_far, &mut upstream_far, 1).await;
    let down = ping_through(&mut upstream_far, &mut client_far, 9).await;
    assert_eq!((up.len(), down.len()), (total, total));
    upstream_far.shutdown().await.unwrap();
    assert_eq!(client_far.read(&mut [0u8; 1]).await.unwrap(), 0);
    let stats = tokio::time::timeout(idle, session).await.unwrap().unwrap();
    assert_eq!(stats.end, SpliceEnd::Closed);
    assert_eq!(
        (stats.bytes_in, stats.bytes_out),
        (total as u64, total as u64)
    );
    // Every message after the first large one each way goes by the kernel
    // while reads stay large; the small ones, and the first large read, do not.
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
    let (mut client_far, client) = pair().await;
    let (upstream, mut upstream_far) = pair().await;
    let idle = Duration::from_secs(30);
    let session = tokio::spawn(splice(client, upstream, idle, CancellationToken::new()));
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
        let n = upstream_far.read(&mut buf).await.unwrap();
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
    let stats = tokio::time::timeout(idle, session).await.unwrap().unwrap();
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
    let idle = Duration::from_secs(30);
    let session = tokio::spawn(splice(client, upstream, idle, CancellationToken::new()));
    let behind = pattern(50_000, 6);
    client_far.write_all(&behind).await.unwrap();
    let mut got = vec![0; ahead.len() + behind.len()];
    upstream_far.read_exact(&mut got).await.unwrap();
    assert!(
        got[..ahead.len()] == ahead[..],
        "the bytes in front came out changed"
    );
    assert!(
        got[ahead.len()..] == behind[..],
        "the socket's bytes came out changed"
    );
    drop(upstream_far);
    let stats = tokio::time::timeout(idle, session).await.unwrap().unwrap();
    assert_eq!(stats.bytes_in, got.len() as u64);
}
