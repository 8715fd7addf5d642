//! Multi-node chat (docs/cluster.md): the chat [`Bus`](crate::apps::chat::bus::Bus)
//! backed by Redis, so several wsgate processes serve one chat.
//!
//! ```text
//! hub ──publish──▶ RedisBus ──Lua script (INCR + RPUSH/LTRIM + PUBLISH)──▶ Redis
//!  ▲                 │  └─ local fan-out at once (own node)                  │
//!  └──── Deliver ◀───┴── push task ◀── room / node channels (RESP3)   ◀────┘
//!                        (skips envelopes whose origin is this node)
//!                  heartbeat task: liveness key, registry refresh, sweeper
//! ```
//! [`keys`] names every key and channel; [`redis_bus`] holds the bus, its
//! heartbeat/sweeper and its outage fallback. Key layout, TTLs and failure modes
//! are documented in `docs/cluster.md`.

pub mod keys;
pub mod redis_bus;

pub use redis_bus::RedisBus;

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis {}: {source}", crate::quoted::Quoted(.url))]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("encoding a cluster envelope: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl ClusterError {
    /// Whether the error means Redis cannot be reached (as opposed to a bad
    /// reply): only those mark the cluster down.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClusterError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }
}

impl From<ClusterError> for crate::apps::chat::bus::BusError {
    fn from(e: ClusterError) -> Self {
        crate::apps::chat::bus::BusError::Unavailable(e.to_string())
    }
}
