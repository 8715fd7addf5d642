//! A connection that follows the master of a Sentinel-monitored service: the
//! master is asked of the sentinels on first use and again after a
//! connection-level failure, so after a failover the next call reaches the
//! promoted replica. Subscriptions are not carried over by the client; the
//! chat bus subscribes again after every outage.

use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};

use super::Settings;

/// The sentinels, and the connection to the master they named last.
#[derive(Clone)]
pub struct SentinelConn(Arc<Inner>);

struct Inner {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<ConnectionManager>>,
    settings: Settings,
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
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        let client = SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            master.to_string(),
            Some(node),
            SentinelServerType::Master,
        )?;
        Ok(SentinelConn(Arc::new(Inner {
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            settings,
        })))
    }

    fn cached(&self) -> Option<ConnectionManager> {
        self.0
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connection to the current master, asking the sentinels if there
    /// is none.
    pub(super) async fn get(&self) -> RedisResult<ConnectionManager> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut sentinels = self.0.sentinels.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let client = sentinels.async_get_client().await?;
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
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        *self.0.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// After a failure that may mean the master moved: forget it, so the next
    /// call asks the sentinels again.
    pub(super) fn check<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if moved(e) {
                *self.0.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
            *self.0.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
            // Its subscriptions go with it, and a dropped connection sends
            // no Disconnection push of its own: say so, or a node that
            // reached the new master at once would never subscribe again.
            if let Some(tx) = &self.0.settings.push {
                let _ = tx.send(redis::PushInfo {
                    kind: redis::PushKind::Disconnection,
                    data: Vec::new(),
                });
            }
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
