//! wsbench: the load generator and the tiny servers behind wsgate's benchmark
//! suite (`bench/run.sh`, results in `BENCHMARKS.md`).
//!
//! # Modes
//!
//! | mode | does |
//! |---|---|
//! | `echo` | N WebSocket connections sending pre-masked binary frames, `--depth` in flight each (closed loop), or at a fixed total `--rate` (open loop); msgs/s and an HDR latency histogram |
//! | `connrate` | new WebSocket connections per second (ws or wss): connect, handshake, close |
//! | `idle` | open N WebSocket connections, hold them, report the RSS growth of `--pid` per connection |
//! | `chat` | one chat room, N members, one sender at `--rate`; delivered msgs/s and delivery latency |
//! | `chat-nodes` | chat rooms spread over several wsgate nodes sharing Redis (S6 across nodes, `bench/s6.sh`): delivered msgs/s, latency (cross-node too), nodes' CPU, Redis CPU and `INFO commandstats` per shard |
//! | `ws-server` | upstream WebSocket echo server for the proxy scenarios (minimal hand-written tokio echo, all frames of one read in one write; `direct` in S2/S3) |
//! | `fws-server` | WebSocket echo with the `fastwebsockets` crate (hyper 1 upgrade, `FragmentCollector`, one write per frame): S2/S3 comparison |
//! | `tt-server` | WebSocket echo with `tokio-tungstenite`, default config (`accept_async`, 128 KiB read buffer): S2/S3 comparison |
//! | `grpc` | gRPC unary calls (tonic, raw-bytes codec) with `--concurrency` in flight over `--conns` HTTP/2 connections: calls/s, latency (`bench/grpc.sh`) |
//! | `grpc-server` | h2c gRPC server answering `t.Echo/Unary` with the request message (tonic `server::Grpc` on hyper) |
//! | `http-server` | keep-alive HTTP/1.1 backend answering every request with 13 bytes |
//!
//! Every load mode prints one JSON object on stdout. Latencies are measured from
//! a timestamp carried in the message itself (8 bytes of nanoseconds since the
//! run started), so no per-message bookkeeping is needed on the client.
//!
//! Client frames are built once with a fixed mask key; only the 8 timestamp
//! bytes are re-masked per send. `--src-ips K` spreads client connections over
//! K source addresses in 127.0.1.0/24 and up, to pass the ephemeral-port limit.
//!
//! # Modules
//!
//! This file parses the mode and dispatches to it. Options and target URLs:
//! `opts`; client connections (TCP, TLS, upgrade handshake): `client`; the
//! frame wire format: `frame`; histograms and /proc readings: `stats`. Load
//! modes: `echo`, `conns` (`connrate`, `idle`), `chat`, `chat_nodes` (with
//! `redis`), `grpc` (also `grpc-server`). Servers: `server` (the accept
//! loop), `ws_servers` (`ws-server`, `fws-server`, `tt-server`),
//! `http_server`.

mod chat;
mod chat_nodes;
mod client;
mod conns;
mod echo;
mod frame;
mod grpc;
mod http_server;
mod opts;
mod redis;
mod server;
mod stats;
mod ws_servers;

use std::io;

use opts::Opts;
use server::serve;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        eprintln!("usage: wsbench MODE [--key value]...  (modes: echo connrate idle chat chat-nodes grpc ws-server fws-server tt-server http-server grpc-server)");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[1..]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.num("threads", 1usize))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match mode.as_str() {
            "echo" => echo::run_echo(&opts).await,
            "connrate" => conns::run_connrate(&opts).await,
            "idle" => conns::run_idle(&opts).await,
            "chat" => chat::run_chat(&opts).await,
            "chat-nodes" => chat_nodes::run_chat_nodes(&opts).await,
            "grpc" => grpc::run_grpc(&opts).await,
            "grpc-server" => grpc::serve_grpc(&opts).await,
            "ws-server" => serve(&opts, ws_servers::serve_ws_echo).await,
            "fws-server" => serve(&opts, ws_servers::serve_fws_echo).await,
            "tt-server" => serve(&opts, ws_servers::serve_tt_echo).await,
            "http-server" => serve(&opts, http_server::serve_http).await,
            other => Err(io::Error::other(format!("unknown mode {other}"))),
        }
    });
    if let Err(e) = result {
        eprintln!("wsbench: {e}");
        std::process::exit(1);
    }
}
