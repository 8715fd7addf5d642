//! Unit tests of the byte splice over in-memory streams (no socket: the
//! kernel paths are in `splice_tcp_tests`).

use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

impl SpliceSocket for DuplexStream {
    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
    fn tcp_to_read(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn spawn_splice(client: DuplexStream, upstream: DuplexStream) -> JoinHandle<SpliceStats> {
    tokio::spawn(splice(
        client,
        upstream,
        Duration::from_secs(30),
        Stop::default(),
    ))
}

/// Pipes of 1 KiB make every large write stall, so the backlog path runs
/// on nearly every read, in both directions at once.
#[tokio::test]
async fn copies_both_ways_through_slow_peers_intact() {
    let (client, mut client_far) = duplex(1024);
    let (upstream, mut upstream_far) = duplex(1024);
    let session = spawn_splice(client, upstream);
    let up_data = pattern(300_000, 1);
    let down_data = pattern(200_000, 7);
    let (up_send, down_send) = (up_data.clone(), down_data.clone());
    let client_side = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(client_far);
        let writer = tokio::spawn(async move {
            w.write_all(&up_send).await?;
            w.shutdown().await?;
            io::Result::Ok(w)
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await?;
        let w = writer.await.map_err(io::Error::other)??;
        client_far = r.unsplit(w);
        drop(client_far);
        io::Result::Ok(got)
    });
    let mut got_up = vec![0; up_data.len()];
    upstream_far.read_exact(&mut got_up).await.unwrap();
    // The client's EOF arrives after its data.
    assert_eq!(upstream_far.read(&mut [0u8; 1]).await.unwrap(), 0);
    upstream_far.write_all(&down_send).await.unwrap();
    upstream_far.shutdown().await.unwrap();
    let got_down = client_side.await.unwrap().unwrap();
    assert!(got_up == up_data, "client → upstream bytes differ");
    assert!(got_down == down_data, "upstream → client bytes differ");
    let stats = session.await.unwrap();
    assert_eq!(stats.end, SpliceEnd::Closed);
    assert_eq!(stats.bytes_in, up_data.len() as u64);
    assert_eq!(stats.bytes_out, down_data.len() as u64);
}

/// A reader that never reads must not make the splice buffer without
/// bound: at most one read's worth waits in the backlog.
#[tokio::test]
async fn stalled_writer_bounds_the_backlog() {
    let (client, mut client_far) = duplex(64 * 1024);
    let (upstream, upstream_far) = duplex(1024);
    let stop = Stop::default();
    let session = tokio::spawn(splice(
        client,
        upstream,
        Duration::from_secs(30),
        stop.clone(),
    ));
    // The client can write its pipe full plus what the splice read, then
    // stalls: a write that does not finish within the deadline means it did.
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        let write = client_far.write_all(&[0u8; 4096]);
        match tokio::time::timeout(Duration::from_millis(300), write).await {
            Ok(r) => r.unwrap(),
            Err(_) => break,
        }
        sent += 4096;
    }
    assert!(sent < 64 * 1024 * 1024, "writes never stalled");
    stop.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the stop was not seen")
        .unwrap();
    assert_eq!(stats.end, SpliceEnd::Drain);
    assert!(
        stats.bytes_in <= (READ_CHUNK + 2 * 1024) as u64,
        "read {} bytes with nobody reading",
        stats.bytes_in
    );
    drop(upstream_far);
}

/// The upstream's EOF ends the session once everything it sent is with
/// the client, though the client never closed: as in nginx and HAProxy,
/// without a round trip to wait for the client's EOF.
#[tokio::test]
async fn the_upstreams_eof_ends_the_session_without_the_clients() {
    let (client, mut client_far) = duplex(1024);
    let (upstream, mut upstream_far) = duplex(1024);
    let session = spawn_splice(client, upstream);
    let down_data = pattern(10_000, 3);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client_far
            .read_to_end(&mut got)
            .await
            .map(|_| (got, client_far))
    });
    upstream_far.write_all(&down_data).await.unwrap();
    upstream_far.shutdown().await.unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the session waited for the client's EOF")
        .unwrap();
    assert_eq!(stats.end, SpliceEnd::Closed);
    let (got, _client_far) = reader.await.unwrap().unwrap();
    assert!(got == down_data, "upstream → client bytes differ");
    drop(upstream_far);
}

/// Cut after 1 to 1.5 periods of quiet looks, two looks a period (at
/// least 10 ms apart); a byte moved starts the count again.
#[test]
fn the_idle_cut_counts_quiet_looks() {
    for (idle_ms, looks) in [(1000, 2), (15, 2), (5, 1), (0, 1)] {
        let mut check = IdleCheck::new(Duration::from_millis(idle_ms), 7);
        for _ in 1..looks {
            assert!(!check.tick(7), "{idle_ms} ms cut early");
        }
        assert!(check.tick(7), "{idle_ms} ms not cut after {looks} looks");
    }
    let mut check = IdleCheck::new(Duration::from_secs(1), 0);
    assert!(!check.tick(0) && !check.tick(1) && !check.tick(1));
    assert!(check.tick(1));
}

#[tokio::test]
async fn idle_session_ends_after_the_timeout() {
    let (client, _client_far) = duplex(1024);
    let (upstream, _upstream_far) = duplex(1024);
    let session = splice(client, upstream, Duration::from_millis(40), Stop::default());
    let stats = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the idle session was never cut");
    assert_eq!(stats.end, SpliceEnd::Idle);
}
