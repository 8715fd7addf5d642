//! Message rates: chat frames over the rate dropped then closed with 1008, and
//! inspected splices closed 1008 to the client and 1001 upstream.

use crate::common;

use tokio::io::AsyncWriteExt;

use super::{metrics, series};
use crate::common::{Cfg, TestGateway, WAIT};

#[tokio::test]
async fn chat_message_rate_drops_then_closes_1008() {
    use common::chat::Client;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .admin()
            .route_app("/chat", "chat")
            // One token a minute after a burst of three: the test decides
            // exactly which frames are over.
            .set("app.chat.message_rate", "1/m")
            .set("app.chat.message_burst", 3)
            .build(),
    )
    .await;
    let mut c = Client::new(gw.http(), "ann").await;
    c.join("lobby").await;
    c.sentinel("lobby", "one").await;
    c.sentinel("lobby", "two").await;
    // The fourth frame is over the rate: dropped (never echoed), answered.
    c.msg("lobby", "three").await;
    let e = c.expect_error("rate_limited").await;
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many messages")),
        "{e}"
    );
    // A second strike: still open.
    c.send(json!({"type":"who","room":"lobby"})).await;
    c.expect_error("rate_limited").await;
    // The third within 10 s closes with 1008.
    c.msg("lobby", "four").await;
    assert_eq!(c.close_code().await, Some(CloseCode::Policy));

    // Another connection has its own budget.
    let mut d = Client::new(gw.http(), "bob").await;
    d.join("lobby").await;
    d.sentinel("lobby", "hello").await;

    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="app.chat",kind="message"}"#
        ),
        3
    );
}

#[tokio::test]
async fn ws_message_rate_closes_1008_to_the_client_and_1001_upstream() {
    use common::raw::{frame, open_ws, read_close, read_frame, MASK};

    let (up, mut ups) = common::upstreams::raw_ws_upstream().await;
    let gw = TestGateway::start(
        &Cfg::new()
            .listener_plain()
            .admin()
            .upstream("ws", &[up])
            .set("upstream.ws.ws_inspect", true)
            // Burst = one period's worth: 3 messages, then one a minute.
            .set("upstream.ws.ws_message_rate", "3/m")
            .route_upstream("/ws", "ws")
            .build(),
    )
    .await;
    let mut c = open_ws(gw.http(), "/ws").await;
    let mut u = tokio::time::timeout(WAIT, ups.recv())
        .await
        .expect("upstream connection in time")
        .expect("upstream");
    // Three messages pass; a fragmented one counts once, control frames not at all.
    c.write_all(&frame(true, 1, b"one", MASK))
        .await
        .expect("write");
    c.write_all(&frame(false, 2, b"tw", MASK))
        .await
        .expect("write");
    c.write_all(&frame(true, 0, b"o", MASK))
        .await
        .expect("write");
    c.write_all(&frame(true, 9, b"ping", MASK))
        .await
        .expect("write");
    c.write_all(&frame(true, 1, b"three", MASK))
        .await
        .expect("write");
    for want in [1u8, 2, 0, 9, 1] {
        let (_, op, _, _) = read_frame(&mut u).await;
        assert_eq!(op, want);
    }
    // The fourth message closes the session.
    c.write_all(&frame(true, 1, b"four", MASK))
        .await
        .expect("write");
    assert_eq!(read_close(&mut c).await, (1008, false));
    let (_, op, p, masked) = read_frame(&mut u).await;
    assert_eq!(
        (op, masked),
        (8, true),
        "the next upstream frame is the close"
    );
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);

    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            r#"wsgate_limited_total{limit="upstream.ws",kind="message"}"#
        ),
        1
    );
    assert!(
        m.contains(r#"wsgate_ws_close_codes_total{route="/ws",code="1008"} 1"#),
        "{m}"
    );
}
