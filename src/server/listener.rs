//! Accept loops. Every accepted connection gets a tracing span with its peer
//! address and is checked against the listener's `connection_limits` (rate
//! limits keyed by the client address: over one, the socket is closed
//! unanswered). On a plain listener that is the peer, checked at once,
//! before any TLS work; on a `proxy_protocol` listener the PROXY header is
//! read first ([`proxy_protocol`]: only from a peer in `trusted_proxies`,
//! within the handshake or header timeout, else the connection is closed)
//! and names the client the limits count. The connection is then admitted
//! against the connection caps under that client address (refused ones are
//! answered 503/429 by [`conn::serve_refusal`]), goes through TLS when the
//! listener has it, and is served by hyper. The loop itself never dies:
//! per-connection accept errors are skipped, resource exhaustion (EMFILE) is
//! logged and backed off.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acks;
use super::conn::{self, Protocols};
use super::proxy_protocol::{self, Prefixed};
use super::{Handler, ServerCtx};
use crate::client_cert::ClientCert;
use crate::ctx::ConnCtx;
use crate::limit::{Decision, KeyRef, Kind, Limiter};
use crate::limits::Refusal;

/// How many refused connections may be answered at once; beyond that they are
/// closed without a response so a flood cannot pile up memory.
const MAX_REFUSING: usize = 1024;

/// What one listener has of its own; the gateway swaps the insides on reload.
pub struct PerListener {
    /// Its `addr` as configured (port 0 as written): what routes'
    /// `listeners` name.
    pub addr: SocketAddr,
    /// Serves new certificates to new connections after a reload.
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// `connection_limits`: checked per new connection, keyed by client address.
    pub conn_limits: Arc<ArcSwap<Vec<Arc<Limiter>>>>,
    /// Whether new connections start with a PROXY header.
    pub proxy_protocol: Arc<AtomicBool>,
}

/// Runs one listener until `stop` (its own token, or the gateway's drain) fires.
pub async fn run<H: Handler>(
    sc: ServerCtx,
    handler: Arc<H>,
    listener: TcpListener,
    per: PerListener,
    stop: CancellationToken,
) {
    let PerListener {
        addr: configured,
        tls,
        conn_limits,
        proxy_protocol,
    } = per;
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let open_conns = sc.metrics.connection_gauge(&local.to_string());
    let accepted_total = sc.metrics.accepted_counter(&local.to_string());
    acks::on_listener(&listener, tls.is_none());
    // Made once: a new `cancelled()` per accept joins and leaves each token's
    // waiter list under its lock (~700 instructions per connection, callgrind).
    let stopped = stop.cancelled();
    let draining = sc.shutdown.token.cancelled();
    tokio::pin!(stopped, draining);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => break,
            () = &mut draining => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            // A dual-stack listener's IPv4 peer, as its IPv4 address: to the
            // connection limits, caps and logs as to everything after.
            Ok((stream, peer)) => {
                accepted_total.inc();
                (
                    stream,
                    SocketAddr::new(peer.ip().to_canonical(), peer.port()),
                )
            }
            Err(e) => {
                handle_accept_error(e).await;
                continue;
            }
        };
        let limits = conn_limits.load_full();
        let proxied = proxy_protocol.load(Ordering::Relaxed);
        // Behind a PROXY header only the header names the client, whose key
        // the limits are: they wait for it (in the connection's task).
        if !proxied && !limits.is_empty() && !admit_local(&limits, peer) {
            // Dropped here: closed before any TLS or HTTP work.
            continue;
        }
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!(
            "conn",
            client.addr = %peer,
            client.proxied = tracing::field::Empty,
            listener = %local
        );
        let tls_cfg = tls.as_ref().map(|t| t.load_full());
        let later_limits = (proxied && !limits.is_empty() || limits.iter().any(|l| l.is_cluster()))
            .then_some(limits);
        // Boxed where it is made: the connection's future is otherwise copied
        // by every wrapper on its way into the runtime (span, panic catch,
        // task tracker, task cell); the box is moved as a pointer.
        let task = Box::pin(handle_connection(
            sc.clone(),
            handler.clone(),
            Accepted {
                stream,
                peer,
                listener: configured,
                proxy_protocol: proxied,
            },
            tls_cfg,
            open_conns.clone(),
            later_limits,
        ))
        .instrument(span);
        sc.shutdown.spawn_conn(task);
    }
    tracing::info!(listener = %local, "listener stopped accepting");
}

/// Whether a new connection from `client` is within the listener's
/// node-scope connection limits: checked in the accept loop (a hash and a
/// mutex), before any TLS work.
fn admit_local(limits: &[Arc<Limiter>], client: SocketAddr) -> bool {
    let key = KeyRef::Ip(client.ip());
    limits.iter().filter(|l| !l.is_cluster()).all(|l| {
        let limited = matches!(
            l.check_local(&l.id(key), Kind::Connection),
            Decision::Limited { .. }
        );
        if limited {
            tracing::debug!(client = %client, limit = l.name(), "connection over its rate limit: closed");
        }
        !limited
    })
}

/// The same for the `cluster`-scope limits, in the connection's task: waiting
/// for Redis (at most `limit::cluster::TIMEOUT`) never holds up accepting.
async fn admit_cluster(limits: &[Arc<Limiter>], client: SocketAddr) -> bool {
    let key = KeyRef::Ip(client.ip());
    for l in limits.iter().filter(|l| l.is_cluster()) {
        if let Decision::Limited { .. } = l.check(&l.id(key), Kind::Connection).await {
            tracing::debug!(client = %client, limit = l.name(), "connection over its rate limit: closed");
            return false;
        }
    }
    true
}

async fn handle_accept_error(e: io::Error) {
    match e.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset => {}
        _ => {
            // EMFILE/ENFILE/ENOMEM: back off instead of spinning; the loop goes on.
            tracing::error!(error = %e, "accept failed; retrying in 100ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A connection as accepted.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// The listener's configured `addr`.
    listener: SocketAddr,
    /// Whether it starts with a PROXY header.
    proxy_protocol: bool,
}

async fn handle_connection<H: Handler>(
    sc: ServerCtx,
    handler: Arc<H>,
    accepted: Accepted,
    tls: Option<Arc<rustls::ServerConfig>>,
    open_conns: prometheus_client::metrics::gauge::Gauge,
    later_limits: Option<Arc<Vec<Arc<Limiter>>>>,
) {
    let server = sc.config.load_full();
    let Accepted {
        stream,
        peer,
        listener,
        proxy_protocol,
    } = accepted;
    // Before admission: the caps count the real client, which only the
    // header names. Only trusted peers get here, each for a bounded time.
    let (stream, mut ctx) = if proxy_protocol {
        // Boxed: its read buffer would otherwise sit in every connection's task.
        let header = Box::pin(read_proxy_header(&server, stream, peer, tls.is_some()));
        let (stream, client) = match header.await {
            Ok(read) => read,
            Err(reason) => return refused_proxy_header(&sc, peer, reason),
        };
        acks::after_proxy_header(&stream, tls.is_some());
        (stream, ConnCtx::behind_proxy(peer, client, tls.is_some()))
    } else {
        (Prefixed::plain(stream), ConnCtx::new(peer, tls.is_some()))
    };
    ctx.listener = listener;
    if let Some(limits) = later_limits {
        if proxy_protocol && !admit_local(&limits, ctx.client) {
            return;
        }
        // Boxed: the Redis round trip's state would otherwise sit in every
        // connection's task, limits or not.
        if !Box::pin(admit_cluster(&limits, ctx.client)).await {
            return;
        }
    }
    let slot = match sc.limits.admit(
        ctx.client.ip(),
        server.max_connections,
        server.max_connections_per_ip,
    ) {
        Ok(mut slot) => {
            slot.attach_gauge(crate::metrics::GaugeGuard::new(open_conns));
            slot
        }
        Err(refusal) => return Box::pin(refuse(sc, stream, tls, refusal)).await,
    };
    // Boxed: hyper's connection state is kilobytes, and this future is moved
    // several times on its way into a task (one allocation is cheaper than
    // copying it each time, measured per new connection in S5).
    match tls {
        None => Box::pin(conn::serve(sc, handler, stream, ctx, slot, Protocols::Any)).await,
        // Boxed as a whole: the TLS stream (over a kilobyte) would otherwise
        // sit in every connection's task, plain ones too.
        Some(cfg) => {
            let timeout = server.tls_handshake_timeout;
            Box::pin(serve_tls(sc, handler, stream, ctx, slot, cfg, timeout)).await
        }
    }
}

/// The TLS handshake, then HTTP in the protocol ALPN chose.
async fn serve_tls<H: Handler>(
    sc: ServerCtx,
    handler: Arc<H>,
    stream: Prefixed<TcpStream>,
    mut ctx: ConnCtx,
    slot: crate::limits::ConnSlot,
    cfg: Arc<rustls::ServerConfig>,
    timeout: Duration,
) {
    let Some(tls_stream) = tls_handshake(&sc.metrics, stream, cfg, timeout).await else {
        return;
    };
    let session = tls_stream.get_ref().1;
    if session.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
        // An ACME tls-alpn-01 validation: the handshake was the answer.
        tracing::debug!("tls-alpn-01 validation handshake answered; closing");
        return;
    }
    let protocols = Protocols::from_alpn(session.alpn_protocol());
    // rustls verified it against the listener's client CA: only a verified
    // certificate is ever named to upstreams.
    ctx.client_cert = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| Arc::new(ClientCert::from_der(der)));
    Box::pin(conn::serve(sc, handler, tls_stream, ctx, slot, protocols)).await
}

/// Seconds between two warnings of a refused PROXY header: a balancer
/// misconfigured (or a scanner) would otherwise write one line per connection.
const PROXY_WARN_EVERY: u64 = 10;

/// Counts a connection closed for its PROXY header (dropping it closes it),
/// and says so at warn at most every [`PROXY_WARN_EVERY`] seconds, as nginx
/// and HAProxy log a "broken header": otherwise a balancer that does not
/// send one is a silent outage.
fn refused_proxy_header(sc: &ServerCtx, peer: SocketAddr, reason: &'static str) {
    static WARN: crate::logging::Every = crate::logging::Every::secs(PROXY_WARN_EVERY);
    sc.metrics
        .proxy_header_refused
        .get_or_create(&crate::metrics::Reason { reason })
        .inc();
    if WARN.due() {
        tracing::warn!(%peer, reason, "PROXY header refused; closing (further refusals within {PROXY_WARN_EVERY} s are only counted: wsgate_proxy_header_refused_total)");
    } else {
        tracing::debug!(%peer, reason, "PROXY header refused; closing");
    }
}

/// The PROXY header of a connection from `peer`, and the client it names;
/// else why it was refused (the connection is then dropped, so closed):
/// `peer` is not a trusted proxy, the header is malformed, or it does not
/// arrive within the TLS handshake timeout (TLS listeners) or the header
/// timeout (plain ones).
async fn read_proxy_header(
    server: &crate::config::ServerConfig,
    stream: TcpStream,
    peer: SocketAddr,
    tls: bool,
) -> Result<(Prefixed<TcpStream>, SocketAddr), &'static str> {
    if !server.trusted_proxies.contains(peer.ip()) {
        // Not a byte is read: an untrusted peer could name any address.
        return Err("untrusted");
    }
    let timeout = if tls {
        server.tls_handshake_timeout
    } else {
        server.header_timeout
    };
    match tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok((proxied, stream))) => {
            let client = proxied.client_or(peer);
            tracing::Span::current().record("client.proxied", tracing::field::display(client));
            Ok((stream, client))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "PROXY header malformed");
            Err("malformed")
        }
        Err(_) => Err("timeout"),
    }
}

async fn tls_handshake(
    metrics: &crate::metrics::Metrics,
    stream: Prefixed<TcpStream>,
    cfg: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>> {
    let reason = match tokio::time::timeout(timeout, TlsAcceptor::from(cfg).accept(stream)).await {
        Ok(Ok(s)) => return Some(s),
        // Closed before or during the handshake: a TCP health check, a
        // port scan; apart from failures, or an alert on them would fire
        // behind every layer-4 balancer.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        Ok(Err(e)) => {
            tracing::debug!(error = %crate::tls_reason::describe(&e), "TLS handshake failed");
            "error"
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            "timeout"
        }
    };
    metrics
        .tls_handshake_failures
        .get_or_create(&crate::metrics::Reason { reason })
        .inc();
    None
}

async fn refuse(
    sc: ServerCtx,
    stream: Prefixed<TcpStream>,
    tls: Option<Arc<rustls::ServerConfig>>,
    refusal: Refusal,
) {
    let Some(_slot) = sc.limits.refusal_slot(MAX_REFUSING) else {
        return;
    };
    tracing::debug!(?refusal, "connection over capacity");
    let server = sc.config.load_full();
    let metrics = sc.metrics.clone();
    match tls {
        None => conn::serve_refusal(stream, refusal, server.header_timeout, metrics).await,
        Some(cfg) => {
            let timeout = server.tls_handshake_timeout;
            if let Some(s) = tls_handshake(&sc.metrics, stream, cfg, timeout).await {
                conn::serve_refusal(s, refusal, server.header_timeout, metrics).await
            }
        }
    }
}
