//! TLS clients: rustls configs trusting one test certificate, connections,
//! HTTP/2 over them, and a hand-made TLS 1.1 ClientHello.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{collect, Reply};

/// A rustls client config trusting exactly the PEM certificate at `ca`.
pub fn tls_client(ca: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    tls_client_versions(ca, alpn, rustls::DEFAULT_VERSIONS)
}

/// Like [`tls_client`], limited to the protocol `versions`.
pub fn tls_client_versions(
    ca: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("pem") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a TLS connection with `sni`, or the handshake error.
pub async fn try_tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Opens a TLS connection with `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_connect(addr, cfg, sni)
        .await
        .expect("tls handshake")
}

/// Sends one request over HTTP/2 on an established (TLS) stream.
pub async fn send_h2<IO>(io: IO, req: Request<Full<Bytes>>) -> Reply
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    collect(tx.send_request(req).await.expect("h2 response")).await
}

/// A TLS 1.1 ClientHello without the supported_versions extension.
pub fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([0x42; 32]); // random
    body.push(0); // session id

    // Suites rustls has (TLS 1.2 ECDHE-GCM) plus classic CBC ones, so only the
    // version can be the reason for refusing.
    let suites: [u16; 6] = [0xc02f, 0xc02b, 0xc030, 0x002f, 0x0035, 0xc013];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null

    // SNI "localhost".
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend(((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut ext = vec![0x00, 0x00];
    ext.extend((sni.len() as u16).to_be_bytes());
    ext.extend(sni);
    // supported_groups: x25519, secp256r1; ec_point_formats: uncompressed;
    // signature_algorithms: rsa_pkcs1_sha256, ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256.
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    ext.extend([
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x01, 0x04, 0x03, 0x08, 0x04,
    ]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}
