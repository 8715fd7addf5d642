//! Byte splices to upstream WebSocket servers over real sockets: the
//! upstream handshake's failures (502/504), bytes that arrive with the 101,
//! how a session ends (the upstream's EOF, idle timeout), and many sessions at
//! once. The splice's configs are `websocket`'s.

use std::time::Duration;

use common::raw::{frame, handshake, MASK, WS_HEADERS};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common;
use crate::websocket::{splice, splice_cfg, status_of};

/// Reads a request head (and whatever came with it); false at EOF first.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers the handshake with the given raw response head.
async fn scripted_upstream(response: &'static str, then: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let mut buf = [0u8; 64];
                // Response head and the first frame in one write: the frame must
                // survive the upgrade.
                let mut out = response.as_bytes().to_vec();
                out.extend_from_slice(then);
                let _ = s.write_all(&out).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_handshake_failures_are_502_or_504() {
    let wrong = scripted_upstream("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n", b"").await;
    let gw = TestGateway::start(&splice_cfg(wrong, false)).await;
    let out = status_of(gw.http(), &handshake("/ws", WS_HEADERS)).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.contains("Sec-WebSocket-Accept"), "{out}");

    let missing = scripted_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"",
    )
    .await;
    let gw = TestGateway::start(&splice_cfg(missing, false)).await;
    assert!(status_of(gw.http(), &handshake("/ws", WS_HEADERS))
        .await
        .starts_with("HTTP/1.1 502"));

    let odd = scripted_upstream("HTTP/1.1 600 Odd\r\n\r\n", b"").await;
    let gw = TestGateway::start(&splice_cfg(odd, false)).await;
    let out = status_of(gw.http(), &handshake("/ws", WS_HEADERS)).await;
    assert!(
        out.starts_with("HTTP/1.1 502") && out.contains("600"),
        "{out}"
    );

    // Interim answers are skipped; the refusal behind them is relayed.
    let hints = scripted_upstream(
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        b"",
    )
    .await;
    let gw = TestGateway::start(&splice_cfg(hints, false)).await;
    let out = status_of(gw.http(), &handshake("/ws", WS_HEADERS)).await;
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");

    let refused = dead_addr().await;
    let gw = TestGateway::start(&splice_cfg(refused, false)).await;
    assert!(status_of(gw.http(), &handshake("/ws", WS_HEADERS))
        .await
        .starts_with("HTTP/1.1 502"));

    // Accepts TCP but never answers: response_timeout (1s) → 504.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let gw = TestGateway::start(&splice_cfg(silent_addr, false)).await;
    let out = raw(
        gw.http(),
        handshake("/ws", WS_HEADERS).as_bytes(),
        Duration::from_secs(3),
    )
    .await
    .answer();
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
}

/// A server's refusal of an upgrade (here a 404 with a body) reaches the
/// client as the server sent it, less its hop-by-hop fields, and is an
/// answer, not a failure: after more refusals than `max_fails`, the pool
/// still serves. Before, each was a 502 counted against the server, and a
/// few unauthenticated upgrades took a healthy pool down.
#[tokio::test]
async fn a_refused_upgrade_is_relayed_and_does_not_take_the_server_down() {
    let up = upstreams::canned_upstream(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nX-Why: no such room\r\n\
          Connection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\nnope",
    )
    .await;
    let gw = TestGateway::start(&splice(up, false).admin().build()).await;
    for _ in 0..4 {
        let mut s = TcpStream::connect(gw.http()).await.unwrap();
        s.write_all(handshake("/ws", WS_HEADERS).as_bytes())
            .await
            .unwrap();
        // Read until the body's last byte (the connection stays open).
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"nope") {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("the gateway did not answer in time")
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let out = String::from_utf8_lossy(&got);
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(out.contains("x-why: no such room"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("x-hop"), "{out}");
        assert!(out.ends_with("\r\n\r\nnope"), "{out}");
    }
    let r = get(gw.http(), "/ws/plain").await;
    assert_eq!(r.status, http::StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.text(), "nope");
    // Counted as refusals under their status, not as handshakes that
    // succeeded (review 14).
    let m = get(gw.admin(), "/metrics").await.text();
    assert!(
        m.contains("wsgate_ws_handshakes_total{route=\"/ws\",result=\"404\"} 4"),
        "{m}"
    );
}

#[tokio::test]
async fn bytes_buffered_past_the_101_are_not_lost() {
    // The upstream sends a text frame "early" in the same write as its 101.
    let early = scripted_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        b"\x81\x05early",
    )
    .await;
    let gw = TestGateway::start(&splice_cfg(early, false)).await;
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    // The client also sends a frame right behind its handshake.
    let mut req = handshake("/ws", WS_HEADERS).into_bytes();
    req.extend_from_slice(&frame(true, 1, b"eager", MASK));
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(5).any(|w| w == b"early") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the early frame: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}

/// The upstream ends the session (its close frame, then its FIN) while the
/// client stays open and silent: the client gets the frame and EOF, and the
/// gateway closes the upstream's connection too without waiting for the
/// client's EOF, as nginx and HAProxy do.
#[tokio::test]
async fn the_upstreams_eof_ends_a_splice_the_client_keeps_open() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        if !read_head(&mut s).await {
            return;
        }
        let mut buf = [0u8; 64];
        let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
        out.extend_from_slice(b"\x88\x02\x03\xe8");
        s.write_all(&out).await.unwrap();
        // Only the write side: this upstream would still read.
        s.shutdown().await.unwrap();
        // EOF or a reset: either way the gateway closed its side.
        while let Ok(1..) = s.read(&mut buf).await {}
        let _ = closed_tx.send(());
    });
    let gw = TestGateway::start(&splice_cfg(up, false)).await;
    let mut c = TcpStream::connect(gw.http()).await.unwrap();
    c.write_all(handshake("/ws", WS_HEADERS).as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let read_all = c.read_to_end(&mut got);
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("no EOF after the upstream's close")
        .unwrap();
    assert!(got.starts_with(b"HTTP/1.1 101"), "{got:?}");
    assert!(got.ends_with(b"\r\n\r\n\x88\x02\x03\xe8"), "{got:?}");
    // The client has not closed (`c` is alive): the gateway closed upstream.
    tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the upstream's connection stayed open until the client's EOF")
        .unwrap();
    drop(c);
}

#[tokio::test]
async fn two_hundred_concurrent_spliced_sessions_keep_their_own_data() {
    let up = ws_echo_upstream(None).await;
    let gw = TestGateway::start(&splice_cfg(up, false)).await;
    let addr = gw.http();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/{i}"))
                    .await
                    .unwrap();
                for j in 0..10 {
                    let m = format!("session {i} message {j}");
                    ws.send(Message::text(m.clone())).await.unwrap();
                    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m));
                }
                ws.close(None).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn spliced_sessions_end_after_idle_timeout() {
    let up = ws_echo_upstream(None).await;
    let toml = splice(up, false)
        .set("upstream.ws.ws_idle_timeout", "300ms")
        .build();
    let gw = TestGateway::start(&toml).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("x"));
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("idle session is closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

/// The byte splice's counter of bytes `splice(2)` moved without a copy.
fn zero_copy_bytes(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_splice_zero_copy_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wsgate_splice_zero_copy_bytes_total in the metrics")
}

/// Echoes large and small messages through a session, each checked, then
/// closes it.
async fn echo_sizes<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for (i, len) in [300_000usize, 20, 200_000, 16_400, 16_400, 9, 300_000]
        .into_iter()
        .enumerate()
    {
        let msg: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        ws.send(Message::binary(msg.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert!(
            back == Message::binary(msg),
            "message {i} ({len} B) came back changed"
        );
    }
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
}

/// Bulk messages (more than one 64 KiB read) between plain TCP sockets go
/// by `splice(2)`, counted in `wsgate_splice_zero_copy_bytes_total`, and
/// arrive intact both ways; over TLS the same messages are copied, as they
/// must be.
#[tokio::test]
async fn large_messages_cross_a_plain_splice_without_a_copy() {
    let up = ws_echo_upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = write_cert(dir.path(), "default", &["localhost"]);
    let gw = TestGateway::start_in(&splice(up, true).admin().build(), dir).await;
    let admin = gw.admin();
    let scrape = || async move { get(admin, "/metrics").await.text() };
    let ended = || async move {
        let gone = eventually(Duration::from_secs(5), || async move {
            scrape()
                .await
                .contains("wsgate_ws_sessions_active{route=\"/ws\"} 0")
        })
        .await;
        assert!(gone, "the session did not end:\n{}", scrape().await);
    };
    let tls = tls_connect(gw.https(), tls_client(&ca, &[b"http/1.1"]), "localhost").await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    echo_sizes(&mut ws).await;
    ended().await;
    assert_eq!(
        zero_copy_bytes(&scrape().await),
        0,
        "TLS bytes went by splice(2)"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .unwrap();
    echo_sizes(&mut ws).await;
    ended().await;
    let moved = zero_copy_bytes(&scrape().await);
    assert!(moved > 100_000, "only {moved} bytes went by splice(2)");
}

/// An upstream 101 choosing a subprotocol or an extension the client did not
/// offer is a failed handshake (502): relayed, every conforming client would
/// abort the session it opened (RFC 6455 §4.1; review 14).
#[tokio::test]
async fn an_upstream_choosing_what_was_not_offered_is_a_502() {
    const CHOSE_PROTOCOL: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: zzz\r\n\r\n";
    const CHOSE_EXTENSION: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    for (answer, offer) in [
        (CHOSE_PROTOCOL, "Sec-WebSocket-Protocol: a\r\n"),
        (CHOSE_EXTENSION, ""),
    ] {
        let up = scripted_upstream(answer, b"").await;
        let gw = TestGateway::start(&splice_cfg(up, false)).await;
        let mut s = TcpStream::connect(gw.http()).await.unwrap();
        s.write_all(handshake("/ws", &format!("{WS_HEADERS}{offer}")).as_bytes())
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(WAIT, s.read_exact(&mut head))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 502", "{answer}");
    }
}
