//! A test CA (rcgen) and a real TLS upstream made with it: tokio-rustls in
//! front of a hyper HTTP/1.1 server with upgrades. The upstream records the
//! SNI of every handshake and whether a client certificate came with it,
//! answers `/healthz` with a settable status, echoes WebSocket messages, and
//! answers anything else `200 tls:PATH` with the handshake's SNI and client
//! certificate in `x-sni` / `x-client-cert`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// A certificate authority for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA's private key (PKCS#8 PEM), for tools that sign as the CA
    /// (`openssl ocsp`).
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("wsgate test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let key_pem = key.serialize_pem();
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
            key_pem,
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/NAME.pem`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> String {
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, self.pem()).expect("write ca");
        p.to_string_lossy().into_owned()
    }

    /// A certificate for `hosts` (DNS names or IP literals), signed by this CA,
    /// as (chain PEM, key PEM). `client`: for TLS clients instead of servers.
    pub fn issue(&self, hosts: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            hosts.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// [`TestCa::issue`] written to `dir/NAME.crt` and `dir/NAME.key`.
    pub fn issue_files(
        &self,
        dir: &Path,
        name: &str,
        hosts: &[&str],
        client: bool,
    ) -> (String, String) {
        let (c, k) = self.issue(hosts, client);
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&crt, c).expect("write crt");
        std::fs::write(&key, k).expect("write key");
        (
            crt.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }
}

/// A running TLS upstream.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// SNI of every completed handshake, in order (`None`: no SNI sent).
    pub snis: Arc<Mutex<Vec<Option<String>>>>,
    /// Completed TLS handshakes.
    pub handshakes: Arc<AtomicUsize>,
    /// Requests answered, health probes excluded.
    pub hits: Arc<AtomicUsize>,
    /// Status `/healthz` answers.
    pub health: Arc<AtomicU16>,
}

impl TlsUpstream {
    /// Serves a certificate from `ca` for `localhost` and `127.0.0.1`. With
    /// `client_ca`, a client certificate chaining to it is required.
    pub async fn start(ca: &TestCa, client_ca: Option<&TestCa>) -> Self {
        let (chain, key) = ca.issue(&["localhost", "127.0.0.1"], false);
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(cca) => {
                let mut roots = rustls::RootCertStore::empty();
                let der = rustls_pki_types::CertificateDer::from_pem_slice(cca.pem().as_bytes())
                    .expect("ca der");
                roots.add(der).expect("add root");
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = TlsUpstream {
            addr: listener.local_addr().expect("addr"),
            snis: Arc::default(),
            handshakes: Arc::default(),
            hits: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
        };
        let (snis, handshakes, hits, health) = (
            up.snis.clone(),
            up.handshakes.clone(),
            up.hits.clone(),
            up.health.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (snis, handshakes, hits, health) = (
                    snis.clone(),
                    handshakes.clone(),
                    hits.clone(),
                    health.clone(),
                );
                tokio::spawn(async move {
                    // A failed handshake (the gateway distrusting us) just ends.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    snis.lock().expect("snis").push(sni.clone());
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let svc = service_fn(move |req| {
                        let (sni, hits, health) = (sni.clone(), hits.clone(), health.clone());
                        async move { Ok::<_, Infallible>(answer(req, sni, client_cert, &hits, &health)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        up
    }

    pub fn snis(&self) -> Vec<Option<String>> {
        self.snis.lock().expect("snis").clone()
    }
}

fn answer(
    mut req: Request<Incoming>,
    sni: Option<String>,
    client_cert: bool,
    hits: &AtomicUsize,
    health: &AtomicU16,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/healthz" {
        let status = StatusCode::from_u16(health.load(Ordering::SeqCst)).expect("status");
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        return r;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if let Some(key) = req.headers().get("sec-websocket-key") {
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() || m.is_binary() {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                } else if m.is_close() {
                    break;
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .expect("101");
    }
    Response::builder()
        .header("x-sni", sni.unwrap_or_default())
        .header("x-client-cert", if client_cert { "yes" } else { "no" })
        .body(Full::new(Bytes::from(format!("tls:{}", req.uri().path()))))
        .expect("response")
}
