//! `server.max_buffered` over real sockets: echo sessions holding parts of
//! large messages, the ones holding the most closed with 1013 while the others
//! (and a small-message session) keep working, the metrics, bytes returned
//! when sessions end; yawc holding only what arrived, not what a frame header
//! claims (measured with a counting allocator); and the config key's errors.
//!
//! The tests share one process-wide allocator record, so they run one at a
//! time (`SERIAL`). Nothing sleeps to synchronise: each step waits for the
//! gateway's budget to show the bytes sent, against a deadline.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::raw::{frame, open_ws, read_server_frame, WS_HEADERS};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Records the largest single allocation while armed.
struct Recording;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(layout.size(), Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Relaxed) {
            LARGEST.fetch_max(new_size, Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Recording = Recording;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// A mask of zeros: the payload goes on the wire as it is, so a message can
/// be sent in pieces without tracking the mask's offset.
const ZERO_MASK: [u8; 4] = [0; 4];

/// Echo at `/echo` (16 MiB messages), an admin listener, and `max_buffered`.
async fn gateway(max_buffered: &str) -> TestGateway {
    let toml = Cfg::new()
        .listener_plain()
        .admin()
        .route_app("/echo", "echo")
        .set("app.echo.max_message_size", "16MiB")
        .set("server.max_buffered", max_buffered)
        .build();
    TestGateway::start(&toml).await
}

/// The header of a masked binary frame claiming `len` bytes.
fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![if fin { 0x80 | opcode } else { opcode }, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&ZERO_MASK);
    h
}

/// A session in the middle of a message that claims `claimed` bytes.
struct Holder {
    s: TcpStream,
    sent: usize,
}

impl Holder {
    async fn start(gw: &TestGateway, claimed: usize) -> Self {
        let mut s = open_ws(gw.http(), "/echo").await;
        s.write_all(&header(true, 2, claimed as u64))
            .await
            .expect("header");
        Self { s, sent: 0 }
    }

    /// Sends `n` more payload bytes.
    async fn send(&mut self, n: usize) {
        self.s.write_all(&vec![b'x'; n]).await.expect("payload");
        self.sent += n;
    }
}

/// Waits until the gateway's budget holds at least `at_least` bytes.
async fn budget_reaches(gw: &TestGateway, at_least: usize) {
    let reached = eventually(
        WAIT,
        || async move { gw.handle.buffered_bytes() >= at_least },
    )
    .await;
    assert!(
        reached,
        "the budget holds {} bytes, expected at least {at_least}",
        gw.handle.buffered_bytes()
    );
}

/// Waits until the gateway's budget holds at most `at_most` bytes.
async fn budget_falls_to(gw: &TestGateway, at_most: usize) {
    let fell = eventually(
        WAIT,
        || async move { gw.handle.buffered_bytes() <= at_most },
    )
    .await;
    assert!(
        fell,
        "the budget holds {} bytes, expected at most {at_most}",
        gw.handle.buffered_bytes()
    );
}

/// One message echoed on `s`.
async fn echoes(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(&frame(true, 2, payload, Some([9, 8, 7, 6])))
        .await
        .expect("send");
    let (fin, op, p) = read_server_frame(s).await;
    assert!(
        fin && op == 2 && p == payload,
        "echo of {} bytes",
        payload.len()
    );
}

/// The next frame is a close with `code`, and the connection then ends.
async fn closed_with(s: &mut TcpStream, code: u16) {
    let (_, op, p) = read_server_frame(s).await;
    assert_eq!(op, 8, "expected a close frame");
    assert_eq!(
        u16::from_be_bytes([p[0], p[1]]),
        code,
        "{:?}",
        String::from_utf8_lossy(&p[2..])
    );
    let rest = common::raw::read_to_close(s, WAIT).await;
    assert!(rest.closed(), "the connection stays open after the close");
}

/// Whether `s` is still open: no close frame, no EOF within a short look.
async fn still_open(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    let peek = tokio::time::timeout(Duration::from_millis(100), s.peek(&mut b)).await;
    peek.is_err()
}

/// A metric's value from the admin listener's `/metrics`.
async fn metric(gw: &TestGateway, name: &str) -> Option<f64> {
    let text = get(gw.admin(), "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_sessions_holding_the_most_are_closed_and_the_others_keep_working() {
    let _one = SERIAL.lock().await;
    let gw = gateway("1MiB").await;
    let mut small = open_ws(gw.http(), "/echo").await;
    echoes(&mut small, b"hello").await;

    // Three sessions, each part-way through a message: 900 KiB held.
    let mut big = Holder::start(&gw, 4 * MIB).await;
    let mut mid = Holder::start(&gw, 600 * KIB).await;
    let mut low = Holder::start(&gw, 4 * MIB).await;
    for (h, n) in [(&mut big, 500), (&mut mid, 300), (&mut low, 100)] {
        h.send(n * KIB).await;
    }
    budget_reaches(&gw, 900 * KIB).await;
    assert_eq!(
        metric(&gw, "wsgate_ws_budget_closed_total").await,
        Some(0.0)
    );
    echoes(&mut small, &[1; 1000]).await;

    // `low` pushes the total past 1 MiB: the largest holder covers the
    // excess and is closed with 1013; `low` itself and `mid` are not.
    low.send(200 * KIB).await;
    closed_with(&mut big.s, 1013).await;
    budget_falls_to(&gw, 600 * KIB + 16 * KIB).await;
    assert!(still_open(&mut mid.s).await && still_open(&mut low.s).await);
    echoes(&mut small, &[2; 60 * KIB]).await;
    assert_eq!(
        metric(&gw, "wsgate_ws_budget_closed_total").await,
        Some(1.0)
    );

    // Now the reader makes itself the largest: it goes, `mid` stays.
    low.send(500 * KIB).await;
    closed_with(&mut low.s, 1013).await;
    assert!(still_open(&mut mid.s).await);
    assert_eq!(
        metric(&gw, "wsgate_ws_budget_closed_total").await,
        Some(2.0)
    );

    // `mid` finishes its message and gets it back whole; the budget is empty.
    let rest = 600 * KIB - mid.sent;
    mid.send(rest).await;
    let (fin, op, p) = read_server_frame(&mut mid.s).await;
    assert!(
        fin && op == 2 && p.len() == 600 * KIB,
        "{} bytes back",
        p.len()
    );
    budget_falls_to(&gw, 0).await;
    let buffered = metric(&gw, "wsgate_ws_buffered_bytes").await;
    assert_eq!(buffered, Some(0.0));

    // Bytes came back: a new session may hold nearly all of the budget.
    let mut again = Holder::start(&gw, 4 * MIB).await;
    again.send(900 * KIB).await;
    budget_reaches(&gw, 900 * KIB).await;
    assert!(still_open(&mut again.s).await);
    let held = metric(&gw, "wsgate_ws_buffered_bytes").await.unwrap_or(0.0);
    assert!(
        held >= (900 * KIB) as f64,
        "wsgate_ws_buffered_bytes {held}"
    );
    echoes(&mut small, b"still here").await;
    // A session that goes away returns what it held.
    drop(again);
    budget_falls_to(&gw, 0).await;
    assert_eq!(
        metric(&gw, "wsgate_ws_budget_closed_total").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn a_chat_session_holding_the_most_is_closed_too() {
    let _one = SERIAL.lock().await;
    let toml = Cfg::new()
        .listener_plain()
        .admin()
        .route_app("/echo", "echo")
        .route_app("/chat", "chat")
        .set("app.chat.max_message_size", "1MiB")
        .set("server.max_buffered", "1MiB")
        .build();
    let gw = TestGateway::start(&toml).await;
    let mut echo = Holder::start(&gw, 4 * MIB).await;
    echo.send(400 * KIB).await;
    let mut chat = open_ws(gw.http(), "/chat?user=hoarder").await;
    let (_, op, welcome) = read_server_frame(&mut chat).await;
    assert_eq!(op, 1, "{:?}", String::from_utf8_lossy(&welcome));
    chat.write_all(&header(true, 1, MIB as u64))
        .await
        .expect("header");
    chat.write_all(&vec![b' '; 500 * KIB])
        .await
        .expect("payload");
    budget_reaches(&gw, 900 * KIB).await;
    // 200 KiB more make the chat session the largest holder, and too much.
    chat.write_all(&vec![b' '; 200 * KIB])
        .await
        .expect("payload");
    let (code, _) = common::raw::read_close(&mut chat).await;
    assert_eq!(code, 1013);
    assert!(common::raw::read_to_close(&mut chat, WAIT).await.closed());
    assert!(still_open(&mut echo.s).await);
    assert_eq!(
        metric(&gw, "wsgate_ws_budget_closed_total").await,
        Some(1.0)
    );
    // The chat's user has left, and the chat takes new sessions.
    let g = &gw;
    let gone = eventually(
        WAIT,
        || async move { g.handle.chat().stats().connections == 0 },
    );
    assert!(gone.await, "the evicted user is still connected");
    let mut next = open_ws(gw.http(), "/chat?user=next").await;
    let (_, op, _) = read_server_frame(&mut next).await;
    assert_eq!(op, 1, "welcome");
}

/// A compressed message sent in fragments is inflated fragment by fragment:
/// a few kilobytes on the wire hold megabytes in the session. Those bytes
/// are charged as they are inflated, so the budget closes the session
/// (before, the budget saw only the wire bytes, and 60 such sessions held
/// about 80 MB for 60 KB sent).
#[tokio::test]
async fn inflated_fragments_count_against_the_budget() {
    use flate2::{Compress, Compression, FlushCompress};
    let _one = SERIAL.lock().await;
    let gw = gateway("1MiB").await;
    let mut s = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let request = common::raw::handshake("/echo", &format!("{WS_HEADERS}{offer}"));
    s.write_all(request.as_bytes()).await.expect("handshake");
    let head = common::raw::read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 101") && head.contains("permessage-deflate"),
        "{head}"
    );
    // 2 MiB of zeros, raw deflate (RFC 7692 §7.2.1), in two fragments.
    let mut z = Compress::new(Compression::best(), false);
    let mut wire = Vec::with_capacity(64 * KIB);
    z.compress_vec(&vec![0u8; 2 * MIB], &mut wire, FlushCompress::Sync)
        .expect("deflate");
    assert!(wire.len() < 16 * KIB, "{} bytes", wire.len());
    let (a, b) = wire.split_at(wire.len() / 2);
    // RSV1 on the first fragment: the message is compressed.
    let mut first = frame(false, 2, a, Some(ZERO_MASK));
    first[0] |= 0x40;
    s.write_all(&first).await.expect("fragment");
    s.write_all(&frame(false, 0, b, Some(ZERO_MASK)))
        .await
        .expect("fragment");
    let (code, _) = common::raw::read_close(&mut s).await;
    assert_eq!(code, 1013, "evicted by the budget");
    budget_falls_to(&gw, 0).await;
}

#[tokio::test]
async fn memory_follows_what_arrived_not_what_a_header_claims() {
    let _one = SERIAL.lock().await;
    let gw = gateway("1GiB").await;
    let mut whole = open_ws(gw.http(), "/echo").await;
    let mut fragmented = open_ws(gw.http(), "/echo").await;
    // Warm up both paths (buffers, codec state) before recording.
    echoes(&mut whole, b"warm").await;
    echoes(&mut fragmented, b"warm").await;

    LARGEST.store(0, Relaxed);
    ARMED.store(true, Relaxed);
    // One frame claiming 10 MiB, 1 KiB of it sent.
    let mut w = header(true, 2, 10 * MIB as u64);
    w.extend_from_slice(&[b'a'; KIB]);
    whole.write_all(&w).await.expect("send");
    // A fragmented message: a 1 KiB first fragment, then a continuation
    // claiming 10 MiB with 1 KiB of it sent.
    let mut f = frame(false, 2, &[b'b'; KIB], Some(ZERO_MASK));
    f.extend_from_slice(&header(true, 0, 10 * MIB as u64));
    f.extend_from_slice(&[b'c'; KIB]);
    fragmented.write_all(&f).await.expect("send");
    budget_reaches(&gw, 3 * KIB).await;
    ARMED.store(false, Relaxed);

    let largest = LARGEST.load(Relaxed);
    let held = gw.handle.buffered_bytes();
    assert!(
        largest < 64 * KIB,
        "an allocation of {largest} bytes for 3 KiB received (10 MiB claimed twice)"
    );
    assert!(held < 4 * KIB, "the budget counts {held} bytes");
    // Both sessions are still waiting for the rest, and the gateway serves.
    assert!(still_open(&mut whole).await && still_open(&mut fragmented).await);
    let mut other = open_ws(gw.http(), "/echo").await;
    echoes(&mut other, b"ok").await;

    // The recorder does see the gateway's buffers: a 256 KiB message that
    // did arrive needs an allocation at least that large.
    LARGEST.store(0, Relaxed);
    ARMED.store(true, Relaxed);
    echoes(&mut other, &[5; 256 * KIB]).await;
    ARMED.store(false, Relaxed);
    let largest = LARGEST.load(Relaxed);
    assert!(largest >= 256 * KIB, "largest allocation {largest} bytes");
}

#[test]
fn max_buffered_out_of_bounds_is_a_config_error() {
    // Parsing allocates too: not while another test records.
    let _one = SERIAL.blocking_lock();
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    let cfg = |v: &str| format!("[server]\nmax_buffered = \"{v}\"\n");
    let err = |v: &str| match wsgate::config::parse(Path::new("wsgate.toml"), &cfg(v)) {
        Ok(_) => panic!("{v:?} accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err("0"),
        "wsgate.toml:2:16: server.max_buffered: \"0\" is below the minimum of 1MiB (1048576 bytes)"
    );
    assert_eq!(
        err("lots"),
        "wsgate.toml:2:16: server.max_buffered: size \"lots\" does not start with a whole number (e.g. \"64KiB\", \"16MiB\")"
    );
    assert_eq!(
        err("2000GiB"),
        "wsgate.toml:2:16: server.max_buffered: \"2000GiB\" is above the maximum of 1024GiB (1099511627776 bytes)"
    );
    let ok = |v: &str| {
        wsgate::config::parse(Path::new("wsgate.toml"), &format!("{}{listener}", cfg(v)))
            .map(|c| c.server.max_buffered)
            .map_err(|e| e.to_string())
    };
    assert_eq!(ok("1MiB"), Ok(1 << 20));
    assert_eq!(ok("1GiB"), Ok(1 << 30));
    let default =
        wsgate::config::parse(Path::new("wsgate.toml"), listener).map(|c| c.server.max_buffered);
    assert_eq!(default.map_err(|e| e.to_string()), Ok(1 << 30));
}
