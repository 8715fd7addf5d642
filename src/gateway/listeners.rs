//! The set of bound listeners and the admin listener, kept in step with the
//! config: on start and on every reload, new addresses are bound first (a
//! bind failure changes nothing), removed ones stop accepting, and the ones
//! that stay get the new TLS configs and `proxy_protocol` for their next
//! connections. An address this process was handed a socket for (`inherit`:
//! a binary upgrade, systemd) uses that socket instead of binding; each
//! listener keeps a duplicate of its descriptor to hand to an upgrade.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use super::{Gateway, Snapshot, StartError};
use crate::config::Config;
use crate::inherit::Inherited;
use crate::limit::Limiter;
use crate::server::{admin, listener};

/// Identity of a listener across reloads: its configured address, whether it
/// has TLS, and which occurrence of that pair it is (port 0 may repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListenerKey {
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
pub(super) struct ListenerInfo {
    key: ListenerKey,
    pub(super) local: SocketAddr,
    pub(super) tls: bool,
    pub(super) stop: CancellationToken,
    tls_cfg: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// The listener's `connection_limits`, swapped on reload.
    conn_limits: Arc<ArcSwap<Vec<Arc<Limiter>>>>,
    /// Whether new connections start with a PROXY header (reloadable).
    proxy_protocol: Arc<AtomicBool>,
    /// A duplicate of the socket, for a binary upgrade; dropped on drain so
    /// the socket closes with the accept loop.
    pub(super) fd: Option<OwnedFd>,
}

pub(super) struct AdminInfo {
    configured: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) stop: CancellationToken,
    pub(super) fd: Option<OwnedFd>,
}

/// Listener sockets bound for a new config, not serving yet.
pub(super) type Fresh = Vec<(ListenerKey, TcpListener, OwnedFd)>;

/// Connections the kernel queues for a listener before `accept`. Linux caps
/// the value at `net.core.somaxconn` (4096 by default), so this asks for that
/// cap, as Envoy does by default (nginx asks for 511). tokio's own bind asks
/// for 128, and the kernel drops the SYN of every connection beyond that in a
/// burst (a reconnect storm after a deploy): each such client waits a
/// second for its retransmission, and more if the burst goes on.
const LISTEN_BACKLOG: u32 = 65_535;

/// A new listening socket on `addr`: `SO_REUSEADDR` (a restart rebinds
/// while old connections linger in TIME_WAIT), then [`LISTEN_BACKLOG`]. An
/// IPv6 socket takes IPv4 too (`IPV6_V6ONLY` off, whatever the host's
/// `net.ipv6.bindv6only`): `[::]` means every address, as config validation
/// assumes when it refuses `[::]:P` beside `0.0.0.0:P`.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let s = TcpSocket::new_v6()?;
            rustix::net::sockopt::set_ipv6_v6only(&s, false)?;
            s
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// An inherited socket for `addr`, else a new one bound to it; and a
/// duplicate of its descriptor. `key` names the address in errors.
async fn open(
    inherited: &std::sync::Mutex<Inherited>,
    addr: SocketAddr,
    key: &str,
) -> Result<(TcpListener, OwnedFd), StartError> {
    let taken = inherited
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(addr);
    let bind_err = |source| StartError::Bind {
        key: key.to_string(),
        addr,
        source,
    };
    let tcp = match taken {
        Some(l) => {
            tracing::info!(addr = %addr, "using the inherited listening socket");
            TcpListener::from_std(l).map_err(bind_err)?
        }
        None => bind(addr).map_err(bind_err)?,
    };
    let dup = tcp.as_fd().try_clone_to_owned().map_err(bind_err)?;
    Ok((tcp, dup))
}

/// A listening socket taken over from a running listener, and a duplicate
/// of its descriptor (as [`open`] returns).
fn adopt(fd: OwnedFd) -> std::io::Result<(TcpListener, OwnedFd)> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    let tcp = TcpListener::from_std(std)?;
    let dup = tcp.as_fd().try_clone_to_owned()?;
    Ok((tcp, dup))
}

impl Gateway {
    /// Binds the listeners of `snap` that are not running yet.
    pub(super) async fn bind_new_listeners(&self, snap: &Snapshot) -> Result<Fresh, StartError> {
        let running: Vec<ListenerKey> = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|l| l.key.clone())
            .collect();
        let keys = listener_keys(&snap.config);
        let mut fresh = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if running.contains(key) {
                continue;
            }
            // A reload binds what validation could not try (the running
            // process holds its own addresses): say where, as validation does.
            let pos = snap.config.listeners.get(i).map_or((0, 0), |l| l.addr_at);
            let name = format!("{}: listener[{i}].addr", at(snap, pos));
            let (tcp, fd) = match self.switching(key.addr, &keys) {
                Some(fd) => adopt(fd).map_err(|source| StartError::Bind {
                    key: name,
                    addr: key.addr,
                    source,
                })?,
                None => open(&self.inherited, key.addr, &name).await?,
            };
            fresh.push((key.clone(), tcp, fd));
        }
        Ok(fresh)
    }

    /// The socket of a running listener on `addr` that the new config
    /// (`keys`) serves in the other mode (TLS turned on or off): it moves to
    /// the new mode, where binding a second socket would fail (address in
    /// use), and connections queued on it are not lost.
    fn switching(&self, addr: SocketAddr, keys: &[ListenerKey]) -> Option<OwnedFd> {
        if addr.port() == 0 {
            return None;
        }
        let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        running
            .iter()
            .filter(|l| l.key.addr == addr && !keys.contains(&l.key))
            .find_map(|l| l.fd.as_ref()?.try_clone().ok())
    }

    /// Starts `fresh` listeners, stops removed ones, and hands new TLS configs
    /// to the ones that stay.
    pub(super) fn swap_listeners(&self, snap: &Snapshot, fresh: Fresh) {
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
            if let Some(i) = keys.iter().position(|k| *k == l.key) {
                let pp = snap.config.listeners[i].proxy_protocol;
                l.proxy_protocol.store(pp, Ordering::Relaxed);
                if let Some(limits) = snap.conn_limits.get(i) {
                    l.conn_limits.store(limits.clone());
                }
            }
            if let (Some(slot), Some(Some(cfg))) = (
                &l.tls_cfg,
                keys.iter()
                    .position(|k| *k == l.key)
                    .map(|i| snap.tls[i].clone()),
            ) {
                slot.store(cfg);
            }
        }
        for (key, tcp, fd) in fresh {
            let idx = keys.iter().position(|k| *k == key).unwrap_or(0);
            let tls_cfg = snap
                .tls
                .get(idx)
                .cloned()
                .flatten()
                .map(|c| Arc::new(ArcSwap::new(c)));
            let conn_limits = Arc::new(ArcSwap::new(
                snap.conn_limits.get(idx).cloned().unwrap_or_default(),
            ));
            let local = tcp.local_addr().unwrap_or(key.addr);
            let stop = CancellationToken::new();
            let proxy_protocol = Arc::new(AtomicBool::new(
                snap.config
                    .listeners
                    .get(idx)
                    .is_some_and(|l| l.proxy_protocol),
            ));
            tokio::spawn(listener::run(
                self.server_ctx.clone(),
                self.proxy.clone(),
                tcp,
                listener::PerListener {
                    addr: key.addr,
                    tls: tls_cfg.clone(),
                    conn_limits: conn_limits.clone(),
                    proxy_protocol: proxy_protocol.clone(),
                },
                stop.clone(),
            ));
            tracing::info!(addr = %local, tls = key.tls, "listening");
            running.push(ListenerInfo {
                tls: key.tls,
                key,
                local,
                stop,
                tls_cfg,
                conn_limits,
                proxy_protocol,
                fd: Some(fd),
            });
        }
        drop(running);
        self.refresh_cert_expiry(snap);
    }

    /// Sets `wsgate_tls_cert_expiry_seconds` from the certificates in service
    /// now, labelled like `connections_active` with the bound address. Run
    /// after each listener swap and before each metrics render (ACME
    /// certificates change between reloads).
    pub(super) fn refresh_cert_expiry(&self, snap: &Snapshot) {
        let keys = listener_keys(&snap.config);
        let running = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let certs: Vec<_> = running
            .iter()
            .filter_map(|l| {
                let i = keys.iter().position(|k| *k == l.key)?;
                let local = l.local.to_string();
                let resolver = snap.resolvers.get(i)?.as_ref()?;
                Some(
                    resolver
                        .expiries()
                        .into_iter()
                        .map(move |(h, t)| (local.clone(), h, t)),
                )
            })
            .flatten()
            .collect();
        self.metrics.set_cert_expiry(&certs);
    }

    /// Binds the admin address `snap` wants if it is not the running one:
    /// before a reload swaps anything, so a taken address refuses all of it.
    pub(super) async fn open_admin(&self, snap: &Snapshot) -> Result<AdminChange, StartError> {
        let want = snap.config.admin;
        let current = self
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.configured);
        Ok(match want {
            _ if want == current => AdminChange::Keep,
            None => AdminChange::Stop,
            Some(addr) => {
                let key = format!("{}: admin.addr", at(snap, snap.config.admin_at));
                let (tcp, fd) = open(&self.inherited, addr, &key).await?;
                AdminChange::Start(addr, tcp, fd)
            }
        })
    }

    /// Starts, moves or stops the admin listener as [`Gateway::open_admin`] decided.
    pub(super) fn apply_admin(self: &Arc<Self>, change: AdminChange) {
        if matches!(change, AdminChange::Keep) {
            return;
        }
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = admin.take() {
            old.stop.cancel();
        }
        if let AdminChange::Start(configured, tcp, fd) = change {
            let local = tcp.local_addr().unwrap_or(configured);
            let stop = CancellationToken::new();
            tokio::spawn(admin::run(self.clone(), tcp, stop.clone()));
            tracing::info!(addr = %local, "admin listening");
            *admin = Some(AdminInfo {
                configured,
                local,
                stop,
                fd: Some(fd),
            });
        }
    }
}

/// What a new config does to the admin listener.
pub(super) enum AdminChange {
    Keep,
    Stop,
    Start(SocketAddr, TcpListener, OwnedFd),
}

/// `PATH:LINE:COL` of a position in `snap`'s file.
fn at(snap: &Snapshot, (line, col): (usize, usize)) -> String {
    format!("{}:{line}:{col}", snap.config.source.display())
}

impl Gateway {
    /// Duplicates of every listening socket (listeners and admin) with the
    /// address each is bound to: what a binary upgrade hands over.
    pub(super) fn listening_sockets(&self) -> Vec<(SocketAddr, OwnedFd)> {
        let mut out = Vec::new();
        let mut push =
            |addr: SocketAddr, fd: &Option<OwnedFd>| match fd.as_ref().map(OwnedFd::try_clone) {
                Some(Ok(dup)) => out.push((addr, dup)),
                Some(Err(e)) => {
                    tracing::warn!(addr = %addr, error = %e, "cannot duplicate a listening socket")
                }
                None => {}
            };
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            push(l.local, &l.fd);
        }
        if let Some(a) = self
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            push(a.local, &a.fd);
        }
        out
    }

    /// Stops accepting on every listener (not the admin one) and lets their
    /// sockets close with their accept loops.
    pub(super) fn stop_listeners(&self) {
        for l in self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            l.stop.cancel();
            l.fd = None;
        }
    }

    /// Stops the admin listener now (after a binary upgrade: the new process
    /// answers on the same socket, and probes should not reach the old one).
    pub(super) fn stop_admin(&self) {
        if let Some(a) = self
            .admin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            a.stop.cancel();
            a.fd = None;
        }
    }

    /// Closes inherited sockets the config did not use.
    pub(super) fn close_unused_inherited(&self) {
        let unused = self
            .inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .close_unused();
        for addr in unused {
            tracing::info!(addr = %addr, "closed an inherited socket the config does not listen on");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    /// With nobody accepting, every connection of a burst must still complete
    /// its handshake into the queue: with tokio's default of 128, those past
    /// it never would (their SYNs are dropped while the queue stays full).
    #[tokio::test]
    async fn a_burst_of_connections_queues_without_dropped_syns() {
        let listener = super::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connects = (0..300).map(|_| TcpStream::connect(addr));
        let all = futures_util::future::join_all(connects);
        let done = tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("every connection of the burst completes while none is accepted");
        assert!(done.iter().all(Result::is_ok));
        drop(listener);
    }
}
