//! The key table under a flood of distinct keys: it stays within its cap and
//! RSS growth stays bounded.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::limit;
use crate::common::{Cfg, Route, TestGateway, WAIT};

/// Resident set size of this process (the gateway runs in it).
fn rss() -> u64 {
    wsgate::metrics::process_rss_bytes().expect("/proc/self/status")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `keys` requests with distinct `X-Api-Key` values over `conns`
/// keep-alive connections at once, pipelined in batches (a client library
/// would spend more than the gateway); returns how many were limited.
async fn flood(addr: SocketAddr, path: &'static str, keys: u64, conns: u64) -> u64 {
    const BATCH: u64 = 256;
    let mut tasks = Vec::new();
    for c in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mine: Vec<u64> = (c..keys).step_by(conns as usize).collect();
            let (mut passed, mut limited) = (0u64, 0u64);
            let mut buf = Vec::new();
            for chunk in mine.chunks(BATCH as usize) {
                let mut out = String::new();
                for n in chunk {
                    out.push_str(&format!(
                        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: key-{n:08}-{}\r\n\r\n",
                        "x".repeat(40)
                    ));
                }
                s.write_all(out.as_bytes()).await.expect("write batch");
                let want = passed + limited + chunk.len() as u64;
                let mut tmp = [0u8; 65536];
                while passed + limited < want {
                    let n = tokio::time::timeout(WAIT, s.read(&mut tmp))
                        .await
                        .expect("answers in time")
                        .expect("read");
                    assert!(n > 0, "the gateway closed mid-flood");
                    buf.extend_from_slice(&tmp[..n]);
                    // Count whole status lines; keep a partial one for the next read.
                    let mut counted = 0;
                    while let Some(i) = find(&buf[counted..], b"HTTP/1.1 ") {
                        let at = counted + i;
                        if buf.len() < at + 12 {
                            break;
                        }
                        match &buf[at + 9..at + 12] {
                            b"426" => passed += 1,
                            b"429" => limited += 1,
                            other => panic!("unexpected {}", String::from_utf8_lossy(other)),
                        }
                        counted = at + 12;
                    }
                    let keep_from = counted.max(buf.len().saturating_sub(11));
                    buf.drain(..keep_from);
                }
            }
            limited
        }));
    }
    let mut limited = 0;
    for t in tasks {
        limited += t.await.expect("flood task");
    }
    limited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_stays_within_the_cap() {
    const CAP: usize = 10_000;
    const KEYS: u64 = 100_000;
    let gw = TestGateway::start(
        // One token an hour: no bucket is ever full again during the test, so
        // only the cap (not idleness) keeps the table small.
        &limit(Cfg::new(), "api", "1/h", 5, "header:X-Api-Key")
            .set("limit.api.max_keys", CAP as i64)
            .set("log.access_log", false)
            .listener_plain()
            .route(Route::app("/flood", "echo").set("limits", vec!["api"]))
            .build(),
    )
    .await;
    let limiter = gw.handle.limiter("api").expect("limit api");
    // Warm up the paths (allocator arenas, connection state) before measuring.
    flood(gw.http(), "/flood", 2_000, 4).await;
    let before = rss();
    let started = std::time::Instant::now();
    let limited = flood(gw.http(), "/flood", KEYS, 4).await;
    let elapsed = started.elapsed();
    let after = rss();
    let tracked = limiter.tracked_keys();
    eprintln!(
        "flood: {KEYS} distinct keys in {elapsed:?}, tracked {tracked} (cap {CAP}), \
         RSS {} KiB -> {} KiB (+{} KiB)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    );
    // Every key is new, so each one's first request passes.
    assert_eq!(limited, 0);
    assert!(tracked <= CAP, "tracked {tracked} > cap {CAP}");
    assert!(tracked >= CAP / 2, "the table is used: {tracked}");
    // The table itself is well under 1 MiB at this cap; allow generously for
    // the allocator and the test's own clients.
    assert!(
        after.saturating_sub(before) < 32 << 20,
        "RSS grew by {} KiB",
        (after - before) / 1024
    );
}
