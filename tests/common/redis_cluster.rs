//! A Redis Cluster of real `redis-server` children on 127.0.0.1 for
//! `tests/it/redis_cluster.rs`: three masters and three replicas
//! (`redis-cli --cluster create … --cluster-replicas 1`), a short
//! `cluster-node-timeout` so a killed master's replica is promoted within
//! seconds, every server stopped by PID on drop. Waits poll against a
//! deadline. `redis-server` and `redis-cli` must be installed
//! (`scripts/test.sh` installs them); without them these tests fail.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis::{commandstats, ping};
use super::{eventually, WAIT};

/// `cluster-node-timeout` of the test cluster (ms): how long until a silent
/// master is failed over.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// Offset from a server's port to its cluster bus port (`--cluster-port`).
const BUS_OFFSET: u16 = 6000;

/// A port `p` with `p` and its cluster bus port `p + BUS_OFFSET` both free,
/// both below the kernel's ephemeral range (32768 up). There no client socket
/// can take the port between this check and `redis-server`'s bind, and no
/// client socket left in TIME_WAIT by an earlier test makes it abort. Each
/// port is handed out once per test process: two clusters started at once
/// could both find one port free before either bound it, and one test's
/// SIGKILL of its master then killed the other's (a flaky CI run).
fn cluster_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let p = l.local_addr().expect("local addr").port();
        drop(l);
        let p = 20000 + p % BUS_OFFSET;
        let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&p) && free(p) && free(p + BUS_OFFSET) {
            given.insert(p);
            return p;
        }
    }
}

pub struct RedisCluster {
    /// Server on each port (`None` once killed).
    servers: BTreeMap<u16, Option<Child>>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six servers, creates the cluster and waits until every server
    /// reports `cluster_state:ok`.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = RedisCluster {
            servers: BTreeMap::new(),
            dir,
        };
        for _ in 0..6 {
            let port = cluster_port();
            let mut child = c.spawn(port);
            assert!(
                eventually(WAIT, || ping(port)).await,
                "redis-server on port {port} never answered PING"
            );
            // The answer was this server's, not another process's on the port.
            assert!(
                matches!(child.try_wait(), Ok(None)),
                "redis-server on port {port} exited (the port was taken)"
            );
            c.servers.insert(port, Some(child));
        }
        c.create();
        let ports: Vec<u16> = c.servers.keys().copied().collect();
        c.wait_ok(&ports).await;
        c.wait_replicas_synced().await;
        c
    }

    /// Waits until every replica's link to its master is up (synced), so a
    /// killed master can be failed over.
    async fn wait_replicas_synced(&self) {
        for p in self.alive() {
            assert!(
                eventually(WAIT, || async move {
                    let info = replication(p).await;
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
                .await,
                "replica {p} never synced: {}",
                replication(p).await
            );
        }
    }

    fn spawn(&self, port: u16) -> Child {
        let conf = format!("nodes-{port}.conf");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &(port + BUS_OFFSET).to_string()])
            .args(["--cluster-config-file", &conf])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            // A replica that never synced refuses to fail over; by default
            // the first (diskless) sync waits 5 s for more replicas.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: run scripts/test.sh (it installs redis-server) \
                 or `apt-get install redis-server`"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
    }

    fn create(&self) {
        let addrs: Vec<String> = self
            .servers
            .keys()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli is not installed: run scripts/test.sh (it installs redis-tools)")
            }
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until each of `ports` reports `cluster_state:ok`.
    pub async fn wait_ok(&self, ports: &[u16]) {
        for &p in ports {
            assert!(
                eventually(WAIT, || async move {
                    cluster_info(p).await.contains("cluster_state:ok")
                })
                .await,
                "server {p}: cluster state never ok: {}",
                cluster_info(p).await
            );
        }
    }

    /// Seed URLs (every server).
    pub fn seeds(&self) -> Vec<String> {
        self.servers
            .keys()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The ports of servers still running.
    pub fn alive(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The port of the master serving `key`'s slot, asked of a running server.
    pub async fn master_of(&self, key: &str) -> u16 {
        let port = self.alive()[0];
        let mut c = connect(port).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .expect("CLUSTER KEYSLOT");
        let slots: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut c)
            .await
            .expect("CLUSTER SLOTS");
        master_in_slots(&slots, slot).expect("a master serves the slot")
    }

    /// The running masters' ports.
    pub async fn masters(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for p in self.alive() {
            if cluster_info(p).await.contains("cluster_state:ok") && role(p).await == "master" {
                out.push(p);
            }
        }
        out
    }

    /// SIGKILLs the server on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(Some(mut c)) = self.servers.insert(port, None) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `INFO commandstats` of every running master, by port.
    pub async fn commandstats(&self) -> BTreeMap<u16, BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for p in self.masters().await {
            out.insert(p, commandstats(p).await);
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.servers.keys().copied().collect();
        for p in ports {
            self.kill(p);
        }
    }
}

pub async fn connect(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// `CLUSTER INFO` of the server on `port` ("" when it does not answer).
pub async fn cluster_info(port: u16) -> String {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return String::new();
    };
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return String::new();
    };
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

/// `PUBSUB SHARDNUMSUB channel` on every running server, by port.
pub async fn shardnumsub(c: &RedisCluster, channel: &str) -> BTreeMap<u16, i64> {
    let mut out = BTreeMap::new();
    for p in c.alive() {
        let mut conn = connect(p).await;
        let r: Result<(String, i64), _> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await;
        out.insert(p, r.map(|(_, n)| n).unwrap_or(-1));
    }
    out
}

/// `CLUSTER NODES` of the server on `port` (for failure messages).
pub async fn cluster_nodes(port: u16) -> String {
    let mut c = connect(port).await;
    redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

async fn replication(port: u16) -> String {
    let mut c = connect(port).await;
    redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

async fn role(port: u16) -> String {
    let info = replication(port).await;
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The master port of `slot` in a `CLUSTER SLOTS` reply.
fn master_in_slots(slots: &redis::Value, slot: i64) -> Option<u16> {
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|r| {
        let redis::Value::Array(r) = r else {
            return None;
        };
        let (redis::Value::Int(lo), redis::Value::Int(hi)) = (r.first()?, r.get(1)?) else {
            return None;
        };
        if !(*lo..=*hi).contains(&slot) {
            return None;
        }
        let redis::Value::Array(master) = r.get(2)? else {
            return None;
        };
        match master.get(1)? {
            redis::Value::Int(p) => u16::try_from(*p).ok(),
            _ => None,
        }
    })
}
