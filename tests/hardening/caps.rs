//! Connection caps: floods against the global and per-IP caps with bounded
//! memory, and a panicking connection task that is logged and releases its
//! slot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::{active_reaches, gateway, get_ok, server, SERIAL};
use crate::common::raw::{read_to_close, ws_request};
use crate::common::*;

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens `n` connections at once (from `source` when given), each sending a
/// WebSocket handshake; returns the status lines and the open streams.
async fn flood(addr: SocketAddr, n: usize, source: Option<&str>) -> (Vec<String>, Vec<TcpStream>) {
    let req = ws_request("/echo");
    let source = source.map(|s| s.parse::<std::net::IpAddr>().unwrap());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let req = req.clone();
            tokio::spawn(async move {
                let sock = TcpSocket::new_v4().unwrap();
                if let Some(ip) = source {
                    sock.bind(SocketAddr::new(ip, 0)).unwrap();
                }
                let mut s = sock.connect(addr).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                // Read the head only; 101s stay open as live sessions.
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                let deadline = Instant::now() + Duration::from_secs(20);
                while !head.ends_with(b"\r\n\r\n") {
                    match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
                        Ok(Ok(1)) => head.push(b[0]),
                        _ => break,
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                (line, s)
            })
        })
        .collect();
    let mut lines = Vec::new();
    let mut streams = Vec::new();
    for t in tasks {
        let (l, s) = t.await.unwrap();
        lines.push(l);
        streams.push(s);
    }
    (lines, streams)
}

fn count(lines: &[String], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_hold_the_global_and_per_ip_caps_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let (up, _) = counting_upstream().await;
    let (gw, _) = gateway(server("max_connections", 300), up).await;
    let addr = gw.http();
    // Warm up (first-use allocations are not a leak), then measure.
    let (warm, s) = flood(addr, 50, None).await;
    assert_eq!(count(&warm, "HTTP/1.1 101"), 50);
    drop(s);
    assert!(active_reaches(&gw, 0).await);
    let before = vm_rss_kib();

    for round in 0..2 {
        let (lines, streams) = flood(addr, 750, None).await;
        let ok = count(&lines, "HTTP/1.1 101");
        let full = count(&lines, "HTTP/1.1 503");
        assert_eq!(ok, 300, "round {round}: exactly the cap is admitted");
        assert_eq!(
            ok + full,
            750,
            "round {round}: everyone else gets 503: {:?}",
            &lines[..5]
        );
        assert!(gw.handle.active_connections() <= 300);
        drop(streams);
        assert!(
            active_reaches(&gw, 0).await,
            "round {round}: slots come back"
        );
    }
    let after = vm_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB over two floods"
    );
    // Service continues.
    let (lines, _held) = flood(addr, 10, None).await;
    assert_eq!(count(&lines, "HTTP/1.1 101"), 10);
    assert!(get_ok(addr).await);

    // Per-IP: 127.0.0.1 is capped at 50; another address is not affected.
    let (gw, _) = gateway(server("max_connections_per_ip", 50), up).await;
    let addr = gw.http();
    let (lines, held) = flood(addr, 700, None).await;
    assert_eq!(count(&lines, "HTTP/1.1 101"), 50);
    assert_eq!(count(&lines, "HTTP/1.1 429"), 650, "{:?}", &lines[..5]);
    let (other, _held2) = flood(addr, 20, Some("127.0.0.2")).await;
    assert_eq!(
        count(&other, "HTTP/1.1 101"),
        20,
        "another client address is still admitted"
    );
    drop(held);
    assert!(active_reaches(&gw, 20).await);
    let (again, _held3) = flood(addr, 5, None).await;
    assert_eq!(
        count(&again, "HTTP/1.1 101"),
        5,
        "freed per-IP slots are reusable"
    );
}

#[tokio::test]
async fn a_panicking_connection_task_is_logged_and_releases_its_slot() {
    let _serial = SERIAL.lock().await;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    // The same pieces the accept loop uses: a slot from the caps, a real socket,
    // a task wrapped in `catch_panics`, on a tracker like `shutdown.sessions`.
    let limits = wsgate::limits::ConnLimits::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let slot = limits.admit(peer.ip(), 1, 1).unwrap();
    assert_eq!(
        limits.admit(peer.ip(), 1, 1).err(),
        Some(wsgate::limits::Refusal::Full)
    );
    let task = tracker.spawn(tracing::instrument::WithSubscriber::with_subscriber(
        wsgate::shutdown::catch_panics(async move {
            let _slot = slot;
            let _stream = stream;
            if std::hint::black_box(true) {
                panic!("injected failure in a session");
            }
        }),
        subscriber,
    ));
    assert_eq!(task.await.unwrap(), None, "the panic was caught");
    let closed = read_to_close(&mut client, Duration::from_secs(5))
        .await
        .closed();
    assert!(closed, "the panicked task's socket was closed");
    assert_eq!(limits.active(), 0, "the slot was released");
    assert!(limits.admit(peer.ip(), 1, 1).is_ok());
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("connection task panicked") && text.contains("injected failure"),
        "{text}"
    );
}
