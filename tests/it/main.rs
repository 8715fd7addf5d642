//! The integration tests that share a process: one test binary instead of one
//! per file, so CI links (and stores) the crate and aws-lc once, not fourteen
//! times. Each module is one area; `cargo test --test it chat::` runs one.
//!
//! Three suites stay binaries of their own because they measure the process
//! itself: `tests/budget.rs` (a recording global allocator),
//! `tests/hardening.rs` (process RSS and hundreds of sockets) and
//! `tests/limits.rs` (RSS growth under a key flood).

#![allow(clippy::result_large_err)]

#[path = "../common/mod.rs"]
mod common;

mod acme;
mod auth;
mod auth_callout;
mod chat;
mod chat_auth;
mod chat_browser;
mod client_addr;
mod cluster;
mod cluster_sync;
mod drain;
mod gateway;
mod grpc;
mod hardening2;
mod hardening3;
mod hardening4;
mod hardening5;
mod hardening6;
mod http2;
mod inspect;
mod inspect_liveness;
mod listener_tls;
mod mtls;
mod operations;
mod probes;
mod recovery;
mod redis_cluster;
mod redis_sentinel;
mod room_subs;
mod splice;
mod static_files;
mod systemd;
mod upgrade;
mod upstream;
mod upstream_h2;
mod upstream_tls;
mod websocket;
