//! TLS from the gateway to an upstream's servers: the rustls client config
//! one pool shares (trust roots from `tls_ca` or the system's, an optional
//! client certificate for mTLS, the same aws-lc-rs provider as the
//! listeners) and the name each server is checked against (SNI). ALPN says
//! `h2` for the HTTP connections of a `protocol = "h2"` pool and `http/1.1`
//! otherwise (WebSocket tunnels are HTTP/1.1 upgrades whatever the pool's
//! protocol).
//! rustls keeps a bounded in-memory store of sessions per config, so
//! connections to the same server resume instead of doing a full handshake.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::certs::CertError;
use crate::config::UpstreamTlsConfig;

/// Why an upstream's TLS client config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("tls_ca {path}: {reason}")]
    Ca {
        path: std::path::PathBuf,
        reason: crate::config::RootsError,
    },
    #[error("no system trust roots found (set tls_ca)")]
    NoSystemRoots,
    #[error("client certificate: {0}")]
    ClientCert(#[from] CertError),
    #[error("TLS client config: {0}")]
    Config(#[from] rustls::Error),
}

/// One pool's TLS client side.
pub struct UpstreamTls {
    /// For the pool's HTTP connections.
    http: TlsConnector,
    /// For WebSocket tunnels (ALPN `http/1.1`); the same config unless the
    /// HTTP connections speak HTTP/2.
    ws: TlsConnector,
    /// `tls_server_name`: the name for every server of the pool.
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Reads the trust roots and the client certificate (re-read on every
    /// reload, as listener certificates are). `h2`: HTTP connections offer
    /// only `h2` (ALPN).
    pub fn build(cfg: &UpstreamTlsConfig, h2: bool) -> Result<Self, UpstreamTlsError> {
        let roots = match &cfg.ca {
            Some(path) => {
                crate::config::load_roots(path).map_err(|reason| UpstreamTlsError::Ca {
                    path: path.clone(),
                    reason,
                })?
            }
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots);
        let mut config = match &cfg.client {
            Some(paths) => {
                let (chain, key) = crate::certs::load_chain_and_key(&paths.cert, &paths.key)?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        // Saying which protocol comes keeps servers that insist on ALPN happy,
        // and an h2 pool must know the server agreed to HTTP/2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let ws = TlsConnector::from(Arc::new(config.clone()));
        let http = if h2 {
            config.alpn_protocols = vec![b"h2".to_vec()];
            TlsConnector::from(Arc::new(config))
        } else {
            ws.clone()
        };
        let name = cfg
            .server_name
            .as_deref()
            .and_then(|n| ServerName::try_from(n.to_string()).ok());
        Ok(Self { http, ws, name })
    }

    /// The connector for HTTP connections (`ws`: for a WebSocket tunnel).
    pub fn connector(&self, ws: bool) -> &TlsConnector {
        if ws {
            &self.ws
        } else {
            &self.http
        }
    }

    /// The name a server at `addr` (`host:port`) is reached by: `tls_server_name`,
    /// else its host (a DNS name is sent as SNI; an IP address is checked
    /// against the certificate's IP addresses, without SNI).
    pub fn server_name(&self, addr: &str) -> Option<ServerName<'static>> {
        if let Some(n) = &self.name {
            return Some(n.clone());
        }
        ServerName::try_from(host_of(addr).to_string()).ok()
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The system's trust roots ([`crate::certs::system_roots`]); none is an error.
fn system_roots() -> Result<rustls::RootCertStore, UpstreamTlsError> {
    let roots = crate::certs::system_roots();
    if roots.is_empty() {
        return Err(UpstreamTlsError::NoSystemRoots);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("a.test:443"), "a.test");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }
}
