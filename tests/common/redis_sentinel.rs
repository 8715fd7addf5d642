//! A Sentinel-monitored Redis for `tests/it/redis_sentinel.rs`: one master,
//! one replica and three sentinels (`redis-server --sentinel` with generated
//! configs, `down-after-milliseconds 1000`, `failover-timeout 3000`), every
//! process stopped by PID on drop. `redis-server` must be installed
//! (`scripts/test.sh` installs it); without it these tests fail.

use std::process::{Child, Command, Stdio};

use super::redis::{free_port, free_ports, ping};
use super::{eventually, WAIT};

/// The name the sentinels monitor the master under.
pub const MASTER: &str = "mymaster";

pub struct Sentinels {
    pub master: u16,
    pub replica: u16,
    pub sentinels: Vec<u16>,
    children: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
}

fn spawn(args: &[String]) -> Child {
    match Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not installed: run scripts/test.sh (it installs redis-server) \
             or `apt-get install redis-server`"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

impl Sentinels {
    /// Starts the master, its replica and three sentinels, and waits until
    /// the replica is synced and every sentinel knows the other two and the
    /// replica (so a failover can be agreed).
    pub async fn start() -> Self {
        Self::start_with_master_args(&[]).await
    }

    /// [`Self::start`] with more `redis-server` arguments for the master.
    pub async fn start_with_master_args(extra_master_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let [master, replica] = free_ports();
        let mut s = Sentinels {
            master,
            replica,
            sentinels: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for (port, extra) in [(master, None), (replica, Some(master))] {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &d,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            match extra {
                Some(m) => args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]),
                None => args.extend(extra_master_args.iter().map(|a| a.to_string())),
            }
            s.children.push((port, spawn(&args)));
            assert!(
                eventually(WAIT, || ping(port)).await,
                "redis {port} never answered"
            );
        }
        for i in 0..3 {
            let port = free_port();
            let conf = s.dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {d}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n"
                ),
            )
            .expect("write sentinel.conf");
            let args = vec![conf.display().to_string(), "--sentinel".to_string()];
            s.children.push((port, spawn(&args)));
            s.sentinels.push(port);
        }
        let replica = s.replica;
        assert!(
            eventually(WAIT, || async move {
                info(replica, "replication")
                    .await
                    .contains("master_link_status:up")
            })
            .await,
            "the replica never synced"
        );
        for &p in &s.sentinels {
            assert!(
                eventually(WAIT, || async move {
                    let m = sentinel_master(p).await;
                    field(&m, "num-other-sentinels") == Some(2)
                        && field(&m, "num-slaves") == Some(1)
                })
                .await,
                "sentinel {p} never saw its peers and the replica"
            );
        }
        s
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILLs the process on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut c) = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The master's port as the first sentinel answers it.
    pub async fn master_port(&self) -> Option<u16> {
        let mut c = connect(self.sentinels[0]).await?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query_async(&mut c)
            .await
            .ok()?;
        addr.and_then(|(_, p)| p.parse().ok())
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn connect(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    client.get_multiplexed_async_connection().await.ok()
}

async fn info(port: u16, section: &str) -> String {
    let Some(mut c) = connect(port).await else {
        return String::new();
    };
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

/// `SENTINEL MASTER mymaster` as field → value.
async fn sentinel_master(port: u16) -> Vec<(String, String)> {
    let Some(mut c) = connect(port).await else {
        return Vec::new();
    };
    let flat: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER)
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    flat.chunks(2)
        .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
        .collect()
}

fn field(m: &[(String, String)], k: &str) -> Option<u64> {
    m.iter()
        .find(|(f, _)| f == k)
        .and_then(|(_, v)| v.parse().ok())
}
