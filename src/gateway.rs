//! The running gateway: the swappable [`Snapshot`] built from one config (routes,
//! pools, TLS configs), the process-wide parts that outlive a reload (connection
//! limits, shutdown tracking, app state, metrics, readiness), the set of bound
//! listeners, and [`Gateway::start`] / [`Gateway::reload`].
//!
//! Reload validates and builds everything first (config, certificates, new
//! listener sockets) and only then swaps, so a bad config changes nothing and
//! established connections keep running on whatever they started with.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apps::Apps;
use crate::certs::CertError;
use crate::config::{Config, ServerConfig};
use crate::limits::ConnLimits;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::{admin, listener, tls};
use crate::shutdown::Shutdown;
use crate::upstream::{probe, Pool};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {addr}: {source}")]
    Tls { addr: SocketAddr, source: CertError },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Everything derived from one config file. Replaced whole on reload; a request
/// loads it once and keeps using that version until it is done.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: std::collections::HashMap<String, Arc<Pool>>,
    /// TLS server config per listener, aligned with `config.listeners`.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
}

impl Snapshot {
    /// Builds a snapshot, loading every certificate. `previous` carries upstream
    /// health and load counters over for servers that stay; `secret` keys the
    /// pools' sticky cookies.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        secret: &[u8; 32],
    ) -> Result<Self, StartError> {
        let tls = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| {
                        tls::server_config(t).map_err(|source| StartError::Tls {
                            addr: l.addr,
                            source,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pools = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let prev = previous.and_then(|p| p.pools.get(name)).map(|p| p.as_ref());
                (name.clone(), Arc::new(Pool::new(u.clone(), prev, secret)))
            })
            .collect();
        Ok(Self {
            router: Router::new(&config.routes),
            pools,
            tls,
            config: Arc::new(config),
        })
    }
}

/// Mirrors the cluster bus's Redis status into `/readyz` and
/// `wsgate_cluster_redis_up` until the gateway is gone.
async fn watch_cluster(
    mut status: tokio::sync::watch::Receiver<Option<String>>,
    gw: std::sync::Weak<Gateway>,
) {
    loop {
        let reason = status.borrow_and_update().clone();
        let Some(g) = gw.upgrade() else { return };
        g.metrics.cluster_redis_up.set(i64::from(reason.is_none()));
        g.readiness.set_degraded(reason);
        drop(g);
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// What `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    started: AtomicBool,
    /// Set while a dependency (Redis) is unreachable.
    degraded: Mutex<Option<String>>,
}

impl Readiness {
    pub fn set_degraded(&self, reason: Option<String>) {
        *self.degraded.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// Identity of a listener across reloads: its configured address, whether it
/// has TLS, and which occurrence of that pair it is (port 0 may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListenerKey {
    addr: SocketAddr,
    tls: bool,
    nth: usize,
}

fn listener_keys(cfg: &Config) -> Vec<ListenerKey> {
    let mut keys: Vec<ListenerKey> = Vec::new();
    for l in &cfg.listeners {
        let tls = l.tls.is_some();
        let nth = keys
            .iter()
            .filter(|k| k.addr == l.addr && k.tls == tls)
            .count();
        keys.push(ListenerKey {
            addr: l.addr,
            tls,
            nth,
        });
    }
    keys
}

/// A bound, running listener.
pub struct ListenerInfo {
    key: ListenerKey,
    pub local: SocketAddr,
    pub tls: bool,
    stop: CancellationToken,
    tls_cfg: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

struct AdminInfo {
    configured: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
}

pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub limits: Arc<ConnLimits>,
    pub shutdown: Shutdown,
    pub apps: Apps,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub node_id: String,
    /// Key sealing sticky cookies: `[server] secret` or random per start.
    pub sticky_key: [u8; 32],
    pub started: Instant,
    /// Cancels the background tasks (health checks) of the current snapshot.
    background: Mutex<CancellationToken>,
    listeners: Mutex<Vec<ListenerInfo>>,
    admin: Mutex<Option<AdminInfo>>,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

impl Gateway {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn server_config(&self) -> ServerConfig {
        self.snapshot.load().config.server.clone()
    }

    /// Bound listener addresses and whether each has TLS.
    pub fn listener_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| (l.local, l.tls))
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.local)
    }

    /// Builds `config`, binds every listener (port 0 picks a free port) and the
    /// admin listener, and starts serving.
    pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
        let sticky_key = config.server.secret.unwrap_or_else(rand::random);
        let snapshot = Snapshot::build(config, None, &sticky_key)?;
        let cfg = snapshot.config.clone();
        let shutdown = Shutdown::default();
        let gw = Arc::new(Gateway {
            apps: Apps::new(&cfg, shutdown.clone())?,
            snapshot: ArcSwap::from_pointee(snapshot),
            limits: ConnLimits::new(),
            shutdown,
            metrics: Metrics::new(),
            readiness: Readiness::default(),
            node_id: cfg.server.node_id.clone(),
            sticky_key,
            started: Instant::now(),
            background: Mutex::new(CancellationToken::new()),
            listeners: Mutex::new(Vec::new()),
            admin: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
        });
        let snap = gw.snapshot();
        gw.sync_listeners(&snap).await?;
        gw.sync_admin(&snap).await?;
        gw.start_background(&snap);
        if let Some(bus) = &gw.apps.cluster {
            tokio::spawn(watch_cluster(bus.status(), Arc::downgrade(&gw)));
        }
        gw.readiness.started.store(true, Ordering::Release);
        Ok(GatewayHandle { gw })
    }

    /// Validates and applies a new config: routes, pools (keeping health and
    /// load of servers that stay), certificates, app settings, listeners added
    /// or removed. On error nothing changes.
    pub async fn reload(self: &Arc<Self>, config: Config) -> Result<(), StartError> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.snapshot();
        let new = Arc::new(Snapshot::build(config, Some(&old), &self.sticky_key)?);
        // Bind what is new before swapping anything, so a bind failure keeps the old config.
        let fresh = self.bind_new_listeners(&new).await?;
        self.snapshot.store(new.clone());
        self.apps.reconfigure(&new.config);
        self.swap_listeners(&new, fresh);
        self.sync_admin(&new).await?;
        self.start_background(&new);
        tracing::info!(
            routes = new.config.routes.len(),
            upstreams = new.pools.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    async fn sync_listeners(self: &Arc<Self>, snap: &Snapshot) -> Result<(), StartError> {
        let fresh = self.bind_new_listeners(snap).await?;
        self.swap_listeners(snap, fresh);
        Ok(())
    }

    /// Binds the listeners of `snap` that are not running yet.
    async fn bind_new_listeners(
        &self,
        snap: &Snapshot,
    ) -> Result<Vec<(ListenerKey, TcpListener)>, StartError> {
        let running: Vec<ListenerKey> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| l.key.clone())
            .collect();
        let mut fresh = Vec::new();
        for key in listener_keys(&snap.config) {
            if running.contains(&key) {
                continue;
            }
            let tcp = TcpListener::bind(key.addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: key.addr,
                    source,
                })?;
            fresh.push((key, tcp));
        }
        Ok(fresh)
    }

    /// Starts `fresh` listeners, stops removed ones, and hands new TLS configs
    /// to the ones that stay.
    fn swap_listeners(self: &Arc<Self>, snap: &Snapshot, fresh: Vec<(ListenerKey, TcpListener)>) {
        let keys = listener_keys(&snap.config);
        let mut running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|l| {
            let keep = keys.contains(&l.key);
            if !keep {
                tracing::info!(addr = %l.local, "stopping removed listener");
                l.stop.cancel();
            }
            keep
        });
        for l in running.iter() {
            if let (Some(slot), Some(Some(cfg))) = (
                &l.tls_cfg,
                keys.iter()
                    .position(|k| *k == l.key)
                    .map(|i| snap.tls[i].clone()),
            ) {
                slot.store(cfg);
            }
        }
        for (key, tcp) in fresh {
            let idx = keys.iter().position(|k| *k == key).unwrap_or(0);
            let tls_cfg = snap
                .tls
                .get(idx)
                .cloned()
                .flatten()
                .map(|c| Arc::new(ArcSwap::new(c)));
            let local = tcp.local_addr().unwrap_or(key.addr);
            let stop = CancellationToken::new();
            tokio::spawn(listener::run(
                self.clone(),
                tcp,
                tls_cfg.clone(),
                stop.clone(),
            ));
            tracing::info!(addr = %local, tls = key.tls, "listening");
            running.push(ListenerInfo {
                tls: key.tls,
                key,
                local,
                stop,
                tls_cfg,
            });
        }
    }

    async fn sync_admin(self: &Arc<Self>, snap: &Snapshot) -> Result<(), StartError> {
        let want = snap.config.admin;
        let current = self
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.configured);
        if want == current {
            return Ok(());
        }
        let tcp = match want {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = admin.take() {
            old.stop.cancel();
        }
        if let (Some(configured), Some(tcp)) = (want, tcp) {
            let local = tcp.local_addr().unwrap_or(configured);
            let stop = CancellationToken::new();
            tokio::spawn(admin::run(self.clone(), tcp, stop.clone()));
            tracing::info!(addr = %local, "admin listening");
            *admin = Some(AdminInfo {
                configured,
                local,
                stop,
            });
        }
        Ok(())
    }

    fn start_background(&self, snap: &Snapshot) {
        let token = CancellationToken::new();
        for pool in snap.pools.values() {
            if let Some(h) = &pool.cfg.health {
                tokio::spawn(probe::run_active_checks(
                    pool.clone(),
                    h.clone(),
                    token.clone(),
                ));
            }
        }
        let mut bg = self.background.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *bg, token);
        old.cancel();
    }

    /// Drains: stop accepting, let HTTP requests finish, close WebSockets with
    /// 1001, wait up to `server.shutdown_grace`. Returns whether all finished.
    pub async fn drain(&self) -> bool {
        let grace = self.server_config().shutdown_grace;
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            l.stop.cancel();
        }
        let done = self.shutdown.drain(grace).await;
        self.background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
        if let Some(a) = self
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            a.stop.cancel();
        }
        done
    }
}

/// Handle to a running gateway, for `main` and for tests.
pub struct GatewayHandle {
    pub gw: Arc<Gateway>,
}

impl GatewayHandle {
    /// The first plain listener's bound address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.gw
            .listener_addrs()
            .into_iter()
            .find(|(_, tls)| !tls)
            .map(|(a, _)| a)
    }

    /// The first TLS listener's bound address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.gw
            .listener_addrs()
            .into_iter()
            .find(|(_, tls)| *tls)
            .map(|(a, _)| a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.gw.admin_addr()
    }

    /// See [`Gateway::drain`].
    pub async fn shutdown(&self) -> bool {
        self.gw.drain().await
    }
}
