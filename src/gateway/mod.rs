//! The composition root: the only module that knows the whole process. It
//! builds every layer's narrow context from one config — the [`ServerCtx`]
//! the listeners serve with, the [`Proxy`] handler and its route [`Table`],
//! the apps and the bus they share state through (in memory, or Redis when
//! `[cluster]` is set), access logging, metrics — binds the listeners, and
//! applies reloads and drains.
//!
//! Reload validates and builds everything first (config, certificates, new
//! listener sockets) and only then swaps, so a bad config changes nothing and
//! established connections keep running on whatever they started with.

mod admin_view;
mod listeners;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use self::admin_view::Readiness;
use self::listeners::{AdminInfo, ListenerInfo};
use crate::access::Access;
use crate::acme;
use crate::apps::chat::bus::Bus;
use crate::apps::Apps;
use crate::budget::Budget;
use crate::certs::CertError;
use crate::cluster::RedisBus;
use crate::config::Config;
use crate::inherit::Inherited;
use crate::limit::{ClusterLimits, Limiter, Registry};
use crate::limits::ConnLimits;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, Table};
use crate::server::{tls, ServerCtx};
use crate::shutdown::Shutdown;
use crate::upstream::{probe, Pool};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {addr}: {source}")]
    Tls { addr: SocketAddr, source: CertError },
    /// `key` is the config key that named the address (`listener[1].addr`,
    /// `admin.addr`): a reload's bind error otherwise named no key.
    #[error("{key}: cannot bind {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {upstream}: {source}")]
    UpstreamTls {
        upstream: String,
        source: crate::upstream::tls::UpstreamTlsError,
    },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Limits(#[from] crate::limit::cluster::ClusterLimitError),
    /// A reload that came to swap the config after a drain began: it would
    /// open listeners and restart tasks the drain has stopped.
    #[error("the gateway is draining")]
    Draining,
    /// The blocking task that built a reload's snapshot panicked (or the
    /// runtime is shutting down).
    #[error("building the new configuration failed")]
    Build(#[source] tokio::task::JoinError),
}

/// Everything derived from one config file. Replaced whole on reload.
struct Snapshot {
    config: Arc<Config>,
    /// What requests use; the proxy holds the same table.
    table: Arc<Table>,
    /// TLS server config per listener, aligned with `config.listeners`.
    tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Each TLS listener's certificate resolver, aligned with
    /// `config.listeners`: what `wsgate_tls_cert_expiry_seconds` reads (an
    /// ACME certificate changes without a reload).
    resolvers: Vec<Option<Arc<tls::SniResolver>>>,
    /// Every `[limit.NAME]`; limiters whose definition a reload keeps are
    /// carried over with their buckets.
    limits: Arc<Registry>,
    /// Each listener's `connection_limits`, aligned with `config.listeners`.
    conn_limits: Vec<Arc<Vec<Arc<Limiter>>>>,
}

/// What building a snapshot needs from the process besides the config.
struct BuildCtx<'a> {
    metrics: &'a Metrics,
    cluster_limits: Option<&'a Arc<ClusterLimits>>,
    /// Keys the pools' sticky cookies.
    secret: &'a [u8; 32],
    /// TLS tickets and session cache, one for the process.
    resumption: &'a tls::Resumption,
    /// ACME certificate slots, one per setting, kept across reloads.
    acme: &'a acme::Registry,
}

impl Snapshot {
    /// Builds a snapshot, loading every certificate. `previous` carries upstream
    /// health and load counters over for servers that stay; `bx.secret` keys
    /// the pools' sticky cookies.
    fn build(
        config: Config,
        previous: Option<&Snapshot>,
        bx: &BuildCtx<'_>,
    ) -> Result<Self, StartError> {
        let built = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| {
                        let tickets = config.server.tls_tickets;
                        tls::server_config(t, bx.resumption, tickets, bx.acme).map_err(|source| {
                            StartError::Tls {
                                addr: l.addr,
                                source,
                            }
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (tls, resolvers) = built
            .into_iter()
            .map(|b| match b {
                Some(b) => (Some(b.config), Some(b.resolver)),
                None => (None, None),
            })
            .unzip();
        let pools = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let prev = previous
                    .and_then(|p| p.table.pools.get(name))
                    .map(|p| p.as_ref());
                let pool = Pool::new(u.clone(), prev, bx.secret).map_err(|source| {
                    StartError::UpstreamTls {
                        upstream: name.clone(),
                        source,
                    }
                })?;
                Ok((name.clone(), Arc::new(pool)))
            })
            .collect::<Result<_, StartError>>()?;
        let limits = Arc::new(Registry::build(
            &config.limits,
            previous.map(|p| &*p.limits),
            bx.metrics,
            bx.cluster_limits,
        ));
        let conn_limits = config
            .listeners
            .iter()
            .map(|l| Arc::new(limits.pick(&l.connection_limits)))
            .collect();
        Ok(Self {
            table: Arc::new(Table::new(&config, pools, &limits)),
            tls,
            resolvers,
            limits,
            conn_limits,
            config: Arc::new(config),
        })
    }
}

/// Builds everything a config describes without serving it (`wsgate check`):
/// loads every certificate and builds routes and pools.
pub fn check(config: Config) -> Result<(), StartError> {
    // Any key will do: nothing is sealed or opened here.
    let bx = BuildCtx {
        metrics: &Metrics::new(),
        cluster_limits: None,
        secret: &[0; 32],
        resumption: &tls::Resumption::new(),
        acme: &acme::Registry::new(acme::Policy::default(), Default::default()),
    };
    Snapshot::build(config, None, &bx).map(drop)
}

/// The running process.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// What the listeners serve with (its `config` is `[server]`, swapped on reload).
    server_ctx: ServerCtx,
    proxy: Arc<Proxy>,
    apps: Arc<Apps>,
    access: Arc<Access>,
    limits: Arc<ConnLimits>,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    /// The Redis side of `scope = "cluster"` limits, when `[cluster]` is set.
    cluster_limits: Option<Arc<ClusterLimits>>,
    readiness: Readiness,
    node_id: String,
    /// Seals sticky cookies: `[server] secret`, or random per process.
    sticky_key: [u8; 32],
    /// TLS ticket keys and session cache: one per process, so tickets
    /// survive reloads and work across listeners.
    resumption: tls::Resumption,
    /// ACME settings: their certificates, challenges and renewal tasks.
    acme: acme::Registry,
    started: Instant,
    /// Cancels the background tasks (health checks) of the current snapshot.
    background: Mutex<CancellationToken>,
    listeners: Mutex<Vec<ListenerInfo>>,
    admin: Mutex<Option<AdminInfo>>,
    /// Sockets handed to this process (upgrade, systemd), until bound.
    inherited: Mutex<Inherited>,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

impl Gateway {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Bound listener addresses and whether each has TLS.
    fn listener_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| (l.local, l.tls))
            .collect()
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.local)
    }

    /// Builds `config`, binds every listener (port 0 picks a free port) and the
    /// admin listener, and starts serving.
    pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
        Self::start_with(config, Inherited::default()).await
    }

    /// [`Gateway::start`] with ACME renewals and retries timed by `policy`
    /// (tests shorten them).
    pub async fn start_with_acme(
        config: Config,
        policy: acme::Policy,
    ) -> Result<GatewayHandle, StartError> {
        Self::start_full(config, Inherited::default(), policy).await
    }

    /// [`Gateway::start`], using the `inherited` socket of an address instead
    /// of binding it; inherited sockets the config does not use are closed.
    pub async fn start_with(
        config: Config,
        inherited: Inherited,
    ) -> Result<GatewayHandle, StartError> {
        Self::start_full(config, inherited, acme::Policy::default()).await
    }

    async fn start_full(
        config: Config,
        inherited: Inherited,
        acme_policy: acme::Policy,
    ) -> Result<GatewayHandle, StartError> {
        let metrics = Arc::new(Metrics::new());
        // Connects lazily: costs nothing until a cluster-scope limit decides.
        let cluster_limits = match &config.cluster {
            Some(c) => Some(ClusterLimits::new(&c.redis)?),
            None => None,
        };
        let sticky_key = config
            .server
            .secret
            .as_ref()
            .map_or_else(rand::random, |s| s.0);
        let resumption = tls::Resumption::new();
        let acme = acme::Registry::new(acme_policy, metrics.acme_orders.clone());
        let bx = BuildCtx {
            metrics: &metrics,
            cluster_limits: cluster_limits.as_ref(),
            secret: &sticky_key,
            resumption: &resumption,
            acme: &acme,
        };
        let snapshot = Snapshot::build(config, None, &bx)?;
        let cfg = snapshot.config.clone();
        let shutdown = Shutdown::default();
        let access = Access::new(metrics.clone(), cfg.log.access_log);
        // The composition root picks the chat's bus: Redis when clustered.
        let cluster = match &cfg.cluster {
            Some(c) => Some(RedisBus::start(
                c,
                &cfg.server.node_id,
                cfg.chat.history,
                cfg.chat.history_ttl,
                // Sessions closing over the drain window still use the bus.
                shutdown.hard.token().clone(),
            )?),
            None => None,
        };
        let bus = cluster.clone().map(|b| b as Arc<dyn Bus>);
        // One memory budget for every app session, counting its evictions.
        let budget = Budget::new(cfg.server.max_buffered, metrics.ws_budget_closed.clone());
        let apps = Arc::new(Apps::new(
            &cfg,
            shutdown.clone(),
            bus,
            budget,
            metrics.auth.clone(),
        ));
        let limits = ConnLimits::new();
        let proxy = Arc::new(Proxy::new(
            snapshot.table.clone(),
            access.clone(),
            shutdown.clone(),
            apps.clone(),
            acme.challenges().clone(),
        ));
        let server_ctx = ServerCtx {
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            config: Arc::new(ArcSwap::from_pointee(cfg.server.clone())),
        };
        let gw = Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            server_ctx,
            proxy,
            apps,
            access,
            limits,
            shutdown,
            metrics,
            cluster_limits,
            readiness: Readiness::default(),
            node_id: cfg.server.node_id.clone(),
            sticky_key,
            resumption,
            acme,
            started: Instant::now(),
            background: Mutex::new(CancellationToken::new()),
            listeners: Mutex::new(Vec::new()),
            admin: Mutex::new(None),
            inherited: Mutex::new(inherited),
            reloading: tokio::sync::Mutex::new(()),
        });
        let snap = gw.snapshot();
        let fresh = gw.bind_new_listeners(&snap).await?;
        gw.swap_listeners(&snap, fresh);
        gw.sync_acme(&snap);
        let admin = gw.open_admin(&snap).await?;
        gw.apply_admin(admin);
        gw.close_unused_inherited();
        gw.start_background(&snap);
        if let Some(bus) = &cluster {
            tokio::spawn(admin_view::watch_cluster(bus.status(), Arc::downgrade(&gw)));
        }
        if let Some(cl) = &gw.cluster_limits {
            tokio::spawn(cl.clone().probe(gw.shutdown.hard.token().clone()));
            tokio::spawn(admin_view::watch_limits(cl.status(), Arc::downgrade(&gw)));
        }
        gw.readiness.set_started();
        Ok(GatewayHandle { gw })
    }

    /// Validates and applies a new config: routes, pools (keeping health and
    /// load of servers that stay), certificates, app settings, listeners added
    /// or removed. On error nothing changes.
    async fn reload(self: &Arc<Self>, config: Config) -> Result<(), StartError> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.shutdown.is_draining() {
            return Err(StartError::Draining);
        }
        let old = self.snapshot();
        // Certificates, keys and CA files are read here: on a blocking
        // thread, so a file system that stalls holds no runtime worker.
        let gw = self.clone();
        let build = tokio::task::spawn_blocking(move || {
            let bx = BuildCtx {
                metrics: &gw.metrics,
                cluster_limits: gw.cluster_limits.as_ref(),
                secret: &gw.sticky_key,
                resumption: &gw.resumption,
                acme: &gw.acme,
            };
            Snapshot::build(config, Some(&old), &bx)
        });
        // A drain does not wait for files that hang: the build is left to
        // finish on its thread, and its result dropped.
        let new = tokio::select! {
            built = build => Arc::new(built.map_err(StartError::Build)??),
            _ = self.shutdown.token.cancelled() => return Err(StartError::Draining),
        };
        if self.shutdown.is_draining() {
            return Err(StartError::Draining);
        }
        // Bind what is new before swapping anything, so a bind failure keeps the old config.
        let fresh = self.bind_new_listeners(&new).await?;
        let admin = self.open_admin(&new).await?;
        self.snapshot.store(new.clone());
        self.server_ctx
            .config
            .store(Arc::new(new.config.server.clone()));
        self.proxy.swap(new.table.clone());
        self.access.set_logging(new.config.log.access_log);
        self.apps.reconfigure(&new.config);
        self.swap_listeners(&new, fresh);
        self.sync_acme(&new);
        self.apply_admin(admin);
        self.start_background(&new);
        tracing::info!(
            routes = new.config.routes.len(),
            upstreams = new.table.pools.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Starts the renewal task of each ACME setting `snap` uses (now that the
    /// listeners answering its challenges are bound) and stops the others.
    fn sync_acme(&self, snap: &Snapshot) {
        let wanted: Vec<&crate::config::AcmeConfig> = snap
            .config
            .listeners
            .iter()
            .filter_map(|l| match &l.tls.as_ref()?.default {
                crate::config::ListenerCert::Acme(a) => Some(a),
                crate::config::ListenerCert::Files(_) => None,
            })
            .collect();
        self.acme.sync(&wanted, self.shutdown.token.token());
    }

    fn start_background(&self, snap: &Snapshot) {
        let token = CancellationToken::new();
        for pool in snap.table.pools.values() {
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

    /// Drains: stop accepting, let HTTP requests finish, close WebSockets
    /// with 1012 paced over `server.drain_window`, wait up to
    /// `server.shutdown_grace`. Returns whether all finished.
    async fn drain(&self) -> bool {
        let server = self.server_ctx.config.load();
        let (grace, window) = (server.shutdown_grace, server.drain_window);
        // Draining from here: a reload that has not swapped yet stops (it
        // would open listeners and restart tasks the drain stops), and one
        // swapping now finishes before the listeners are stopped.
        self.shutdown.token.cancel();
        drop(self.reloading.lock().await);
        self.stop_listeners();
        let done = self.shutdown.drain(grace, window).await;
        self.background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
        self.stop_admin();
        done
    }
}

/// Handle to a running gateway, for `main` and for tests.
#[derive(Clone)]
pub struct GatewayHandle {
    gw: Arc<Gateway>,
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
        self.https_addrs().into_iter().next()
    }

    /// Every TLS listener's bound address.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.gw
            .listener_addrs()
            .into_iter()
            .filter(|(_, tls)| *tls)
            .map(|(a, _)| a)
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.gw.admin_addr()
    }

    /// Duplicates of the listening sockets (listeners and admin) with their
    /// bound addresses, for a binary upgrade (`upgrade::Upgrader::run`).
    pub fn listening_sockets(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        self.gw.listening_sockets()
    }

    /// Stops answering on the admin listener at once: after a binary
    /// upgrade the new process serves it on the same socket.
    pub fn hand_over_admin(&self) {
        self.gw.stop_admin()
    }

    /// See [`Gateway::drain`].
    pub async fn shutdown(&self) -> bool {
        self.gw.drain().await
    }

    /// Applies a new config (see `Gateway::reload`).
    pub async fn reload(&self, cfg: Config) -> Result<(), StartError> {
        self.gw.reload(cfg).await
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.gw.shutdown.is_draining()
    }

    /// The upstream pool `name` of the current config.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.gw.proxy.table().pools.get(name).cloned()
    }

    /// The chat app (its state outlives reloads).
    pub fn chat(&self) -> Arc<crate::apps::chat::Chat> {
        self.gw.apps.chat.clone()
    }

    /// Bytes of unfinished WebSocket messages app sessions hold now
    /// (`server.max_buffered`).
    pub fn buffered_bytes(&self) -> usize {
        self.gw.apps.budget.buffered()
    }

    /// Client connections holding a slot now.
    pub fn active_connections(&self) -> usize {
        self.gw.limits.active()
    }

    /// The `[limit.NAME]` of the current config (its buckets on this node).
    pub fn limiter(&self, name: &str) -> Option<Arc<Limiter>> {
        self.gw.snapshot().limits.get(name).cloned()
    }

    /// Starts draining without waiting (readiness turns off at once).
    pub fn begin_drain(&self) {
        self.gw.shutdown.token.cancel()
    }
}
