//! An HTTP/2-only upstream (hyper's HTTP/2 server), over TLS with ALPN `h2`
//! or in cleartext (prior knowledge), that answers like a gRPC server: the
//! request body echoed, then trailers (`grpc-status: 0`). Response headers
//! say what it saw: `x-version`, `x-te`, `x-authority`; the request's
//! trailers come back in `x-request-trailers`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::tls_upstream::TestCa;

type Reply =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A running HTTP/2 upstream.
pub struct H2Upstream {
    pub addr: SocketAddr,
    /// Connections accepted (after TLS, when TLS).
    pub connections: Arc<AtomicUsize>,
}

impl H2Upstream {
    /// With `ca`: TLS with a certificate from it for `localhost`, ALPN `h2` only.
    pub async fn start(ca: Option<&TestCa>) -> Self {
        let acceptor = ca.map(|ca| {
            use rustls_pki_types::pem::PemObject;
            let (chain, key) = ca.issue(&["localhost"], false);
            let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("cert");
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = H2Upstream {
            addr: listener.local_addr().expect("addr"),
            connections: Arc::default(),
        };
        let connections = up.connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, connections) = (acceptor.clone(), connections.clone());
                tokio::spawn(async move {
                    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let svc = service_fn(answer);
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            connections.fetch_add(1, Ordering::SeqCst);
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        up
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
    let version = format!("{:?}", req.version());
    let te = req.headers().get("te").cloned();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let collected = req.into_body().collect().await.ok();
    // The request's trailers, `name=value` joined by `;`, in a trailer back.
    let seen: Vec<String> = collected
        .as_ref()
        .and_then(|c| c.trailers())
        .map(|t| {
            t.iter()
                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
                .collect()
        })
        .unwrap_or_default();
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-len", HeaderValue::from(body.len()));
    if let Ok(v) = HeaderValue::from_str(&seen.join(";")) {
        trailers.insert("x-request-trailers", v);
    }
    let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert(
        "x-version",
        HeaderValue::from_str(&version).expect("version"),
    );
    h.insert(
        "x-authority",
        HeaderValue::from_str(&authority).expect("authority"),
    );
    if let Some(te) = te {
        h.insert("x-te", te);
    }
    Ok(resp)
}
