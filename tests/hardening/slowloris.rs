//! Slowloris: heads dribbled or never sent, on plain and TLS listeners, are cut
//! at `header_timeout` without delaying anyone else.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{active_reaches, gateway, get_ok, send_h1, server, SERIAL};
use crate::common::raw::read_to_close;
use crate::common::*;

/// A slowloris client: sends a request line, then one header line every 100 ms
/// and never finishes the head. Returns how long the server took to cut it.
async fn dribble<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    give_up: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if start.elapsed() > give_up {
                    return None;
                }
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return Some(start.elapsed());
                }
            }
            r = s.read(&mut buf) => {
                // EOF, reset, or a 408: the server gave up on us.
                let _ = r;
                return Some(start.elapsed());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_header_timeout_and_does_not_delay_others() {
    let _serial = SERIAL.lock().await;
    let (up, hits) = counting_upstream().await;
    let (gw, ca) = gateway(
        server("header_timeout", "1500ms").set("server.tls_handshake_timeout", "1s"),
        up,
    )
    .await;
    let (plain, tls) = (gw.http(), gw.https());
    let client = tls_client(&ca, &[b"http/1.1"]);

    let mut lorises = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        lorises.push(tokio::spawn(async move {
            if i % 4 == 0 {
                dribble(
                    tls_connect(tls, client, "localhost").await,
                    Duration::from_secs(8),
                )
                .await
            } else {
                dribble(
                    TcpStream::connect(plain).await.unwrap(),
                    Duration::from_secs(8),
                )
                .await
            }
        }));
    }
    // Silent clients: connect and say nothing (plain: no request; TLS: no ClientHello).
    let mut silent = Vec::new();
    for addr in [plain, plain, tls, tls] {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Meanwhile everyone else is served promptly, over plain and TLS.
    for _ in 0..20 {
        let t = Instant::now();
        assert!(
            get_ok(plain).await,
            "a normal request is answered during the attack"
        );
        let io = tls_connect(tls, client.clone(), "localhost").await;
        let r = send_h1(io, "/").await;
        assert_eq!(r, 200);
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "normal clients are not delayed: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 40);

    for l in lorises {
        let cut = l.await.unwrap().expect("a slowloris connection is cut");
        assert!(cut >= Duration::from_millis(1000), "cut too early: {cut:?}");
        assert!(cut < Duration::from_millis(4000), "cut too late: {cut:?}");
    }
    for mut s in silent {
        let closed = read_to_close(&mut s, Duration::from_secs(5)).await.closed();
        assert!(closed, "a silent connection is closed");
    }
    assert!(active_reaches(&gw, 0).await, "every slot is released");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        40,
        "no dribbled request reached the upstream"
    );
    assert!(get_ok(plain).await);
}
