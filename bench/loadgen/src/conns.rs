//! Connection-level loads: `connrate` (new WebSocket connections per second,
//! ws or wss: connect, handshake, close) and `idle` (hold N open connections
//! and report the server's RSS growth per connection, S3).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::client::{open_many, Client, Io, RESUMED};
use crate::frame::client_frame;
use crate::opts::Opts;
use crate::stats::{cpu_us, new_hist, read_rss_kb, us};

/// `connrate`: `--concurrency` connectors for `--duration`; prints conns/s and handshake latency.
pub async fn run_connrate(opts: &Opts) -> io::Result<()> {
    let client = Client::new(opts)?;
    let parallel = opts.num("concurrency", 32usize);
    let duration = opts.secs("duration", 5.0);
    let pid = opts.str("pid", "");
    let cpu0 = cpu_us(&pid);
    let deadline = tokio::time::Instant::now() + duration;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, next, errors) = (client.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(connrate_worker(
            client, next, errors, deadline,
        )));
    }
    let mut hist = new_hist();
    let mut ok = 0;
    for t in tasks {
        let (c, h) = t.await.map_err(io::Error::other)?;
        ok += c;
        hist.add(&h).expect("hist add");
    }
    let errors = errors.load(Ordering::Relaxed);
    let cpu = (cpu_us(&pid) - cpu0) as f64 / ok.max(1) as f64;
    println!(
        "{{\"mode\":\"connrate\",\"tls\":{},\"conns\":{ok},\"resumed\":{},\"conns_per_s\":{:.0},\"cpu_us\":{cpu:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
        client.target.tls,
        RESUMED.load(Ordering::Relaxed),
        ok as f64 / duration.as_secs_f64(),
        us(&hist, 0.5),
        us(&hist, 0.99)
    );
    if ok == 0 {
        return Err(io::Error::other("no connection completed"));
    }
    Ok(())
}

/// One of `--concurrency` connectors: new connections back to back until
/// `deadline` (connection numbers from `next`, for --src-ips); returns how
/// many completed and their connect + handshake times.
async fn connrate_worker(
    client: Arc<Client>,
    next: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    deadline: tokio::time::Instant,
) -> (u64, Histogram<u64>) {
    let mut hist = new_hist();
    let mut ok = 0u64;
    let (close, _) = client_frame(8, &1000u16.to_be_bytes());
    while tokio::time::Instant::now() < deadline {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        let t0 = Instant::now();
        match timeout_at(deadline + Duration::from_secs(2), client.connect(i, None)).await {
            Ok(Ok((io, _))) => {
                hist.saturating_record(t0.elapsed().as_nanos() as u64);
                ok += 1;
                close_politely(io, &close).await;
            }
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (ok, hist)
}

/// Sends `close` and waits (at most 1 s) for the server's close/EOF, so the
/// server side does its full teardown inside the run.
async fn close_politely(mut io: Box<dyn Io>, close: &[u8]) {
    let _ = io.write_all(close).await;
    let mut sink = [0u8; 256];
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(n)) = timeout_at(until, io.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// `idle`: opens `--conns`, holds them `--hold` seconds, prints the RSS growth of `--pid`.
pub async fn run_idle(opts: &Opts) -> io::Result<()> {
    let client = Client::new(opts)?;
    let n = opts.num("conns", 10_000usize);
    let pid = opts.str("pid", "");
    let hold = opts.secs("hold", 2.0);
    let before = read_rss_kb(&pid);
    let t0 = Instant::now();
    let conns = open_many(&client, n, 100).await?;
    let open_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(hold).await;
    let after = read_rss_kb(&pid);
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "{{\"mode\":\"idle\",\"conns\":{n},\"rss_before_kb\":{before},\"rss_after_kb\":{after},\"bytes_per_conn\":{per_conn:.0},\"open_s\":{open_s:.2}}}"
    );
    drop(conns);
    Ok(())
}
