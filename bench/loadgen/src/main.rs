//! wsbench: the load generator and the tiny servers behind wsgate's benchmark
//! suite (`bench/run.sh`, results in `BENCHMARKS.md`).
//!
//! # Modes
//!
//! | mode | does |
//! |---|---|
//! | `echo` | N WebSocket connections sending pre-masked binary frames, `--depth` in flight each (closed loop), or at a fixed total `--rate` (open loop); msgs/s and an HDR latency histogram |
//! | `connrate` | new WebSocket connections per second (ws or wss): connect, handshake, close |
//! | `idle` | open N WebSocket connections, hold them, report the RSS growth of `--pid` per connection |
//! | `chat` | one chat room, N members, one sender at `--rate`; delivered msgs/s and delivery latency |
//! | `chat-nodes` | chat rooms spread over several wsgate nodes sharing Redis (S6 across nodes, `bench/s6.sh`): delivered msgs/s, latency (cross-node too), nodes' CPU, Redis CPU and `INFO commandstats` per shard |
//! | `ws-server` | upstream WebSocket echo server for the proxy scenarios (minimal hand-written tokio echo, all frames of one read in one write; `direct` in S2/S3) |
//! | `fws-server` | WebSocket echo with the `fastwebsockets` crate (hyper 1 upgrade, `FragmentCollector`, one write per frame): S2/S3 comparison |
//! | `tt-server` | WebSocket echo with `tokio-tungstenite`, default config (`accept_async`, 128 KiB read buffer): S2/S3 comparison |
//! | `grpc` | gRPC unary calls (tonic, raw-bytes codec) with `--concurrency` in flight over `--conns` HTTP/2 connections: calls/s, latency (`bench/grpc.sh`) |
//! | `grpc-server` | h2c gRPC server answering `t.Echo/Unary` with the request message (tonic `server::Grpc` on hyper) |
//! | `http-server` | keep-alive HTTP/1.1 backend answering every request with 13 bytes |
//!
//! Every load mode prints one JSON object on stdout. Latencies are measured from
//! a timestamp carried in the message itself (8 bytes of nanoseconds since the
//! run started), so no per-message bookkeeping is needed on the client.
//!
//! Client frames are built once with a fixed mask key; only the 8 timestamp
//! bytes are re-masked per send. `--src-ips K` spreads client connections over
//! K source addresses in 127.0.1.0/24 and up, to pass the ephemeral-port limit.

mod grpc;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout_at;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: wsbench MODE [--key value]...  (modes: echo connrate idle chat chat-nodes grpc ws-server fws-server tt-server http-server grpc-server)");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[1..]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.num("threads", 1usize))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match mode.as_str() {
            "echo" => run_echo(&opts).await,
            "connrate" => run_connrate(&opts).await,
            "idle" => run_idle(&opts).await,
            "chat" => run_chat(&opts).await,
            "chat-nodes" => run_chat_nodes(&opts).await,
            "grpc" => grpc::run_grpc(&opts).await,
            "grpc-server" => grpc::serve_grpc(&opts).await,
            "ws-server" => serve(&opts, serve_ws_echo).await,
            "fws-server" => serve(&opts, serve_fws_echo).await,
            "tt-server" => serve(&opts, serve_tt_echo).await,
            "http-server" => serve(&opts, serve_http).await,
            other => Err(io::Error::other(format!("unknown mode {other}"))),
        }
    });
    if let Err(e) = result {
        eprintln!("wsbench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- options

/// `--key value` pairs; every mode reads what it needs with a default.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k.trim_start_matches("--").to_string();
            let val = it.next().cloned().unwrap_or_default();
            map.insert(key, val);
        }
        Opts(map)
    }
    fn str(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("--{key}: not a number: {v}")),
            None => default,
        }
    }
    fn secs(&self, key: &str, default: f64) -> Duration {
        Duration::from_secs_f64(self.num(key, default))
    }
}

/// A parsed `ws://` or `wss://` URL (IP literal hosts only: loopback benchmarks).
#[derive(Clone)]
struct Target {
    tls: bool,
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> io::Result<Target> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err(io::Error::other(format!(
            "url must start with ws:// or wss://: {url}"
        )));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| io::Error::other(format!("{hostport}: {e}")))?;
    Ok(Target {
        tls,
        addr,
        host: hostport.to_string(),
        path: path.to_string(),
    })
}

/// Source address of client connection `i` when spreading over `k` addresses.
fn source_ip(i: usize, k: usize) -> Option<Ipv4Addr> {
    if k <= 1 {
        return None;
    }
    let n = i % k;
    Some(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}

// ---------------------------------------------------------------- client connections

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Accepts any server certificate: the benchmark measures handshakes, not trust.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS handshakes that resumed a session (S5 `wss-resume` reports them, so a
/// run shows resumption really happened).
static RESUMED: AtomicU64 = AtomicU64::new(0);

/// TLS 1.3 client, ALPN http/1.1 so the gateway does not pick h2. Without
/// `resume` every connection is a full handshake; with it (`--resume 1`) the
/// client keeps its tickets and resumes (S5 `wss-resume`).
fn tls_connector(resume: bool) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

struct Client {
    target: Target,
    tls: Option<tokio_rustls::TlsConnector>,
    src_ips: usize,
}

impl Client {
    fn new(opts: &Opts) -> io::Result<Arc<Client>> {
        let target = parse_url(&opts.str("url", "ws://127.0.0.1:8080/echo"))?;
        let resume = opts.str("resume", "0") == "1";
        let tls = target.tls.then(|| tls_connector(resume));
        Ok(Arc::new(Client {
            target,
            tls,
            src_ips: opts.num("src-ips", 1usize),
        }))
    }

    /// TCP (+TLS) connect and the WebSocket handshake; returns the stream and any
    /// bytes read past the 101 response.
    async fn connect(&self, i: usize, path: Option<&str>) -> io::Result<(Box<dyn Io>, Vec<u8>)> {
        let sock = TcpSocket::new_v4()?;
        if let Some(ip) = source_ip(i, self.src_ips) {
            sock.bind(SocketAddr::new(ip.into(), 0))?;
        }
        let tcp = sock.connect(self.target.addr).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = match &self.tls {
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let s = c.connect(name, tcp).await?;
                if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    RESUMED.fetch_add(1, Ordering::Relaxed);
                }
                Box::new(s)
            }
            None => Box::new(tcp),
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            path.unwrap_or(&self.target.path),
            self.target.host
        );
        io.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let end = loop {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::other("closed during handshake"));
            }
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&buf[..end.min(120)]).into_owned();
            return Err(io::Error::other(format!("handshake refused: {head}")));
        }
        Ok((io, buf[end..].to_vec()))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- frames

/// A masked client frame; returns it with the offset of its payload.
fn client_frame(opcode: u8, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    let off = f.len();
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    (f, off)
}

/// Writes the masked timestamp into the first 8 payload bytes of a template frame.
fn stamp(frame: &mut [u8], off: usize, ts: u64) {
    for (i, b) in ts.to_le_bytes().iter().enumerate() {
        frame[off + i] = b ^ MASK[i % 4];
    }
}

/// One complete frame at the start of `buf`: (opcode, payload range, total length).
fn parse_frame(buf: &[u8]) -> Option<(u8, usize, usize, Option<[u8; 4]>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut off) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < off + 4 {
            return None;
        }
        let m = [buf[off], buf[off + 1], buf[off + 2], buf[off + 3]];
        off += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < off + len {
        return None;
    }
    Some((opcode, off, off + len, mask))
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram")
}

fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0
}

fn read_rss_kb(pids: &str) -> u64 {
    pids.split(',')
        .filter(|p| !p.is_empty())
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                })
                .unwrap_or(0)
        })
        .sum()
}

/// User + system CPU time of the given pids in microseconds (from /proc, at the
/// kernel's 100 Hz tick). CPU per message is far less sensitive to other
/// tenants on the machine than messages per second.
fn cpu_us(pids: &str) -> u64 {
    pids.split(',')
        .filter(|p| !p.is_empty())
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            // fields 14 and 15 of stat(5); `after` starts at field 3
            let t = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (t(14) + t(15)) * 10_000
        })
        .sum()
}

/// Opens `n` connections, at most `parallel` handshakes at a time.
async fn open_many(
    client: &Arc<Client>,
    n: usize,
    parallel: usize,
) -> io::Result<Vec<(Box<dyn Io>, Vec<u8>)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let c = client.clone();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(async move {
            let r = c.connect(i, None).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.map_err(io::Error::other)??);
    }
    Ok(conns)
}

// ---------------------------------------------------------------- echo load

async fn run_echo(opts: &Opts) -> io::Result<()> {
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

// ---------------------------------------------------------------- connection rate

async fn run_connrate(opts: &Opts) -> io::Result<()> {
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
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut ok = 0u64;
            let (close, _) = client_frame(8, &1000u16.to_be_bytes());
            while tokio::time::Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let t0 = Instant::now();
                match timeout_at(deadline + Duration::from_secs(2), client.connect(i, None)).await {
                    Ok(Ok((mut io, _))) => {
                        hist.saturating_record(t0.elapsed().as_nanos() as u64);
                        ok += 1;
                        // Close politely and wait for the server's close/EOF, so
                        // the server side does its full teardown inside the run.
                        let _ = io.write_all(&close).await;
                        let mut sink = [0u8; 256];
                        let until = tokio::time::Instant::now() + Duration::from_secs(1);
                        while let Ok(Ok(n)) = timeout_at(until, io.read(&mut sink)).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ok, hist)
        }));
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

// ---------------------------------------------------------------- idle connections

async fn run_idle(opts: &Opts) -> io::Result<()> {
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

// ---------------------------------------------------------------- chat fan-out

/// The decimal number after `"text":"` in a chat `msg` frame (the send time).
fn chat_ts(payload: &[u8]) -> Option<u64> {
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

async fn run_chat(opts: &Opts) -> io::Result<()> {
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
        let mut buf = chat_join(&mut io, buf, &room, &format!("b{i}")).await?;
        let (mut rd, wr) = tokio::io::split(io);
        if i == 0 {
            sender = Some(wr);
        }
        let (ready, stop) = (ready.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut count = 0u64;
            ready.wait().await;
            buf.reserve(64 * 1024);
            loop {
                let mut pos = 0;
                let now = now_ns(start);
                while let Some((op, p0, end, _)) = parse_frame(&buf[pos..]) {
                    if op == 1 {
                        if let Some(ts) = chat_ts(&buf[pos + p0..pos + end]) {
                            hist.saturating_record(now.saturating_sub(ts).max(1));
                            count += 1;
                        }
                    }
                    pos += end;
                }
                buf.drain(..pos);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if buf.capacity() - buf.len() < 8192 {
                    buf.reserve(64 * 1024);
                }
                match tokio::time::timeout(Duration::from_millis(100), rd.read_buf(&mut buf)).await
                {
                    Ok(Ok(0)) => return Err(io::Error::other("chat closed")),
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => {}
                }
            }
            Ok::<_, io::Error>((count, hist))
        }));
    }
    let mut wr = sender.expect("one member");
    ready.wait().await;
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

// ---------------------------------------------------------------- chat across nodes (S6 cluster)

/// Sends `join` for `room` on a fresh chat connection and waits for the user's
/// own presence acknowledgement; returns the bytes read past it.
async fn chat_join(
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

/// One RESP inline command to a Redis at `addr`; returns the reply's text
/// (a bulk string's contents, or a status line).
async fn redis_cmd(addr: &str, cmd: &str) -> io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::other(format!("redis {addr}: connect timed out")))??;
    s.write_all(format!("{cmd}\r\n").as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(nl) = find(&buf, b"\r\n") {
            match buf[0] {
                b'+' => return Ok(String::from_utf8_lossy(&buf[1..nl]).into_owned()),
                b'$' => {
                    let n: usize = std::str::from_utf8(&buf[1..nl])
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| io::Error::other("redis: bad bulk length"))?;
                    if buf.len() >= nl + 2 + n {
                        return Ok(String::from_utf8_lossy(&buf[nl + 2..nl + 2 + n]).into_owned());
                    }
                }
                _ => {
                    let line = String::from_utf8_lossy(&buf[..nl]).into_owned();
                    return Err(io::Error::other(format!("redis {addr} {cmd}: {line}")));
                }
            }
        }
        match timeout_at(until, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err(io::Error::other(format!("redis {addr}: closed"))),
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(io::Error::other(format!("redis {addr} {cmd}: timed out"))),
        }
    }
}

/// used_cpu_sys + used_cpu_user of a Redis, in microseconds (`INFO cpu`).
async fn redis_cpu_us(addr: &str) -> io::Result<f64> {
    let info = redis_cmd(addr, "INFO cpu").await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("used_cpu_sys:") + field("used_cpu_user:")) * 1e6)
}

/// `INFO commandstats` as JSON: `{"evalsha":[calls,usec],...}`.
async fn redis_commandstats(addr: &str) -> io::Result<String> {
    let info = redis_cmd(addr, "INFO commandstats").await?;
    let mut out = Vec::new();
    for l in info.lines() {
        // cmdstat_evalsha:calls=30,usec=1500,usec_per_call=50.00,...
        let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let get = |k: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(k))
                .unwrap_or("0")
                .to_string()
        };
        out.push(format!(
            "\"{}\":[{},{}]",
            name.replace('|', "_"),
            get("calls="),
            get("usec=")
        ));
    }
    Ok(format!("{{{}}}", out.join(",")))
}

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
async fn run_chat_nodes(opts: &Opts) -> io::Result<()> {
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

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered_all = Arc::new(AtomicU64::new(0));
    let rss0 = read_rss_kb(&pids);
    let mut tasks = Vec::with_capacity(rooms * members);
    let mut senders = Vec::with_capacity(rooms);
    // Connect and join room by room; `i` numbers connections for --src-ips.
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
            let mut buf = chat_join(&mut io, buf, &room, &user).await?;
            let (mut rd, wr) = tokio::io::split(io);
            if j == 0 {
                senders.push(wr);
            }
            let remote = node != sender_node;
            let (stop, delivered_all) = (stop.clone(), delivered_all.clone());
            tasks.push(tokio::spawn(async move {
                let mut hist = new_hist();
                let mut count = 0u64;
                buf.reserve(64 * 1024);
                loop {
                    let mut pos = 0;
                    let now = now_ns(start);
                    let mut n = 0;
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
                    count += n;
                    delivered_all.fetch_add(n, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if buf.capacity() - buf.len() < 8192 {
                        buf.reserve(64 * 1024);
                    }
                    match tokio::time::timeout(Duration::from_millis(50), rd.read_buf(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) => return Err(io::Error::other("chat closed")),
                        Ok(r) => {
                            r?;
                        }
                        Err(_) => {}
                    }
                }
                Ok::<_, io::Error>((remote, count, hist))
            }));
        }
    }
    // Every join was acknowledged (its script ran, its presence published):
    // the counters start here, so they hold the send phase only.
    let mut cpu0 = Vec::with_capacity(redis.len());
    for a in &redis {
        redis_cmd(a, "CONFIG RESETSTAT").await?;
        cpu0.push(redis_cpu_us(a).await?);
    }
    let gw0 = cpu_us(&pids);
    // RSS growth of the nodes per joined chat session (before any message)
    let rss_per_conn = (read_rss_kb(&pids).saturating_sub(rss0) * 1024) / (rooms * members) as u64;
    delivered_all.store(0, Ordering::Relaxed);

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
    let send_secs = t_start.elapsed().as_secs_f64();
    let expected = sent * members as u64;
    // Drain: until every expected delivery arrived, at most 2 s.
    let until = Instant::now() + Duration::from_secs(2);
    while delivered_all.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gw_cpu = cpu_us(&pids) - gw0;
    let mut shards = Vec::with_capacity(redis.len());
    for (a, c0) in redis.iter().zip(&cpu0) {
        let cpu = redis_cpu_us(a).await? - c0;
        let stats = redis_commandstats(a).await?;
        shards.push(format!(
            "{{\"addr\":\"{a}\",\"cpu_us\":{cpu:.0},\"commandstats\":{stats}}}"
        ));
    }
    stop.store(true, Ordering::Relaxed);
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

// ---------------------------------------------------------------- servers

async fn serve<F, Fut>(opts: &Opts, handler: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(opts.str("listen", "127.0.0.1:19001")).await?;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handler(s));
            }
            Err(e) => {
                // EMFILE and friends: back off, never stop serving.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Minimal RFC 6455 echo: handshake, then every data frame back unmasked,
/// all frames of one read answered in one write.
async fn serve_ws_echo(mut s: TcpStream) -> io::Result<()> {
    use base64::Engine;
    use sha1::Digest;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .ok_or_else(|| io::Error::other("no key"))?;
    let accept = base64::engine::general_purpose::STANDARD
        .encode(sha1::Sha1::digest(format!("{key}{WS_GUID}")));
    let resp =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    s.write_all(resp.as_bytes()).await?;
    buf.drain(..end);
    // Idle connections keep only this small buffer; it grows on demand.
    buf.shrink_to(4096);
    let mut out = Vec::new();
    loop {
        let mut pos = 0;
        out.clear();
        while let Some((op, p0, fend, mask)) = parse_frame(&buf[pos..]) {
            let payload = &buf[pos + p0..pos + fend];
            let n = payload.len();
            let reply_op = if op == 9 { 10 } else { op };
            if op != 10 {
                out.push(0x80 | reply_op);
                if n < 126 {
                    out.push(n as u8);
                } else if n < 65536 {
                    out.push(126);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    out.push(127);
                    out.extend_from_slice(&(n as u64).to_be_bytes());
                }
                let m = mask.unwrap_or([0; 4]);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            pos += fend;
            if op == 8 {
                s.write_all(&out).await?;
                return Ok(());
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// fastwebsockets echo, set up the way its README and `examples/echo_server.rs`
/// do: hyper 1 serves the HTTP/1.1 upgrade (`upgrade` feature), then a
/// `FragmentCollector` over the upgraded stream reads whole messages and sends
/// every Text/Binary one back with `write_frame`; pings are answered and Close
/// is echoed by the library (auto-pong, auto-close). writev stays at the
/// library's default (`set_writev(true)`, threshold 1024 bytes: payloads above
/// it go out in one vectored write with the header, smaller frames are copied
/// behind the header), so every frame is one write of its own.
async fn serve_fws_echo(s: TcpStream) -> io::Result<()> {
    let service = hyper::service::service_fn(
        |mut req: hyper::Request<hyper::body::Incoming>| async move {
            let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
            tokio::spawn(async move {
                // Errors are peers going away (the load generator drops its
                // connections at the end of a run): nothing to report.
                let _ = fws_echo(fut).await;
            });
            Ok::<_, fastwebsockets::WebSocketError>(response)
        },
    );
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
        .with_upgrades()
        .await
        .map_err(io::Error::other)
}

async fn fws_echo(
    fut: fastwebsockets::upgrade::UpgradeFut,
) -> Result<(), fastwebsockets::WebSocketError> {
    use fastwebsockets::OpCode;
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

/// tokio-tungstenite echo with the default `WebSocketConfig` (`accept_async`):
/// every Text/Binary message is sent straight back (`send`: one write and
/// flush per message). tungstenite answers pings itself and queues the reply
/// to a Close, which is flushed before the connection ends.
async fn serve_tt_echo(s: TcpStream) -> io::Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = tokio_tungstenite::accept_async(s)
        .await
        .map_err(io::Error::other)?;
    while let Some(msg) = ws.next().await {
        match msg.map_err(io::Error::other)? {
            m @ (Message::Text(_) | Message::Binary(_)) => {
                ws.send(m).await.map_err(io::Error::other)?
            }
            Message::Close(_) => {
                // tungstenite queued the Close reply; sending another Close
                // would fail (SendAfterClosing), so just flush it out.
                let _ = ws.flush().await;
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Keep-alive HTTP/1.1 backend: one fixed 200 per request head (bodies ignored).
async fn serve_http(mut s: TcpStream) -> io::Result<()> {
    const RESP: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world\n";
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(4096);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut pos = 0;
        out.clear();
        while let Some(p) = find(&buf[pos..], b"\r\n\r\n") {
            pos += p + 4;
            out.extend_from_slice(RESP);
        }
        buf.drain(..pos);
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
    }
}
