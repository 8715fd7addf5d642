//! The serving side: accept loops ([`listener`]), TLS handshakes ([`tls`]) and
//! hyper connections ([`conn`]).

pub mod admin;
pub mod conn;
pub mod listener;
pub mod smuggle;
pub mod tls;
