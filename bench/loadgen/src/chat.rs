//! Single-room chat fan-out (`chat`): N members of one room, one sender at
//! `--rate`; delivered msgs/s and delivery latency. Also the chat protocol
//! pieces `chat-nodes` shares: joining a room and reading the send time out
//! of a delivered `msg`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::client::{Client, Io};
use crate::frame::{client_frame, find, parse_frame};
use crate::opts::Opts;
use crate::stats::{new_hist, now_ns, us};

/// The decimal number after `"text":"` in a chat `msg` frame (the send time).
pub fn chat_ts(payload: &[u8]) -> Option<u64> {
    find(payload, b"\"type\":\"msg\"")?;
    let p = find(payload, b"\"text\":\"")? + 8;
    let digits = payload[p..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[p..p + digits])
        .ok()?
        .parse()
        .ok()
}

/// `chat`: `--members` join `--room`, member 0 sends at `--rate` for `--duration`.
pub async fn run_chat(opts: &Opts) -> io::Result<()> {
    let client = Client::new(opts)?;
    let members = opts.num("members", 100usize).max(1);
    let rate = opts.num("rate", 200f64);
    let duration = opts.secs("duration", 5.0);
    let room = opts.str("room", "bench");
    let mut conns = Vec::with_capacity(members);
    for i in 0..members {
        let path = format!("{}?user=b{i}", client.target.path);
        conns.push(client.connect(i, Some(&path)).await?);
    }
    let ready = Arc::new(tokio::sync::Barrier::new(members + 1));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut sender = None;
    for (i, (mut io, buf)) in conns.into_iter().enumerate() {
        let buf = chat_join(&mut io, buf, &room, &format!("b{i}")).await?;
        let (rd, wr) = tokio::io::split(io);
        if i == 0 {
            sender = Some(wr);
        }
        let (ready, stop) = (ready.clone(), stop.clone());
        tasks.push(tokio::spawn(chat_member(rd, buf, start, ready, stop)));
    }
    let wr = sender.expect("one member");
    ready.wait().await;
    let sent = send_chat(wr, &room, rate, duration, start).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_hist();
    let (mut delivered, mut errors) = (0u64, 0u64);
    for t in tasks {
        match t.await.map_err(io::Error::other)? {
            Ok((c, h)) => {
                delivered += c;
                hist.add(&h).expect("hist add");
            }
            Err(_) => errors += 1,
        }
    }
    let expected = sent * members as u64;
    println!(
        "{{\"mode\":\"chat\",\"members\":{members},\"rate\":{rate},\"sent\":{sent},\"delivered\":{delivered},\"expected\":{expected},\"delivered_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
        delivered as f64 / duration.as_secs_f64(),
        us(&hist, 0.5),
        us(&hist, 0.99)
    );
    if delivered == 0 {
        return Err(io::Error::other("no chat message delivered"));
    }
    Ok(())
}

/// One member of the `chat` room: once everyone is `ready`, records the
/// latency of every message delivered to it until `stop`.
async fn chat_member(
    mut rd: ReadHalf<Box<dyn Io>>,
    mut buf: Vec<u8>,
    start: Instant,
    ready: Arc<tokio::sync::Barrier>,
    stop: Arc<AtomicBool>,
) -> io::Result<(u64, Histogram<u64>)> {
    let mut hist = new_hist();
    let mut count = 0u64;
    ready.wait().await;
    buf.reserve(64 * 1024);
    loop {
        count += take_chat_msgs(&mut buf, start, &mut hist);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        read_chat(&mut rd, &mut buf, Duration::from_millis(100)).await?;
    }
    Ok((count, hist))
}

/// The `chat` sender: one `msg` carrying the send time every `1 / rate`
/// seconds for `duration`; returns how many were sent.
async fn send_chat(
    mut wr: WriteHalf<Box<dyn Io>>,
    room: &str,
    rate: f64,
    duration: Duration,
    start: Instant,
) -> io::Result<u64> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let t_start = tokio::time::Instant::now();
    let deadline = t_start + duration;
    let mut next = t_start;
    let mut sent = 0u64;
    while next < deadline {
        tokio::time::sleep_until(next).await;
        let text = format!(
            "{{\"type\":\"msg\",\"room\":\"{room}\",\"text\":\"{}\"}}",
            now_ns(start)
        );
        wr.write_all(&client_frame(1, text.as_bytes()).0).await?;
        sent += 1;
        next += interval;
    }
    Ok(sent)
}

/// Records the delivery latency of every chat `msg` among the complete frames
/// at the start of `buf` and drains those frames; returns how many there were.
pub fn take_chat_msgs(buf: &mut Vec<u8>, start: Instant, hist: &mut Histogram<u64>) -> u64 {
    let mut pos = 0;
    let mut n = 0;
    let now = now_ns(start);
    while let Some((op, p0, end, _)) = parse_frame(&buf[pos..]) {
        if op == 1 {
            if let Some(ts) = chat_ts(&buf[pos + p0..pos + end]) {
                hist.saturating_record(now.saturating_sub(ts).max(1));
                n += 1;
            }
        }
        pos += end;
    }
    buf.drain(..pos);
    n
}

/// Reads more of a member's stream into `buf`, waiting at most `wait` (so the
/// caller gets to check its stop flag); end of stream is an error.
pub async fn read_chat<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    wait: Duration,
) -> io::Result<()> {
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 * 1024);
    }
    match tokio::time::timeout(wait, rd.read_buf(buf)).await {
        Ok(Ok(0)) => Err(io::Error::other("chat closed")),
        Ok(r) => r.map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Sends `join` for `room` on a fresh chat connection and waits for the user's
/// own presence acknowledgement; returns the bytes read past it.
pub async fn chat_join(
    io: &mut Box<dyn Io>,
    mut buf: Vec<u8>,
    room: &str,
    user: &str,
) -> io::Result<Vec<u8>> {
    let (join, _) = client_frame(
        1,
        format!("{{\"type\":\"join\",\"room\":\"{room}\"}}").as_bytes(),
    );
    io.write_all(&join).await?;
    let me = format!("\"user\":\"{user}\"");
    loop {
        let mut pos = 0;
        while let Some((_, p0, end, _)) = parse_frame(&buf[pos..]) {
            let payload = &buf[pos + p0..pos + end];
            pos += end;
            if find(payload, b"presence").is_some() && find(payload, me.as_bytes()).is_some() {
                buf.drain(..pos);
                return Ok(buf);
            }
        }
        buf.drain(..pos);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("chat closed before join ack"));
        }
    }
}
