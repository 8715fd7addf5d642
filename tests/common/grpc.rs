//! A real gRPC server and client (tonic) for the HTTP/2 upstream tests,
//! without protobuf code generation: messages are raw bytes ([`RawCodec`]),
//! the server is tonic's `server::Grpc` on hyper's HTTP/2 server over TLS
//! (ALPN `h2`), and the client is a tonic `Channel`. Service `t.Echo`:
//!
//! - `Unary`: echoes the message; metadata `x-timeout` = the `grpc-timeout` it saw;
//! - `ServerStream`: the message three times, suffixed `/0`, `/1`, `/2`;
//! - `ClientStream`: the messages joined with `+`;
//! - `Bidi`: echoes each message as it arrives;
//! - `Fail`: status NOT_FOUND, message `nope`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status, Streaming};

use super::tls_upstream::TestCa;

/// Messages as they are on the wire (no protobuf).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type Fut<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
type Msgs = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

struct Unary;
impl tower_service::Service<Request<Bytes>> for Unary {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = Fut<Bytes>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let timeout = req.metadata().get("grpc-timeout").cloned();
            let mut resp = Response::new(req.into_inner());
            if let Some(t) = timeout {
                resp.metadata_mut().insert("x-timeout", t);
            }
            Ok(resp)
        })
    }
}

struct Fail;
impl tower_service::Service<Request<Bytes>> for Fail {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = Fut<Bytes>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Bytes>) -> Self::Future {
        Box::pin(async { Err(Status::not_found("nope")) })
    }
}

struct ServerStream;
impl tower_service::Service<Request<Bytes>> for ServerStream {
    type Response = Response<Msgs>;
    type Error = Status;
    type Future = Fut<Msgs>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let m = req.into_inner();
        Box::pin(async move {
            let msgs: Vec<Result<Bytes, Status>> = (0..3)
                .map(|i| {
                    let mut v = m.to_vec();
                    v.extend_from_slice(format!("/{i}").as_bytes());
                    Ok(Bytes::from(v))
                })
                .collect();
            Ok(Response::new(
                Box::pin(futures_util::stream::iter(msgs)) as Msgs
            ))
        })
    }
}

struct ClientStream;
impl tower_service::Service<Request<Streaming<Bytes>>> for ClientStream {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = Fut<Bytes>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = req.into_inner();
            let mut parts = Vec::new();
            while let Some(m) = stream.next().await {
                parts.push(String::from_utf8_lossy(&m?).into_owned());
            }
            Ok(Response::new(Bytes::from(parts.join("+"))))
        })
    }
}

struct Bidi;
impl tower_service::Service<Request<Streaming<Bytes>>> for Bidi {
    type Response = Response<Msgs>;
    type Error = Status;
    type Future = Fut<Msgs>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(Box::pin(req.into_inner()) as Msgs)) })
    }
}

/// Starts the gRPC server over TLS (certificate from `ca` for `localhost`,
/// ALPN `h2` only).
pub async fn grpc_upstream(ca: &TestCa) -> SocketAddr {
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut g = tonic::server::Grpc::new(RawCodec);
                        let resp = match req.uri().path() {
                            "/t.Echo/Unary" => g.unary(Unary, req).await,
                            "/t.Echo/Fail" => g.unary(Fail, req).await,
                            "/t.Echo/ServerStream" => g.server_streaming(ServerStream, req).await,
                            "/t.Echo/ClientStream" => g.client_streaming(ClientStream, req).await,
                            "/t.Echo/Bidi" => g.streaming(Bidi, req).await,
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}
