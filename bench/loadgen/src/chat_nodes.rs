//! `chat-nodes` (S6 across nodes, `bench/s6.sh`): chat rooms spread over
//! several wsgate nodes sharing Redis; delivered msgs/s, latency (cross-node
//! too), the nodes' CPU and RSS, and each Redis shard's CPU and command stats.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

use crate::chat::{chat_join, read_chat, take_chat_msgs};
use crate::client::{Client, Io};
use crate::frame::{client_frame, MASK};
use crate::opts::{parse_url, Opts};
use crate::redis::{redis_cmd, redis_commandstats, redis_cpu_us};
use crate::stats::{cpu_us, new_hist, now_ns, read_rss_kb, us};

/// Chat fan-out across wsgate nodes sharing rooms through Redis (S6 cluster,
/// `bench/s6.sh`): `--rooms` rooms of `--members` members each, member `j` of
/// room `r` on node `(r + j) % nodes` (`--urls`, comma-separated), so every
/// room spans the nodes; member 0 of each room sends, the rooms in turn, at a
/// total `--rate` room messages/s (open loop) for `--duration`. Every member
/// (the sender too) should receive every message of its room. Reports
/// delivered messages/s, delivery latency (all, and cross-node only), the
/// wsgate nodes' CPU (`--pid a,b,c`) and RSS growth per joined session, and, per Redis in `--redis host:port,...`,
/// its CPU (`INFO cpu`) and `INFO commandstats` over the send phase only
/// (`CONFIG RESETSTAT` when it starts).
pub async fn run_chat_nodes(opts: &Opts) -> io::Result<()> {
    let src_ips = opts.num("src-ips", 1usize);
    let nodes: Vec<Client> = opts
        .str("urls", "ws://127.0.0.1:8080/chat/ws")
        .split(',')
        .map(|u| {
            Ok(Client {
                target: parse_url(u)?,
                tls: None,
                src_ips,
            })
        })
        .collect::<io::Result<_>>()?;
    let rooms = opts.num("rooms", 10usize).max(1);
    let members = opts.num("members", 6usize).max(1);
    let rate = opts.num("rate", 1000f64);
    let duration = opts.secs("duration", 5.0);
    let prefix = opts.str("prefix", "s6");
    let redis: Vec<String> = opts
        .str("redis", "")
        .split(',')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    let pids = opts.str("pid", "");

    let shared = Shared {
        start: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
        delivered: Arc::new(AtomicU64::new(0)),
    };
    let rss0 = read_rss_kb(&pids);
    let (tasks, mut senders) = join_rooms(&nodes, rooms, members, &prefix, &shared).await?;
    // Every join was acknowledged (its script ran, its presence published):
    // the counters start here, so they hold the send phase only.
    let cpu0 = redis_baseline(&redis).await?;
    let gw0 = cpu_us(&pids);
    // RSS growth of the nodes per joined chat session (before any message)
    let rss_per_conn = (read_rss_kb(&pids).saturating_sub(rss0) * 1024) / (rooms * members) as u64;
    shared.delivered.store(0, Ordering::Relaxed);

    let (sent, send_secs) =
        send_rounds(&mut senders, &prefix, rooms, rate, duration, shared.start).await?;
    let expected = sent * members as u64;
    // Drain: until every expected delivery arrived, at most 2 s.
    let until = Instant::now() + Duration::from_secs(2);
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gw_cpu = cpu_us(&pids) - gw0;
    let shards = shard_reports(&redis, &cpu0).await?;
    shared.stop.store(true, Ordering::Relaxed);
    let (delivered, errors, all, cross) = gather(tasks).await?;
    println!(
        "{{\"mode\":\"chat-nodes\",\"nodes\":{},\"rooms\":{rooms},\"members\":{members},\"rate\":{rate},\"sent\":{sent},\"sent_per_s\":{:.0},\"delivered\":{delivered},\"expected\":{expected},\"delivered_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"cross_p99_us\":{},\"gw_cpu_us\":{gw_cpu},\"rss_per_conn\":{rss_per_conn},\"redis\":[{}],\"errors\":{errors}}}",
        nodes.len(),
        sent as f64 / send_secs,
        delivered as f64 / send_secs,
        us(&all, 0.5),
        us(&all, 0.99),
        us(&all, 1.0),
        us(&cross, 0.99),
        shards.join(",")
    );
    if delivered == 0 {
        return Err(io::Error::other("no chat message delivered"));
    }
    Ok(())
}

/// What every member task shares with the run: the run clock the send times
/// count from, the stop flag, and the deliveries counted across all members.
#[derive(Clone)]
struct Shared {
    start: Instant,
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
}

/// A member's task: whether it is on another node than its room's sender,
/// and the deliveries it saw with their latencies.
type Member = JoinHandle<io::Result<(bool, u64, Histogram<u64>)>>;

/// Connects and joins room by room, member `j` of room `r` on node
/// `(r + j) % nodes`, each member reading in a task of its own; returns the
/// tasks and every room's sender (its member 0).
async fn join_rooms(
    nodes: &[Client],
    rooms: usize,
    members: usize,
    prefix: &str,
    shared: &Shared,
) -> io::Result<(Vec<Member>, Vec<WriteHalf<Box<dyn Io>>>)> {
    let mut tasks = Vec::with_capacity(rooms * members);
    let mut senders = Vec::with_capacity(rooms);
    // `i` numbers connections for --src-ips.
    let mut i = 0;
    for r in 0..rooms {
        let room = format!("{prefix}r{r}");
        let sender_node = r % nodes.len();
        for j in 0..members {
            let node = (r + j) % nodes.len();
            let c = &nodes[node];
            let user = format!("{prefix}r{r}m{j}");
            let path = format!("{}?user={user}", c.target.path);
            let (mut io, buf) = c.connect(i, Some(&path)).await?;
            i += 1;
            let buf = chat_join(&mut io, buf, &room, &user).await?;
            let (rd, wr) = tokio::io::split(io);
            if j == 0 {
                senders.push(wr);
            }
            let remote = node != sender_node;
            tasks.push(tokio::spawn(node_member(rd, buf, remote, shared.clone())));
        }
    }
    Ok((tasks, senders))
}

/// One room member: records the latency of every message delivered to it and
/// adds them to the run-wide count, until `stop`.
async fn node_member(
    mut rd: ReadHalf<Box<dyn Io>>,
    mut buf: Vec<u8>,
    remote: bool,
    shared: Shared,
) -> io::Result<(bool, u64, Histogram<u64>)> {
    let mut hist = new_hist();
    let mut count = 0u64;
    buf.reserve(64 * 1024);
    loop {
        let n = take_chat_msgs(&mut buf, shared.start, &mut hist);
        count += n;
        shared.delivered.fetch_add(n, Ordering::Relaxed);
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        read_chat(&mut rd, &mut buf, Duration::from_millis(50)).await?;
    }
    Ok((remote, count, hist))
}

/// `CONFIG RESETSTAT` on every Redis, then its CPU time as the baseline.
async fn redis_baseline(redis: &[String]) -> io::Result<Vec<f64>> {
    let mut cpu0 = Vec::with_capacity(redis.len());
    for a in redis {
        redis_cmd(a, "CONFIG RESETSTAT").await?;
        cpu0.push(redis_cpu_us(a).await?);
    }
    Ok(cpu0)
}

/// The rooms' senders in turn, at a total `rate` messages/s for `duration`,
/// each message carrying its send time; returns the messages sent and the
/// seconds the send phase took.
async fn send_rounds(
    senders: &mut [WriteHalf<Box<dyn Io>>],
    prefix: &str,
    rooms: usize,
    rate: f64,
    duration: Duration,
    start: Instant,
) -> io::Result<(u64, f64)> {
    let frames: Vec<(Vec<u8>, usize)> = (0..rooms)
        .map(|r| {
            // the text is 20 digits wide: the send time, stamped per send
            client_frame(
                1,
                format!(
                    "{{\"type\":\"msg\",\"room\":\"{prefix}r{r}\",\"text\":\"{:020}\"}}",
                    0
                )
                .as_bytes(),
            )
        })
        .collect();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let t_start = tokio::time::Instant::now();
    let deadline = t_start + duration;
    let mut next = t_start;
    let mut sent = 0u64;
    while next < deadline {
        tokio::time::sleep_until(next).await;
        let r = sent as usize % rooms;
        let (frame, off) = &frames[r];
        let mut f = frame.clone();
        // re-mask the 20 timestamp digits: `..."text":"` + digits + `"}`
        let digits = format!("{:020}", now_ns(start));
        let d0 = f.len() - 2 - 20;
        for (k, b) in digits.bytes().enumerate() {
            f[d0 + k] = b ^ MASK[(d0 + k - off) % 4];
        }
        senders[r].write_all(&f).await?;
        sent += 1;
        next += interval;
    }
    Ok((sent, t_start.elapsed().as_secs_f64()))
}

/// Every Redis's CPU time since its baseline and its `INFO commandstats`, as
/// the JSON objects of the report's `redis` array.
async fn shard_reports(redis: &[String], cpu0: &[f64]) -> io::Result<Vec<String>> {
    let mut shards = Vec::with_capacity(redis.len());
    for (a, c0) in redis.iter().zip(cpu0) {
        let cpu = redis_cpu_us(a).await? - c0;
        let stats = redis_commandstats(a).await?;
        shards.push(format!(
            "{{\"addr\":\"{a}\",\"cpu_us\":{cpu:.0},\"commandstats\":{stats}}}"
        ));
    }
    Ok(shards)
}

/// Waits for the members' tasks: (delivered, errors, latency of all
/// deliveries, latency of cross-node deliveries only).
async fn gather(tasks: Vec<Member>) -> io::Result<(u64, u64, Histogram<u64>, Histogram<u64>)> {
    let (mut all, mut cross) = (new_hist(), new_hist());
    let (mut delivered, mut errors) = (0u64, 0u64);
    for t in tasks {
        match t.await.map_err(io::Error::other)? {
            Ok((remote, c, h)) => {
                delivered += c;
                all.add(&h).expect("hist add");
                if remote {
                    cross.add(&h).expect("hist add");
                }
            }
            Err(_) => errors += 1,
        }
    }
    Ok((delivered, errors, all, cross))
}
