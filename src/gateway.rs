//! The running gateway: the swappable [`Snapshot`] built from one config (routes,
//! pools, TLS configs, app settings), the process-wide parts that outlive a
//! reload (connection limits, shutdown tracking, app state), and
//! [`Gateway::start`], which binds listeners and spawns their accept loops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apps::Apps;
use crate::certs::CertError;
use crate::config::{Config, ServerConfig};
use crate::limits::ConnLimits;
use crate::router::Router;
use crate::server::{listener, tls};
use crate::shutdown::Shutdown;
use crate::upstream::{health, Pool};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener {addr}: {source}")]
    Tls { addr: SocketAddr, source: CertError },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Everything derived from one config file. Replaced whole on reload; a request
/// loads it once and keeps using that version until it is done.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: HashMap<String, Arc<Pool>>,
    /// TLS server configs by the listener's configured address.
    pub tls: HashMap<SocketAddr, Arc<rustls::ServerConfig>>,
}

impl Snapshot {
    /// Builds a snapshot, loading every certificate. `previous` carries upstream
    /// health and load counters over for servers that stay.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Self, StartError> {
        let mut tls_map = HashMap::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let sc = tls::server_config(t).map_err(|source| StartError::Tls {
                    addr: l.addr,
                    source,
                })?;
                tls_map.insert(l.addr, sc);
            }
        }
        let pools = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let prev = previous.and_then(|p| p.pools.get(name)).map(|p| p.as_ref());
                (name.clone(), Arc::new(Pool::new(u.clone(), prev)))
            })
            .collect();
        Ok(Self {
            router: Router::new(&config.routes),
            pools,
            tls: tls_map,
            config: Arc::new(config),
        })
    }
}

pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub limits: Arc<ConnLimits>,
    pub shutdown: Shutdown,
    pub apps: Apps,
    pub node_id: String,
    /// Key sealing sticky cookies: `[server] secret` or random per start.
    pub sticky_key: [u8; 32],
    pub started: Instant,
    /// Cancels the background tasks (health checks) of the current snapshot.
    background: std::sync::Mutex<CancellationToken>,
}

impl Gateway {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn server_config(&self) -> ServerConfig {
        self.snapshot.load().config.server.clone()
    }

    /// Validates and builds `config` then starts the gateway: binds every
    /// listener (port 0 picks a free port) and spawns the accept loops.
    pub async fn start(config: Config) -> Result<GatewayHandle, StartError> {
        let snapshot = Snapshot::build(config, None)?;
        let cfg = snapshot.config.clone();
        let sticky_key = cfg.server.secret.unwrap_or_else(rand::random);
        let shutdown = Shutdown::default();
        let apps = Apps::new(&cfg, shutdown.clone());
        let gw = Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            limits: ConnLimits::new(),
            shutdown,
            apps,
            node_id: cfg.server.node_id.clone(),
            sticky_key,
            started: Instant::now(),
            background: std::sync::Mutex::new(CancellationToken::new()),
        });
        gw.start_background(&gw.snapshot());

        let mut bound = Vec::new();
        for l in &cfg.listeners {
            let tcp = TcpListener::bind(l.addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: l.addr,
                    source,
                })?;
            let local = tcp.local_addr().map_err(|source| StartError::Bind {
                addr: l.addr,
                source,
            })?;
            let tls = gw
                .snapshot()
                .tls
                .get(&l.addr)
                .cloned()
                .map(|c| Arc::new(ArcSwap::new(c)));
            bound.push(BoundListener {
                configured: l.addr,
                local,
                tls: tls.is_some(),
                tcp,
                tls_cfg: tls,
            });
        }
        let mut listeners = Vec::new();
        for b in bound {
            let stop = CancellationToken::new();
            tokio::spawn(listener::run(
                gw.clone(),
                b.tcp,
                b.tls_cfg.clone(),
                stop.clone(),
            ));
            tracing::info!(addr = %b.local, tls = b.tls, "listening");
            listeners.push(ListenerInfo {
                configured: b.configured,
                local: b.local,
                tls: b.tls,
                stop,
                tls_cfg: b.tls_cfg,
            });
        }
        Ok(GatewayHandle { gw, listeners })
    }

    fn start_background(&self, snap: &Snapshot) {
        let token = CancellationToken::new();
        for pool in snap.pools.values() {
            if let Some(h) = &pool.cfg.health {
                tokio::spawn(health::run_active_checks(
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
}

struct BoundListener {
    configured: SocketAddr,
    local: SocketAddr,
    tls: bool,
    tcp: TcpListener,
    tls_cfg: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

/// A started listener.
pub struct ListenerInfo {
    pub configured: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    stop: CancellationToken,
    #[allow(dead_code)]
    tls_cfg: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

/// Handle to a running gateway, for `main` and for tests.
pub struct GatewayHandle {
    pub gw: Arc<Gateway>,
    pub listeners: Vec<ListenerInfo>,
}

impl GatewayHandle {
    /// The first plain listener's bound address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| !l.tls).map(|l| l.local)
    }

    /// The first TLS listener's bound address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.tls).map(|l| l.local)
    }

    /// Drains: stop accepting, finish HTTP requests, close WebSockets with 1001,
    /// wait up to `server.shutdown_grace`. Returns whether all finished in time.
    pub async fn shutdown(self) -> bool {
        for l in &self.listeners {
            l.stop.cancel();
        }
        let grace = self.gw.server_config().shutdown_grace;
        let done = self.gw.shutdown.drain(grace).await;
        self.gw
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cancel();
        done
    }
}
