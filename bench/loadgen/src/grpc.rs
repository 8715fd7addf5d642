//! gRPC unary load (`grpc`) and the h2c gRPC echo server behind it
//! (`grpc-server`), for `bench/grpc.sh` (issue 21: calls/s through wsgate's
//! `protocol = "h2c"` upstream against the server direct). tonic without
//! protobuf code generation: messages are raw bytes ([`RawCodec`]), the server
//! is tonic's `server::Grpc` on hyper's HTTP/2 server (prior knowledge), as in
//! wsgate's own `tests/common/grpc.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::opts::Opts;
use crate::stats::{cpu_us, new_hist, us};

/// Messages as they are on the wire (no protobuf).
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

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

/// `t.Echo/Unary`: the request message back.
struct Unary;
impl tower_service::Service<Request<Bytes>> for Unary {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = Fut<Bytes>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(async move { Ok(Response::new(req.into_inner())) })
    }
}

/// `grpc-server --listen ADDR`: `t.Echo/Unary` over cleartext HTTP/2.
pub async fn serve_grpc(opts: &Opts) -> io::Result<()> {
    let listener = TcpListener::bind(opts.str("listen", "127.0.0.1:29005")).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let mut g = tonic::server::Grpc::new(RawCodec);
                    let resp = match req.uri().path() {
                        "/t.Echo/Unary" => g.unary(Unary, req).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// `grpc --url http://HOST:PORT --conns K --concurrency C --size B --duration S
/// [--pid P,Q]`: C workers, each looping unary calls of a B-byte message (closed
/// loop), spread over K HTTP/2 connections (tonic `Channel`s); calls/s, latency,
/// CPU µs per call of the `--pid` processes.
pub async fn run_grpc(opts: &Opts) -> io::Result<()> {
    let url = opts.str("url", "http://127.0.0.1:29005");
    let conns = opts.num("conns", 1usize).max(1);
    let parallel = opts.num("concurrency", 32usize).max(1);
    let size = opts.num("size", 32usize);
    let duration = opts.secs("duration", 5.0);
    let pid = opts.str("pid", "");
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        let ch = Channel::from_shared(url.clone())
            .map_err(io::Error::other)?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(io::Error::other)?;
        channels.push(ch);
    }
    let path = PathAndQuery::from_static("/t.Echo/Unary");
    let msg = Bytes::from(vec![b'x'; size]);
    // one warm-up call per connection
    for ch in &channels {
        let mut g = Grpc::new(ch.clone());
        g.ready().await.map_err(io::Error::other)?;
        g.unary(Request::new(msg.clone()), path.clone(), RawCodec)
            .await
            .map_err(io::Error::other)?;
    }
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_us(&pid);
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::with_capacity(parallel);
    for w in 0..parallel {
        let mut g = Grpc::new(channels[w % conns].clone());
        let (path, msg, errors) = (path.clone(), msg.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut ok = 0u64;
            while tokio::time::Instant::now() < deadline {
                let t = Instant::now();
                let r = match g.ready().await {
                    Ok(()) => g
                        .unary(Request::new(msg.clone()), path.clone(), RawCodec)
                        .await
                        .map(|r| r.into_inner().len() == msg.len())
                        .unwrap_or(false),
                    Err(_) => false,
                };
                if r {
                    hist.saturating_record(t.elapsed().as_nanos() as u64);
                    ok += 1;
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (ok, hist)
        }));
    }
    let mut hist = new_hist();
    let mut ok = 0;
    for t in tasks {
        let (c, h) = t.await.map_err(io::Error::other)?;
        ok += c;
        hist.add(&h).expect("hist add");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_us(&pid) - cpu0) as f64 / ok.max(1) as f64;
    println!(
        "{{\"mode\":\"grpc\",\"conns\":{conns},\"concurrency\":{parallel},\"size\":{size},\"calls\":{ok},\"calls_per_s\":{:.0},\"cpu_us\":{cpu:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{}}}",
        ok as f64 / secs,
        us(&hist, 0.5),
        us(&hist, 0.99),
        errors.load(Ordering::Relaxed)
    );
    if ok == 0 {
        return Err(io::Error::other("no gRPC call completed"));
    }
    Ok(())
}
