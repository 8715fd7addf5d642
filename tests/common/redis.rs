//! A `redis-server` child on a free port for cluster tests (`tests/it/cluster.rs`,
//! `tests/limits/cluster.rs`): started and waited for with PING, killed on drop.
//! `redis-server` must be installed (`scripts/test.sh` installs it); without
//! it these tests fail, never skip.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{eventually, WAIT};

/// A free port: bind 127.0.0.1:0, read the port, release it.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free ports. Each is held until all are picked: released one
/// by one, the kernel may hand the same port out twice in a row.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] = std::array::from_fn(|_| {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port")
    });
    held.map(|l| l.local_addr().expect("local addr").port())
}

/// A `redis-server` child on its own port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
        };
        r.spawn().await;
        r
    }

    /// Starts (or restarts) the server on `self.port` and waits for PING.
    pub async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: run scripts/test.sh (it installs redis-server) \
                 or `apt-get install redis-server`"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        let port = self.port;
        assert!(
            eventually(WAIT, || ping(port)).await,
            "redis-server on port {port} never answered PING"
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Redis {
    /// Runs one inline command (`FLUSHALL`) and returns the first line of the
    /// answer.
    pub async fn command(&self, cmd: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to redis");
        s.write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .expect("send");
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("redis answers within 5 s")
            .expect("read");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

pub async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

impl Redis {
    /// How many subscribers `channel` has (`PUBSUB NUMSUB`).
    pub async fn numsub(&self, channel: &str) -> i64 {
        numsub(&self.url(), channel).await
    }

    /// `INFO commandstats` as command → calls (`cmdstat_publish` → `publish`).
    pub async fn commandstats(&self) -> std::collections::BTreeMap<String, u64> {
        commandstats(self.port).await
    }
}

/// `PUBSUB NUMSUB channel` on the server at `url`.
pub async fn numsub(url: &str, channel: &str) -> i64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut c)
        .await
        .expect("PUBSUB NUMSUB");
    n
}

/// `INFO commandstats` of the server on `port` as command → calls.
pub async fn commandstats(port: u16) -> std::collections::BTreeMap<String, u64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .expect("INFO commandstats");
    parse_commandstats(&info)
}

/// `cmdstat_incr:calls=3,usec=12,…` lines → `incr` → 3 and `incr.usec` → 12
/// (the server's CPU time in the command, scripts including their calls).
pub fn parse_commandstats(info: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("cmdstat_")) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        for kv in rest.trim().split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => {
                    out.insert(name.to_string(), v.parse().unwrap_or(0));
                }
                Some(("usec", v)) => {
                    out.insert(format!("{name}.usec"), v.parse().unwrap_or(0));
                }
                _ => {}
            }
        }
    }
    out
}

/// What `after` counted beyond `before`, per command (zero entries left out).
pub fn stats_delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}
