//! Frame-aware splicing (`ws_inspect = true`) over real sockets: message limits
//! in each direction (whole and fragmented) with the right close codes on both
//! sides, keepalive pings answered by a real client and hidden from the other
//! side, foreign pongs kept, a protocol error closed with 1002, a dead peer
//! reaped, per-route metrics, drain closes; and a proptest
//! checking the frame scanner against a reference parser under random chunking.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{frame, open_ws, read_close, read_frame, MASK};
use common::upstreams::raw_ws_upstream as raw_upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use wsgate::proxy::scan::{Event, Scanner};

/// A plain listener, an admin listener, and `/ws` spliced to `up` with frame
/// inspection and a 1 KiB message limit.
fn config(up: SocketAddr) -> Cfg {
    Cfg::new()
        .listener_plain()
        .admin()
        .upstream("ws", &[up])
        .set("upstream.ws.connect_timeout", "1s")
        .set("upstream.ws.response_timeout", "1s")
        .set("upstream.ws.ws_inspect", true)
        .set("upstream.ws.ws_max_message_size", "1KiB")
        .route_upstream("/ws", "ws")
}

async fn gateway(cfg: Cfg) -> TestGateway {
    TestGateway::start(&cfg.build()).await
}

/// A raw client upgraded through the gateway at `/ws`.
async fn raw_client(gw: SocketAddr) -> TcpStream {
    open_ws(gw, "/ws").await
}

/// A raw client and the upstream end of its session.
async fn raw_pair(
    gw: SocketAddr,
    ups: &mut mpsc::UnboundedReceiver<TcpStream>,
) -> (TcpStream, TcpStream) {
    let c = raw_client(gw).await;
    let u = tokio::time::timeout(Duration::from_secs(5), ups.recv())
        .await
        .expect("upstream connection")
        .expect("upstream");
    (c, u)
}

/// A tungstenite upstream that echoes data and reports every message it
/// receives (it answers pings by itself).
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Message>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let _ = tx.send(m.clone());
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn recorded_close(rx: &mut mpsc::UnboundedReceiver<Message>) -> u16 {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("upstream sees a close in time")
            .expect("message");
        if let Message::Close(f) = m {
            return f.map(|f| u16::from(f.code)).unwrap_or(1005);
        }
    }
}

#[tokio::test]
async fn oversized_client_messages_close_1009_to_client_1001_to_upstream() {
    let (up, mut ups) = raw_upstream().await;
    let gw = gateway(config(up)).await;
    for fragmented in [false, true] {
        let (mut c, mut u) = raw_pair(gw.http(), &mut ups).await;
        // A message within the limit passes byte for byte.
        let small = frame(true, 2, &[7u8; 1024], MASK);
        c.write_all(&small).await.expect("write");
        let (fin, op, p, masked) = read_frame(&mut u).await;
        assert!(fin && op == 2 && masked && p == vec![7u8; 1024]);
        if fragmented {
            c.write_all(&frame(false, 1, &[b'a'; 400], MASK))
                .await
                .expect("write");
            c.write_all(&frame(false, 0, &[b'b'; 400], MASK))
                .await
                .expect("write");
            let (fin, op, _, _) = read_frame(&mut u).await;
            assert!(!fin && op == 1);
            let (_, op, _, _) = read_frame(&mut u).await;
            assert_eq!(op, 0);
            c.write_all(&frame(true, 0, &[b'c'; 400], MASK))
                .await
                .expect("write");
        } else {
            c.write_all(&frame(true, 1, &[b'a'; 1025], MASK))
                .await
                .expect("write");
        }
        assert_eq!(
            read_close(&mut c).await,
            (1009, false),
            "fragmented: {fragmented}"
        );
        let (_, op, p, masked) = read_frame(&mut u).await;
        assert_eq!(
            (op, masked),
            (8, true),
            "the next upstream frame is the close"
        );
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);
    }
}

/// The access line of an inspected session names its close code: the
/// gateway's to the client (1009 here), or the first either side sent. It
/// was -1, "unknown, as for byte splices", also after a drain's 1012 (the
/// ninth probe).
#[tokio::test]
async fn the_access_line_names_an_inspected_sessions_close_code() {
    let (up, mut ups) = raw_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let [port] = common::redis::free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = dir.path().join("wsgate.toml");
    let cfg = config(up).listener(Listener::at(addr)).build();
    std::fs::write(&path, cfg).expect("write config");
    let mut gw = common::process::WsgateProc::start(&path);
    gw.wait_for("listening", WAIT);
    let (mut c, mut u) = raw_pair(addr, &mut ups).await;
    c.write_all(&frame(true, 1, b"hi", MASK))
        .await
        .expect("write");
    assert_eq!(read_frame(&mut u).await.1, 1);
    c.write_all(&frame(true, 1, &[b'a'; 1025], MASK))
        .await
        .expect("write");
    assert_eq!(read_close(&mut c).await, (1009, false));
    let line = gw.wait_for("session=\"spliced\"", WAIT);
    assert!(line.contains("close_code=1009"), "{line}");
    // The messages the inspector counted (review 14: always 0).
    assert!(line.contains("msgs_in=1 msgs_out=0"), "{line}");
    // The upstream closes first, with its own code.
    let (mut c, mut u) = raw_pair(addr, &mut ups).await;
    u.write_all(&frame(true, 8, &4000u16.to_be_bytes(), None))
        .await
        .expect("write");
    assert_eq!(read_close(&mut c).await.0, 4000);
    c.write_all(&frame(true, 8, &4000u16.to_be_bytes(), MASK))
        .await
        .expect("write");
    let (_, op, _, _) = read_frame(&mut u).await;
    assert_eq!(op, 8, "the client's close reply reaches the upstream");
    drop((c, u));
    let line = gw.wait_for("close_code=4000", WAIT);
    assert!(line.contains("session=\"spliced\""), "{line}");
    // A client gone without a close: 1006, not the code of the upstream's
    // answer to the 1001 it is sent (verification 15).
    let (c, mut u) = raw_pair(addr, &mut ups).await;
    drop(c);
    assert_eq!(read_close(&mut u).await, (1001, true));
    u.write_all(&frame(true, 8, &1001u16.to_be_bytes(), None))
        .await
        .expect("write");
    let line = gw.wait_for("close_code=1006", WAIT);
    assert!(line.contains("session=\"spliced\""), "{line}");
}

#[tokio::test]
async fn oversized_upstream_messages_close_1009_to_upstream_1001_to_client() {
    let (up, mut ups) = raw_upstream().await;
    let gw = gateway(config(up)).await;
    for fragmented in [false, true] {
        let (mut c, mut u) = raw_pair(gw.http(), &mut ups).await;
        u.write_all(&frame(true, 1, b"hello", None))
            .await
            .expect("write");
        assert_eq!(
            read_frame(&mut c).await,
            (true, 1, b"hello".to_vec(), false)
        );
        if fragmented {
            u.write_all(&frame(false, 2, &[1; 1000], None))
                .await
                .expect("write");
            assert_eq!(read_frame(&mut c).await.1, 2);
            u.write_all(&frame(true, 0, &[1; 100], None))
                .await
                .expect("write");
        } else {
            u.write_all(&frame(true, 2, &[1; 70_000], None))
                .await
                .expect("write");
        }
        let (_, op, p, masked) = read_frame(&mut c).await;
        assert_eq!(
            (op, masked),
            (8, false),
            "the next client frame is the close"
        );
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1001);
        assert_eq!(
            read_close(&mut u).await,
            (1009, true),
            "fragmented: {fragmented}"
        );
    }
}

#[tokio::test]
async fn foreign_pongs_pass_and_a_non_websocket_stream_closes_1002() {
    let (up, mut ups) = raw_upstream().await;
    let gw = gateway(config(up)).await;
    let (mut c, mut u) = raw_pair(gw.http(), &mut ups).await;
    // A pong the gateway did not ask for (same length as its own) is forwarded.
    c.write_all(&frame(true, 10, b"abcdefgh", MASK))
        .await
        .expect("write");
    assert_eq!(
        read_frame(&mut u).await,
        (true, 10, b"abcdefgh".to_vec(), true)
    );
    // Reserved opcode 3: 1002 to the sender, 1001 to the other side.
    c.write_all(&frame(true, 3, b"??", MASK))
        .await
        .expect("write");
    assert_eq!(read_close(&mut c).await, (1002, false));
    assert_eq!(read_close(&mut u).await, (1001, true));
}

/// RFC 6455 §5.1 (review 14): a client's frames are masked and a server's
/// are not; either the other way is a protocol error.
#[tokio::test]
async fn frames_masked_the_wrong_way_close_1002() {
    let (up, mut ups) = raw_upstream().await;
    let gw = gateway(config(up)).await;
    let (mut c, mut u) = raw_pair(gw.http(), &mut ups).await;
    c.write_all(&frame(true, 1, b"plain", None))
        .await
        .expect("write");
    assert_eq!(read_close(&mut c).await, (1002, false));
    assert_eq!(read_close(&mut u).await, (1001, true));
    let (mut c, mut u) = raw_pair(gw.http(), &mut ups).await;
    u.write_all(&frame(true, 1, b"masked", MASK))
        .await
        .expect("write");
    assert_eq!(read_close(&mut u).await, (1002, true));
    assert_eq!(read_close(&mut c).await, (1001, false));
}

#[tokio::test]
async fn pings_answered_by_a_real_client_are_swallowed_and_keep_the_session() {
    let (up, mut seen) = recording_upstream().await;
    let gw = gateway(config(up).set("upstream.ws.ws_ping_interval", "100ms")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .expect("connect");
    // Silent on both sides for 8 intervals: only the gateway's pings move.
    let mut pings = 0;
    let quiet = tokio::time::sleep(Duration::from_millis(800));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            m = ws.next() => match m {
                Some(Ok(Message::Ping(p))) => {
                    assert_eq!(p.len(), 8);
                    pings += 1;
                }
                other => panic!("client saw {other:?}"),
            }
        }
    }
    assert!(pings >= 3, "client got {pings} pings");
    ws.send(Message::text("still here")).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                assert_eq!(t.as_str(), "still here");
                break;
            }
            Ok(Some(Ok(Message::Ping(_)))) => {}
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    // The upstream got the gateway's pings too, but never the client's pongs.
    let mut up_pings = 0;
    while let Ok(m) = seen.try_recv() {
        assert!(!m.is_pong(), "a pong leaked to the upstream: {m:?}");
        up_pings += usize::from(m.is_ping());
    }
    assert!(up_pings >= 3, "upstream got {up_pings} pings");
}

#[tokio::test]
async fn a_dead_client_is_reaped_and_the_upstream_told_1001() {
    let (up, mut seen) = recording_upstream().await;
    let gw = gateway(config(up).set("upstream.ws.ws_ping_interval", "100ms")).await;
    // Never reads, never answers.
    let mut c = raw_client(gw.http()).await;
    assert_eq!(recorded_close(&mut seen).await, 1001);
    // The dead client's connection is closed: what is left is pings and a 1011.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "client connection closed");
    assert!(
        rest.windows(4).any(|w| w == [0x88, 2, 0x03, 0xf3]),
        "1011 close"
    );
}

#[tokio::test]
async fn a_dead_upstream_is_reaped_and_the_client_told_1001() {
    let (up, mut ups) = raw_upstream().await;
    let gw = gateway(config(up).set("upstream.ws.ws_ping_interval", "100ms")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .expect("connect");
    // Held open, never read: the upstream is dead.
    let _u = ups.recv().await.expect("upstream");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("client is closed in time");
    match end {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[tokio::test]
async fn metrics_count_messages_bytes_and_close_codes() {
    let (up, _seen) = recording_upstream().await;
    let gw = gateway(config(up)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .expect("connect");
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.expect("send");
        assert!(ws.next().await.expect("echo").expect("echo").is_text());
    }
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .expect("close");
    while ws.next().await.is_some() {}
    let admin = gw.admin();
    let ok = eventually(Duration::from_secs(3), || async {
        let m = get(admin, "/metrics").await.text();
        m.contains("wsgate_ws_messages_total{route=\"/ws\",direction=\"in\"} 3")
            && m.contains("wsgate_ws_messages_total{route=\"/ws\",direction=\"out\"} 3")
            && m.contains("wsgate_ws_close_codes_total{route=\"/ws\",code=\"1000\"} 2")
    })
    .await;
    let m = get(admin, "/metrics").await.text();
    assert!(ok, "{m}");
    let bytes_in: u64 = m
        .lines()
        .find(|l| l.starts_with("wsgate_ws_bytes_total{route=\"/ws\",direction=\"in\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("bytes in");
    // Three 8-byte masked frames and a masked close with a 2-byte code.
    assert_eq!(bytes_in, 3 * 8 + 8);
}

#[tokio::test]
async fn drain_closes_the_client_with_1012_and_the_upstream_with_1001() {
    let (up, mut seen) = recording_upstream().await;
    let gw = gateway(config(up).set("server.drain_window", "500ms")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http()))
        .await
        .expect("connect");
    ws.send(Message::text("x")).await.expect("send");
    assert!(ws.next().await.expect("echo").expect("echo").is_text());
    let gw = std::sync::Arc::new(gw);
    let drain = tokio::spawn({
        let gw = gw.clone();
        async move { gw.handle.shutdown().await }
    });
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("close in time");
    match m {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 1012);
            assert!(f.reason.starts_with("reconnect "), "{}", f.reason);
        }
        other => panic!("expected close 1012, got {other:?}"),
    }
    while ws.next().await.is_some() {}
    assert_eq!(recorded_close(&mut seen).await, 1001);
    assert!(drain.await.expect("drain task"), "drain finished in time");
}

// ---- scanner vs a reference parser ----

#[derive(Debug, Clone)]
struct F {
    fin: bool,
    op: u8,
    len: usize,
    mask: Option<[u8; 4]>,
    code: Option<u16>,
}

/// Valid frame streams: messages (possibly fragmented) with control frames
/// interleaved, lengths across the 7/16/64-bit encodings.
fn frames() -> impl Strategy<Value = Vec<F>> {
    let len = prop_oneof![
        0usize..126,
        126usize..300,
        65_530usize..65_540,
        Just(70_000usize)
    ];
    let mask = proptest::option::of(any::<[u8; 4]>());
    let data = (
        1u8..=2,
        proptest::collection::vec((len, mask.clone()), 1..4),
    );
    let control = (
        prop_oneof![Just(8u8), Just(9u8), Just(10u8)],
        0usize..126,
        mask,
        any::<u16>(),
    );
    let item = prop_oneof![
        data.prop_map(Either::Data),
        control.prop_map(Either::Control)
    ];
    proptest::collection::vec(item, 0..8).prop_map(|items| {
        let mut out = Vec::new();
        for it in items {
            match it {
                Either::Data((op, parts)) => {
                    let n = parts.len();
                    for (i, (len, mask)) in parts.into_iter().enumerate() {
                        out.push(F {
                            fin: i + 1 == n,
                            op: if i == 0 { op } else { 0 },
                            len,
                            mask,
                            code: None,
                        });
                    }
                }
                Either::Control((op, len, mask, code)) => out.push(F {
                    fin: true,
                    op,
                    len: if op == 8 && len == 1 { 2 } else { len },
                    mask,
                    code: (op == 8 && len >= 1).then_some(code),
                }),
            }
        }
        out
    })
}

/// A data frame's (length, mask).
type Part = (usize, Option<[u8; 4]>);

#[derive(Debug, Clone)]
enum Either {
    Data((u8, Vec<Part>)),
    Control((u8, usize, Option<[u8; 4]>, u16)),
}

fn encode(fs: &[F]) -> Vec<u8> {
    let mut wire = Vec::new();
    for f in fs {
        let mut payload = vec![0x5au8; f.len];
        if let Some(c) = f.code {
            payload[..2].copy_from_slice(&c.to_be_bytes());
        }
        wire.extend(frame(f.fin, f.op, &payload, f.mask));
    }
    wire
}

/// The reference: a plain parser over the whole buffer. Returns, per frame,
/// (end offset, opcode, fin, length, mask, close code).
type Seen = (usize, u8, bool, u64, Option<[u8; 4]>, Option<u16>);

fn reference(wire: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let (b0, b1) = (wire[at], wire[at + 1]);
        let mut p = at + 2;
        let len = match b1 & 0x7f {
            126 => {
                let l = u64::from(u16::from_be_bytes([wire[p], wire[p + 1]]));
                p += 2;
                l
            }
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&wire[p..p + 8]);
                p += 8;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mask = (b1 & 0x80 != 0).then(|| {
            let k = [wire[p], wire[p + 1], wire[p + 2], wire[p + 3]];
            p += 4;
            k
        });
        let op = b0 & 0x0f;
        let code = (op == 8 && len >= 2).then(|| {
            let k = mask.unwrap_or([0; 4]);
            u16::from_be_bytes([wire[p] ^ k[0], wire[p + 1] ^ k[1]])
        });
        at = p + len as usize;
        out.push((at, op, b0 & 0x80 != 0, len, mask, code));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn scanner_tracks_boundaries_like_a_reference_parser(
        fs in frames(),
        cuts in proptest::collection::vec(1usize..2000, 1..64),
    ) {
        let wire = encode(&fs);
        let want = reference(&wire);
        let mut s = Scanner::new();
        let mut got: Vec<Seen> = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < wire.len() {
            let n = (*cut.next().unwrap_or(&1)).min(wire.len() - at);
            let chunk = &wire[at..at + n];
            let mut pos = 0;
            loop {
                let (used, ev) = s.feed(&chunk[pos..]);
                pos += used;
                match ev {
                    Some(Event::End(e)) => {
                        let h = e.header;
                        got.push((at + pos, h.opcode, h.fin, h.len, h.mask, e.close_code));
                        prop_assert!(s.at_boundary());
                    }
                    Some(Event::Error(e)) => prop_assert!(false, "scanner error {e}"),
                    Some(Event::Header(_)) => {}
                    None => break,
                }
            }
            prop_assert_eq!(pos, n);
            at += n;
        }
        prop_assert_eq!(got, want);
        prop_assert!(s.at_boundary());
    }
}
