//! Keepalive and ends of the inspected splice that depend on who is alive
//! (review 14): a message trickling to a healthy client does not get it
//! reaped, a client that stops reading is the side closed (not the upstream
//! whose answers sit unread behind it), an upstream gone without a close
//! ends the session at once with 1001 to the client, and the gateway's own
//! pings and their answers do not keep an idle session open.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{frame, open_ws, read_close, MASK};
use common::upstreams::raw_ws_upstream as raw_upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn config(up: SocketAddr, ping: &str) -> Cfg {
    Cfg::new()
        .listener_plain()
        .admin()
        .upstream("ws", &[up])
        .set("upstream.ws.connect_timeout", "1s")
        .set("upstream.ws.response_timeout", "1s")
        .set("upstream.ws.ws_inspect", true)
        .set("upstream.ws.ws_max_message_size", "64KiB")
        .set("upstream.ws.ws_ping_interval", ping)
        .route_upstream("/ws", "ws")
}

async fn next_upstream(
    ups: &mut mpsc::UnboundedReceiver<tokio::net::TcpStream>,
) -> tokio::net::TcpStream {
    tokio::time::timeout(WAIT, ups.recv())
        .await
        .expect("upstream connection in time")
        .expect("upstream")
}

#[tokio::test]
async fn a_message_trickling_to_a_healthy_client_does_not_get_it_reaped() {
    let (up, mut ups) = raw_upstream().await;
    let gw = TestGateway::start(&config(up, "100ms").build()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .expect("connect");
    let mut u = next_upstream(&mut ups).await;
    // One 200-byte message over two seconds (twenty ping intervals, past
    // the grace a close gets), 10 bytes at a time: no ping can reach the
    // client meanwhile.
    let message = frame(true, 1, &[b'x'; 200], None);
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for piece in message.chunks(10) {
            pace.tick().await;
            if u.write_all(piece).await.is_err() {
                return;
            }
        }
        // Held open until the test ends.
        std::future::pending::<()>().await;
    });
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("the message in time");
    assert!(
        matches!(got, Some(Ok(Message::Text(ref t))) if t.len() == 200),
        "{got:?}"
    );
}

/// A tungstenite upstream sending 16 KiB messages as fast as it may,
/// answering pings; it reports the close code it is sent.
async fn flooding_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<u16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move {
            while sink
                .send(Message::binary(vec![0u8; 16 * 1024]))
                .await
                .is_ok()
            {}
        });
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Close(f) = m {
                let _ = tx.send(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                return;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_not_the_upstream() {
    let (up, mut closes) = flooding_upstream().await;
    // Bytes that do not move for ws_idle_timeout (at least two pings) end it.
    let cfg = config(up, "100ms").set("upstream.ws.ws_idle_timeout", "1s");
    let gw = TestGateway::start(&cfg.build()).await;
    // Sends a message every 100 ms and reads nothing.
    let mut c = open_ws(gw.http(), "/ws").await;
    let sending = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            pace.tick().await;
            if c.write_all(&frame(true, 1, b"still here", MASK))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let code = tokio::time::timeout(Duration::from_secs(10), closes.recv())
        .await
        .expect("the upstream is closed in time")
        .expect("a close code");
    // 1011 would say the upstream, which answered every ping, was dead.
    assert_eq!(code, 1001, "the upstream is told the client went away");
    sending.abort();
}

#[tokio::test]
async fn an_upstream_gone_without_a_close_ends_the_session_with_1001() {
    let (up, mut ups) = raw_upstream().await;
    let gw = TestGateway::start(&config(up, "0s").build()).await;
    let mut c = open_ws(gw.http(), "/ws").await;
    drop(next_upstream(&mut ups).await);
    let (code, masked) = read_close(&mut c).await;
    assert_eq!(code, 1001);
    assert!(!masked);
    // The client keeps its end open: the session ends all the same.
    let admin = gw.admin();
    let ended = eventually(WAIT, || async move {
        get(admin, "/metrics")
            .await
            .text()
            .contains("wsgate_ws_sessions_active{route=\"/ws\"} 0")
    })
    .await;
    assert!(ended, "{}", get(admin, "/metrics").await.text());
    drop(c);
}

/// A tungstenite upstream that reads (answering pings) and sends nothing.
async fn quiet_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn keepalive_alone_does_not_keep_a_session_from_going_idle() {
    let up = quiet_upstream().await;
    let cfg = config(up, "100ms").set("upstream.ws.ws_idle_timeout", "1s");
    let gw = TestGateway::start(&cfg.build()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .expect("connect");
    // Both ends answer every ping, and nothing else moves.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("closed as idle in time");
    assert!(
        matches!(end, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 1001),
        "{end:?}"
    );
}
