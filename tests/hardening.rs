//! Hardening over real sockets (issue 8): slowloris on plain and TLS listeners,
//! connection floods against the global and per-IP caps, malformed and smuggling
//! HTTP (checked against an upstream that counts what reaches it), malformed
//! WebSocket frames on app sessions, panics in connection tasks, and TLS version
//! and garbage handling. Nothing sleeps to synchronise: every wait is a poll
//! against a deadline.
//!
//! This crate root holds the shared gateway and helpers; the tests are in
//! `tests/hardening/`: [`slowloris`], [`caps`] (floods and a panicking
//! connection task), [`malformed`] (HTTP and WebSocket frames) and [`tls`].

mod common;

#[path = "hardening/caps.rs"]
mod caps;
#[path = "hardening/malformed.rs"]
mod malformed;
#[path = "hardening/slowloris.rs"]
mod slowloris;
#[path = "hardening/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncWrite};

/// The tests here measure timing and process-wide RSS and open hundreds of
/// sockets: they run one at a time so they do not disturb each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway with a plain and a TLS listener, `/echo`, `/chat` and `/` proxied to
/// `upstream`, on top of `cfg` (its `[server]` settings). Returns it with the CA
/// file for TLS clients.
async fn gateway(cfg: Cfg, upstream: SocketAddr) -> (TestGateway, String) {
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = write_cert(dir.path(), "localhost", &["localhost"]);
    let toml = cfg
        .listener_plain()
        .listener_tls(&crt, &key)
        .upstream("up", &[upstream])
        .set("upstream.up.retries", 0)
        .route_app("/echo", "echo")
        .route_app("/chat", "chat")
        .route_upstream("/", "up")
        .set("app.echo.max_message_size", "64KiB")
        .set("app.chat.max_message_size", "1KiB")
        .build();
    (TestGateway::start_in(&toml, dir).await, crt)
}

/// Sets `[server] key = value`.
fn server(key: &str, value: impl Into<toml::Value>) -> Cfg {
    Cfg::new().set(&format!("server.{key}"), value)
}

/// Sends raw bytes and returns the status line of the answer (or "" when the
/// connection was closed without one; a hang fails).
async fn status_line(addr: SocketAddr, bytes: &[u8]) -> String {
    raw(addr, bytes, Duration::from_secs(5)).await.status_line()
}

async fn get_ok(addr: SocketAddr) -> bool {
    status_line(
        addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .starts_with("HTTP/1.1 200")
}

/// Connections admitted and not yet released, polled until it reaches `n`.
async fn active_reaches(gw: &TestGateway, n: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        gw.handle.active_connections() == n
    })
    .await
}

/// One HTTP/1.1 GET over an established stream; returns the status code.
async fn send_h1<IO>(io: IO, path: &str) -> u16
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    send_on(io, request("GET", path, &[], ""))
        .await
        .status
        .as_u16()
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Between `min` and `min + spread - 1` random bytes.
    fn some_bytes(&mut self, min: usize, spread: u64) -> Vec<u8> {
        let n = min + (self.next() % spread) as usize;
        self.bytes(n)
    }
}
