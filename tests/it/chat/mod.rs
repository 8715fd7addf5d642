//! The chat app over real sockets: the WebSocket protocol, ordering, presence,
//! tabs, the SSE / long-poll / send fallbacks, the HTTP API, backpressure and
//! keepalive. Nothing sleeps to synchronise: tests wait for the events they
//! expect (with a deadline) or poll state with `common::eventually`.
//!
//! This module holds the gateway config; the tests are in [`protocol`],
//! [`backpressure`], [`fallbacks`] and [`api`].

mod api;
mod backpressure;
mod fallbacks;
mod protocol;

use crate::common::{Cfg, TestGateway};

/// One node with the chat app at `/chat`, a short history and poll timeout.
fn config() -> Cfg {
    Cfg::new()
        .set("server.node_id", "t1")
        .set("server.shutdown_grace", "5s")
        .set("log.access_log", false)
        .listener_plain()
        .route_app("/chat", "chat")
        .set("app.chat.history", 20)
        .set("app.chat.max_message_size", "1KiB")
        .set("app.chat.ping_interval", "30s")
        .set("app.chat.send_queue", 64)
        .set("app.chat.poll_idle_timeout", "1s")
}

async fn gateway(cfg: Cfg) -> TestGateway {
    TestGateway::start(&cfg.build()).await
}
