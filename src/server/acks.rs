//! When a plain listener's clients get the ACK of what they send: with the
//! server's answer, as HAProxy does on its HTTP listeners, and at once while
//! the server waits for more of a request.
//!
//! Linux ACKs the first segments of a new connection at once (quick ACK), so
//! a WebSocket handshake or a first request cost the client's side a bare ACK
//! before the answer; a delayed ACK rides on the answer instead, and a new
//! proxied WebSocket costs one segment fewer. A listening socket with quick
//! ACK off hands that to every connection it accepts.
//!
//! The catch is Nagle's algorithm on the client: one that sends a request in
//! two writes without `TCP_NODELAY` holds the second until the first is
//! ACKed, and a delayed ACK can take 40 ms. So wherever the server has part
//! of what it needs and waits for the rest (a head in pieces, a request
//! body, a PROXY header alone) it turns quick ACK back on for that
//! connection, as HAProxy does.

use tokio::net::{TcpListener, TcpStream};

use super::proxy_protocol::Prefixed;

/// Connections `listener` accepts from now on start with delayed ACKs when
/// `delayed` (a plain listener), with quick ones otherwise (TLS: set both
/// ways, as a socket handed over by an upgrade keeps what it had).
pub fn on_listener(listener: &TcpListener, delayed: bool) {
    if let Err(e) = rustix::net::sockopt::set_tcp_quickack(listener, !delayed) {
        tracing::debug!(error = %e, "could not set a listener's quick ACK");
    }
}

/// A client connection whose ACKs can be sent at once again.
pub trait AckNow {
    /// Turns quick ACK back on: the server waits for more from the client.
    fn ack_now(&self);
}

impl AckNow for TcpStream {
    fn ack_now(&self) {
        // Best effort: failing, the client may wait for a delayed ACK.
        let _ = rustix::net::sockopt::set_tcp_quickack(self, true);
    }
}

impl<S: AckNow> AckNow for Prefixed<S> {
    fn ack_now(&self) {
        self.get_ref().ack_now();
    }
}

/// After a PROXY header on a plain listener: one that came alone leaves the
/// request still to come, and the client may hold it for an ACK.
pub fn after_proxy_header<S: AckNow>(stream: &Prefixed<S>, tls: bool) {
    if !tls && stream.drained().is_some() {
        stream.ack_now();
    }
}

/// TLS listeners keep quick ACK on: their handshake is several flights, and
/// its ACKs are not held back ([`on_listener`]).
impl<S> AckNow for tokio_rustls::server::TlsStream<S> {
    fn ack_now(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted on a listener set up as `on_listener(delayed)`
    /// would (or left alone), with its client.
    async fn accepted(delayed: Option<bool>) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        if let Some(delayed) = delayed {
            on_listener(&l, delayed);
        }
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        (l.accept().await.expect("accept").0, c)
    }

    fn quick(s: &TcpStream) -> bool {
        rustix::net::sockopt::tcp_quickack(s).expect("getsockopt")
    }

    /// What the kernel does with the listener's setting is what the gateway
    /// relies on: the accepted socket inherits it.
    #[tokio::test]
    async fn an_accepted_connection_starts_with_delayed_acks() {
        let (s, _c) = accepted(Some(true)).await;
        assert!(!quick(&s), "the accepted socket should delay its ACKs");
    }

    #[tokio::test]
    async fn ack_now_turns_quick_acks_back_on() {
        let (s, _c) = accepted(Some(true)).await;
        let s = Prefixed::plain(s);
        s.ack_now();
        assert!(quick(s.get_ref()), "ack_now should turn quick ACK back on");
    }

    /// Quick ACKs, whether set (TLS listeners) or left as the kernel has them.
    #[tokio::test]
    async fn other_listeners_keep_quick_acks() {
        for delayed in [Some(false), None] {
            let (s, _c) = accepted(delayed).await;
            assert!(quick(&s), "{delayed:?}");
        }
    }
}
