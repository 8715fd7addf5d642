//! Accept loops. Every accepted connection is admitted against the connection caps
//! (refused ones are answered 503/429 by [`conn::serve_refusal`]), gets a tracing
//! span with its client address, goes through TLS when the listener has it, and
//! is served by hyper. The loop itself never dies: per-connection accept errors
//! are skipped, resource exhaustion (EMFILE) is logged and backed off.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::conn::{self, Protocols};
use super::{Handler, ServerCtx};
use crate::client_cert::ClientCert;
use crate::ctx::ConnCtx;
use crate::limits::Refusal;

/// How many refused connections may be answered at once; beyond that they are
/// closed without a response so a flood cannot pile up memory.
const MAX_REFUSING: usize = 1024;

/// Runs one listener until `stop` (its own token, or the gateway's drain) fires.
/// `tls` is swapped on reload to serve new certificates to new connections.
pub async fn run<H: Handler>(
    sc: ServerCtx,
    handler: Arc<H>,
    listener: TcpListener,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    stop: CancellationToken,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let open_conns = sc.metrics.connection_gauge(&local.to_string());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = sc.shutdown.token.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                handle_accept_error(e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx::new(client, tls.is_some());
        let span = tracing::debug_span!("conn", client.addr = %client, listener = %local);
        let tls_cfg = tls.as_ref().map(|t| t.load_full());
        let task = handle_connection(
            sc.clone(),
            handler.clone(),
            stream,
            ctx,
            tls_cfg,
            open_conns.clone(),
        )
        .instrument(span);
        sc.shutdown.spawn_conn(task);
    }
    tracing::info!(listener = %local, "listener stopped accepting");
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

async fn handle_connection<H: Handler>(
    sc: ServerCtx,
    handler: Arc<H>,
    stream: TcpStream,
    mut ctx: ConnCtx,
    tls: Option<Arc<rustls::ServerConfig>>,
    open_conns: prometheus_client::metrics::gauge::Gauge,
) {
    let server = sc.config.load_full();
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
        Some(cfg) => {
            let handshake = Box::pin(tls_handshake(stream, cfg, server.tls_handshake_timeout));
            let Some(tls_stream) = handshake.await else {
                return;
            };
            let session = tls_stream.get_ref().1;
            let protocols = Protocols::from_alpn(session.alpn_protocol());
            // rustls verified it against the listener's client CA: only a
            // verified certificate is ever named to upstreams.
            ctx.client_cert = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| Arc::new(ClientCert::from_der(der)));
            Box::pin(conn::serve(sc, handler, tls_stream, ctx, slot, protocols)).await
        }
    }
}

async fn tls_handshake(
    stream: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, TlsAcceptor::from(cfg).accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

async fn refuse(
    sc: ServerCtx,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    refusal: Refusal,
) {
    let Some(_slot) = sc.limits.refusal_slot(MAX_REFUSING) else {
        return;
    };
    tracing::debug!(?refusal, "connection over capacity");
    let server = sc.config.load_full();
    match tls {
        None => conn::serve_refusal(stream, refusal, server.header_timeout).await,
        Some(cfg) => {
            if let Some(s) = tls_handshake(stream, cfg, server.tls_handshake_timeout).await {
                conn::serve_refusal(s, refusal, server.header_timeout).await
            }
        }
    }
}
