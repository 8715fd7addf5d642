//! A connection that follows the master of a Sentinel-monitored service: the
//! master is asked of the sentinels on first use and again after a
//! connection-level failure or a `READONLY` answer, and the sentinels'
//! `+switch-master` announcements move it at once ([`super::switch`]), so
//! after a failover the next call reaches the promoted replica.
//! Subscriptions are not carried over by the client; the chat bus subscribes
//! again after every outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError,
    RedisResult, Value,
};
use tokio_util::task::AbortOnDropHandle;

use super::switch::{self, Watch};
use super::Settings;

/// A connection to the master, and where it goes (as the sentinels or an
/// announcement named it).
struct Master {
    conn: ConnectionManager,
    at: Option<(String, u16)>,
}

/// The sentinels, and the connection to the master they named last.
#[derive(Clone)]
pub struct SentinelConn(Arc<Inner>);

struct Inner {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Master>>,
    /// The master a `+switch-master` named, for the next connection: the
    /// other sentinels learn of a switch a little later, and the old master
    /// still answers `ROLE` as a master until it is reconfigured, so asking
    /// them at once could find the old one again.
    announced: Mutex<Option<(String, u16)>>,
    /// Announcements seen: a connect that saw this change made the wrong one.
    switches: AtomicU64,
    /// How the master is spoken to (RESP3 when pushes are wanted).
    node: RedisConnectionInfo,
    settings: Settings,
    urls: Vec<String>,
    master: String,
    /// The announcements' listener, started on first use (a runtime is
    /// needed) and stopped with the connection.
    watch: OnceLock<AbortOnDropHandle<()>>,
}

impl SentinelConn {
    pub(super) fn open(
        sentinels: &[String],
        master: &str,
        settings: Settings,
    ) -> RedisResult<Self> {
        let mut info = redis::RedisConnectionInfo::default();
        if settings.push.is_some() {
            info = info.set_protocol(redis::ProtocolVersion::RESP3);
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info.clone());
        let client = SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            master.to_string(),
            Some(node),
            SentinelServerType::Master,
        )?;
        Ok(SentinelConn(Arc::new(Inner {
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            announced: Mutex::new(None),
            switches: AtomicU64::new(0),
            node: info,
            settings,
            urls: sentinels.to_vec(),
            master: master.to_string(),
            watch: OnceLock::new(),
        })))
    }

    /// Starts listening for `+switch-master` once. The listener holds the
    /// connection weakly, so dropping the last clone ends both.
    fn watch(&self) {
        self.0.watch.get_or_init(|| {
            let s = &self.0.settings;
            let w = Watch {
                sentinels: self.0.urls.clone(),
                master: self.0.master.clone(),
                timeout: s.timeout,
                min_retry: s.min_retry,
                max_retry: s.max_retry,
            };
            let inner = Arc::downgrade(&self.0);
            AbortOnDropHandle::new(tokio::spawn(switch::follow(w, move |host, port| {
                switched(&inner, host, port)
            })))
        });
    }

    fn cached(&self) -> Option<ConnectionManager> {
        lock(&self.0.current).as_ref().map(|m| m.conn.clone())
    }

    /// The connection to the current master, asking the sentinels if there
    /// is none.
    pub(super) async fn get(&self) -> RedisResult<ConnectionManager> {
        self.watch();
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut sentinels = self.0.sentinels.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        // An announcement during the connect means its master, not the one
        // just reached (a sentinel that had not heard of the switch, or the
        // old master itself): connect again. Switches are rare; a third in a
        // row is taken as it comes.
        let mut tries = 0;
        loop {
            tries += 1;
            let seen = self.0.switches.load(Ordering::Acquire);
            let master = self.connect(&mut sentinels).await?;
            if tries < 3 && self.0.switches.load(Ordering::Acquire) != seen {
                continue;
            }
            let conn = master.conn.clone();
            *lock(&self.0.current) = Some(master);
            return Ok(conn);
        }
    }

    /// A connection to the master last announced, or else the one the
    /// sentinels name.
    async fn connect(&self, sentinels: &mut SentinelClient) -> RedisResult<Master> {
        let announced = lock(&self.0.announced).take();
        let client = match announced {
            // Taken, so a master that cannot be reached is not tried twice:
            // the next call asks the sentinels.
            Some((host, port)) => redis::Client::open(
                ConnectionAddr::Tcp(host, port)
                    .into_connection_info()?
                    .set_redis_settings(self.0.node.clone()),
            )?,
            None => sentinels.async_get_client().await?,
        };
        let s = &self.0.settings;
        let mut cfg = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(s.timeout))
            .set_response_timeout(Some(s.timeout));
        if let Some(tx) = &s.push {
            cfg = cfg
                .set_push_sender(tx.clone())
                .set_automatic_resubscription();
        }
        let at = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
            _ => None,
        };
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        Ok(Master { conn, at })
    }

    /// After a failure that may mean the master moved: forget it, so the next
    /// call asks the sentinels again.
    pub(super) fn check<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if moved(e) {
                *lock(&self.0.current) = None;
            }
        }
        r
    }

    pub(super) async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut c = self.get().await?;
        let r = c.req_packed_command(cmd).await;
        self.check_values(std::slice::from_ref(r.as_ref().unwrap_or(&Value::Nil)));
        self.check(r)
    }

    /// A server's errors come back as values, turned into errors only later
    /// (`query_async`), so [`Self::check`] never saw a `READONLY`: after a
    /// graceful failover demoted the master, every write failed on a healthy
    /// connection to it, and the node stayed degraded until restarted.
    fn check_values(&self, values: &[Value]) {
        if values.iter().any(read_only) {
            tracing::info!("redis: the master became a replica; asking the sentinels again");
            self.0.forget();
        }
    }

    pub(super) async fn pipeline(
        &self,
        p: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut c = self.get().await?;
        let r = c.req_packed_commands(p, offset, count).await;
        if let Ok(values) = &r {
            self.check_values(values);
        }
        self.check(r)
    }
}

impl Inner {
    /// Drops the connection to the master, so the next call makes another.
    fn forget(&self) {
        let old = lock(&self.current).take();
        // Its subscriptions go with it, and a dropped connection sends no
        // Disconnection push of its own: say so, or a node that reached the
        // new master at once would never subscribe again.
        if let (Some(_), Some(tx)) = (old, &self.settings.push) {
            let _ = tx.send(redis::PushInfo {
                kind: redis::PushKind::Disconnection,
                data: Vec::new(),
            });
        }
    }
}

/// A `+switch-master` for our master: the next call connects to `host:port`
/// (unless already there: a `READONLY` can lead a node to the new master
/// before the announcement reaches it, and dropping that connection would
/// only make every room subscribe again). `false` once the connection is
/// gone, which ends the listener.
fn switched(inner: &Weak<Inner>, host: String, port: u16) -> bool {
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    let announced = (host, port);
    if lock(&inner.current)
        .as_ref()
        .is_some_and(|m| m.at.as_ref() == Some(&announced))
    {
        return true;
    }
    *lock(&inner.announced) = Some(announced);
    inner.switches.fetch_add(1, Ordering::AcqRel);
    inner.forget();
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `READONLY` error, or a reply holding one (a transaction's).
fn read_only(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => e.code() == "READONLY",
        Value::Array(items) => items.iter().any(read_only),
        _ => false,
    }
}

/// A connection failure, or a master that became a replica (`READONLY`).
fn moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.code() == Some("READONLY")
}
