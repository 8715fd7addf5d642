//! Rate limits (`[limit.NAME]`, docs/limits.md): a GCRA token bucket per key,
//! per limit. A leaf: it knows config, metrics and Redis, and nothing of the
//! server, the proxy or the gateway, which use it like this:
//!
//! ```text
//! gateway   Registry::build (name → Limiter; a limit whose definition did not
//!           change keeps its buckets across a reload)
//! proxy     access-phase filter: route `limits` on requests and handshakes → 429
//! server    listener `connection_limits` on new connections, before TLS
//! apps/proxy::inspect   per-connection message rates use gcra::Bucket alone
//! ```
//!
//! Files: [`gcra`] the arithmetic, [`store`] the bounded node-local table,
//! [`cluster`] the Redis variant (`scope = "cluster"`).

pub mod cluster;
pub mod gcra;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

pub use self::cluster::ClusterLimits;
use self::gcra::Gcra;
use self::store::Store;
use crate::config::{LimitConfig, LimitKey, LimitScope};
use crate::metrics::Metrics;

/// What was limited, the `kind` label of `wsgate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request = 0,
    Handshake = 1,
    Connection = 2,
    Message = 3,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Request,
        Kind::Handshake,
        Kind::Connection,
        Kind::Message,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Handshake => "handshake",
            Kind::Connection => "connection",
            Kind::Message => "message",
        }
    }
}

/// A limit's verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over the limit; the next event of this key passes after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

/// The value a key is made of, as the caller found it. Tagged, so a header
/// value never shares a bucket with an address that spells the same bytes.
#[derive(Debug, Clone, Copy)]
pub enum KeyRef<'a> {
    Ip(IpAddr),
    Header(&'a [u8]),
    User(&'a str),
    Route(&'a str),
}

impl KeyRef<'_> {
    fn write(&self, h: &mut dyn Hasher) {
        match self {
            KeyRef::Ip(IpAddr::V4(a)) => {
                h.write_u8(4);
                h.write(&a.octets());
            }
            KeyRef::Ip(IpAddr::V6(a)) => {
                h.write_u8(6);
                h.write(&a.octets());
            }
            KeyRef::Header(b) => {
                h.write_u8(b'h');
                h.write(b);
            }
            KeyRef::User(u) => {
                h.write_u8(b'u');
                h.write(u.as_bytes());
            }
            KeyRef::Route(r) => {
                h.write_u8(b'r');
                h.write(r.as_bytes());
            }
        }
    }
}

/// A key resolved for one limiter: its node-table hash and, for cluster
/// limits, its Redis key. Owns nothing borrowed, so an async decision can
/// carry it.
#[derive(Debug, Clone)]
pub struct KeyId {
    hash: u64,
    redis: Option<String>,
}

/// One `[limit.NAME]` and its buckets on this node.
pub struct Limiter {
    cfg: LimitConfig,
    gcra: Gcra,
    store: Store,
    start: Instant,
    /// `wsgate_limited_total{limit, kind}`, by [`Kind`].
    limited: [Counter; 4],
    /// Set for `scope = "cluster"` when the process has a cluster.
    cluster: Option<Arc<ClusterLimits>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.cfg.name)
            .finish()
    }
}

impl Limiter {
    pub fn new(cfg: LimitConfig, metrics: &Metrics, cluster: Option<Arc<ClusterLimits>>) -> Self {
        let limited = Kind::ALL.map(|k| metrics.limited(&cfg.name, k.as_str()));
        let cluster = match cfg.scope {
            LimitScope::Cluster => {
                if cluster.is_none() {
                    tracing::warn!(limit = %cfg.name, "scope = \"cluster\" without a cluster connection: counting per node");
                }
                cluster
            }
            LimitScope::Node => None,
        };
        Self {
            gcra: Gcra::new(cfg.rate.emission(), cfg.burst),
            store: Store::new(cfg.max_keys),
            start: Instant::now(),
            limited,
            cluster,
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn key(&self) -> &LimitKey {
        &self.cfg.key
    }

    pub fn config(&self) -> &LimitConfig {
        &self.cfg
    }

    /// Whether a decision may wait for Redis (else [`Limiter::check_local`] is exact).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Keys tracked on this node now (never above `max_keys`).
    pub fn tracked_keys(&self) -> usize {
        self.store.len()
    }

    /// Resolves `key` for this limiter.
    pub fn id(&self, key: KeyRef<'_>) -> KeyId {
        let redis = self.cluster.as_ref().map(|_| {
            let mut d = Sha256::new();
            let mut w = DigestWriter(&mut d);
            key.write(&mut w);
            let digest = d.finalize();
            let mut hex = String::with_capacity(64);
            for b in &digest[..16] {
                hex.push_str(&format!("{b:02x}"));
            }
            format!("wsgate:limit:{}:{hex}", self.cfg.name)
        });
        KeyId {
            hash: self.store.hash(|h| key.write(h)),
            redis,
        }
    }

    /// Decides on this node's bucket, counting a refusal as `kind`.
    pub fn check_local(&self, id: &KeyId, kind: Kind) -> Decision {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match self.store.decide(&self.gcra, id.hash, now) {
            Ok(()) => Decision::Allow,
            Err(wait) => self.refused(kind, Duration::from_nanos(wait)),
        }
    }

    /// Decides on the cluster's shared bucket when this is a cluster limit
    /// (falling back to this node's while Redis cannot answer), else locally.
    pub async fn check(&self, id: &KeyId, kind: Kind) -> Decision {
        let (Some(cluster), Some(key)) = (&self.cluster, &id.redis) else {
            return self.check_local(id, kind);
        };
        match cluster
            .decide(key, self.gcra.emission(), self.cfg.burst)
            .await
        {
            Ok(None) => Decision::Allow,
            Ok(Some(wait)) => self.refused(kind, wait),
            Err(e) => {
                tracing::debug!(limit = %self.cfg.name, error = %e, "deciding per node");
                self.check_local(id, kind)
            }
        }
    }

    fn refused(&self, kind: Kind, retry_after: Duration) -> Decision {
        self.limited[kind as usize].inc();
        Decision::Limited { retry_after }
    }
}

/// Feeds a [`Hasher`]'s input to SHA-256 (cluster keys must be the same on
/// every node, so the node table's random-keyed hash cannot name them).
struct DigestWriter<'a>(&'a mut Sha256);

impl Hasher for DigestWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Every limit of one config, by name.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<String, Arc<Limiter>>,
}

impl Registry {
    /// Builds the limiters of `defs`, reusing those of `previous` whose
    /// definition is unchanged so their buckets carry on.
    pub fn build(
        defs: &BTreeMap<String, LimitConfig>,
        previous: Option<&Registry>,
        metrics: &Metrics,
        cluster: Option<&Arc<ClusterLimits>>,
    ) -> Self {
        let by_name = defs
            .iter()
            .map(|(name, cfg)| {
                let kept = previous
                    .and_then(|p| p.by_name.get(name))
                    .filter(|l| l.cfg == *cfg)
                    .cloned();
                let l = kept.unwrap_or_else(|| {
                    Arc::new(Limiter::new(cfg.clone(), metrics, cluster.cloned()))
                });
                (name.clone(), l)
            })
            .collect();
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Limiter>> {
        self.by_name.get(name)
    }

    /// The limiters `names` refer to, in order (config validation made sure
    /// each exists).
    pub fn pick(&self, names: &[String]) -> Vec<Arc<Limiter>> {
        names.iter().filter_map(|n| self.get(n).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn cfg(name: &str, burst: u32) -> LimitConfig {
        LimitConfig {
            name: name.into(),
            rate: Rate::parse("1/m").unwrap(),
            burst,
            key: LimitKey::Ip,
            scope: LimitScope::Node,
            max_keys: 10,
        }
    }

    #[test]
    fn registry_keeps_unchanged_limits() {
        let m = Metrics::new();
        let mut defs = BTreeMap::new();
        defs.insert("a".to_string(), cfg("a", 1));
        defs.insert("b".to_string(), cfg("b", 1));
        let r1 = Registry::build(&defs, None, &m, None);
        let ip = KeyRef::Ip("10.0.0.1".parse().unwrap());
        let a = r1.get("a").unwrap();
        assert_eq!(a.check_local(&a.id(ip), Kind::Request), Decision::Allow);
        defs.insert("b".to_string(), cfg("b", 2));
        let r2 = Registry::build(&defs, Some(&r1), &m, None);
        assert!(Arc::ptr_eq(r1.get("a").unwrap(), r2.get("a").unwrap()));
        assert!(!Arc::ptr_eq(r1.get("b").unwrap(), r2.get("b").unwrap()));
        // The kept bucket is still empty.
        let a2 = r2.get("a").unwrap();
        assert!(matches!(
            a2.check_local(&a2.id(ip), Kind::Request),
            Decision::Limited { .. }
        ));
        assert!(m
            .render()
            .contains("wsgate_limited_total{limit=\"a\",kind=\"request\"} 1"));
    }

    #[test]
    fn tagged_keys_do_not_share_buckets() {
        let m = Metrics::new();
        let l = Limiter::new(cfg("t", 1), &m, None);
        let h = l.id(KeyRef::Header(b"x"));
        let u = l.id(KeyRef::User("x"));
        assert_ne!(h.hash, u.hash);
        assert_eq!(l.check_local(&h, Kind::Request), Decision::Allow);
        assert_eq!(l.check_local(&u, Kind::Request), Decision::Allow);
    }
}
