//! `echo` load: N WebSocket connections sending timestamped binary frames,
//! `--depth` in flight each (closed loop) or at a fixed total `--rate` (open
//! loop); reports msgs/s, CPU per message and the echo latency histogram.

use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::client::{open_many, Client, Io};
use crate::frame::{client_frame, parse_frame, stamp};
use crate::opts::Opts;
use crate::stats::{cpu_us, new_hist, now_ns, us};

/// `echo`: opens `--conns`, runs the loads until `--duration`, prints the result line.
pub async fn run_echo(opts: &Opts) -> io::Result<()> {
    let client = Client::new(opts)?;
    let n = opts.num("conns", 100usize);
    let size = opts.num("size", 32usize).max(8);
    let depth = opts.num("depth", 1usize).max(1);
    let rate = opts.num("rate", 0f64);
    let duration = opts.secs("duration", 5.0);
    let conns = open_many(&client, n, 64).await?;
    let (frame, off) = client_frame(2, &vec![b'x'; size]);
    let pid = opts.str("pid", "");
    let cpu0 = cpu_us(&pid);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::with_capacity(n);
    for (i, (io, left)) in conns.into_iter().enumerate() {
        let frame = frame.clone();
        tasks.push(tokio::spawn(async move {
            if rate > 0.0 {
                let interval = Duration::from_secs_f64(n as f64 / rate);
                let first = tokio::time::Instant::now() + interval.mul_f64(i as f64 / n as f64);
                echo_open_loop(io, left, frame, off, interval, first, start, deadline).await
            } else {
                echo_closed_loop(io, left, frame, off, depth, start, deadline).await
            }
        }));
    }
    let mut hist = new_hist();
    let (mut count, mut errors) = (0u64, 0u64);
    for t in tasks {
        match t.await.map_err(io::Error::other)? {
            Ok((c, h)) => {
                count += c;
                hist.add(&h).expect("hist add");
            }
            Err(_) => errors += 1,
        }
    }
    let secs = duration.as_secs_f64();
    let cpu = (cpu_us(&pid) - cpu0) as f64 / count.max(1) as f64;
    println!(
        "{{\"mode\":\"echo\",\"conns\":{n},\"size\":{size},\"depth\":{depth},\"rate\":{rate},\"msgs\":{count},\"msgs_per_s\":{:.0},\"cpu_us\":{cpu:.2},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"errors\":{errors}}}",
        count as f64 / secs,
        us(&hist, 0.5),
        us(&hist, 0.99),
        us(&hist, 1.0)
    );
    if count == 0 {
        return Err(io::Error::other("no message echoed"));
    }
    Ok(())
}

/// Drains complete server frames from `buf`, recording the carried timestamps.
fn take_echoes(buf: &mut Vec<u8>, start: Instant, hist: &mut Histogram<u64>) -> io::Result<u64> {
    let mut pos = 0;
    let mut k = 0;
    let now = now_ns(start);
    while let Some((op, p0, end, _)) = parse_frame(&buf[pos..]) {
        match op {
            2 => {
                let ts =
                    u64::from_le_bytes(buf[pos + p0..pos + p0 + 8].try_into().expect("8 bytes"));
                hist.saturating_record(now.saturating_sub(ts).max(1));
                k += 1;
            }
            8 => return Err(io::Error::other("server closed")),
            _ => {}
        }
        pos += end;
    }
    buf.drain(..pos);
    Ok(k)
}

async fn echo_closed_loop(
    mut io: Box<dyn Io>,
    mut buf: Vec<u8>,
    mut frame: Vec<u8>,
    off: usize,
    depth: usize,
    start: Instant,
    deadline: tokio::time::Instant,
) -> io::Result<(u64, Histogram<u64>)> {
    let mut hist = new_hist();
    let mut out = Vec::with_capacity(frame.len() * depth);
    let mut count = 0;
    let mut to_send = depth as u64;
    buf.reserve(64 * 1024);
    loop {
        out.clear();
        let ts = now_ns(start);
        stamp(&mut frame, off, ts);
        for _ in 0..to_send {
            out.extend_from_slice(&frame);
        }
        io.write_all(&out).await?;
        to_send = 0;
        while to_send == 0 {
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match timeout_at(deadline, io.read_buf(&mut buf)).await {
                Err(_) => return Ok((count, hist)),
                Ok(Ok(0)) => return Err(io::Error::other("eof")),
                Ok(r) => r?,
            };
            to_send = take_echoes(&mut buf, start, &mut hist)?;
            count += to_send;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn echo_open_loop(
    io: Box<dyn Io>,
    mut buf: Vec<u8>,
    mut frame: Vec<u8>,
    off: usize,
    interval: Duration,
    first: tokio::time::Instant,
    start: Instant,
    deadline: tokio::time::Instant,
) -> io::Result<(u64, Histogram<u64>)> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        let mut next = first;
        while next < deadline {
            tokio::time::sleep_until(next).await;
            // Stamped at the actual send time: tokio's 1 ms timer granularity
            // would otherwise dominate sub-millisecond latencies.
            stamp(&mut frame, off, now_ns(start));
            wr.write_all(&frame).await?;
            next += interval;
        }
        Ok::<_, io::Error>(wr)
    });
    let mut hist = new_hist();
    let mut count = 0;
    buf.reserve(64 * 1024);
    let grace = deadline + Duration::from_millis(300);
    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match timeout_at(grace, rd.read_buf(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Err(io::Error::other("eof")),
            Ok(r) => r?,
        };
        count += take_echoes(&mut buf, start, &mut hist)?;
    }
    writer.await.map_err(io::Error::other)??;
    Ok((count, hist))
}
