//! WebSocket client connections for the load modes: TCP (optionally bound to
//! a `--src-ips` source address), TLS 1.3 with any certificate accepted and
//! optional session resumption (counted in [`RESUMED`]), the HTTP/1.1 upgrade
//! handshake, and opening many connections with bounded parallelism.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::frame::find;
use crate::opts::{parse_url, source_ip, Opts, Target};

/// A client connection's byte stream: plain TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Accepts any server certificate: the benchmark measures handshakes, not trust.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS handshakes that resumed a session (S5 `wss-resume` reports them, so a
/// run shows resumption really happened).
pub static RESUMED: AtomicU64 = AtomicU64::new(0);

/// TLS 1.3 client, ALPN http/1.1 so the gateway does not pick h2. Without
/// `resume` every connection is a full handshake; with it (`--resume 1`) the
/// client keeps its tickets and resumes (S5 `wss-resume`).
fn tls_connector(resume: bool) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Where and how the load modes connect: the `--url` target, its TLS
/// connector if `wss://`, and the `--src-ips` spread.
pub struct Client {
    pub target: Target,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub src_ips: usize,
}

impl Client {
    pub fn new(opts: &Opts) -> io::Result<Arc<Client>> {
        let target = parse_url(&opts.str("url", "ws://127.0.0.1:8080/echo"))?;
        let resume = opts.str("resume", "0") == "1";
        let tls = target.tls.then(|| tls_connector(resume));
        Ok(Arc::new(Client {
            target,
            tls,
            src_ips: opts.num("src-ips", 1usize),
        }))
    }

    /// TCP (+TLS) connect and the WebSocket handshake; returns the stream and any
    /// bytes read past the 101 response.
    pub async fn connect(
        &self,
        i: usize,
        path: Option<&str>,
    ) -> io::Result<(Box<dyn Io>, Vec<u8>)> {
        let sock = TcpSocket::new_v4()?;
        if let Some(ip) = source_ip(i, self.src_ips) {
            sock.bind(SocketAddr::new(ip.into(), 0))?;
        }
        let tcp = sock.connect(self.target.addr).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = match &self.tls {
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let s = c.connect(name, tcp).await?;
                if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    RESUMED.fetch_add(1, Ordering::Relaxed);
                }
                Box::new(s)
            }
            None => Box::new(tcp),
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            path.unwrap_or(&self.target.path),
            self.target.host
        );
        io.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let end = loop {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::other("closed during handshake"));
            }
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&buf[..end.min(120)]).into_owned();
            return Err(io::Error::other(format!("handshake refused: {head}")));
        }
        Ok((io, buf[end..].to_vec()))
    }
}

/// Opens `n` connections, at most `parallel` handshakes at a time.
pub async fn open_many(
    client: &Arc<Client>,
    n: usize,
    parallel: usize,
) -> io::Result<Vec<(Box<dyn Io>, Vec<u8>)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let c = client.clone();
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        tasks.push(tokio::spawn(async move {
            let r = c.connect(i, None).await;
            drop(permit);
            r
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await.map_err(io::Error::other)??);
    }
    Ok(conns)
}
