//! The one Redis connection type of the process: a single server
//! (`[cluster] redis`, a `ConnectionManager` that reconnects and resubscribes)
//! or a Redis Cluster (`[cluster] redis_cluster`, the `redis` crate's async
//! cluster client, which routes each command by its key's slot, follows
//! failovers and moves sharded subscriptions to a slot's new owner).
//!
//! Both implement `redis::aio::ConnectionLike`, so scripts, pipelines and
//! commands run on either. The difference callers see is pub/sub: on a
//! cluster, channels are sharded (`SSUBSCRIBE`/`SPUBLISH`, a channel lives on
//! the shard of its hash slot), on one server they are plain.
//!
//! With `[cluster] sentinels`, a [`sentinel::SentinelConn`] follows the master
//! Sentinel names across failovers, and its announcements of a new one
//! ([`switch`]).
//!
//! A leaf: used by `cluster` (the chat bus) and `limit` (cluster-scope
//! limits), importing only `config`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use tokio::sync::{mpsc, OnceCell};

use crate::config::RedisTarget;

mod sentinel;
mod switch;

/// How a connection behaves: timeouts, reconnection backoff, and where RESP3
/// pushes (subscribed messages) go.
pub struct Settings {
    /// Connect and response timeout.
    pub timeout: Duration,
    pub min_retry: Duration,
    pub max_retry: Duration,
    /// Pushes of subscribed channels; `Some` selects RESP3.
    pub push: Option<mpsc::UnboundedSender<PushInfo>>,
}

/// A connection to one Redis or to a Redis Cluster; clones share it.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(LazyCluster),
    Sentinel(sentinel::SentinelConn),
}

/// A cluster connection made on first use (the cluster need not be up when
/// the gateway starts); a failed attempt is retried by the next call.
#[derive(Clone)]
pub struct LazyCluster(Arc<(ClusterClient, OnceCell<ClusterConnection>)>);

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let (client, conn) = &*self.0;
        conn.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
    }
}

/// `url` asking for RESP3 (one connection carries commands and pushes),
/// unless it names a protocol itself.
pub fn resp3_url(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisConn {
    /// Opens (lazily: nothing is connected until the first command) a
    /// connection to `target`.
    pub fn open(target: &RedisTarget, s: Settings) -> RedisResult<Self> {
        match target {
            RedisTarget::Single(url) => Self::single(url, s),
            RedisTarget::Cluster(seeds) => Self::cluster(seeds, s),
            RedisTarget::Sentinel { sentinels, master } => Ok(RedisConn::Sentinel(
                sentinel::SentinelConn::open(sentinels, master, s)?,
            )),
        }
    }

    fn single(url: &str, s: Settings) -> RedisResult<Self> {
        let url = if s.push.is_some() {
            resp3_url(url)
        } else {
            url.to_string()
        };
        let client = redis::Client::open(url.as_str())?;
        let mut cfg = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(s.min_retry)
            .set_max_delay(s.max_retry)
            .set_connection_timeout(Some(s.timeout))
            .set_response_timeout(Some(s.timeout));
        if let Some(tx) = s.push {
            cfg = cfg.set_push_sender(tx).set_automatic_resubscription();
        }
        Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
            client, cfg,
        )?))
    }

    fn cluster(seeds: &[String], s: Settings) -> RedisResult<Self> {
        let mut b = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(s.timeout)
            .response_timeout(s.timeout)
            // A failover takes about `cluster-node-timeout` plus an election;
            // retries ride out MOVED and a short outage, the caller's
            // fallback covers a longer one.
            .retries(2)
            .min_retry_wait(ms(s.min_retry))
            .max_retry_wait(ms(s.max_retry));
        if let Some(tx) = s.push {
            b = b
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx);
        }
        Ok(RedisConn::Cluster(LazyCluster(Arc::new((
            b.build()?,
            OnceCell::new(),
        )))))
    }

    /// Whether channels are sharded (a Redis Cluster).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// The publish command for this connection's channels.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Subscribes to `channel` (sharded on a cluster); resubscribed by the
    /// client after a reconnect or a failover.
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.subscribe(channel).await,
            RedisConn::Cluster(c) => c.get().await?.ssubscribe(channel).await,
            RedisConn::Sentinel(c) => {
                let r = c.get().await?.subscribe(channel).await;
                c.check(r)
            }
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.unsubscribe(channel).await,
            RedisConn::Cluster(c) => c.get().await?.sunsubscribe(channel).await,
            RedisConn::Sentinel(c) => {
                let r = c.get().await?.unsubscribe(channel).await;
                c.check(r)
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => async move {
                let mut conn = c.get().await?;
                conn.req_packed_command(cmd).await
            }
            .boxed(),
            RedisConn::Sentinel(c) => async move { c.command(cmd).await }.boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => async move {
                let mut conn = c.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }
            .boxed(),
            RedisConn::Sentinel(c) => {
                async move { c.pipeline(pipeline, offset, count).await }.boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(_) | RedisConn::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::resp3_url;

    #[test]
    fn resp3_is_requested_once() {
        assert_eq!(resp3_url("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(
            resp3_url("redis://h:1/?db=2"),
            "redis://h:1/?db=2&protocol=resp3"
        );
        assert_eq!(
            resp3_url("redis://h/?protocol=resp3"),
            "redis://h/?protocol=resp3"
        );
    }
}
