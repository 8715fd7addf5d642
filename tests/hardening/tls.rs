//! TLS: only 1.2 and 1.3 accepted; garbage, huge records and silence on the
//! TLS port closed.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{active_reaches, gateway, send_h1, server, Rng, SERIAL};
use crate::common::raw::{read_to_close, Raw};
use crate::common::tls::{tls11_client_hello, tls_client_versions};
use crate::common::*;

#[tokio::test]
async fn tls_only_1_2_and_1_3_and_garbage_or_silence_is_closed() {
    let _serial = SERIAL.lock().await;
    let (up, _) = counting_upstream().await;
    let (gw, ca) = gateway(
        server("tls_handshake_timeout", "500ms").set("server.header_timeout", "5s"),
        up,
    )
    .await;
    let tls = gw.https();

    // TLS 1.1 only: refused with an alert, never a ServerHello.
    let mut s = TcpStream::connect(tls).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = end == End::Closed;
    assert!(closed, "a TLS 1.1 client is disconnected");
    assert!(
        out.is_empty() || out[0] == 0x15,
        "answered with an alert, not a handshake: {out:?}"
    );
    if out.len() >= 7 {
        assert_eq!(out[6], 70, "alert protocol_version");
    }

    // TLS 1.2 only and TLS 1.3 only both work.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = tls_client_versions(&ca, &[], &[version]);
        let io = tls_connect(tls, cfg, "localhost").await;
        assert_eq!(io.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(send_h1(io, "/").await, 200);
    }

    // Garbage: plaintext HTTP and random bytes on the TLS port are closed at once.
    let mut rng = Rng(77);
    let mut garbage: Vec<Vec<u8>> = vec![b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()];
    for _ in 0..20 {
        garbage.push(rng.some_bytes(1, 300));
    }
    // A record header claiming a huge length, then nothing: timed out.
    garbage.push(vec![0x16, 0x03, 0x03, 0xff, 0xff, 0x01]);
    for g in garbage {
        let t = Instant::now();
        let mut s = TcpStream::connect(tls).await.unwrap();
        let _ = s.write_all(&g).await;
        let closed = read_to_close(&mut s, Duration::from_secs(5)).await.closed();
        assert!(
            closed,
            "garbage {:?} closes the connection",
            &g[..g.len().min(8)]
        );
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    // Silence: closed once tls_handshake_timeout passes.
    let t = Instant::now();
    let mut s = TcpStream::connect(tls).await.unwrap();
    let closed = read_to_close(&mut s, Duration::from_secs(5)).await.closed();
    assert!(closed);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(active_reaches(&gw, 0).await);
}
